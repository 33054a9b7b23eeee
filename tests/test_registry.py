"""The OCI distribution client against recorded registry answers (``responses``)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from responses import matchers

from deploykit import registry_auth, registry_errors
from deploykit.actions import Actions
from deploykit.cli import main
from deploykit.commands.resolve import resolve as resolve_command
from deploykit.errors import (
    BadCredentialsError,
    DeniedError,
    InputError,
    InsecureRealmError,
    LoginRequiredError,
    ManifestUnknownError,
    RegistryError,
    RegistryUnreachableError,
    RepositoryUnknownError,
    UnauthorizedError,
)
from deploykit.reference import ImageReference, parse_reference
from deploykit.registry import (
    DOCKER_MANIFEST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
)
from deploykit.registry_errors import parse_retry_after
from deploykit.settings import load_settings

GHCR = "https://ghcr.io"
MANIFEST_URL = f"{GHCR}/v2/org/app/manifests"
TOKEN_URL = f"{GHCR}/token"
GHCR_CHALLENGE = 'Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:org/app:pull"'
DIGEST = "sha256:" + "a" * 64
ATTESTATION = "sha256:" + "3" * 64
CONFIG = "sha256:" + "4" * 64
ARM_CONFIG = "sha256:" + "5" * 64
UNAUTHORIZED_BODY = {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}


class FakeClock:
    """The retry loop's clock: sleeping advances it instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def monotonic(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(registry_auth, "_sleep", fake.sleep)
    monkeypatch.setattr(registry_auth, "_monotonic", fake.monotonic)
    return fake


@pytest.fixture
def rsps() -> Any:
    with responses.RequestsMock(assert_all_requests_are_fired=True) as mock:
        yield mock


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def ghcr(username: str = "octocat", password: str = "ghp_token") -> RegistryClient:
    return RegistryClient("ghcr.io", "org/app", username, password)


def add_challenge(rsps: Any, method: str = responses.HEAD, url: str = f"{MANIFEST_URL}/v1.0.0",
                  challenge: str = GHCR_CHALLENGE) -> None:
    body = json.dumps(UNAUTHORIZED_BODY) if method == responses.GET else None
    rsps.add(method, url, status=401, body=body, headers={"WWW-Authenticate": challenge})


def add_token(rsps: Any, token: str = "tok-1", *, auth: str | None = None,
              key: str = "token", scope: str = "repository:org/app:pull") -> None:
    match = [matchers.query_param_matcher({"scope": scope, "service": "ghcr.io"})]
    if auth:
        match.append(matchers.header_matcher({"Authorization": auth}))
    rsps.add(responses.GET, TOKEN_URL, json={key: token}, match=match)


def add_head(rsps: Any, reference: str = "v1.0.0", digest: str = DIGEST,
             token: str = "tok-1") -> None:
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/{reference}",
             headers={"Docker-Content-Digest": digest},
             match=[matchers.header_matcher({"Authorization": f"Bearer {token}",
                                             "Accept": MANIFEST_ACCEPT})])


# -- references -------------------------------------------------------------------
@pytest.mark.parametrize(("text", "expected"), [
    ("127.0.0.1:5000/org/app:test-20261127-1",
     ImageReference("127.0.0.1:5000", "org/app", "test-20261127-1", None)),
    (f"ghcr.io/org/app@{DIGEST}", ImageReference("ghcr.io", "org/app", None, DIGEST)),
    (f"ghcr.io/org/sub/app:v1.2.3@{DIGEST}",
     ImageReference("ghcr.io", "org/sub/app", "v1.2.3", DIGEST)),
    ("GHCR.io/org/app", ImageReference("ghcr.io", "org/app", None, None)),
    ("localhost/app:1", ImageReference("localhost", "app", "1", None)),
    ("[::1]:5000/org/app:v1", ImageReference("[::1]:5000", "org/app", "v1", None)),
    ("busybox:1.36", ImageReference("docker.io", "library/busybox", "1.36", None)),
    ("org/app:v1", ImageReference("docker.io", "org/app", "v1", None)),
])
def test_parse_reference(text: str, expected: ImageReference) -> None:
    assert parse_reference(text) == expected


def test_reference_name_and_text() -> None:
    ref = parse_reference(f"127.0.0.1:5000/org/app:v1@{DIGEST}")
    assert (ref.name, ref.reference, str(ref)) == (
        "127.0.0.1:5000/org/app", DIGEST, f"127.0.0.1:5000/org/app:v1@{DIGEST}")


@pytest.mark.parametrize("text", ["ghcr.io/org/App:v1", "ghcr.io/org/app:-bad",
                                  "ghcr.io/org/app@sha256:abc", "ghcr.io/org/app@md5:" + "a" * 32,
                                  "ghcr.io//app:v1", ""])
def test_parse_reference_refuses_malformed(text: str) -> None:
    with pytest.raises(InputError) as error:
        parse_reference(text)
    assert error.value.input_name == "reference"
    assert "ghcr.io/org/app:v1.4.2" in error.value.hint


@pytest.mark.parametrize(("host", "base"), [
    ("127.0.0.1:5000", "http://127.0.0.1:5000"), ("127.8.9.10", "http://127.8.9.10"),
    ("localhost:5001", "http://localhost:5001"), ("[::1]:5000", "http://[::1]:5000"),
    ("ghcr.io", "https://ghcr.io"), ("10.0.0.1:5000", "https://10.0.0.1:5000"),
    ("docker.io", "https://registry-1.docker.io"),
])
def test_plain_http_only_on_loopback(host: str, base: str) -> None:
    assert RegistryClient(host, "org/app").base_url == base


# -- Bearer flow (GHCR's header shapes) -------------------------------------------------------
def test_bearer_challenge_fetches_a_token_with_basic_credentials(rsps: Any) -> None:
    add_challenge(rsps)
    add_token(rsps, auth=basic("octocat", "ghp_token"))
    add_head(rsps)
    assert ghcr().resolve("v1.0.0") == DIGEST
    assert [call.request.method for call in rsps.calls] == ["HEAD", "GET", "HEAD"]
    assert "Authorization" not in rsps.calls[0].request.headers


def test_token_is_cached_so_a_resolve_is_one_round_trip(rsps: Any) -> None:
    add_challenge(rsps)
    add_token(rsps)
    add_head(rsps)
    add_head(rsps, "v1.0.1", ARM64)
    client = ghcr()
    client.resolve("v1.0.0")
    before = len(rsps.calls)
    assert client.resolve("v1.0.1") == ARM64
    assert len(rsps.calls) - before == 1


def test_docker_hub_style_access_token_and_anonymous_pull(rsps: Any) -> None:
    add_challenge(rsps)
    add_token(rsps, "anon", key="access_token")
    add_head(rsps, token="anon")
    assert RegistryClient("ghcr.io", "org/app").resolve("v1.0.0") == DIGEST
    assert "Authorization" not in rsps.calls[1].request.headers


def test_expired_token_is_fetched_again(rsps: Any) -> None:
    add_challenge(rsps)
    add_token(rsps, "old")
    add_head(rsps, token="old")
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1.0.1", status=401,
             headers={"WWW-Authenticate": GHCR_CHALLENGE},
             match=[matchers.header_matcher({"Authorization": "Bearer old"})])
    add_token(rsps, "new")
    add_head(rsps, "v1.0.1", ARM64, token="new")
    client = ghcr()
    assert client.resolve("v1.0.0") == DIGEST
    assert client.resolve("v1.0.1") == ARM64


def test_challenge_without_scope_uses_the_pull_scope(rsps: Any) -> None:
    add_challenge(rsps, challenge='Bearer realm="https://ghcr.io/token",service="ghcr.io"')
    add_token(rsps)
    add_head(rsps)
    assert ghcr().resolve("v1.0.0") == DIGEST


def test_token_service_rejecting_credentials_is_unauthorized(rsps: Any) -> None:
    add_challenge(rsps)
    rsps.add(responses.GET, TOKEN_URL, status=401, json=UNAUTHORIZED_BODY)
    with pytest.raises(UnauthorizedError) as error:
        ghcr().resolve("v1.0.0")
    assert error.value.message == ("ghcr.io rejected the credentials of octocat for "
                                   "ghcr.io/org/app:v1.0.0: UNAUTHORIZED: authentication required")
    assert "`registry_password`" in error.value.hint


def test_401_after_a_fresh_token_is_no_permission_not_bad_credentials(rsps: Any) -> None:
    """The token service accepted the password: a 401 with that token means the account
    lacks the right (issue 23: it was reported as "rejected the credentials")."""
    add_challenge(rsps, responses.GET, f"{GHCR}/v2/org/app/tags/list")
    add_token(rsps)
    add_challenge(rsps, responses.GET, f"{GHCR}/v2/org/app/tags/list",
                  GHCR_CHALLENGE + ',error="insufficient_scope"')
    with pytest.raises(DeniedError) as error:
        ghcr().tags()
    assert error.value.message == (
        "ghcr.io accepted the credentials of octocat but denied pull access to ghcr.io/org/app "
        "(tag list): UNAUTHORIZED: authentication required (insufficient_scope)")
    assert "Manage Actions access" in error.value.hint
    assert "`permissions: packages: read`" in error.value.hint
    assert len(rsps.calls) == 3  # no second token for the same answer


# -- Basic ------------------------------------------------------------------------------
def test_basic_challenge_then_basic_on_every_request(rsps: Any) -> None:
    url = "http://127.0.0.1:5001/v2/org/app/manifests"
    rsps.add(responses.HEAD, f"{url}/v1", status=401,
             headers={"WWW-Authenticate": 'Basic realm="deploykit-testbed"'})
    auth = [matchers.header_matcher({"Authorization": basic("deploykit", "pw")})]
    rsps.add(responses.HEAD, f"{url}/v1", headers={"Docker-Content-Digest": DIGEST}, match=auth)
    rsps.add(responses.HEAD, f"{url}/v2", headers={"Docker-Content-Digest": ARM64}, match=auth)
    client = RegistryClient("127.0.0.1:5001", "org/app", "deploykit", "pw")
    assert client.resolve("v1") == DIGEST
    assert client.resolve("v2") == ARM64
    assert len(rsps.calls) == 3


def test_basic_challenge_without_credentials_asks_for_a_login(rsps: Any) -> None:
    rsps.add(responses.HEAD, "http://127.0.0.1:5001/v2/org/app/manifests/v1", status=401,
             headers={"WWW-Authenticate": 'Basic realm="deploykit-testbed"'})
    with pytest.raises(UnauthorizedError) as error:
        RegistryClient("127.0.0.1:5001", "org/app").resolve("v1")
    assert error.value.message == ("127.0.0.1:5001 requires a login to read "
                                   "127.0.0.1:5001/org/app:v1.")
    assert error.value.hint.startswith("Set `registry_username` and `registry_password`")


# -- typed errors -------------------------------------------------------------------------------
def test_404_is_manifest_unknown_and_find_returns_none(rsps: Any) -> None:
    add_challenge(rsps, url=f"{MANIFEST_URL}/v9.9.9")
    add_token(rsps)
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v9.9.9", status=404)
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v9.9.9", status=404)
    client = ghcr()
    assert client.find("v9.9.9") is None
    with pytest.raises(ManifestUnknownError) as error:
        client.resolve("v9.9.9")
    assert error.value.message == "ghcr.io/org/app:v9.9.9 does not exist in the registry."


def test_403_denied_names_the_ghcr_fix(rsps: Any) -> None:
    add_challenge(rsps)
    add_token(rsps)
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1.0.0", status=403)
    with pytest.raises(DeniedError) as error:
        ghcr().resolve("v1.0.0")
    assert error.value.message == ("ghcr.io accepted the credentials of octocat but denied pull "
                                   "access to ghcr.io/org/app:v1.0.0.")
    assert "Manage Actions access" in error.value.hint
    assert "`write:packages`" in error.value.hint


def test_denied_error_recognises_write_package_anywhere() -> None:
    error = registry_errors.denied_error("registry.example.com", "registry.example.com/org/app:v1",
                                  "DENIED: permission_denied: write_package")
    assert error.message == ("registry.example.com denied access to "
                             "registry.example.com/org/app:v1: DENIED: permission_denied: "
                             "write_package")
    assert "Manage Actions access" in error.hint
    generic = registry_errors.denied_error("registry.example.com", "x", "DENIED: nope")
    assert generic.hint.startswith("The credentials were accepted but do not allow this")


@pytest.mark.parametrize(("status", "error_type"), [
    (401, UnauthorizedError), (403, LoginRequiredError), (400, RegistryError),
    (405, RegistryError),
])
def test_no_other_error_is_ever_read_as_tag_absent(rsps: Any, status: int,
                                                   error_type: type[Exception]) -> None:
    rsps.add(responses.HEAD, "http://127.0.0.1:5000/v2/org/app/manifests/v1", status=status)
    with pytest.raises(error_type) as error:
        RegistryClient("127.0.0.1:5000", "org/app").find("v1")
    assert not isinstance(error.value, ManifestUnknownError)


def test_a_404_whose_reason_is_not_unknown_is_not_tag_absent(rsps: Any) -> None:
    rsps.add(responses.GET, "http://127.0.0.1:5000/v2/org/app/manifests/v1", status=404,
             json={"errors": [{"code": "UNSUPPORTED", "message": "not here"}]})
    with pytest.raises(RegistryError) as error:
        RegistryClient("127.0.0.1:5000", "org/app").manifest("v1")
    assert not isinstance(error.value, ManifestUnknownError)
    assert error.value.message == ("127.0.0.1:5000 answered 404 for 127.0.0.1:5000/org/app:v1: "
                                   "UNSUPPORTED: not here")


def test_unreachable_registry_is_never_tag_absent(rsps: Any, clock: FakeClock) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, body=requests.ConnectionError("Connection reset by peer"))
    with pytest.raises(RegistryUnreachableError) as error:
        RegistryClient("127.0.0.1:5000", "org/app", retry_seconds=5).find("v1")
    assert error.value.message == (
        "127.0.0.1:5000 did not answer for 127.0.0.1:5000/org/app:v1: ConnectionError: "
        "Connection reset by peer (gave up after 4 attempts).")
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_tls_errors_are_not_retried(rsps: Any, clock: FakeClock) -> None:
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1", body=requests.exceptions.SSLError("bad cert"))
    with pytest.raises(RegistryUnreachableError, match=r"TLS with ghcr\.io failed: bad cert"):
        ghcr().resolve("v1")
    assert (len(rsps.calls), clock.sleeps) == (1, [])


# -- retries -------------------------------------------------------------------------------------
def test_429_with_retry_after_seconds_then_success(rsps: Any, clock: FakeClock) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, status=429, headers={"Retry-After": "7"})
    rsps.add(responses.HEAD, url, headers={"Docker-Content-Digest": DIGEST})
    assert RegistryClient("127.0.0.1:5000", "org/app").resolve("v1") == DIGEST
    assert clock.sleeps == [7.0]


def test_5xx_then_success_backs_off(rsps: Any, clock: FakeClock) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, status=502)
    rsps.add(responses.HEAD, url, status=503)
    rsps.add(responses.HEAD, url, headers={"Docker-Content-Digest": DIGEST})
    assert RegistryClient("127.0.0.1:5000", "org/app").resolve("v1") == DIGEST
    assert clock.sleeps == [0.5, 1.0]


def test_retries_are_bounded_by_retry_seconds(rsps: Any, clock: FakeClock) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/tags/list"
    rsps.add(responses.GET, url, status=500)
    with pytest.raises(RegistryUnreachableError) as error:
        RegistryClient("127.0.0.1:5000", "org/app", retry_seconds=60).tags()
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert sum(clock.sleeps) <= 60
    assert len(rsps.calls) == 10
    assert error.value.message.endswith("HTTP 500 (gave up after 10 attempts).")


def test_retry_after_beyond_the_budget_gives_up_at_once(rsps: Any, clock: FakeClock) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, status=429, headers={"Retry-After": "120"})
    with pytest.raises(RegistryUnreachableError, match=r"HTTP 429 \(gave up after 1 attempts\)"):
        RegistryClient("127.0.0.1:5000", "org/app", retry_seconds=60).resolve("v1")
    assert clock.sleeps == []


def test_token_service_errors_are_retried_too(rsps: Any, clock: FakeClock) -> None:
    add_challenge(rsps)
    rsps.add(responses.GET, TOKEN_URL, status=503, headers={"Retry-After": "3"})
    add_token(rsps)  # the challenge is known now: the token first, then the request
    add_head(rsps)
    assert ghcr().resolve("v1.0.0") == DIGEST
    assert clock.sleeps == [3.0]


def test_each_retry_is_announced_with_the_wait_it_honours(rsps: Any, clock: FakeClock) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, status=503, headers={"Retry-After": "2"})
    rsps.add(responses.HEAD, url, status=429, headers={"Retry-After": "7"})
    rsps.add(responses.HEAD, url, status=502)
    rsps.add(responses.HEAD, url, body=requests.ConnectionError("Connection aborted."))
    rsps.add(responses.HEAD, url, headers={"Docker-Content-Digest": DIGEST})
    lines: list[str] = []
    client = RegistryClient("127.0.0.1:5000", "org/app", retry_seconds=30, on_retry=lines.append)
    assert client.resolve("v1") == DIGEST
    assert clock.sleeps == [2.0, 7.0, 2.0, 4.0]
    what = "127.0.0.1:5000/org/app:v1"
    assert lines == [
        f"Registry 127.0.0.1:5000 answered 503 for {what}; retrying in 2.0 s (attempt 2 of at "
        "most 7).",
        f"Registry 127.0.0.1:5000 answered 429 for {what}; retrying in 7.0 s (attempt 3 of at "
        "most 6).",
        f"Registry 127.0.0.1:5000 answered 502 for {what}; retrying in 2.0 s (attempt 4 of at "
        "most 6).",
        f"Registry 127.0.0.1:5000 did not answer for {what} (ConnectionError); retrying in "
        "4.0 s (attempt 5 of at most 6).",
    ]


def test_the_resolve_command_prints_the_retries(
        rsps: Any, clock: FakeClock, capsys: pytest.CaptureFixture[str]) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, status=503)
    rsps.add(responses.HEAD, url, headers={"Docker-Content-Digest": DIGEST})
    assert main(["resolve", "127.0.0.1:5000/org/app:v1"]) == 0
    assert ("Registry 127.0.0.1:5000 answered 503 for 127.0.0.1:5000/org/app:v1; retrying in "
            "0.5 s (attempt 2 of at most 10).") in capsys.readouterr().err.splitlines()


def test_parse_retry_after() -> None:
    now = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("30", now) == 30.0
    assert parse_retry_after("Fri, 27 Nov 2026 12:00:45 GMT", now) == 45.0
    assert parse_retry_after("Fri, 27 Nov 2026 11:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_retry_after_as_an_http_date_is_honoured(rsps: Any, clock: FakeClock) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    soon = format_datetime(datetime.now(UTC) + timedelta(seconds=6), usegmt=True)
    rsps.add(responses.HEAD, url, status=503, headers={"Retry-After": soon})
    far = "Fri, 01 Jan 2100 00:00:00 GMT"
    rsps.add(responses.HEAD, url, status=503, headers={"Retry-After": far})
    with pytest.raises(RegistryUnreachableError):
        RegistryClient("127.0.0.1:5000", "org/app").resolve("v1")
    assert len(clock.sleeps) == 1  # then the next date is decades away: beyond any budget
    assert 4.0 <= clock.sleeps[0] <= 6.0


# -- tags ------------------------------------------------------------------------------------------
def test_tags_follow_link_headers_across_pages(rsps: Any) -> None:
    add_challenge(rsps, responses.GET, f"{GHCR}/v2/org/app/tags/list")
    add_token(rsps)
    pages = [({"n": "1000"}, ["a", "b"], "/v2/org/app/tags/list?last=b&n=2"),
             ({"last": "b", "n": "2"}, ["c", "d"], "/v2/org/app/tags/list?last=d&n=2"),
             ({"last": "d", "n": "2"}, ["e", "f"], "/v2/org/app/tags/list?last=f&n=2"),
             ({"last": "f", "n": "2"}, ["g"], None)]
    for query, tags, link in pages:
        headers = {"Link": f'<{link}>; rel="next"'} if link else {}
        rsps.add(responses.GET, f"{GHCR}/v2/org/app/tags/list",
                 json={"name": "org/app", "tags": tags}, headers=headers,
                 match=[matchers.query_param_matcher(query),
                        matchers.header_matcher({"Authorization": "Bearer tok-1"})])
    assert ghcr().tags() == ["a", "b", "c", "d", "e", "f", "g"]
    assert len(rsps.calls) == 6


def test_tags_of_a_new_repository_are_empty(rsps: Any) -> None:
    rsps.add(responses.GET, "http://127.0.0.1:5000/v2/org/app/tags/list", status=404,
             json={"errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known"}]})
    rsps.add(responses.GET, "http://127.0.0.1:5000/v2/org/other/tags/list",
             json={"name": "org/other", "tags": None})
    assert RegistryClient("127.0.0.1:5000", "org/app").tags() == []
    assert RegistryClient("127.0.0.1:5000", "org/other").tags() == []


def test_tags_404_without_name_unknown_is_an_error(rsps: Any) -> None:
    rsps.add(responses.GET, "http://127.0.0.1:5000/v2/org/app/tags/list", status=404,
             body="<html>Not Found</html>")
    with pytest.raises(RegistryError) as error:
        RegistryClient("127.0.0.1:5000", "org/app").tags()
    assert not isinstance(error.value, ManifestUnknownError)
    assert error.value.message == ("127.0.0.1:5000 answered 404 for 127.0.0.1:5000/org/app "
                                   "(tag list): <html>Not Found</html>")


def test_tags_pagination_loop_is_an_error(rsps: Any) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/tags/list"
    rsps.add(responses.GET, url, json={"tags": ["a"]},
             headers={"Link": '</v2/org/app/tags/list?last=a&n=1>; rel="next"'})
    with pytest.raises(RegistryError, match="sent the same tag page twice"):
        RegistryClient("127.0.0.1:5000", "org/app").tags()


# -- manifests, platforms, labels ----------------------------------------------------------------
def index_body() -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": AMD64, "size": 1,
         "platform": {"os": "linux", "architecture": "amd64"}},
        {"mediaType": OCI_MANIFEST, "digest": ARM64, "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        {"mediaType": OCI_MANIFEST, "digest": ATTESTATION, "size": 1,
         "platform": {"os": "unknown", "architecture": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": AMD64}},
    ]}


def image_body(config: str = CONFIG) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": config, "size": 1}, "layers": []}


def digest_of(body: dict[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(json.dumps(body).encode()).hexdigest()


AMD64 = digest_of(image_body(CONFIG))
ARM64 = digest_of(image_body(ARM_CONFIG))


BASE = "http://127.0.0.1:5000/v2/org/app"


def add_manifest(rsps: Any, reference: str, body: dict[str, Any], digest: str = DIGEST,
                 content_type: str = OCI_INDEX) -> None:
    rsps.add(responses.GET, f"{BASE}/manifests/{reference}", body=json.dumps(body),
             headers={"Docker-Content-Digest": digest, "Content-Type": content_type},
             match=[matchers.header_matcher({"Accept": MANIFEST_ACCEPT})])


def add_config(rsps: Any, digest: str, arch: str, labels: dict[str, str] | None) -> None:
    rsps.add(responses.GET, f"{BASE}/blobs/{digest}", json={
        "os": "linux", "architecture": arch, "config": {"Labels": labels}})


def test_manifest_reads_media_type_and_digest(rsps: Any) -> None:
    add_manifest(rsps, "v1", index_body())
    manifest = RegistryClient("127.0.0.1:5000", "org/app").manifest("v1")
    assert (manifest.media_type, manifest.digest, manifest.is_index) == (OCI_INDEX, DIGEST, True)
    assert manifest.body == index_body()


def test_manifest_by_digest_is_verified(rsps: Any) -> None:
    body = json.dumps(image_body()).encode()
    real = "sha256:" + hashlib.sha256(body).hexdigest()
    rsps.add(responses.GET, f"{BASE}/manifests/{real}", body=body)
    rsps.add(responses.GET, f"{BASE}/manifests/{DIGEST}", body=body)
    client = RegistryClient("127.0.0.1:5000", "org/app")
    assert client.manifest(f"v1@{real}").digest == real
    with pytest.raises(RegistryError, match=f"whose digest is {real}"):
        client.manifest(DIGEST)


def test_platforms_of_an_index_skip_attestations(rsps: Any) -> None:
    add_manifest(rsps, "v1", index_body())
    assert RegistryClient("127.0.0.1:5000", "org/app").platforms("v1") == {
        "linux/amd64": AMD64, "linux/arm64/v8": ARM64}


def test_platforms_of_a_single_manifest_come_from_its_config(rsps: Any) -> None:
    add_manifest(rsps, "v1", image_body(), AMD64, DOCKER_MANIFEST)
    add_config(rsps, CONFIG, "amd64", None)
    assert RegistryClient("127.0.0.1:5000", "org/app").platforms("v1") == {"linux/amd64": AMD64}


def test_labels_of_an_index_are_those_of_its_first_image(rsps: Any) -> None:
    add_manifest(rsps, "v1", index_body())
    add_manifest(rsps, AMD64, image_body(), AMD64, OCI_MANIFEST)
    add_config(rsps, CONFIG, "amd64", {"org.opencontainers.image.revision": "abc"})
    assert RegistryClient("127.0.0.1:5000", "org/app").labels("v1") == {
        "org.opencontainers.image.revision": "abc"}


def test_labels_of_a_given_platform(rsps: Any) -> None:
    add_manifest(rsps, "v1", index_body())
    add_manifest(rsps, ARM64, image_body(ARM_CONFIG), ARM64, OCI_MANIFEST)
    rsps.add(responses.GET, f"{BASE}/blobs/{ARM_CONFIG}", json={
        "os": "linux", "architecture": "arm64", "variant": "v8", "config": {}})
    assert RegistryClient("127.0.0.1:5000", "org/app").labels("v1", "linux/arm64/v8") == {}


def test_labels_of_a_missing_platform_list_the_platforms(rsps: Any) -> None:
    add_manifest(rsps, "v1", index_body())
    with pytest.raises(ManifestUnknownError) as error:
        RegistryClient("127.0.0.1:5000", "org/app").labels("v1", "linux/s390x")
    assert error.value.message == "127.0.0.1:5000/org/app:v1 has no image for platform linux/s390x."
    assert error.value.hint == "Its platforms: linux/amd64, linux/arm64/v8."


def test_what_a_digest_names_is_read_once_per_client(rsps: Any) -> None:
    """A manifest by digest and an image config cannot change: publish and verify read
    the same image's manifest and labels several times, the registry answers once."""
    add_manifest(rsps, AMD64, image_body(), AMD64, OCI_MANIFEST)
    add_config(rsps, CONFIG, "amd64", {"org.opencontainers.image.created": "now"})
    client = RegistryClient("127.0.0.1:5000", "org/app")
    media_type, content = client.manifest_bytes(AMD64)
    assert client.labels(AMD64) == {"org.opencontainers.image.created": "now"}
    assert client.labels(AMD64) == {"org.opencontainers.image.created": "now"}
    assert client.platforms(AMD64) == {"linux/amd64": AMD64}
    assert client.manifest_bytes(AMD64) == (media_type, content) == (
        DOCKER_MANIFEST, json.dumps(image_body()).encode())
    assert [(call.request.method, call.request.url.rsplit("/", 2)[-2]) for call in rsps.calls] \
        == [("GET", "manifests"), ("GET", "blobs")]


def test_a_tag_is_read_again_every_time(rsps: Any) -> None:
    """Tags move (another build may publish meanwhile): never cached."""
    add_manifest(rsps, "staging-latest", image_body(), AMD64, DOCKER_MANIFEST)
    add_manifest(rsps, "staging-latest", image_body(ARM_CONFIG), ARM64, DOCKER_MANIFEST)
    client = RegistryClient("127.0.0.1:5000", "org/app")
    assert client.manifest("staging-latest").digest == AMD64
    assert client.manifest("staging-latest").digest == ARM64
    assert len(rsps.calls) == 2


def test_a_manifest_of_another_digest_is_not_kept(rsps: Any) -> None:
    for _ in range(2):
        rsps.add(responses.GET, f"{BASE}/manifests/{DIGEST}", body=b'{"mediaType":"x"}')
    client = RegistryClient("127.0.0.1:5000", "org/app")
    for _ in range(2):
        with pytest.raises(RegistryError, match="with another digest"):
            client.manifest_bytes(DIGEST)
    assert len(rsps.calls) == 2


def test_head_without_digest_header_falls_back_to_the_body(rsps: Any) -> None:
    body = json.dumps(image_body()).encode()
    rsps.add(responses.HEAD, f"{BASE}/manifests/v1")
    rsps.add(responses.GET, f"{BASE}/manifests/v1", body=body)
    digest = RegistryClient("127.0.0.1:5000", "org/app").resolve("v1")
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()


def test_bad_references_are_input_errors() -> None:
    with pytest.raises(InputError, match="is neither a tag nor a sha256 digest"):
        RegistryClient("127.0.0.1:5000", "org/app").resolve("../v1")


# -- deploykit resolve -------------------------------------------------------------------------
def test_resolve_command_uses_the_settings_credentials_for_its_registry(
    rsps: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    add_challenge(rsps)
    add_token(rsps, auth=basic("octocat", "ghp_secret"))
    add_head(rsps)
    env = {"INPUT_REGISTRY_USERNAME": "octocat", "INPUT_REGISTRY_PASSWORD": "ghp_secret",
           "INPUT_IMAGE_REPO": "org/other"}
    assert main(["resolve", "ghcr.io/org/app:v1.0.0"], env=env) == 0
    captured = capsys.readouterr()
    assert captured.out == f"digest={DIGEST}\nimage=ghcr.io/org/app@{DIGEST}\n"
    assert captured.err == f"ghcr.io/org/app:v1.0.0 -> {DIGEST}\n"


def test_resolve_command_is_anonymous_on_another_registry(rsps: Any) -> None:
    rsps.add(responses.HEAD, "http://127.0.0.1:5000/v2/org/app/manifests/v1",
             headers={"Docker-Content-Digest": DIGEST})
    settings = load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "org/app",
                              "INPUT_REGISTRY_USERNAME": "u", "INPUT_REGISTRY_PASSWORD": "p"})
    actions = Actions({})
    resolve_command(settings, actions, "127.0.0.1:5000/org/app:v1")
    assert actions.outputs == {"digest": DIGEST, "image": f"127.0.0.1:5000/org/app@{DIGEST}"}
    assert "Authorization" not in rsps.calls[0].request.headers


def test_resolve_command_needs_a_tag_or_digest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resolve", "ghcr.io/org/app"], env={"INPUT_IMAGE_REPO": "org/app"}) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "Input 'reference': 'ghcr.io/org/app' names no tag or digest." in captured.err


# -- writes (Build & Push) -----------------------------------------------------------------
PUSH_CHALLENGE = ('Bearer realm="https://ghcr.io/token",service="ghcr.io",'
                  'scope="repository:org/app:pull,push"')


def test_manifest_put_asks_for_a_push_token_once_and_sends_the_exact_bytes(rsps: Any) -> None:
    body = b'{"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}'
    add_challenge(rsps, responses.PUT, f"{MANIFEST_URL}/sha-0123456", PUSH_CHALLENGE)
    add_token(rsps, "push-tok", scope="repository:org/app:pull,push")
    for tag in ("sha-0123456", "test-20261130-1"):
        rsps.add(responses.PUT, f"{MANIFEST_URL}/{tag}", status=201, match=[
            matchers.header_matcher({"Authorization": "Bearer push-tok",
                                     "Content-Type": OCI_INDEX})])
    client = ghcr()
    client.put_manifest("sha-0123456", body, OCI_INDEX)
    client.put_manifest("test-20261130-1", body, OCI_INDEX)
    puts = [call.request for call in rsps.calls if call.request.method == "PUT"]
    assert [p.body for p in puts] == [body] * 3  # the challenged one, then two with the token
    assert len([c for c in rsps.calls if c.request.url.startswith(TOKEN_URL)]) == 1


def test_blob_upload_follows_a_relative_location_and_retries_the_pair_on_503(
    rsps: Any, tmp_path: Any, clock: FakeClock,
) -> None:
    blob = tmp_path / "layer"
    blob.write_bytes(b"layer-bytes")
    digest = "sha256:" + hashlib.sha256(b"layer-bytes").hexdigest()
    base = "http://127.0.0.1:5001/v2/org/app/blobs/uploads/"
    auth = "Basic " + base64.b64encode(b"deploykit:pw").decode()
    rsps.add(responses.POST, base, status=401, headers={"WWW-Authenticate": 'Basic realm="r"'})
    for attempt, status in (("u1", 503), ("u2", 201)):
        rsps.add(responses.POST, base, status=202,
                 headers={"Location": f"/v2/org/app/blobs/uploads/{attempt}?_state=s"},
                 match=[matchers.header_matcher({"Authorization": auth})])
        rsps.add(responses.PUT, f"{base}{attempt}", status=status, match=[
            matchers.query_param_matcher({"_state": "s", "digest": digest}),
            matchers.header_matcher({"Authorization": auth})])
    RegistryClient("127.0.0.1:5001", "org/app", "deploykit", "pw").upload_blob(digest, blob)
    uploads = [c.request for c in rsps.calls if c.request.method == "PUT"]
    assert len(uploads) == 2
    assert len(clock.sleeps) == 1


def test_blob_exists_is_a_head_and_404_means_absent(rsps: Any) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/blobs"
    rsps.add(responses.HEAD, f"{url}/{DIGEST}", status=200)
    rsps.add(responses.HEAD, f"{url}/{CONFIG}", status=404)
    client = RegistryClient("127.0.0.1:5000", "org/app")
    assert (client.blob_exists(DIGEST), client.blob_exists(CONFIG)) == (True, False)


def test_manifest_bytes_refuses_bytes_of_another_digest(rsps: Any) -> None:
    rsps.add(responses.GET, f"http://127.0.0.1:5000/v2/org/app/manifests/{DIGEST}",
             body=b'{"mediaType":"x"}', headers={"Content-Type": OCI_INDEX})
    with pytest.raises(RegistryError) as info:
        RegistryClient("127.0.0.1:5000", "org/app").manifest_bytes(DIGEST)
    assert info.value.message == (f"127.0.0.1:5000 sent a manifest for 127.0.0.1:5000/org/app@"
                                  f"{DIGEST} with another digest.")


# -- connection failures: fail fast, name the cause (issue 23) -----------------------------------
def socket_error(kind: str, number: int, text: str) -> OSError:
    return socket.gaierror(number, text) if kind == "gaierror" else OSError(number, text)


def refused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_refused_connection_fails_after_two_attempts_naming_host_cause_and_fix(
    clock: FakeClock,
) -> None:
    port = refused_port()  # a real socket: nothing listens there
    lines: list[str] = []
    with pytest.raises(RegistryUnreachableError) as error:
        RegistryClient(f"127.0.0.1:{port}", "org/app", on_retry=lines.append).tags()
    assert error.value.title == "Registry refused the connection"
    assert error.value.message == (
        f"Nothing accepts connections at 127.0.0.1:{port}: connection refused "
        f"(127.0.0.1:{port}/org/app (tag list), 2 attempts).")
    assert "a typo in the host or the port" in error.value.hint
    assert clock.sleeps == [0.5]
    assert lines == [f"Registry 127.0.0.1:{port} did not answer for 127.0.0.1:{port}/org/app "
                     "(tag list) (connection refused); retrying in 0.5 s (attempt 2 of at "
                     "most 2)."]


@pytest.mark.parametrize(("failure", "title", "message", "hint"), [
    (requests.ConnectionError(socket_error("gaierror", -2, "Name or service not known")),
     "Registry name not found",
     "The name ghcr.io does not resolve: no DNS answer for it (ghcr.io/org/app:v1, 2 attempts).",
     "no network or no DNS"),
    (requests.ConnectionError("HTTPSConnectionPool(host='ghcr.io', port=443): Max retries "
                              "exceeded (Caused by NameResolutionError(\"Failed to resolve "
                              "'ghcr.io' ([Errno -3] Temporary failure in name resolution)\"))"),
     "Registry name not found",
     "The name ghcr.io does not resolve: no DNS answer for it (ghcr.io/org/app:v1, 2 attempts).",
     "a typo: a host such as ghcr.io"),
    (requests.ConnectionError(OSError(113, "No route to host")), "No route to the registry",
     "No network route to ghcr.io: the host or its network is unreachable "
     "(ghcr.io/org/app:v1, 2 attempts).", "a proxy it must use (HTTPS_PROXY)"),
    (requests.ConnectionError(OSError(101, "Network is unreachable")),
     "No route to the registry",
     "No network route to ghcr.io: the host or its network is unreachable "
     "(ghcr.io/org/app:v1, 2 attempts).", "check its network and firewall"),
    (requests.exceptions.ProxyError("Unable to connect to proxy"), "Proxy error",
     "The proxy failed the connection to ghcr.io (ghcr.io/org/app:v1, 2 attempts): "
     "ProxyError: Unable to connect to proxy", "NO_PROXY"),
])
def test_connection_failures_no_wait_cures_are_tried_twice(
    rsps: Any, clock: FakeClock, failure: Exception, title: str, message: str, hint: str,
) -> None:
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1", body=failure)
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1", body=failure)
    with pytest.raises(RegistryUnreachableError) as error:
        ghcr().resolve("v1")
    assert (error.value.title, error.value.message) == (title, message)
    assert hint in error.value.hint
    assert clock.sleeps == [0.5]


def test_an_untrusted_certificate_fails_at_once_and_names_the_ca_fix(
    rsps: Any, clock: FakeClock,
) -> None:
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1", body=requests.exceptions.SSLError(
        "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate"))
    with pytest.raises(RegistryUnreachableError) as error:
        ghcr().resolve("v1")
    assert error.value.title == "Registry TLS error"
    assert error.value.message.startswith("TLS with ghcr.io failed: [SSL: CERTIFICATE_VERIFY")
    assert "The certificate of ghcr.io is not trusted here" in error.value.hint
    assert "REQUESTS_CA_BUNDLE" in error.value.hint
    assert (len(rsps.calls), clock.sleeps) == (1, [])


@pytest.mark.parametrize("failure", [
    requests.ConnectTimeout("connect timed out"), requests.ReadTimeout("read timed out"),
    requests.ConnectionError("('Connection aborted.', RemoteDisconnected('closed'))"),
])
def test_timeouts_and_dropped_connections_keep_the_bounded_retries(
    rsps: Any, clock: FakeClock, failure: Exception,
) -> None:
    url = "http://127.0.0.1:5000/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, body=failure)
    with pytest.raises(RegistryUnreachableError) as error:
        RegistryClient("127.0.0.1:5000", "org/app", retry_seconds=60).resolve("v1")
    assert clock.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0, 10.0]
    assert error.value.message.endswith("(gave up after 10 attempts).")


def test_a_refused_token_service_is_named_too(rsps: Any, clock: FakeClock) -> None:
    add_challenge(rsps)
    refused = requests.ConnectionError(OSError(111, "Connection refused"))
    rsps.add(responses.GET, TOKEN_URL, body=refused)
    rsps.add(responses.GET, TOKEN_URL, body=refused)
    with pytest.raises(RegistryUnreachableError) as error:
        ghcr().resolve("v1.0.0")
    assert error.value.message.startswith("Nothing accepts connections at ghcr.io: ")


# -- the token dance: scopes, expiry, one token for the threads --------------------------------
def add_push_token(rsps: Any, token: str, expires_in: int | None = None) -> None:
    body: dict[str, Any] = {"token": token}
    if expires_in is not None:
        body["expires_in"] = expires_in
    rsps.add(responses.GET, TOKEN_URL, json=body, match=[matchers.query_param_matcher(
        {"scope": "repository:org/app:pull,push", "service": "ghcr.io"})])


def blob_head(rsps: Any, digest: str, token: str, status: int = 200) -> None:
    rsps.add(responses.HEAD, f"{GHCR}/v2/org/app/blobs/{digest}", status=status,
             match=[matchers.header_matcher({"Authorization": f"Bearer {token}"})])


def test_an_upload_asks_for_pull_push_even_when_challenged_with_pull(
    rsps: Any, tmp_path: Path,
) -> None:
    """A blob HEAD is challenged with `pull`; the token asked for is the one uploads need."""
    add_challenge(rsps, url=f"{GHCR}/v2/org/app/blobs/{DIGEST}")
    add_push_token(rsps, "push")
    blob_head(rsps, DIGEST, "push")
    rsps.add(responses.POST, f"{GHCR}/v2/org/app/blobs/uploads/", status=202,
             headers={"Location": "/v2/org/app/blobs/uploads/u1"},
             match=[matchers.header_matcher({"Authorization": "Bearer push"})])
    rsps.add(responses.PUT, f"{GHCR}/v2/org/app/blobs/uploads/u1", status=201,
             match=[matchers.header_matcher({"Authorization": "Bearer push"})])
    client = ghcr()
    assert client.blob_exists(DIGEST)
    client.upload_blob(DIGEST, _layer(tmp_path))
    assert [c.request.method for c in rsps.calls] == ["HEAD", "GET", "HEAD", "POST", "PUT"]


def _layer(folder: Path) -> Path:
    path = folder / "layer"
    path.write_bytes(b"x")
    return path


def test_once_the_challenge_is_known_the_push_token_comes_before_the_first_upload(
    rsps: Any,
) -> None:
    add_challenge(rsps, responses.GET, f"{GHCR}/v2/org/app/tags/list")
    add_token(rsps, "pull")
    rsps.add(responses.GET, f"{GHCR}/v2/org/app/tags/list", json={"tags": ["a"]},
             match=[matchers.header_matcher({"Authorization": "Bearer pull"})])
    add_push_token(rsps, "push")
    blob_head(rsps, DIGEST, "push", 404)
    client = ghcr()
    assert client.tags() == ["a"]
    assert client.blob_exists(DIGEST) is False
    assert [c.response.status_code for c in rsps.calls] == [401, 200, 200, 200, 404]


def test_a_token_is_renewed_before_expires_in_runs_out(rsps: Any, clock: FakeClock) -> None:
    add_challenge(rsps, url=f"{GHCR}/v2/org/app/blobs/{DIGEST}")
    add_push_token(rsps, "first", expires_in=100)
    blob_head(rsps, DIGEST, "first")
    blob_head(rsps, CONFIG, "first")
    add_push_token(rsps, "second", expires_in=100)
    blob_head(rsps, ARM_CONFIG, "second")
    client = ghcr()
    assert client.blob_exists(DIGEST)
    clock.now += 69  # within the lifetime less the margin (half of it, at most 30 s)
    assert client.blob_exists(CONFIG)
    clock.now += 2  # 71 s of 100: renewed before it is sent, never a 401
    assert client.blob_exists(ARM_CONFIG)
    assert [c.response.status_code for c in rsps.calls] == [401, 200, 200, 200, 200, 200]


def test_a_token_without_expires_in_lives_the_default_60_seconds(
    rsps: Any, clock: FakeClock,
) -> None:
    add_challenge(rsps, url=f"{GHCR}/v2/org/app/blobs/{DIGEST}")
    add_push_token(rsps, "first")
    blob_head(rsps, DIGEST, "first")
    add_push_token(rsps, "second")
    blob_head(rsps, CONFIG, "second")
    client = ghcr()
    assert client.blob_exists(DIGEST)
    clock.now += 31
    assert client.blob_exists(CONFIG)


def test_a_403_to_an_anonymous_request_is_answered_with_the_token_first(rsps: Any) -> None:
    """A registry that answers 403 instead of 401 (no challenge): deploykit asks /v2/ how to
    authenticate and tries with the push token before it calls anything "denied"."""
    rsps.add(responses.HEAD, f"{GHCR}/v2/org/app/blobs/{DIGEST}", status=403)
    rsps.add(responses.GET, f"{GHCR}/v2/", status=401,
             headers={"WWW-Authenticate": 'Bearer realm="https://ghcr.io/token",service="ghcr.io"'})
    add_push_token(rsps, "push")
    blob_head(rsps, DIGEST, "push")
    assert ghcr().blob_exists(DIGEST)


def test_a_403_to_a_token_of_too_small_a_scope_is_retried_with_the_push_token(
    rsps: Any, tmp_path: Path,
) -> None:
    """The old client cached the `pull` token as the push token: a registry answering
    403 then made a user who can push see "denied"."""
    add_challenge(rsps, url=f"{GHCR}/v2/org/app/blobs/{DIGEST}")
    add_push_token(rsps, "push")
    blob_head(rsps, DIGEST, "push", 404)
    rsps.add(responses.POST, f"{GHCR}/v2/org/app/blobs/uploads/", status=202,
             headers={"Location": "/v2/org/app/blobs/uploads/u1"},
             match=[matchers.header_matcher({"Authorization": "Bearer push"})])
    rsps.add(responses.PUT, f"{GHCR}/v2/org/app/blobs/uploads/u1", status=201)
    client = ghcr()
    assert client.blob_exists(DIGEST) is False
    client.upload_blob(DIGEST, _layer(tmp_path))


def test_a_stale_token_answered_with_403_is_renewed_once_then_denied(rsps: Any) -> None:
    add_challenge(rsps, url=f"{GHCR}/v2/org/app/blobs/{DIGEST}")
    add_push_token(rsps, "push")
    blob_head(rsps, DIGEST, "push")
    blob_head(rsps, CONFIG, "push", 403)
    add_push_token(rsps, "push-again")
    rsps.add(responses.HEAD, f"{GHCR}/v2/org/app/blobs/{CONFIG}", status=403,
             match=[matchers.header_matcher({"Authorization": "Bearer push-again"})])
    client = ghcr()
    assert client.blob_exists(DIGEST)
    with pytest.raises(DeniedError) as error:
        client.blob_exists(CONFIG)
    assert error.value.message == (f"ghcr.io accepted the credentials of octocat but denied "
                                   f"push access to ghcr.io/org/app@{CONFIG} (blob).")


def test_a_challenge_for_a_wider_scope_is_asked_for_with_the_needed_one(rsps: Any) -> None:
    add_challenge(rsps)
    add_token(rsps, "pull")
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1.0.0", status=401, headers={
        "WWW-Authenticate": 'Bearer realm="https://ghcr.io/token",service="ghcr.io",'
        'scope="repository:org/base:pull",error="insufficient_scope"'})
    rsps.add(responses.GET, TOKEN_URL, json={"token": "both"}, match=[
        matchers.query_string_matcher("scope=repository%3Aorg%2Fapp%3Apull&scope=repository"
                                      "%3Aorg%2Fbase%3Apull&service=ghcr.io")])
    add_head(rsps, token="both")
    assert ghcr().resolve("v1.0.0") == DIGEST


# -- bad credentials, no permission, unknown repository ----------------------------------------
def test_bad_credentials_are_the_token_service_refusing_them(rsps: Any) -> None:
    add_challenge(rsps)
    rsps.add(responses.GET, TOKEN_URL, status=401, json=UNAUTHORIZED_BODY)
    with pytest.raises(BadCredentialsError) as error:
        ghcr().resolve("v1.0.0")
    assert error.value.title == "Registry authentication failed"
    assert "wrong, expired or revoked" in error.value.hint
    assert "`read:packages` (`write:packages` to build)" in error.value.hint


def test_basic_credentials_refused_are_bad_credentials(rsps: Any) -> None:
    url = "http://127.0.0.1:5001/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, url, status=401,
             headers={"WWW-Authenticate": 'Basic realm="deploykit-testbed"'})
    rsps.add(responses.HEAD, url, status=401,
             headers={"WWW-Authenticate": 'Basic realm="deploykit-testbed"'})
    with pytest.raises(BadCredentialsError) as error:
        RegistryClient("127.0.0.1:5001", "org/app", "deploykit", "wrong").resolve("v1")
    assert error.value.message == ("127.0.0.1:5001 rejected the credentials of deploykit for "
                                   "127.0.0.1:5001/org/app:v1.")
    assert "GHCR" not in error.value.hint


def test_no_push_permission_on_ghcr_names_the_three_fixes(rsps: Any, tmp_path: Path) -> None:
    add_challenge(rsps, url=f"{GHCR}/v2/org/app/blobs/{DIGEST}")
    add_push_token(rsps, "pull-only")
    blob_head(rsps, DIGEST, "pull-only", 404)
    rsps.add(responses.POST, f"{GHCR}/v2/org/app/blobs/uploads/", status=401, headers={
        "WWW-Authenticate": PUSH_CHALLENGE + ',error="insufficient_scope"'},
        json={"errors": [{"code": "DENIED", "message": "permission_denied: write_package"}]})
    client = ghcr()
    assert client.blob_exists(DIGEST) is False
    with pytest.raises(DeniedError) as error:
        client.upload_blob(DIGEST, _layer(tmp_path))
    assert error.value.message == (
        f"ghcr.io accepted the credentials of octocat but denied push access to "
        f"ghcr.io/org/app@{DIGEST} (blob upload): DENIED: permission_denied: write_package "
        "(insufficient_scope)")
    for fix in ("`write:packages`", "Manage Actions access", "`permissions: packages: write`"):
        assert fix in error.value.hint
    assert len([c for c in rsps.calls if c.request.url.startswith(TOKEN_URL)]) == 1


def test_no_permission_elsewhere_names_the_account_and_the_repository(rsps: Any) -> None:
    add_challenge(rsps, responses.GET, "http://127.0.0.1:5002/v2/denied/x/tags/list",
                  'Bearer realm="http://127.0.0.1:5003/token",service="testbed",'
                  'scope="repository:denied/x:pull"')
    rsps.add(responses.GET, "http://127.0.0.1:5003/token", json={"token": "nothing"})
    add_challenge(rsps, responses.GET, "http://127.0.0.1:5002/v2/denied/x/tags/list",
                  'Bearer realm="http://127.0.0.1:5003/token",service="testbed",'
                  'scope="repository:denied/x:pull",error="insufficient_scope"')
    with pytest.raises(DeniedError) as error:
        RegistryClient("127.0.0.1:5002", "denied/x", "reader", "pw").tags()
    assert error.value.message.startswith("127.0.0.1:5002 accepted the credentials of reader "
                                          "but denied pull access to 127.0.0.1:5002/denied/x")
    assert "check the account's permissions" in error.value.hint
    assert "`image_repo`" in error.value.hint


def test_without_credentials_a_refused_token_is_a_login_required(rsps: Any) -> None:
    add_challenge(rsps, url=f"{GHCR}/v2/org/app/blobs/{DIGEST}")
    rsps.add(responses.GET, TOKEN_URL, status=401, json=UNAUTHORIZED_BODY)
    with pytest.raises(LoginRequiredError) as error:
        RegistryClient("ghcr.io", "org/app").blob_exists(DIGEST)
    assert error.value.message.startswith("ghcr.io requires a login to push to ghcr.io/org/app@")


def test_an_unknown_repository_is_its_own_error_but_find_says_none(rsps: Any) -> None:
    url = "http://127.0.0.1:5000/v2/org/typo"
    rsps.add(responses.HEAD, f"{url}/manifests/v1", status=404)
    rsps.add(responses.GET, f"{url}/tags/list", status=404, json={"errors": [
        {"code": "NAME_UNKNOWN", "message": "repository name not known to registry"}]})
    rsps.add(responses.HEAD, f"{url}/manifests/v1", status=404)
    client = RegistryClient("127.0.0.1:5000", "org/typo")
    with pytest.raises(RepositoryUnknownError) as error:
        client.resolve("v1")
    assert error.value.message == ("127.0.0.1:5000/org/typo does not exist: 127.0.0.1:5000 "
                                   "knows no repository org/typo (so not "
                                   "127.0.0.1:5000/org/typo:v1).")
    assert "`image_repo`" in error.value.hint
    assert client.find("v1") is None
    assert len(rsps.calls) == 3  # find asks no more than the HEAD


def test_a_missing_tag_of_an_existing_repository_stays_manifest_unknown(rsps: Any) -> None:
    url = "http://127.0.0.1:5000/v2/org/app"
    rsps.add(responses.HEAD, f"{url}/manifests/v9", status=404)
    rsps.add(responses.GET, f"{url}/tags/list", json={"tags": ["v1"]})
    with pytest.raises(ManifestUnknownError) as error:
        RegistryClient("127.0.0.1:5000", "org/app").resolve("v9")
    assert not isinstance(error.value, RepositoryUnknownError)


# -- where credentials may go ---------------------------------------------------------------------
@pytest.mark.parametrize(("registry_host", "realm"), [
    ("ghcr.io", "http://auth.example.com/token"),
    ("ghcr.io", "http://ghcr.io/token"),
    ("127.0.0.1:5002", "http://10.1.2.3:5003/token"),
])
def test_credentials_never_go_to_a_plain_http_realm_elsewhere(
    rsps: Any, registry_host: str, realm: str,
) -> None:
    base = RegistryClient(registry_host, "org/app").base_url
    rsps.add(responses.HEAD, f"{base}/v2/org/app/manifests/v1", status=401,
             headers={"WWW-Authenticate": f'Bearer realm="{realm}",service="x"'})
    with pytest.raises(InsecureRealmError) as error:
        RegistryClient(registry_host, "org/app", "octocat", "secret").resolve("v1")
    assert error.value.message == (
        f"{registry_host} sends its token requests for {registry_host}/org/app:v1 to {realm}, "
        "over plain HTTP on another host: deploykit does not send the credentials of "
        "octocat there.")
    assert len(rsps.calls) == 1  # the token service never saw the password


def test_a_plain_http_realm_on_the_loopback_registry_host_is_allowed(rsps: Any) -> None:
    rsps.add(responses.HEAD, "http://127.0.0.1:5002/v2/org/app/manifests/v1", status=401,
             headers={"WWW-Authenticate": 'Bearer realm="http://127.0.0.1:5003/token",'
                      'service="testbed"'})
    rsps.add(responses.GET, "http://127.0.0.1:5003/token", json={"token": "t"},
             match=[matchers.header_matcher({"Authorization": basic("u", "pw")})])
    rsps.add(responses.HEAD, "http://127.0.0.1:5002/v2/org/app/manifests/v1",
             headers={"Docker-Content-Digest": DIGEST})
    assert RegistryClient("127.0.0.1:5002", "org/app", "u", "pw").resolve("v1") == DIGEST


def test_an_anonymous_token_may_come_from_a_plain_http_realm(rsps: Any) -> None:
    rsps.add(responses.HEAD, f"{MANIFEST_URL}/v1", status=401,
             headers={"WWW-Authenticate": 'Bearer realm="http://auth.example.com/token"'})
    rsps.add(responses.GET, "http://auth.example.com/token", json={"token": "anon"})
    add_head(rsps, "v1", token="anon")
    assert RegistryClient("ghcr.io", "org/app").resolve("v1") == DIGEST
