"""What a verified attestation claims, and deploykit's policy on it (pure: no I/O).

The in-toto statement's subject digests, a Fulcio certificate's GitHub claims (its DER
extensions), and :func:`check_claims`: the repository, the ref, the commit and the signer
workflow a production deploy accepts. :mod:`deploykit.provenance` fetches and verifies.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from deploykit.actions import markdown_table, markdown_text
from deploykit.errors import InputError, ProvenanceError, shown
from deploykit.settings import Settings
from deploykit.tags import is_release_tag

ISSUER = "https://token.actions.githubusercontent.com"
INTOTO_PAYLOAD = "application/vnd.in-toto+json"
INTOTO_STATEMENT = "https://in-toto.io/Statement/v1"
SLSA_PROVENANCE = "https://slsa.dev/provenance/v1"
# The reusable build workflow (it attests the image it built for its caller).
REUSABLE_WORKFLOW = "https://github.com/deploykit-org/deploykit/.github/workflows/build-push.yml@"

# Fulcio's certificate extensions (1.3.6.1.4.1.57264.1.x): DER UTF8Strings from 1.8 on.
FULCIO_OID = "1.3.6.1.4.1.57264.1."
ISSUER_V2, BUILD_SIGNER_URI = FULCIO_OID + "8", FULCIO_OID + "9"
SOURCE_REPOSITORY_URI, SOURCE_DIGEST = FULCIO_OID + "12", FULCIO_OID + "13"
SOURCE_REF = FULCIO_OID + "14"
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
                              "an in-toto statement.", hint=ATTEST_HINT)
    try:
        statement = json.loads(payload)
    except ValueError:
        raise ProvenanceError("statement", "the statement is not JSON.",
                              hint=ATTEST_HINT) from None
    if not isinstance(statement, dict) or statement.get("_type") != INTOTO_STATEMENT \
            or statement.get("predicateType") != SLSA_PROVENANCE:
        raise ProvenanceError("statement", "the statement is not an in-toto v1 SLSA v1 "
                              "provenance statement.", hint=ATTEST_HINT)
    subjects = statement.get("subject")
    digests = []
    for subject in subjects if isinstance(subjects, list) else []:
        digest = subject.get("digest") if isinstance(subject, dict) else None
        if isinstance(digest, dict) and isinstance(digest.get("sha256"), str):
            digests.append(f"sha256:{digest['sha256'].lower()}")
    return tuple(digests)


ATTEST_HINT = ("Attest the image with actions/attest-build-provenance (subject-digest: the "
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
