#!/usr/bin/env python3
"""The test bed's token service: the Bearer-token flow of GHCR and Docker Hub, for real.

The distribution registry (``auth: token``) sends every client without a token here; this
service checks the Basic credentials, grants the actions its users.json allows, and signs a
JWT (RS256, the certificate in the ``x5c`` header) the registry checks against the same
certificate (``rootcertbundle``). Python stdlib + ``cryptography`` (Debian's
python3-cryptography), started by scripts/provision-debian.sh:

    token_service.py init  --dir DIR     key.pem + cert.pem (kept when present)
    token_service.py serve --dir DIR --listen 127.0.0.1:5003 --issuer I --service S

DIR/users.json (written by provision-debian.sh) holds the users and their rights::

    {"users": {"NAME": {"password": "...", "lifetime": 300,
                        "access": [["denied/*", []], ["*", ["pull", "push"]]]}},
     "anonymous": [["public/*", ["pull"]]]}

The first pattern (fnmatch) that matches a repository decides its actions. ``lifetime``
is the seconds the registry accepts the token: the JWT's ``exp`` is backdated by the
registry's 60 s leeway when it is shorter than 120 s, so that a short-lived token really
expires after ``lifetime`` seconds (the expiry tests need that); ``expires_in`` tells
the client the same ``lifetime`` (``reported_expires_in`` may claim longer, as a token
service with a skewed clock would).

Every token request is logged, one JSON object a line, in DIR/token-log.jsonl and served
by ``GET /log`` (``?since=N`` skips the first N lines): time, user ("" when anonymous),
the scopes asked for, what was granted, the status and the client's User-Agent.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import fnmatch
import hmac
import json
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

REGISTRY_LEEWAY = 60  # seconds distribution accepts a token past its exp
LOG_LOCK = threading.Lock()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- key and certificate -------------------------------------------------------------------
def init(directory: Path) -> None:
    """An RSA key and a self-signed certificate for it (10 years), unless both exist."""
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    if key_path.is_file() and cert_path.is_file():
        return
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deploykit test bed token")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


# -- the service ------------------------------------------------------------------------------
class TokenService:
    def __init__(self, directory: Path, issuer: str, service: str) -> None:
        key = serialization.load_pem_private_key((directory / "key.pem").read_bytes(),
                                                 password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self.key = key
        cert = x509.load_pem_x509_certificate((directory / "cert.pem").read_bytes())
        self.x5c = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
        self.users_path = directory / "users.json"
        self.log_path = directory / "token-log.jsonl"
        self.issuer, self.service = issuer, service

    def config(self) -> dict[str, Any]:
        """users.json, read at every request: an edit applies without a restart."""
        return dict(json.loads(self.users_path.read_text()))

    def authenticate(self, header: str) -> tuple[str, dict[str, Any] | None, bool]:
        """(user, their entry, credentials ok); ("", None, True) when anonymous."""
        if not header.startswith("Basic "):
            return "", None, True
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return "", None, False
        entry = self.config()["users"].get(user)
        if entry is None or not hmac.compare_digest(str(entry["password"]), password):
            return user, None, False
        return user, entry, True

    def grant(self, entry: dict[str, Any] | None, scopes: list[str]) -> list[dict[str, Any]]:
        rules = entry["access"] if entry is not None else self.config().get("anonymous", [])
        access = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            allowed = next((set(acts) for pattern, acts in rules
                            if fnmatch.fnmatchcase(name, pattern)), set())
            granted = sorted(set(actions.split(",")) & allowed)
            access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def token(self, user: str, access: list[dict[str, Any]], lifetime: int) -> str:
        now = int(time.time())
        backdate = REGISTRY_LEEWAY + 1 if lifetime < 2 * REGISTRY_LEEWAY else 0
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self.x5c]}
        exp = now + lifetime - backdate
        claims = {"iss": self.issuer, "sub": user, "aud": self.service,
                  "exp": exp, "nbf": min(now, exp) - 1, "iat": now,
                  "jti": uuid.uuid4().hex, "access": access}
        signing_input = (b64url(json.dumps(header).encode()) + "."
                         + b64url(json.dumps(claims).encode()))
        signature = self.key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signing_input}.{b64url(signature)}"

    def log(self, record: dict[str, Any]) -> None:
        with LOG_LOCK, self.log_path.open("a") as stream:
            stream.write(json.dumps(record) + "\n")


def handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            if url.path == "/token":
                self.issue(query)
            elif url.path == "/log":
                self.send_log(int((query.get("since") or ["0"])[0]))
            else:
                self.reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            """The OAuth2 form (``grant_type=password``) buildkit and containerd use."""
            length = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(length).decode(), keep_blank_values=True)
            if urlsplit(self.path).path != "/token" or \
                    (form.get("grant_type") or [""])[0] != "password":
                self.reply(404, {"error": "unsupported_grant_type"})
                return
            user = (form.get("username") or [""])[0]
            password = (form.get("password") or [""])[0]
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            self.issue(form, f"Basic {basic}")

        def issue(self, query: dict[str, list[str]], authorization: str = "") -> None:
            scopes = [part for value in query.get("scope", []) for part in value.split(" ")
                      if part]
            user, entry, ok = service.authenticate(
                authorization or self.headers.get("Authorization", ""))
            record: dict[str, Any] = {
                "time": time.time(), "user": user, "scope": scopes,
                "agent": self.headers.get("User-Agent", "")}
            if not ok:
                service.log({**record, "status": 401, "granted": []})
                self.reply(401, {"errors": [{"code": "UNAUTHORIZED",
                                             "message": "invalid username or password"}]},
                           {"WWW-Authenticate": 'Basic realm="deploykit-testbed-token"'})
                return
            access = service.grant(entry, scopes)
            lifetime = int((entry or {}).get("lifetime", 300))
            expires_in = int((entry or {}).get("reported_expires_in", lifetime))
            token = service.token(user, access, lifetime)
            service.log({**record, "status": 200, "granted": access, "expires_in": expires_in})
            issued = dt.datetime.now(dt.UTC).isoformat()
            self.reply(200, {"token": token, "access_token": token,
                             "expires_in": expires_in, "issued_at": issued})

        def send_log(self, since: int) -> None:
            lines = (service.log_path.read_text().splitlines()
                     if service.log_path.exists() else [])
            body = "\n".join(lines[since:]) + ("\n" if lines[since:] else "")
            self.reply(200, body, content_type="application/x-ndjson")

        def reply(self, status: int, body: Any, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write(f"{self.address_string()} {format % args}\n")

    return Handler


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["init", "serve"])
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--listen", default="127.0.0.1:5003")
    parser.add_argument("--issuer", default="deploykit-testbed-token-service")
    parser.add_argument("--service", default="deploykit-testbed")
    args = parser.parse_args(argv)
    init(args.dir)
    if args.command == "init":
        return 0
    host, _, port = args.listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), handler(
        TokenService(args.dir, args.issuer, args.service)))
    print(f"token service on http://{args.listen}/token (issuer {args.issuer}, "
          f"service {args.service})", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
