"""Publishing tags one by one, against an in-memory OCI registry served by ``responses``.

The registry keeps manifests by digest and tags by name; hooks let a test play
"another build" at the exact moment between this build's HEAD and PUT, or right
after its PUT, and make a PUT fail.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import responses

from deploykit import registry_auth
from deploykit.errors import RegistryError, WriteOnceTagError
from deploykit.publish import PartlyPublishedError, Publisher, upload_layout
from deploykit.registry import OCI_INDEX, OCI_MANIFEST, RegistryClient
from tests.conftest import CapturedActions

BASE = "http://127.0.0.1:5000/v2/org/app"
IMAGE = "127.0.0.1:5000/org/app"
NOON = "2026-11-30T12:00:00Z"
STAGING = ("staging-latest", "test-20261130-1", "sha-0123456")

Hook = Callable[[str], None]


def sha256(content: bytes) -> str:
    return "sha256:" + hashlib.sha256(content).hexdigest()


class FakeOCI:
    """One repository: manifests by digest, tags, blobs; every request recorded."""

    def __init__(self, rsps: responses.RequestsMock) -> None:
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.tags: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[str] = []
        self.after_head: dict[str, Hook] = {}  # tag -> what "another build" does then
        self.after_put: dict[str, Hook] = {}
        self.failing_puts: set[str] = set()
        pattern = re.compile(rf"{re.escape(BASE)}/.*")
        for method in ("HEAD", "GET", "PUT", "POST"):
            rsps.add_callback(method, pattern, callback=self.handle)

    # -- building images -----------------------------------------------------------------
    def image(self, created: str = NOON, revision: str = "r") -> str:
        config = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {
            "org.opencontainers.image.created": created,
            "org.opencontainers.image.revision": revision}}}).encode()
        self.blobs[sha256(config)] = config
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(config), "size": len(config)}, "layers": []}).encode()
        self.manifests[sha256(manifest)] = (OCI_MANIFEST, manifest)
        return sha256(manifest)

    def another_build_tags(self, tag: str, digest: str) -> Hook:
        def hook(_: str) -> None:
            self.tags[tag] = digest
        return hook

    # -- the HTTP side ---------------------------------------------------------------------
    def handle(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        path = str(request.url).split("?")[0].removeprefix(BASE)
        self.requests.append(f"{request.method} {path}")
        kind, _, name = path.lstrip("/").partition("/")
        if kind == "tags":
            return 200, {}, json.dumps({"name": "org/app", "tags": sorted(self.tags)}).encode()
        status, headers, body = (self._blob(request, name) if kind == "blobs" else
                                 self._manifest(request, name))
        return status, headers, b"" if request.method == "HEAD" else body

    def _manifest(
        self, request: requests.PreparedRequest, ref: str
    ) -> tuple[int, dict[str, str], bytes]:
        if request.method == "PUT":
            if ref in self.failing_puts:
                return 400, {}, b'{"errors":[{"code":"TAG_INVALID","message":"injected"}]}'
            content = request.body if isinstance(request.body, bytes) else b""
            digest = sha256(content)
            self.manifests[digest] = (str(request.headers["Content-Type"]), content)
            if not ref.startswith("sha256:"):
                self.tags[ref] = digest
                self.after_put.pop(ref, lambda _: None)(ref)
            return 201, {"Docker-Content-Digest": digest}, b""
        digest = ref if ref.startswith("sha256:") else self.tags.get(ref, "")
        if request.method == "HEAD" and ref in self.after_head:
            found = (200, {"Docker-Content-Digest": digest}, b"") if digest else (404, {}, b"")
            self.after_head.pop(ref)(ref)  # the other build acts right after our HEAD
            return found
        if digest not in self.manifests:
            return 404, {}, b'{"errors":[{"code":"MANIFEST_UNKNOWN","message":"unknown"}]}'
        media_type, content = self.manifests[digest]
        return 200, {"Docker-Content-Digest": digest, "Content-Type": media_type}, content

    def _blob(
        self, request: requests.PreparedRequest, name: str
    ) -> tuple[int, dict[str, str], bytes]:
        if request.method == "POST":
            return 202, {"Location": "/v2/org/app/blobs/uploads/u1?_state=x"}, b""
        if request.method == "PUT":
            digest = str(request.url).split("digest=")[1].replace("%3A", ":")
            body = request.body
            content = body.read() if hasattr(body, "read") else bytes(body or b"")
            assert sha256(content) == digest
            self.blobs[digest] = content
            return 201, {}, b""
        if name not in self.blobs:
            return 404, {}, b""
        return 200, {}, self.blobs[name] if request.method == "GET" else b""


@pytest.fixture
def oci() -> Iterator[FakeOCI]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield FakeOCI(rsps)


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_auth, "_sleep", lambda seconds: None)


@pytest.fixture
def publisher(
    make_actions: Callable[..., CapturedActions]
) -> Callable[..., tuple[Publisher, CapturedActions]]:
    def factory(digest: str, **options: Any) -> tuple[Publisher, CapturedActions]:
        actions = make_actions()
        client = RegistryClient("127.0.0.1:5000", "org/app")
        return Publisher(client, actions, digest, **options), actions
    return factory


def puts(oci: FakeOCI) -> list[str]:
    return [r.split("/manifests/")[1] for r in oci.requests if r.startswith("PUT /manifests/")]


# -- the happy path ---------------------------------------------------------------------------
def test_write_once_tags_first_each_after_a_head_then_the_mutable_tag(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    ours = oci.image()
    pub, _ = publisher(ours)
    assert pub.publish(STAGING) == list(STAGING)
    assert puts(oci) == ["sha-0123456", "test-20261130-1", "staging-latest"]
    for tag in ("sha-0123456", "test-20261130-1"):
        index = oci.requests.index(f"PUT /manifests/{tag}")
        assert oci.requests[index - 1] == f"HEAD /manifests/{tag}"
    assert oci.tags == dict.fromkeys(STAGING, ours)
    assert oci.requests.count(f"GET /manifests/{ours}") == 1  # fetched once, by digest
    assert pub.published == ["sha-0123456", "test-20261130-1", "staging-latest"]


def test_the_same_manifest_bytes_and_media_type_go_under_every_tag(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    ours = oci.image()
    pub, _ = publisher(ours)
    pub.publish(("v1.2.3", "latest"))
    assert oci.tags == {"v1.2.3": ours, "latest": ours}
    assert {oci.manifests[d][0] for d in oci.tags.values()} == {OCI_MANIFEST}


# -- collisions on test-YYYYMMDD-N --------------------------------------------------------------
def test_test_tag_taken_between_plan_and_put_takes_the_next_number_and_says_so(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.tags["test-20261130-1"] = theirs
    pub, actions = publisher(ours)
    tags = pub.publish(STAGING)
    assert tags == ["staging-latest", "test-20261130-2", "sha-0123456"]
    assert oci.tags["test-20261130-1"] == theirs and oci.tags["test-20261130-2"] == ours
    notice = (f"{IMAGE}:test-20261130-1 was taken by another build ({theirs}) while this "
              f"build ({ours}) published it; taking test-20261130-2 instead.")
    assert f"::notice title=Test tag taken::{notice}\n" in actions.out.getvalue()
    assert notice in pub.notes


def test_test_tag_overwritten_right_after_our_put_is_detected_and_renumbered(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    """Both HEADs saw nothing; the other build's PUT landed after ours."""
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.after_put["test-20261130-1"] = oci.another_build_tags("test-20261130-1", theirs)
    pub, actions = publisher(ours)
    tags = pub.publish(STAGING)
    assert tags[1] == "test-20261130-2"
    assert oci.tags["test-20261130-1"] == theirs and oci.tags["test-20261130-2"] == ours
    assert "test-20261130-1" not in pub.published
    assert f"({theirs}) while this build ({ours})" in actions.out.getvalue()


def test_out_of_numbers_is_a_clear_error_naming_both_digests(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.tags["test-20261130-1"] = theirs  # taken before our HEAD
    for n in range(2, 9):  # every later number is overwritten just after our PUT
        oci.after_put[f"test-20261130-{n}"] = oci.another_build_tags(
            f"test-20261130-{n}", theirs)
    pub, _ = publisher(ours)
    with pytest.raises(PartlyPublishedError) as info:
        pub.publish(STAGING)
    assert info.value.message == (
        f"{IMAGE}:test-20261130-5 names {theirs}, another build's image, not this build's "
        f"{ours}, and so did 4 other test tags this build published or tried: too many "
        "builds publish at once. This run had already published sha-0123456, "
        f"staging-latest (naming {ours}); the other tags of the plan are not published.")
    assert info.value.published == ("sha-0123456", "staging-latest")
    assert "test-20261130-6" not in oci.tags


def test_a_test_tag_given_by_the_git_tag_is_never_renumbered(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.tags["test-20261130-7"] = theirs
    pub, _ = publisher(ours, renumber=False)
    with pytest.raises(PartlyPublishedError) as info:
        pub.publish(("staging-latest", "test-20261130-7", "sha-0123456"))
    assert f"test-20261130-7 (given by the git tag) was published by another build at " \
        f"{theirs}; this build is {ours}." in info.value.message


def test_sha_tag_of_another_build_is_refused_with_both_digests(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.tags["sha-0123456"] = theirs
    pub, _ = publisher(ours)
    with pytest.raises(WriteOnceTagError) as info:
        pub.publish(STAGING)
    assert info.value.message == (
        f"{IMAGE}:sha-0123456 was published by another build at {theirs} while this build "
        f"published {ours}; a write-once tag never moves.")
    assert oci.tags == {"sha-0123456": theirs}


def test_sha_tag_overwritten_after_our_put_is_not_listed_as_ours(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.after_put["sha-0123456"] = oci.another_build_tags("sha-0123456", theirs)
    pub, _ = publisher(ours)
    with pytest.raises(PartlyPublishedError) as info:
        pub.publish(STAGING)
    assert info.value.published == ("test-20261130-1", "staging-latest")
    assert f"sha-0123456 was published by another build at {theirs}" in info.value.message


# -- staging-latest: the newest build wins -------------------------------------------------------
def test_staging_latest_stays_on_a_build_made_later(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    later, ours = oci.image(created="2026-11-30T12:05:00Z"), oci.image()
    oci.tags["staging-latest"] = later
    pub, _ = publisher(ours)
    assert pub.publish(STAGING) == ["test-20261130-1", "sha-0123456"]
    assert oci.tags["staging-latest"] == later
    assert pub.notes == [f"{IMAGE}:staging-latest stays at {later}: it was built at "
                         "2026-11-30T12:05:00Z, after this build (2026-11-30T12:00:00Z)."]


def test_staging_latest_moves_from_an_older_build(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    older, ours = oci.image(created="2026-11-29T08:00:00Z"), oci.image()
    oci.tags["staging-latest"] = older
    pub, _ = publisher(ours)
    assert pub.publish(STAGING) == list(STAGING)
    assert oci.tags["staging-latest"] == ours


def test_same_build_time_the_higher_test_number_keeps_staging_latest(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.tags.update({"test-20261130-2": theirs, "staging-latest": theirs})
    pub, _ = publisher(ours)
    assert pub.publish(STAGING) == ["test-20261130-1", "sha-0123456"]
    assert oci.tags["staging-latest"] == theirs
    assert pub.notes[-1].endswith("the same build time, and it holds test-20261130-2, a "
                                  "later number than test-20261130-1.")


def test_staging_latest_goes_to_a_newer_build_that_published_meanwhile(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    """Our PUT of staging-latest landed after the newer build's: we hand it over."""
    theirs, ours = oci.image(revision="a"), oci.image(revision="b")

    def newer_build_published(_: str) -> None:
        oci.tags["test-20261130-2"] = theirs

    oci.after_put["staging-latest"] = newer_build_published
    pub, _ = publisher(ours)
    assert pub.publish(STAGING) == ["test-20261130-1", "sha-0123456"]
    assert oci.tags["staging-latest"] == theirs


def test_latest_auto_is_decided_again_at_publish_time(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    """v1.3.0 was released while v1.2.3 was building: latest stays on v1.3.0."""
    newer, ours = oci.image(revision="a"), oci.image(revision="b")
    oci.tags.update({"v1.3.0": newer, "latest": newer})
    pub, _ = publisher(ours)
    assert pub.publish(("v1.2.3", "latest")) == ["v1.2.3"]
    assert oci.tags["latest"] == newer
    assert pub.notes == [f"{IMAGE}:latest stays: `latest` not added: v1.3.0 is already in "
                         "the registry and is higher (latest=auto)."]


# -- failures part-way -------------------------------------------------------------------------
def test_a_failed_put_after_a_tag_names_what_was_published(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    ours = oci.image()
    oci.failing_puts.add("test-20261130-1")
    pub, _ = publisher(ours)
    with pytest.raises(PartlyPublishedError) as info:
        pub.publish(STAGING)
    assert info.value.published == ("sha-0123456",)
    assert info.value.digest == ours
    assert "TAG_INVALID: injected" in info.value.message
    assert info.value.message.endswith(
        f"This run had already published sha-0123456 (naming {ours}); the other tags of "
        "the plan are not published.")
    assert info.value.hint.startswith("Run the job again: it finds the image by its "
                                      "write-once tag and publishes the missing tags.")


def test_a_failure_before_any_tag_is_the_plain_error(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    ours = oci.image()
    oci.failing_puts.add("sha-0123456")
    pub, _ = publisher(ours)
    with pytest.raises(RegistryError) as info:
        pub.publish(STAGING)
    assert info.value.message == ("127.0.0.1:5000 answered 400 for "
                                  f"{IMAGE}:sha-0123456: TAG_INVALID: injected")
    assert oci.tags == {}


def test_a_rerun_finds_its_tags_and_puts_nothing(
    oci: FakeOCI, publisher: Callable[..., tuple[Publisher, CapturedActions]],
) -> None:
    ours = oci.image()
    oci.tags.update(dict.fromkeys(STAGING, ours))
    pub, _ = publisher(ours)
    assert pub.publish(STAGING) == list(STAGING)
    assert puts(oci) == [] and pub.published == []


# -- the untagged upload -----------------------------------------------------------------------
def write_layout(root: Path, blobs: list[bytes]) -> None:
    folder = root / "blobs" / "sha256"
    folder.mkdir(parents=True)
    for blob in blobs:
        (folder / sha256(blob).removeprefix("sha256:")).write_bytes(blob)


def test_upload_layout_sends_missing_blobs_then_manifests_children_first(
    oci: FakeOCI, tmp_path: Path,
) -> None:
    config, layer, known = b'{"os":"linux"}', b"layer-bytes", b"already-there"
    oci.blobs[sha256(known)] = known
    manifest = json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": sha256(config)},
                           "layers": [{"digest": sha256(layer)},
                                      {"digest": sha256(known)}]}).encode()
    index = json.dumps({"mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": sha256(manifest)}]}).encode()
    write_layout(tmp_path, [config, layer, known, manifest, index])
    client = RegistryClient("127.0.0.1:5000", "org/app")

    assert upload_layout(client, tmp_path, sha256(index), OCI_INDEX) == 2

    assert puts(oci) == [sha256(manifest), sha256(index)]
    assert oci.manifests[sha256(index)] == (OCI_INDEX, index)
    assert oci.blobs[sha256(layer)] == layer and oci.blobs[sha256(config)] == config
    assert oci.tags == {}
    assert [r for r in oci.requests if r.startswith("PUT /blobs")] == [
        "PUT /blobs/uploads/u1", "PUT /blobs/uploads/u1"]


class TimedBlobs:
    """A registry client for upload_layout: records when each call starts and ends."""

    def __init__(self, present: set[str], failing: str = "") -> None:
        self.present = present
        self.failing = failing
        self.events: list[tuple[str, str]] = []  # (what, digest), in the order they happen
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0
        self.overlap = threading.Event()  # two lookups were under way at once

    def _note(self, what: str, digest: str) -> None:
        with self.lock:
            self.events.append((what, digest))

    def blob_exists(self, digest: str) -> bool:
        with self.lock:
            self.events.append(("head", digest))
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            if self.in_flight > 1:
                self.overlap.set()
        if len(self.events) > 2:  # not the first lookup: wait (bounded) for a second one
            self.overlap.wait(timeout=5)
        with self.lock:
            self.in_flight -= 1
            self.events.append(("head done", digest))
        return digest in self.present

    def upload_blob(self, digest: str, path: Path) -> None:
        self._note("upload", digest)
        time.sleep(0.01)
        if digest == self.failing:
            raise RegistryError(f"127.0.0.1:5000 answered 500 for {digest}.", hint="h")
        self._note("uploaded", digest)

    def put_manifest(self, reference: str, content: bytes, media_type: str) -> None:
        self._note("put", reference)


def many_blob_layout(root: Path, count: int) -> tuple[str, list[str]]:
    layers = [f"layer-{n}".encode() for n in range(count)]
    manifest = json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": sha256(b"{}")},
                           "layers": [{"digest": sha256(layer)} for layer in layers]}).encode()
    write_layout(root, [b"{}", *layers, manifest])
    return sha256(manifest), [sha256(b"{}"), *map(sha256, layers)]


def test_blobs_are_looked_up_and_uploaded_at_once_and_the_manifest_waits_for_all(
    tmp_path: Path,
) -> None:
    manifest, blobs = many_blob_layout(tmp_path, 6)
    client = TimedBlobs(present=set(blobs[::2]))
    uploaded = upload_layout(client, tmp_path, manifest, OCI_MANIFEST)  # type: ignore[arg-type]
    events = client.events
    assert uploaded == 3
    assert sorted(d for what, d in events if what == "uploaded") == sorted(blobs[1::2])
    # The first lookup alone (it answers the registry's challenge), the others together.
    assert events[:2] == [("head", blobs[0]), ("head done", blobs[0])]
    assert client.most_in_flight > 1
    # Every blob is there before the manifest that names them.
    assert events[-1] == ("put", manifest)
    assert [what for what, _ in events].index("put") > max(
        index for index, (what, _) in enumerate(events) if what == "uploaded")


def test_a_failed_blob_upload_fails_the_push_before_any_manifest(tmp_path: Path) -> None:
    manifest, blobs = many_blob_layout(tmp_path, 4)
    client = TimedBlobs(present=set(), failing=blobs[2])
    with pytest.raises(RegistryError) as info:
        upload_layout(client, tmp_path, manifest, OCI_MANIFEST)  # type: ignore[arg-type]
    assert info.value.message == f"127.0.0.1:5000 answered 500 for {blobs[2]}."
    assert [event for event in client.events if event[0] == "put"] == []


# -- the Bearer-token flow of a build's upload ------------------------------------------------
class TokenOCI(FakeOCI):
    """FakeOCI behind a token service, as GHCR and distribution's ``auth: token`` do it: a
    request without a token is challenged with the scope its method needs (``pull`` for a
    blob HEAD), a token without ``push`` gets ``401 insufficient_scope`` on an upload."""

    REALM = "http://127.0.0.1:5000/token"

    def __init__(self, rsps: responses.RequestsMock) -> None:
        super().__init__(rsps)
        self.granted: dict[str, set[str]] = {}  # token -> actions
        self.token_requests: list[list[str]] = []  # the scopes of each token request
        self.answers: list[tuple[str, int, str]] = []  # (method path, status, error)
        self.lock = threading.Lock()
        rsps.add_callback("GET", re.compile(re.escape(self.REALM) + r"\?.*"),
                          callback=self.token)

    def token(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        scopes = parse_qs(urlsplit(str(request.url)).query)["scope"]
        with self.lock:
            self.token_requests.append(scopes)
            value = f"tok-{len(self.token_requests)}"
            self.granted[value] = {action for scope in scopes
                                   for action in scope.rsplit(":", 1)[1].split(",")}
        time.sleep(0.02)  # a round trip: long enough for the other threads to ask too
        return 200, {}, json.dumps({"token": value, "expires_in": 300}).encode()

    def handle(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        needed = "pull" if request.method in ("GET", "HEAD") else "push"
        token = str(request.headers.get("Authorization", "")).removeprefix("Bearer ")
        path = str(request.url).split("?")[0].removeprefix(BASE)
        error = ""
        if token not in self.granted:
            error = "invalid_token" if token else ""
        elif needed not in self.granted[token]:
            error = "insufficient_scope"
        if token in self.granted and not error:
            return super().handle(request)
        with self.lock:
            self.answers.append((f"{request.method} {path}", 401, error))
        scope = "repository:org/app:" + ("pull" if needed == "pull" else "pull,push")
        challenge = f'Bearer realm="{self.REALM}",service="fake",scope="{scope}"'
        if error:
            challenge += f',error="{error}"'
        body = b"" if request.method == "HEAD" else b'{"errors":[{"code":"UNAUTHORIZED"}]}'
        return 401, {"WWW-Authenticate": challenge}, body


def test_a_build_upload_asks_once_for_pull_push_and_every_thread_shares_the_token(
    tmp_path: Path,
) -> None:
    """Issue 23: the blob HEAD is challenged with `pull`; that token was cached as the push
    token, so each upload thread got `401 insufficient_scope` and fetched its own."""
    manifest, blobs = many_blob_layout(tmp_path, 12)
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        oci = TokenOCI(rsps)
        client = RegistryClient("127.0.0.1:5000", "org/app", "deploykit", "pw")
        assert upload_layout(client, tmp_path, manifest, OCI_MANIFEST) == len(blobs)
    assert oci.token_requests == [["repository:org/app:pull,push"]]
    assert [answer for answer in oci.answers if answer[2] == "insufficient_scope"] == []
    assert oci.answers == [(f"HEAD /blobs/{blobs[0]}", 401, "")]  # the one challenge
    assert set(oci.blobs) == set(blobs) and puts(oci) == [manifest]
