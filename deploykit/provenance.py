"""``verify_provenance: true``: production runs only what this repository's pipeline built.

After resolve and before the lock (so before any pull or change), :func:`check_provenance`
fetches the GitHub artifact attestations of the resolved digest, verifies each Sigstore
bundle with ``sigstore`` (certificate chain to the trust root, the SCT, the transparency
log entry, the DSSE signature) and then applies deploykit's policy to what the verified
certificate and statement claim (:mod:`deploykit.provenance_claims`, pure). One that passes
everything is enough; otherwise the deploy stops with a :class:`ProvenanceError` naming
the check that failed.

``sigstore`` (and pydantic, tuf...) is imported only here, inside the functions that
verify: a run with ``verify_provenance: false`` never loads it (start-up cost).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
import tenacity

from deploykit import __version__
from deploykit.actions import Actions
from deploykit.errors import InputError, ProvenanceError, shown
from deploykit.provenance_claims import (
    ATTEST_HINT,
    FULCIO_OID,
    PRIVATE,
    Claims,
    certificate_claims,
    check_claims,
    expected_for,
    has_log_entry,
    statement_digests,
    summary,
)
from deploykit.settings import Settings
from deploykit.snappy import snappy_block

if TYPE_CHECKING:
    from sigstore.models import TrustedRoot

PUBLIC_GOOD = "the public-good Sigstore root (TUF)"
ATTEMPTS = 3
TIMEOUT = 30
MAX_WAIT_SECONDS = 60.0

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
                              hint=ATTEST_HINT) from None
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
                  if ext.oid.dotted_string.startswith(FULCIO_OID)}
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
