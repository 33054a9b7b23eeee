"""The test bed's token-auth registry (distribution ``auth: token`` on 127.0.0.1:5002 and
its token service on :5003, started by scripts/provision-debian.sh) and a small faulty
HTTP proxy, for tests/integration/test_token_auth.py (which imports these fixtures).

The token service's users (all log in with the test bed password): USER pushes
everywhere but ``denied/*``; USER-reader only pulls (nothing on ``denied/*``);
USER-short gets tokens the registry accepts for 6 s, and ``expires_in`` says so;
USER-stale gets the same short tokens while ``expires_in`` claims 300 s.
Anonymous clients may pull ``public/*``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.integration.conftest import AUTH_PASSWORD, AUTH_USER, TestRegistry, _unavailable

TOKEN_REGISTRY = os.environ.get("DEPLOYKIT_TEST_TOKEN_REGISTRY", "127.0.0.1:5002")
TOKEN_SERVICE = os.environ.get("DEPLOYKIT_TEST_TOKEN_SERVICE", "127.0.0.1:5003")
REGISTRY_LOG = Path(os.environ.get("DEPLOYKIT_TESTBED_LOG_DIR", "/var/log"),
                    "deploykit-registry-token.log")
_AUTH_FAILURE = re.compile(
    r'msg="error authorizing context: (?P<reason>[^"]*)".*'
    r'http\.request\.method=(?P<method>\S+).*http\.request\.uri="?(?P<uri>[^" ]*)"? .*'
    r'http\.request\.useragent=(?:"(?P<quoted_agent>[^"]*)"|(?P<agent>\S+)).*'
    r'vars\.name=(?P<name>\S+)')


@dataclass(frozen=True)
class TokenBed:
    """The token registry, its users and what its two logs say."""

    host: str
    service: str
    password: str
    user: str

    @property
    def reader(self) -> str:
        return f"{self.user}-reader"

    @property
    def short(self) -> str:
        return f"{self.user}-short"

    @property
    def stale(self) -> str:
        return f"{self.user}-stale"

    def registry(self, user: str = "") -> TestRegistry:
        return TestRegistry(self.host, user, self.password if user else "")

    def repo(self, prefix: str = "it") -> str:
        return TestRegistry(self.host).repo(prefix)

    def log_mark(self) -> tuple[int, int]:
        """Where both logs end now: pass it to token_requests and auth_failures."""
        size = REGISTRY_LOG.stat().st_size if REGISTRY_LOG.exists() else 0
        return len(self._token_log(0)), size

    def _token_log(self, since: int) -> list[dict[str, Any]]:
        response = requests.get(f"http://{self.service}/log", params={"since": str(since)},
                                timeout=10)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line]

    def token_requests(self, mark: tuple[int, int], repo: str,
                       agent: str = "python-requests") -> list[dict[str, Any]]:
        """The token requests since ``mark`` that asked for ``repo`` (from ``agent``)."""
        return [entry for entry in self._token_log(mark[0])
                if agent in entry.get("agent", "")
                and any(scope.split(":")[1:2] == [repo] for scope in entry["scope"])]

    def auth_failures(self, mark: tuple[int, int], repo: str,
                      agent: str = "python-requests") -> list[tuple[str, str, str]]:
        """(method, uri, reason) of every request on ``repo`` the registry refused (401)."""
        with REGISTRY_LOG.open(errors="replace") as stream:
            stream.seek(mark[1])
            lines = stream.read().splitlines()
        found = []
        for line in lines:
            match = _AUTH_FAILURE.search(line)
            if match and match["name"] == repo and \
                    agent in (match["agent"] or match["quoted_agent"]):
                found.append((match["method"], match["uri"], match["reason"]))
        return found


@pytest.fixture(scope="session", name="token_bed")
def token_bed_fixture(docker_engine: None) -> TokenBed:
    try:
        answer = requests.get(f"http://{TOKEN_REGISTRY}/v2/", timeout=5)
        challenge = answer.headers.get("WWW-Authenticate", "")
        service = requests.get(f"http://{TOKEN_SERVICE}/log", params={"since": "1000000000"},
                               timeout=5).status_code
    except requests.RequestException as exc:
        _unavailable(f"token registry {TOKEN_REGISTRY} or its token service {TOKEN_SERVICE} "
                     f"not answering: {exc}")
    if answer.status_code != 401 or not challenge.startswith("Bearer ") or service != 200:
        _unavailable(f"token registry {TOKEN_REGISTRY} not answering 401 with a Bearer "
                     f"challenge (got {answer.status_code} {challenge!r}), or no token log")
    if not REGISTRY_LOG.exists():
        _unavailable(f"the token registry's log {REGISTRY_LOG} is missing")
    return TokenBed(TOKEN_REGISTRY, TOKEN_SERVICE, AUTH_PASSWORD, AUTH_USER)


# -- a faulty proxy -----------------------------------------------------------------------------
@dataclass
class _Rule:
    method: str
    path: re.Pattern[str]
    status: int = 0  # answer this instead of forwarding (0: forward)
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1_000_000
    delay: float = 0.0  # seconds to hold the upstream's answer back


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of ``upstream``: it answers some requests itself
    (e.g. ``429`` with ``Retry-After``), holds some answers back (a slow network), and
    forwards the rest as they are, Host header included (so the registry's upload
    ``Location`` names the proxy). A TLS hello gets an HTTP status line, so that docker
    falls back to plain HTTP as with a real loopback registry."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.rules: list[_Rule] = []
        self.seen: list[tuple[str, str, int]] = []  # method, path, status sent back
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, method: str, path: str, status: int, *, times: int,
               headers: dict[str, str] | None = None) -> None:
        self.rules.append(_Rule(method, re.compile(path), status, headers or {}, times))

    def slow(self, method: str, path: str, seconds: float) -> None:
        self.rules.append(_Rule(method, re.compile(path), delay=seconds))

    def rule(self, method: str, path: str) -> _Rule | None:
        with self.lock:
            for rule in self.rules:
                if rule.method == method and rule.path.search(path) and rule.times > 0:
                    if rule.status:
                        rule.times -= 1
                    return rule
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te",
               "upgrade", "content-length"}


def _handler(proxy: FaultyProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def handle(self) -> None:
            try:
                first = self.connection.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first == b"\x16":  # a TLS ClientHello: say HTTP, as a plain registry does
                self.connection.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                        b"Connection: close\r\n\r\n")
                return
            super().handle()

        def forward(self) -> None:
            body = self._body()
            rule = proxy.rule(self.command, self.path)
            if rule is not None and rule.status:
                self._reply(rule.status, list(rule.headers.items()), b"")
                return
            upstream = http.client.HTTPConnection(proxy.upstream, timeout=120)
            headers = {key: value for key, value in self.headers.items()
                       if key.lower() not in _HOP_BY_HOP}
            if body is not None:
                headers["Content-Length"] = str(len(body))
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            upstream.close()
            if rule is not None and rule.delay:
                time.sleep(rule.delay)
            self._reply(response.status, response.getheaders(), data)

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = forward

        def _body(self) -> bytes | None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else None

        def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
            with proxy.lock:
                proxy.seen.append((self.command, self.path, status))
            self.send_response(status)
            length = str(len(data))
            for key, value in headers:
                if key.lower() == "content-length" and self.command == "HEAD":
                    length = value
                elif key.lower() not in _HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

    return Handler


@pytest.fixture(name="faulty_proxy")
def faulty_proxy_fixture() -> Iterator[type[FaultyProxy]]:
    """Factory: ``faulty_proxy(upstream)`` starts one; all are closed afterwards."""
    started: list[FaultyProxy] = []

    class Started(FaultyProxy):
        def __init__(self, upstream: str) -> None:
            super().__init__(upstream)
            started.append(self)

    yield Started
    for proxy in started:
        proxy.close()
