"""``verify_provenance: true``: production runs only what this repository's pipeline built.

After resolve and before the lock (so before any pull or change), :func:`check_provenance`
fetches the GitHub artifact attestations of the resolved digest, verifies each Sigstore
bundle with ``sigstore`` (certificate chain to the trust root, the SCT, the transparency
log entry, the DSSE signature) and then applies deploykit's policy to what the verified
certificate and statement claim (:func:`check_claims`, pure). One attestation that passes
everything is enough; otherwise the deploy stops with a :class:`ProvenanceError` naming
the check that failed.

``sigstore`` (and pydantic, tuf...) is imported only here, inside the functions that
verify: a run with ``verify_provenance: false`` never loads it (start-up cost).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import tenacity

from deploykit import __version__
from deploykit.actions import Actions, markdown_table, markdown_text
from deploykit.errors import InputError, ProvenanceError, shown
from deploykit.settings import Settings
from deploykit.tags import is_release_tag

if TYPE_CHECKING:
    from sigstore.models import TrustedRoot

ISSUER = "https://token.actions.githubusercontent.com"
INTOTO_PAYLOAD = "application/vnd.in-toto+json"
INTOTO_STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
# The reusable build workflow (it attests the image it built for its caller).
REUSABLE_WORKFLOW = "https://github.com/deploykit-org/deploykit/.github/workflows/build-push.yml@"
PUBLIC_GOOD = "the public-good Sigstore root (TUF)"
ATTEMPTS = 3
TIMEOUT = 30
MAX_WAIT_SECONDS = 60.0

# Fulcio's certificate extensions (1.3.6.1.4.1.57264.1.x): DER UTF8Strings from 1.8 on.
_OID = "1.3.6.1.4.1.57264.1."
ISSUER_V2, BUILD_SIGNER_URI = _OID + "8", _OID + "9"
SOURCE_REPOSITORY_URI, SOURCE_DIGEST, SOURCE_REF = _OID + "12", _OID + "13", _OID + "14"
PRIVATE = "provenance of private repositories cannot be verified yet"


# -- what a verified attestation claims, and the policy (pure) ----------------------------
@dataclass(frozen=True)
class Claims:
    """What a bundle that ``sigstore`` verified says: from its certificate, its statement
    and its log entry."""

    issuer: str
    source_repository: str  # https://github.com/owner/repo
    source_ref: str
    source_commit: str
    signer_workflow: str  # the build signer URI: the workflow that ran the attest step
    subject_digests: tuple[str, ...]  # sha256:<hex> of each in-toto subject
    signed_at: datetime  # the log's integrated time (covered by its inclusion promise)


@dataclass(frozen=True)
class Expected:
    """What the deploy requires: the repository and, for ``vX.Y.Z``, its tag."""

    repository: str  # owner/repo
    digest: str
    tag: str | None  # vX.Y.Z, or None for a bare digest (any tag ref)
    server_url: str = "https://github.com"

    @property
    def repository_uri(self) -> str:
        return f"{self.server_url}/{self.repository}"

    @property
    def ref(self) -> str:
        return f"refs/tags/{self.tag}" if self.tag else "refs/tags/*"


def check_claims(claims: Claims, expected: Expected) -> None:
    """deploykit's policy over a verified attestation; :class:`ProvenanceError` names the
    first check that fails."""
    if claims.issuer != ISSUER:
        raise ProvenanceError(
            "issuer", f"the certificate was issued for {shown(claims.issuer)}, not GitHub "
            f"Actions ({ISSUER}).", hint="Only images attested by a GitHub Actions workflow "
            "(actions/attest-build-provenance) can be deployed with `verify_provenance`.")
    if claims.source_repository.lower() != expected.repository_uri.lower():
        raise ProvenanceError(
            "source repository", f"{expected.digest} was built by "
            f"{shown(claims.source_repository)}, not {expected.repository_uri}.",
            hint="Deploy an image this repository's pipeline built, or set "
            "`provenance_repository` to the repository that builds it.")
    if not _ref_matches(claims.source_ref, expected):
        raise ProvenanceError(
            "source ref", f"{expected.digest} was built from {shown(claims.source_ref)}, not "
            f"{expected.ref}.", hint="Deploy the image the release workflow built for that "
            "tag (its `digest` output), or build and attest it from the tag.")
    if not accepted_signer(claims.signer_workflow, expected):
        raise ProvenanceError(
            "signer workflow", f"the attestation was signed by "
            f"{shown(claims.signer_workflow, 160)}, which is neither a workflow of "
            f"{expected.repository} nor deploykit's reusable build workflow.",
            hint="Attest the image in the repository's own build workflow or through "
            "deploykit's build-push.yml (docs/provenance.md).")
    if expected.digest not in claims.subject_digests:
        about = ", ".join(claims.subject_digests) or "no sha256 digest"
        raise ProvenanceError(
            "subject digest", f"the statement is about {about}, not the resolved "
            f"{expected.digest}.",
            hint="Attest the image index digest the build pushed (the `digest` output of "
            "the build step).")


def _ref_matches(ref: str, expected: Expected) -> bool:
    if expected.tag:
        return ref == f"refs/tags/{expected.tag}"
    return ref.startswith("refs/tags/") and len(ref) > len("refs/tags/")


def accepted_signer(signer: str, expected: Expected) -> bool:
    """The repository's own workflows (whoever can change them can change the code) and
    deploykit's reusable build workflow (it only builds the caller's checkout); nothing
    else a workflow of the repository might call."""
    own = f"{expected.repository_uri}/.github/workflows/"
    return signer.lower().startswith(own.lower()) or signer.startswith(REUSABLE_WORKFLOW)


def expected_for(settings: Settings, tag: str | None, digest: str) -> Expected:
    repository = settings.provenance_repository or settings.github.repository
    if not repository:
        raise InputError("provenance_repository", "is empty and GITHUB_REPOSITORY is not set.",
                         hint="Set `provenance_repository: <owner>/<repo>`: the repository "
                         "whose workflows build the image.")
    return Expected(repository=repository, digest=digest,
                    tag=tag if tag and is_release_tag(tag) else None,
                    server_url=settings.github.server_url.rstrip("/"))


def summary(claims: Claims, expected: Expected, root: str) -> str:
    rows = [["repository", markdown_text(claims.source_repository)],
            ["ref", markdown_text(claims.source_ref)],
            ["commit", markdown_text(claims.source_commit)],
            ["workflow", markdown_text(claims.signer_workflow)],
            ["signed", claims.signed_at.strftime("%Y-%m-%d %H:%M:%S UTC") +
             " (transparency log)"],
            ["trust root", markdown_text(root)]]
    return (f"### Build provenance verified: {markdown_text(expected.digest)}\n\n"
            + markdown_table(["", "proven"], rows) + "\n")


# -- the statement and the certificate, read ----------------------------------------------
def statement_digests(payload_type: str, payload: bytes) -> tuple[str, ...]:
    """The ``sha256:`` subject digests of an in-toto v1 SLSA v1 statement."""
    if payload_type != INTOTO_PAYLOAD:
        raise ProvenanceError("statement", f"the envelope holds {shown(payload_type)}, not "
                              "an in-toto statement.", hint=_ATTEST_HINT)
    try:
        statement = json.loads(payload)
    except ValueError:
        raise ProvenanceError("statement", "the statement is not JSON.",
                              hint=_ATTEST_HINT) from None
    if not isinstance(statement, dict) or statement.get("_type") != INTOTO_STATEMENT \
            or statement.get("predicateType") != SLSA_PROVENANCE:
        raise ProvenanceError("statement", "the statement is not an in-toto v1 SLSA v1 "
                              "provenance statement.", hint=_ATTEST_HINT)
    subjects = statement.get("subject")
    digests = []
    for subject in subjects if isinstance(subjects, list) else []:
        digest = subject.get("digest") if isinstance(subject, dict) else None
        if isinstance(digest, dict) and isinstance(digest.get("sha256"), str):
            digests.append(f"sha256:{digest['sha256'].lower()}")
    return tuple(digests)


_ATTEST_HINT = ("Attest the image with actions/attest-build-provenance (subject-digest: the "
                "build's `digest` output).")


def der_utf8(value: bytes) -> str:
    """A DER UTF8String (Fulcio's extensions 1.8 and later) as text."""
    if len(value) < 2 or value[0] != 0x0C:
        raise ValueError("not a DER UTF8String")
    length, start = value[1], 2
    if length & 0x80:
        size = length & 0x7F
        length, start = int.from_bytes(value[2:2 + size], "big"), 2 + size
    if start + length != len(value):
        raise ValueError("bad DER length")
    return value[start:start + length].decode()


def certificate_claims(extensions: Mapping[str, bytes]) -> dict[str, str]:
    """The GitHub claims of a Fulcio certificate, from its extensions (OID -> DER value)."""
    def claim(oid: str) -> str:
        raw = extensions.get(oid)
        try:
            return der_utf8(raw) if raw is not None else ""
        except (ValueError, UnicodeDecodeError):
            return ""

    return {"issuer": claim(ISSUER_V2), "source_repository": claim(SOURCE_REPOSITORY_URI),
            "source_ref": claim(SOURCE_REF), "source_commit": claim(SOURCE_DIGEST),
            "signer_workflow": claim(BUILD_SIGNER_URI)}


def has_log_entry(bundle: Mapping[str, Any]) -> bool:
    material = bundle.get("verificationMaterial")
    entries = material.get("tlogEntries") if isinstance(material, dict) else None
    return isinstance(entries, list) and len(entries) > 0


# -- fetching the attestations (I/O) ------------------------------------------------------
def fetch_bundles(api_url: str, repository: str, digest: str, token: str, *,
                  session: requests.Session | None = None,
                  wait: Callable[[tenacity.RetryCallState], float] | None = None,
                  ) -> list[dict[str, Any]]:
    """The Sigstore bundles GitHub holds for ``digest`` (inline ``bundle`` or
    ``bundle_url``); none (an empty list or a 404) is a :class:`ProvenanceError`."""
    http = session or requests.Session()
    url = f"{api_url.rstrip('/')}/repos/{repository}/attestations/{digest}"
    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28",
               "User-Agent": f"deploykit/{__version__}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    response = _get(http, url, headers, {"per_page": "100"}, wait)
    if response.status_code == 404:
        raise _none_found(repository, digest)
    if response.status_code in (401, 403):
        raise ProvenanceError(
            "attestations", f"GitHub refused to list the attestations of {repository} "
            f"({response.status_code}).", hint="Pass `github_token` with `attestations: read` "
            "(and `contents: read` for a private repository) in the job's permissions.")
    if response.status_code != 200:
        raise ProvenanceError("attestations", f"GitHub answered {response.status_code} for "
                              f"the attestations of {digest}.", hint="Run the deploy again.")
    items = _json(response).get("attestations")
    bundles = [_bundle_of(http, item, wait) for item in items or [] if isinstance(item, dict)]
    if not bundles:
        raise _none_found(repository, digest)
    return bundles


def _none_found(repository: str, digest: str) -> ProvenanceError:
    return ProvenanceError(
        "attestation found", f"{repository} has no attestation for {digest}: no workflow of "
        "it attested this image.", hint="Deploy an image the build workflow attested "
        "(actions/attest-build-provenance on its `digest` output; docs/provenance.md).")


def _bundle_of(http: requests.Session, item: Mapping[str, Any],
               wait: Callable[[tenacity.RetryCallState], float] | None) -> dict[str, Any]:
    if isinstance(item.get("bundle"), dict):
        return dict(item["bundle"])
    url = item.get("bundle_url")
    if not isinstance(url, str) or not url.startswith("https://"):
        raise ProvenanceError("attestations", "an attestation carries neither a bundle nor "
                              "an https:// bundle_url.", hint="Run the deploy again.")
    # A signed storage URL: GitHub's token is not sent there.
    response = _get(http, url, {"User-Agent": f"deploykit/{__version__}"}, {}, wait)
    if response.status_code != 200:
        raise ProvenanceError("attestations", f"the bundle_url answered "
                              f"{response.status_code}.", hint="Run the deploy again.")
    return _bundle_json(response.content)


def _bundle_json(content: bytes) -> dict[str, Any]:
    """A bundle from its storage URL: JSON, or JSON compressed with snappy (as GitHub's
    storage serves it to the GitHub CLI)."""
    for decode in (lambda raw: raw, snappy_block):
        try:
            data = json.loads(decode(content))
        except ValueError:
            continue
        if isinstance(data, dict):
            return data
    raise ProvenanceError("attestations", "the bundle_url answer is neither JSON nor "
                          "snappy-compressed JSON.", hint="Run the deploy again.")


MAX_BUNDLE_BYTES = 64 * 1024 * 1024


def snappy_block(data: bytes) -> bytes:
    """Decode one snappy block (the raw format, no framing); ValueError when it is not."""
    try:
        return _snappy_block(data)
    except IndexError:
        raise ValueError("snappy: truncated") from None


def _snappy_block(data: bytes) -> bytes:
    length, position = _varint(data, 0)
    if length > MAX_BUNDLE_BYTES:
        raise ValueError("snappy: too large")
    out = bytearray()
    while position < len(data):
        tag, kind = data[position], data[position] & 3
        position += 1
        if kind == 0:  # a literal
            size = tag >> 2
            if size >= 60:
                extra = size - 59
                size = int.from_bytes(data[position:position + extra], "little")
                position += extra
            size += 1
            if position + size > len(data):
                raise ValueError("snappy: literal past the end")
            out += data[position:position + size]
            position += size
            continue
        if kind == 1:
            size, offset = 4 + ((tag >> 2) & 7), ((tag >> 5) << 8) | data[position]
            position += 1
        else:
            width = 2 if kind == 2 else 4
            size = 1 + (tag >> 2)
            offset = int.from_bytes(data[position:position + width], "little")
            position += width
        if offset == 0 or offset > len(out) or len(out) + size > length:
            raise ValueError("snappy: bad copy")
        for _ in range(size):  # byte by byte: a copy may overlap what it writes
            out.append(out[-offset])
    if len(out) != length:
        raise ValueError("snappy: wrong length")
    return bytes(out)


def _varint(data: bytes, position: int) -> tuple[int, int]:
    value = shift = 0
    for index in range(position, min(position + 5, len(data))):
        value |= (data[index] & 0x7F) << shift
        if not data[index] & 0x80:
            return value, index + 1
        shift += 7
    raise ValueError("snappy: bad length")


def _json(response: requests.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise ProvenanceError("attestations", "GitHub's answer is not a JSON object.",
                              hint="Run the deploy again.")
    return data


def _get(http: requests.Session, url: str, headers: dict[str, str], params: dict[str, str],
         wait: Callable[[tenacity.RetryCallState], float] | None) -> requests.Response:
    """A GET (safe to repeat): retried on connection errors, 429 and 5xx, honouring
    Retry-After."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(ATTEMPTS), reraise=True,
        retry_error_callback=_last_answer, wait=wait or _retry_after,
        retry=tenacity.retry_if_exception_type(requests.RequestException)
        | tenacity.retry_if_result(lambda r: r.status_code == 429 or r.status_code >= 500))
    try:
        response: requests.Response = retrying(http.get, url, headers=headers, params=params,
                                               timeout=TIMEOUT)
    except requests.RequestException as exc:
        raise ProvenanceError("attestations", f"cannot reach GitHub's attestations API: "
                              f"{type(exc).__name__}.", hint="Run the deploy again.") from None
    return response


def _last_answer(state: tenacity.RetryCallState) -> requests.Response:
    """Out of attempts: the last answer (a 5xx or 429) is reported; an exception is raised."""
    assert state.outcome is not None
    response: requests.Response = state.outcome.result()
    return response


def _retry_after(state: tenacity.RetryCallState) -> float:
    outcome = state.outcome
    if outcome is not None and not outcome.failed:
        value = outcome.result().headers.get("Retry-After", "")
        if value.isascii() and value.isdigit():
            return min(float(value), MAX_WAIT_SECONDS)
    return float(min(2 ** state.attempt_number, 20))


# -- verifying a bundle with sigstore (imported here only) --------------------------------
def load_roots(path: str) -> list[TrustedRoot]:
    """``gh attestation trusted-root``'s output: one trusted root (JSON) a line."""
    from sigstore.models import TrustedRoot  # noqa: PLC0415
    from sigstore_models.trustroot.v1 import TrustedRoot as RootMessage  # noqa: PLC0415

    try:
        lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError("trusted_root", f"cannot read {shown(path)}: "
                         f"{type(exc).__name__}.", hint=_ROOT_HINT) from None
    roots = []
    for number, line in enumerate(lines, start=1):
        try:
            roots.append(TrustedRoot(RootMessage.from_json(line)))
        except Exception:  # pydantic or sigstore: whatever it is, the line is not a root
            raise InputError("trusted_root", f"line {number} of {shown(path)} is not a "
                             "Sigstore trusted root.", hint=_ROOT_HINT) from None
    if not roots:
        raise InputError("trusted_root", f"{shown(path)} holds no trusted root.",
                         hint=_ROOT_HINT)
    return roots


_ROOT_HINT = ("Write the file with `gh attestation trusted-root > trusted_root.jsonl` (one "
              "root a line), or leave `trusted_root` empty for the public-good root.")


def public_good_root() -> list[TrustedRoot]:
    from sigstore.errors import Error  # noqa: PLC0415
    from sigstore.models import ClientTrustConfig  # noqa: PLC0415

    try:
        return [ClientTrustConfig.production().trusted_root]
    except (Error, OSError) as exc:  # OSError: its cache directory
        raise ProvenanceError("trust root", f"cannot update the public-good Sigstore trust "
                              f"root: {exc}", hint="The runner needs network to "
                              "tuf-repo-cdn.sigstore.dev, or set `trusted_root` to a file "
                              "(`gh attestation trusted-root`).") from None


def verify_bundle(bundle: Mapping[str, Any], roots: list[TrustedRoot]) -> Claims:
    """Verify one bundle against each root in turn (any may pass); the claims it proves."""
    if not has_log_entry(bundle):
        raise ProvenanceError(
            "transparency log", f"{PRIVATE}: the bundle has no transparency-log entry "
            "(GitHub signs attestations of private repositories with its own Sigstore "
            "instance, which has none), and sigstore refuses such bundles "
            "(sigstore/sigstore-python#1529).", hint="Deploy this repository with "
            "`verify_provenance: false` until deploykit can verify them; check by hand with "
            "`gh attestation verify oci://<image>@<digest> --repo <owner>/<repo>`.")
    from sigstore.errors import Error  # noqa: PLC0415
    from sigstore.models import Bundle  # noqa: PLC0415
    from sigstore.verify import Verifier  # noqa: PLC0415

    try:
        parsed = Bundle.from_json(json.dumps(bundle))
    except (Error, ValueError) as exc:
        raise ProvenanceError("signature", f"the attestation bundle is malformed: {exc}",
                              hint=_ATTEST_HINT) from None
    reasons = []
    for root in roots:
        try:
            payload_type, payload = Verifier(trusted_root=root).verify_dsse(
                parsed, _IdentityCheckedAfter())
        except (Error, ValueError) as exc:
            reasons.append(str(exc) or type(exc).__name__)
            continue
        return _claims(parsed, bundle, payload_type, payload)
    raise ProvenanceError(
        "signature", f"the attestation does not verify against the trust root: "
        f"{'; '.join(dict.fromkeys(reasons))}.", hint="Use a bundle signed by GitHub's "
        "Sigstore (public-good for public repositories) and the matching `trusted_root`; a "
        "changed statement or a foreign root never verifies.")


class _IdentityCheckedAfter:
    """sigstore's identity policy hook: deploykit applies its own policy to the verified
    certificate (:func:`check_claims`), so that each failure names its check."""

    def verify(self, cert: Any) -> None:
        return None


def _claims(parsed: Any, bundle: Mapping[str, Any], payload_type: str,
            payload: bytes) -> Claims:
    cert = parsed.signing_certificate
    extensions = {ext.oid.dotted_string: ext.value.value for ext in cert.extensions
                  if ext.oid.dotted_string.startswith(_OID)}
    found = certificate_claims(extensions)
    integrated = bundle["verificationMaterial"]["tlogEntries"][0].get("integratedTime", "0")
    return Claims(subject_digests=statement_digests(payload_type, payload),
                  signed_at=datetime.fromtimestamp(int(integrated), tz=UTC), **found)


# -- the step -----------------------------------------------------------------------------
def check_provenance(settings: Settings, actions: Actions, tag: str | None,
                     digest: str) -> None:
    """The deploy's check (after resolve, before the lock); nothing when it is off."""
    if not settings.verify_provenance:
        return
    expected = expected_for(settings, tag, digest)
    roots = load_roots(settings.trusted_root) if settings.trusted_root else public_good_root()
    root_name = settings.trusted_root or PUBLIC_GOOD
    bundles = fetch_bundles(settings.github.api_url, expected.repository, digest,
                            settings.github_token)
    failures: list[ProvenanceError] = []
    for bundle in bundles:
        try:
            claims = verify_bundle(bundle, roots)
            check_claims(claims, expected)
        except ProvenanceError as exc:
            failures.append(exc)
            continue
        actions.info(f"Build provenance verified: {digest} was built by "
                     f"{claims.signer_workflow} from {claims.source_ref} "
                     f"({claims.source_commit}).")
        actions.add_summary(summary(claims, expected, root_name))
        return
    first = failures[0]
    if len(failures) > 1:
        first.message += f" ({len(failures)} attestations, none passed; this is the first.)"
    raise first
