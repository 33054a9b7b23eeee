"""verify_provenance (issue 25): the policy, the statement, the API fetch and sigstore's
verification of stand-in bundles (tests/provenance_fixtures.py), all offline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
import tenacity

from deploykit.errors import InputError, ProvenanceError
from deploykit.provenance import check_provenance, fetch_bundles, load_roots, verify_bundle
from deploykit.provenance_claims import (
    ISSUER,
    PRIVATE,
    Claims,
    Expected,
    check_claims,
    der_utf8,
    expected_for,
    statement_digests,
)
from deploykit.settings import load_settings
from deploykit.snappy import snappy_block
from tests.conftest import CapturedActions
from tests.provenance_fixtures import (
    Build,
    StandInSigstore,
    api_answer,
    tampered,
    without_log_entry,
)

DIGEST = "sha256:" + "ab" * 32
OTHER_DIGEST = "sha256:" + "cd" * 32
REPO = "octo-org/shop"
API = "https://api.github.test"
ATTESTATIONS = f"{API}/repos/{REPO}/attestations/{DIGEST}"
CLAIMS = Claims(
    issuer=ISSUER, source_repository=f"https://github.com/{REPO}",
    source_ref="refs/tags/v1.0.0", source_commit="1f2e" * 10,
    signer_workflow=f"https://github.com/{REPO}/.github/workflows/release.yml@refs/tags/v1.0.0",
    subject_digests=(DIGEST,), signed_at=datetime(2026, 1, 15, tzinfo=UTC))
EXPECTED = Expected(repository=REPO, digest=DIGEST, tag="v1.0.0")


def failed_check(claims: Claims, expected: Expected = EXPECTED) -> ProvenanceError:
    with pytest.raises(ProvenanceError) as caught:
        check_claims(claims, expected)
    return caught.value


# -- the policy -----------------------------------------------------------------------------
def test_claims_of_this_repository_and_tag_pass() -> None:
    check_claims(CLAIMS, EXPECTED)
    check_claims(replace(CLAIMS, source_repository=f"https://github.com/{REPO.upper()}"),
                 EXPECTED)  # GitHub names are case-insensitive


@pytest.mark.parametrize(("change", "check", "text"), [
    ({"issuer": "https://accounts.google.com"}, "issuer", "not GitHub Actions"),
    ({"source_repository": "https://github.com/evil/shop"}, "source repository",
     "built by 'https://github.com/evil/shop', not https://github.com/octo-org/shop"),
    ({"source_ref": "refs/tags/v1.0.1"}, "source ref",
     "built from 'refs/tags/v1.0.1', not refs/tags/v1.0.0"),
    ({"source_ref": "refs/heads/main"}, "source ref", "not refs/tags/v1.0.0"),
    ({"signer_workflow": "https://github.com/evil/tools/.github/workflows/sign.yml@main"},
     "signer workflow", "neither a workflow of octo-org/shop nor deploykit's reusable"),
    ({"subject_digests": (OTHER_DIGEST,)}, "subject digest",
     f"the statement is about {OTHER_DIGEST}, not the resolved {DIGEST}"),
    ({"subject_digests": ()}, "subject digest", "about no sha256 digest"),
])
def test_each_failed_check_is_named(change: dict[str, Any], check: str, text: str) -> None:
    error = failed_check(replace(CLAIMS, **change))
    assert error.check == check
    assert error.title == f"Build provenance not verified: {check}"
    assert error.message.startswith(f"Provenance check '{check}' failed: ")
    assert text in error.message
    assert error.hint


def test_a_bare_digest_takes_any_tag_but_no_branch() -> None:
    bare = replace(EXPECTED, tag=None)
    check_claims(replace(CLAIMS, source_ref="refs/tags/v0.9.3"), bare)
    assert failed_check(replace(CLAIMS, source_ref="refs/heads/main"), bare).check == \
        "source ref"
    assert failed_check(replace(CLAIMS, source_ref="refs/tags/"), bare).check == "source ref"


def test_the_repositorys_own_workflows_and_the_reusable_one_sign() -> None:
    for signer in (
            f"https://github.com/{REPO}/.github/workflows/hotfix.yml@refs/tags/v1.0.0",
            "https://github.com/deploykit-org/deploykit/.github/workflows/build-push.yml"
            "@refs/tags/v1"):
        check_claims(replace(CLAIMS, signer_workflow=signer), EXPECTED)
    for signer in (
            "https://github.com/deploykit-org/deploykit/.github/workflows/release.yml@v1",
            f"https://github.com/{REPO}-fork/.github/workflows/release.yml@refs/tags/v1.0.0",
            ""):
        assert failed_check(replace(CLAIMS, signer_workflow=signer)).check == \
            "signer workflow"


def test_expected_takes_the_release_tag_and_the_repository() -> None:
    env = {"INPUT_MODE": "deploy", "GITHUB_REPOSITORY": REPO}
    settings = load_settings(env)
    assert expected_for(settings, "v1.0.0", DIGEST) == Expected(REPO, DIGEST, "v1.0.0")
    assert expected_for(settings, None, DIGEST).tag is None
    assert expected_for(settings, "staging-latest", DIGEST).tag is None  # not a release
    other = load_settings({**env, "INPUT_PROVENANCE_REPOSITORY": "octo-org/builder"})
    assert expected_for(other, "v1.0.0", DIGEST).repository == "octo-org/builder"
    with pytest.raises(InputError, match="provenance_repository"):
        expected_for(load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "a/b"}),
                     "v1.0.0", DIGEST)


def test_settings_read_the_three_inputs() -> None:
    settings = load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "a/b"})
    assert (settings.verify_provenance, settings.trusted_root,
            settings.provenance_repository) == (False, "", "")
    settings = load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "a/b",
                              "INPUT_VERIFY_PROVENANCE": "true",
                              "INPUT_TRUSTED_ROOT": " roots.jsonl "})
    assert (settings.verify_provenance, settings.trusted_root) == (True, "roots.jsonl")
    with pytest.raises(InputError, match="verify_provenance"):
        load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "a/b",
                       "INPUT_VERIFY_PROVENANCE": "yes"})
    with pytest.raises(InputError, match="is not a GitHub repository"):
        load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "a/b",
                       "INPUT_PROVENANCE_REPOSITORY": "https://github.com/a/b"})


# -- the statement and the certificate ------------------------------------------------------
def test_der_utf8_short_and_long_form() -> None:
    assert der_utf8(b"\x0c\x03abc") == "abc"
    long = "x" * 200
    assert der_utf8(b"\x0c\x81\xc8" + long.encode()) == long
    for bad in (b"", b"\x04\x03abc", b"\x0c\x05abc"):
        with pytest.raises(ValueError):
            der_utf8(bad)


def test_statement_digests() -> None:
    statement = {"_type": "https://in-toto.io/Statement/v1",
                 "predicateType": "https://slsa.dev/provenance/v1",
                 "subject": [{"name": "a", "digest": {"sha256": "AB" * 32}},
                             {"name": "b", "digest": {"sha512": "00"}}, "junk"]}
    payload = json.dumps(statement).encode()
    assert statement_digests("application/vnd.in-toto+json", payload) == (DIGEST,)
    for payload_type, body in (("text/plain", payload),
                               ("application/vnd.in-toto+json", b"{not json"),
                               ("application/vnd.in-toto+json", json.dumps(
                                   {**statement, "predicateType": "x"}).encode())):
        with pytest.raises(ProvenanceError) as caught:
            statement_digests(payload_type, body)
        assert caught.value.check == "statement"


# -- sigstore on stand-in bundles --------------------------------------------------------------
@pytest.fixture(scope="module")
def sigstore_standin() -> StandInSigstore:
    return StandInSigstore()


@pytest.fixture
def roots_file(tmp_path: Path, sigstore_standin: StandInSigstore) -> Path:
    path = tmp_path / "trusted_root.jsonl"
    path.write_text(json.dumps(sigstore_standin.trusted_root()) + "\n")
    return path


def test_a_valid_bundle_verifies_and_proves_its_claims(
        sigstore_standin: StandInSigstore, roots_file: Path) -> None:
    claims = verify_bundle(sigstore_standin.bundle(Build(DIGEST)), load_roots(str(roots_file)))
    assert claims == replace(CLAIMS, source_commit=Build(DIGEST).commit,
                             signed_at=datetime(2026, 1, 15, 12, tzinfo=UTC))


@pytest.mark.parametrize(("make", "text"), [
    (lambda s: tampered(s.bundle(Build(DIGEST))), "DSSE: invalid signature"),
    (lambda s: StandInSigstore("other").bundle(Build(DIGEST)),
     "failed to build timestamp certificate chain"),
])
def test_a_changed_statement_or_a_foreign_root_fails_the_signature(
        sigstore_standin: StandInSigstore, roots_file: Path,
        make: Callable[[StandInSigstore], dict[str, Any]], text: str) -> None:
    with pytest.raises(ProvenanceError) as caught:
        verify_bundle(make(sigstore_standin), load_roots(str(roots_file)))
    assert caught.value.check == "signature"
    assert text in caught.value.message


def test_every_root_of_the_file_is_tried(sigstore_standin: StandInSigstore,
                                         tmp_path: Path) -> None:
    other = StandInSigstore("other")
    path = tmp_path / "roots.jsonl"
    path.write_text(f"{json.dumps(other.trusted_root())}\n\n"
                    f"{json.dumps(sigstore_standin.trusted_root())}\n")
    roots = load_roots(str(path))
    assert len(roots) == 2
    assert verify_bundle(sigstore_standin.bundle(Build(DIGEST)), roots).subject_digests == \
        (DIGEST,)
    assert verify_bundle(other.bundle(Build(DIGEST)), roots).subject_digests == (DIGEST,)


def test_a_bundle_without_a_log_entry_is_refused_as_private(
        sigstore_standin: StandInSigstore, roots_file: Path) -> None:
    with pytest.raises(ProvenanceError) as caught:
        verify_bundle(without_log_entry(sigstore_standin.bundle(Build(DIGEST))),
                      load_roots(str(roots_file)))
    assert caught.value.check == "transparency log"
    assert f"{PRIVATE}: the bundle has no transparency-log entry" in caught.value.message
    assert "verify_provenance: false" in caught.value.hint


@pytest.mark.parametrize(("content", "text"), [
    (None, "cannot read"), ("", "holds no trusted root"), ("{}\n", "line 1 of"),
    ("not json\n", "line 1 of")])
def test_a_bad_trusted_root_file_is_an_input_error(tmp_path: Path, content: str | None,
                                                    text: str) -> None:
    path = tmp_path / "roots.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=text) as caught:
        load_roots(str(path))
    assert caught.value.input_name == "trusted_root"


# -- the attestations API ---------------------------------------------------------------------
NO_WAIT = tenacity.wait_none()


@responses.activate
def test_fetch_takes_inline_bundles_and_bundle_urls() -> None:
    responses.get(ATTESTATIONS, json={"attestations": [
        {"bundle": {"mediaType": "inline"}},
        {"bundle": None, "bundle_url": "https://blobs.test/b?sig=1"}]})
    responses.get("https://blobs.test/b", json={"mediaType": "from-url"})
    bundles = fetch_bundles(API, REPO, DIGEST, "t0ken", wait=NO_WAIT)
    assert bundles == [{"mediaType": "inline"}, {"mediaType": "from-url"}]
    api, blob = responses.calls
    assert api.request.headers["Authorization"] == "Bearer t0ken"
    assert api.request.headers["X-GitHub-Api-Version"] == "2022-11-28"
    assert "Authorization" not in blob.request.headers  # the token stays with GitHub


@pytest.mark.parametrize("answer", [{"status": 404, "json": {"message": "Not Found"}},
                                    {"json": {"attestations": []}}])
@responses.activate
def test_no_attestation_has_its_own_failure(answer: dict[str, Any]) -> None:
    responses.get(ATTESTATIONS, **answer)
    with pytest.raises(ProvenanceError) as caught:
        fetch_bundles(API, REPO, DIGEST, "", wait=NO_WAIT)
    assert caught.value.check == "attestation found"
    assert f"{REPO} has no attestation for {DIGEST}" in caught.value.message
    assert "Authorization" not in responses.calls[0].request.headers


@responses.activate
def test_a_refused_token_names_the_permission() -> None:
    responses.get(ATTESTATIONS, status=403, json={"message": "Resource not accessible"})
    with pytest.raises(ProvenanceError) as caught:
        fetch_bundles(API, REPO, DIGEST, "t0ken", wait=NO_WAIT)
    assert "attestations: read" in caught.value.hint


@responses.activate
def test_server_errors_and_rate_limits_are_retried() -> None:
    responses.get(ATTESTATIONS, status=503)
    responses.get(ATTESTATIONS, status=429, headers={"Retry-After": "1"})
    responses.get(ATTESTATIONS, json=api_answer({"mediaType": "x"}))
    waits: list[float] = []

    def wait(state: tenacity.RetryCallState) -> float:
        from deploykit.provenance import _retry_after
        waits.append(_retry_after(state))
        return 0.0

    assert fetch_bundles(API, REPO, DIGEST, "", wait=wait) == [{"mediaType": "x"}]
    assert waits == [2.0, 1.0]  # exponential, then the Retry-After

    responses.replace(responses.GET, ATTESTATIONS, status=502)
    with pytest.raises(ProvenanceError, match="GitHub answered 502"):
        fetch_bundles(API, REPO, DIGEST, "", wait=NO_WAIT)


def snappy_literals(data: bytes) -> bytes:
    """A valid snappy block of literals only (what a simple encoder may write)."""
    out, size = bytearray(), len(data)
    while True:  # the length as a varint
        out.append((size & 0x7F) | (0x80 if size > 0x7F else 0))
        size >>= 7
        if not size:
            break
    for start in range(0, len(data), 256):
        chunk = data[start:start + 256]
        out += bytes([61 << 2]) + (len(chunk) - 1).to_bytes(2, "little") + chunk
    return bytes(out)


@pytest.mark.parametrize(("block", "plain"), [
    (b"\x0c\x08abc\x15\x03", b"abcabcabcabc"),  # a copy with a 1-byte offset, overlapping
    (b"\x06\x04xy\x0e\x02\x00", b"xyxyxy"),  # 2-byte offset
    (b"\x05\x00z\x0f\x01\x00\x00\x00", b"zzzzz"),  # 4-byte offset
    (b"\x64\xf0\x63" + b"q" * 100, b"q" * 100),  # a literal of 100 (length in 1 byte)
])
def test_snappy_blocks_decode(block: bytes, plain: bytes) -> None:
    assert snappy_block(block) == plain
    assert snappy_block(snappy_literals(plain * 5)) == plain * 5


@pytest.mark.parametrize("block", [
    b"", b"\x80", b"\x0c\x08abc", b"\x0c\x08abc\x15", b"\x03\x08abc\x15\x03",
    b"\x06\x04xy\x0e\x05\x00", b"\x06\x00x\x0d\x00\x00", b"\x05\x10ab",
    b"\xff\xff\xff\xff\x0f"])
def test_broken_snappy_blocks_are_value_errors(block: bytes) -> None:
    with pytest.raises(ValueError, match="snappy"):
        snappy_block(block)


@responses.activate
def test_a_bundle_url_may_serve_snappy_compressed_json() -> None:
    bundle = {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "x": "y" * 400}
    responses.get(ATTESTATIONS, json={"attestations": [
        {"bundle_url": "https://blobs.test/a"}, {"bundle_url": "https://blobs.test/b"}]})
    responses.get("https://blobs.test/a", body=snappy_literals(json.dumps(bundle).encode()))
    responses.get("https://blobs.test/b", body=b"\x00\x01garbage")
    with pytest.raises(ProvenanceError, match="neither JSON nor snappy-compressed JSON"):
        fetch_bundles(API, REPO, DIGEST, "", wait=NO_WAIT)
    responses.replace(responses.GET, ATTESTATIONS,
                      json={"attestations": [{"bundle_url": "https://blobs.test/a"}]})
    assert fetch_bundles(API, REPO, DIGEST, "", wait=NO_WAIT) == [bundle]


# -- the step ------------------------------------------------------------------------------------
def deploy_settings(**inputs: str) -> Any:
    env = {"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "octo-org/shop",
           "GITHUB_REPOSITORY": REPO, "GITHUB_API_URL": API, "INPUT_GITHUB_TOKEN": "t0ken"}
    env.update({f"INPUT_{key.upper()}": value for key, value in inputs.items()})
    return load_settings(env)


@responses.activate
def test_the_step_passes_and_writes_what_was_proven(
        sigstore_standin: StandInSigstore, roots_file: Path,
        make_actions: Callable[..., CapturedActions]) -> None:
    other = StandInSigstore("other").bundle(Build(DIGEST))
    responses.get(ATTESTATIONS, json=api_answer(other, sigstore_standin.bundle(Build(DIGEST))))
    actions = make_actions()
    check_provenance(deploy_settings(verify_provenance="true", trusted_root=str(roots_file)),
                     actions, "v1.0.0", DIGEST)
    summary = "".join(actions.summary_parts)
    assert f"### Build provenance verified: {DIGEST}" in summary
    for row in ("| repository | https://github.com/octo-org/shop |",
                "| ref | refs/tags/v1.0.0 |", f"| commit | {Build(DIGEST).commit} |",
                "| signed | 2026-01-15 12:00:00 UTC (transparency log) |"):
        assert row in summary
    assert "Build provenance verified" in actions.out.getvalue()


@responses.activate
def test_the_step_reports_the_first_failure_when_none_passes(
        sigstore_standin: StandInSigstore, roots_file: Path,
        make_actions: Callable[..., CapturedActions]) -> None:
    responses.get(ATTESTATIONS, json=api_answer(
        sigstore_standin.bundle(Build(DIGEST, ref="refs/tags/v0.9.0")),
        sigstore_standin.bundle(Build(DIGEST, repository="evil/shop"))))
    with pytest.raises(ProvenanceError) as caught:
        check_provenance(deploy_settings(verify_provenance="true",
                                         trusted_root=str(roots_file)),
                         make_actions(), "v1.0.0", DIGEST)
    assert caught.value.check == "source ref"
    assert caught.value.message.endswith("(2 attestations, none passed; this is the first.)")


@responses.activate
def test_off_makes_no_request(make_actions: Callable[..., CapturedActions]) -> None:
    check_provenance(deploy_settings(), make_actions(), "v1.0.0", DIGEST)
    assert len(responses.calls) == 0


def test_off_never_imports_sigstore() -> None:
    code = ("import sys; from deploykit.deploy.procedure import Deployment; "
            "from deploykit.provenance import check_provenance; "
            "from deploykit.settings import load_settings; from deploykit.actions import Actions; "
            "check_provenance(load_settings({'INPUT_MODE': 'deploy', 'INPUT_IMAGE_REPO': 'a/b'}),"
            " Actions({}), 'v1.0.0', 'sha256:' + 'a' * 64); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('sigstore', 'sigstore_models', 'pydantic', 'tuf')))")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"


@responses.activate
def test_an_unreachable_api_is_reported_after_the_retries() -> None:
    responses.get(ATTESTATIONS, body=requests.ConnectionError("refused"))
    with pytest.raises(ProvenanceError, match="cannot reach GitHub's attestations API: "
                       "ConnectionError"):
        fetch_bundles(API, REPO, DIGEST, "", wait=NO_WAIT)
    assert len(responses.calls) == 3


@pytest.mark.parametrize("failure", ["tuf", "disk"])
def test_the_public_good_root_that_cannot_be_updated_fails_clearly(
        monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    from sigstore.errors import TUFError
    from sigstore.models import ClientTrustConfig

    from deploykit.provenance import public_good_root

    def production(offline: bool = False) -> Any:
        raise TUFError("Failed to refresh TUF metadata") if failure == "tuf" else \
            PermissionError("/root/.cache/sigstore-python")

    monkeypatch.setattr(ClientTrustConfig, "production", production)
    with pytest.raises(ProvenanceError) as caught:
        public_good_root()
    assert caught.value.check == "trust root"
    assert "tuf-repo-cdn.sigstore.dev" in caught.value.hint
