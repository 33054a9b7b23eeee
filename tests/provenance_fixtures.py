"""A stand-in Sigstore: a trust root and attestation bundles that ``sigstore`` verifies
fully offline (issue 25), made with ``cryptography`` alone.

- Fulcio: a root CA (P-384) issues a P-256 leaf with GitHub's OIDC extensions
  (1.3.6.1.4.1.57264.1.x) and the signer workflow as its URI SAN.
- CT: a real embedded SCT, signed by the CT key over the precertificate's TBS.
- The statement: a DSSE envelope over an in-toto SLSA v1 provenance statement.
- Rekor: a ``dsse/0.0.1`` entry in a log of size 1 (root = SHA-256(0x00 || body)), a
  signed inclusion promise over its RFC 8785 form and a signed checkpoint.

The signing time comes from the log entry (``integratedTime``), so the short-lived leaf
certificate keeps verifying long after it expired, as GitHub's real ones do.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ISSUER = "https://token.actions.githubusercontent.com"
SIGNED_AT = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)
INTOTO = "application/vnd.in-toto+json"
SLSA_V1 = "https://slsa.dev/provenance/v1"
BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"
_SCT_LIST_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def _oid(number: int) -> x509.ObjectIdentifier:
    return x509.ObjectIdentifier(f"1.3.6.1.4.1.57264.1.{number}")


def _utf8_der(text: str) -> bytes:
    """A DER UTF8String (the form of Fulcio's extensions 1.8 and later)."""
    raw = text.encode()
    length = len(raw)
    if length < 0x80:
        return bytes([0x0C, length]) + raw
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x0C, 0x80 | len(size)]) + size + raw


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _key_id(key: ec.EllipticCurvePrivateKey) -> bytes:
    return hashlib.sha256(_spki(key)).digest()


@dataclass
class Build:
    """What the leaf certificate and the statement claim."""

    subject_digest: str  # sha256:<hex>, the image the statement is about
    repository: str = "octo-org/shop"
    ref: str = "refs/tags/v1.0.0"
    commit: str = "1f2e3d4c5b6a79881f2e3d4c5b6a79881f2e3d4c"
    signer_workflow: str = ""  # the build signer URI; default: release.yml of `repository`
    issuer: str = ISSUER
    subject_name: str = "127.0.0.1:5000/octo-org/shop"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def signer(self) -> str:
        return self.signer_workflow or (f"https://github.com/{self.repository}/.github/"
                                        f"workflows/release.yml@{self.ref}")


class StandInSigstore:
    """One trust root (Fulcio CA, CT log, Rekor log) and the bundles it signs."""

    def __init__(self, name: str = "stand-in") -> None:
        self.name = name
        self.ca_key = ec.generate_private_key(ec.SECP384R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.rekor_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_cert = self._root_ca()

    def _root_ca(self) -> x509.Certificate:
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, self.name),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"{self.name} fulcio")])
        key = self.ca_key.public_key()
        return (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject).public_key(key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(SIGNED_AT - timedelta(days=365))
                .not_valid_after(SIGNED_AT + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=False, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
                .sign(self.ca_key, hashes.SHA384()))

    # -- the trust root ---------------------------------------------------------------
    def trusted_root(self) -> dict[str, Any]:
        """``trusted_root.json`` (the form ``gh attestation trusted-root`` prints)."""
        start = {"start": (SIGNED_AT - timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")}

        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, Any]:
            return {"baseUrl": url, "hashAlgorithm": "SHA2_256",
                    "publicKey": {"rawBytes": _b64(_spki(key)),
                                  "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": start},
                    "logId": {"keyId": _b64(_key_id(key))}}

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.rekor_key, f"https://rekor.{self.name}.invalid")],
            "certificateAuthorities": [{
                "subject": {"organization": self.name, "commonName": f"{self.name} fulcio"},
                "uri": f"https://fulcio.{self.name}.invalid",
                "certChain": {"certificates": [
                    {"rawBytes": _b64(self.ca_cert.public_bytes(serialization.Encoding.DER))}]},
                "validFor": start}],
            "ctlogs": [log(self.ct_key, f"https://ctfe.{self.name}.invalid")],
            "timestampAuthorities": [],
        }

    # -- a bundle ---------------------------------------------------------------------
    def bundle(self, build: Build) -> dict[str, Any]:
        """A Sigstore bundle v0.3 over ``build``'s SLSA statement, logged in Rekor."""
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        cert = self._leaf(build, leaf_key)
        payload = json.dumps(statement(build), separators=(",", ":")).encode()
        signature = leaf_key.sign(pae(INTOTO, payload), ec.ECDSA(hashes.SHA256()))
        body = self._rekor_body(cert, payload, signature)
        return {
            "mediaType": BUNDLE_V03,
            "verificationMaterial": {
                "certificate": {"rawBytes": _b64(cert.public_bytes(serialization.Encoding.DER))},
                "tlogEntries": [self._log_entry(body)],
                "timestampVerificationData": {},
            },
            "dsseEnvelope": {"payload": _b64(payload), "payloadType": INTOTO,
                             "signatures": [{"sig": _b64(signature), "keyid": ""}]},
        }

    def _leaf(self, build: Build, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        """Fulcio's two steps: a precertificate's TBS signed by the CT log (the SCT), then
        the certificate with that SCT embedded."""
        placeholder = self._leaf_with(build, key, _sct_list(b"\0" * 40))
        sct = self._sct(placeholder.tbs_precertificate_bytes)
        return self._leaf_with(build, key, _sct_list(sct))

    def _leaf_with(self, build: Build, key: ec.EllipticCurvePrivateKey,
                   sct_list: bytes) -> x509.Certificate:
        claims = {1: build.issuer.encode(), 5: build.repository.encode(), 6: build.ref.encode(),
                  8: _utf8_der(build.issuer), 9: _utf8_der(build.signer),
                  12: _utf8_der(f"https://github.com/{build.repository}"),
                  13: _utf8_der(build.commit), 14: _utf8_der(build.ref),
                  21: _utf8_der(f"https://github.com/{build.repository}/actions/runs/42/"
                                "attempts/1")}
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([]))
                   .issuer_name(self.ca_cert.subject)
                   .public_key(key.public_key())
                   .serial_number(0x5EED)
                   .not_valid_before(SIGNED_AT - timedelta(minutes=1))
                   .not_valid_after(SIGNED_AT + timedelta(minutes=9))
                   .add_extension(x509.KeyUsage(
                       digital_signature=True, content_commitment=False,
                       key_encipherment=False, data_encipherment=False, key_agreement=False,
                       key_cert_sign=False, crl_sign=False, encipher_only=False,
                       decipher_only=False), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                  critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                                  critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.ca_key.public_key()), critical=False)
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.UniformResourceIdentifier(build.signer)]), critical=True))
        for number, value in claims.items():
            builder = builder.add_extension(x509.UnrecognizedExtension(_oid(number), value),
                                            critical=False)
        builder = builder.add_extension(x509.UnrecognizedExtension(_SCT_LIST_OID, sct_list),
                                        critical=False)
        return builder.sign(self.ca_key, hashes.SHA384())

    def _sct(self, tbs: bytes) -> bytes:
        """One RFC 6962 SCT (v1, precert entry) over ``tbs``, signed by the CT key."""
        timestamp = int(SIGNED_AT.timestamp() * 1000)
        issuer_key_id = _key_id(self.ca_key)
        signed_entry = issuer_key_id + len(tbs).to_bytes(3, "big") + tbs
        signed = struct.pack(f"!BBQH{len(signed_entry)}sH", 0, 0, timestamp, 1, signed_entry, 0)
        signature = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        return (struct.pack("!B32sQH", 0, _key_id(self.ct_key), timestamp, 0)
                + struct.pack("!BBH", 4, 3, len(signature)) + signature)

    def _rekor_body(self, cert: x509.Certificate, payload: bytes, signature: bytes) -> bytes:
        envelope = {"payload": _b64(payload), "payloadType": INTOTO,
                    "signatures": [{"sig": _b64(signature)}]}
        return json.dumps({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256", "value": hashlib.sha256(
                    json.dumps(envelope).encode()).hexdigest()},
                "payloadHash": {"algorithm": "sha256",
                                "value": hashlib.sha256(payload).hexdigest()},
                "signatures": [{"signature": _b64(signature), "verifier": _b64(
                    cert.public_bytes(serialization.Encoding.PEM))}],
            }}, separators=(",", ":")).encode()

    def _log_entry(self, body: bytes) -> dict[str, Any]:
        """Entry 0 of a log of size 1, with its inclusion promise and signed checkpoint."""
        integrated = int(SIGNED_AT.timestamp())
        log_id = _key_id(self.rekor_key)
        promise = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated,
                                 "logID": log_id.hex(), "logIndex": 0})
        root = hashlib.sha256(b"\0" + body).digest()
        signer = f"rekor.{self.name}.invalid"
        note = f"{signer} - 1234\n1\n{_b64(root)}\n"
        note_signature = self.rekor_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = f"{note}\n\u2014 {signer} {_b64(log_id[:4] + note_signature)}\n"
        return {
            "logIndex": "0",
            "logId": {"keyId": _b64(log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {"signedEntryTimestamp": _b64(
                self.rekor_key.sign(promise, ec.ECDSA(hashes.SHA256())))},
            "inclusionProof": {"logIndex": "0", "rootHash": _b64(root), "treeSize": "1",
                               "hashes": [], "checkpoint": {"envelope": checkpoint}},
            "canonicalizedBody": _b64(body),
        }


def _sct_list(sct: bytes) -> bytes:
    """The extension value: a DER OCTET STRING around the TLS SignedCertificateTimestampList."""
    tls = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
    return b"\x04" + _der_length(len(tls)) + tls


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(size)]) + size


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE's pre-authentication encoding."""
    return (f"DSSEv1 {len(payload_type)} {payload_type} {len(body)} ".encode() + body)


def statement(build: Build) -> dict[str, Any]:
    """An in-toto v1 statement with a SLSA v1 predicate, as attest-build-provenance makes."""
    algorithm, _, hexdigest = build.subject_digest.partition(":")
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": build.subject_name, "digest": {algorithm: hexdigest}}],
        "predicateType": SLSA_V1,
        "predicate": {
            "buildDefinition": {
                "buildType": "https://actions.github.io/buildtypes/workflow/v1",
                "externalParameters": {"workflow": {
                    "ref": build.ref, "repository": f"https://github.com/{build.repository}",
                    "path": ".github/workflows/release.yml"}},
                "resolvedDependencies": [{
                    "uri": f"git+https://github.com/{build.repository}@{build.ref}",
                    "digest": {"gitCommit": build.commit}}],
                **build.extra,
            },
            "runDetails": {"builder": {"id": build.signer},
                           "metadata": {"invocationId": f"https://github.com/{build.repository}"
                                                        "/actions/runs/42/attempts/1"}},
        },
    }


def tampered(bundle: dict[str, Any]) -> dict[str, Any]:
    """The same bundle with one byte of the statement changed after it was signed."""
    changed = copy.deepcopy(bundle)
    payload = base64.b64decode(changed["dsseEnvelope"]["payload"])
    changed["dsseEnvelope"]["payload"] = _b64(payload.replace(b"octo-org", b"octo-orh", 1))
    return changed


def without_log_entry(bundle: dict[str, Any]) -> dict[str, Any]:
    """A bundle as GitHub's private Sigstore instance makes them: no transparency log."""
    changed = copy.deepcopy(bundle)
    changed["verificationMaterial"]["tlogEntries"] = []
    return changed


def api_answer(*bundles: dict[str, Any]) -> dict[str, Any]:
    """``GET /repos/{owner}/{repo}/attestations/{digest}``'s answer."""
    return {"attestations": [{"bundle": bundle, "repository_id": 1} for bundle in bundles]}
