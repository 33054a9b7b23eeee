"""The zero-downtime tests' load client counts what it must: against a local HTTP server."""

from __future__ import annotations

import http.server
import itertools
import threading
from collections.abc import Iterator

import pytest

from tests.integration.conftest import free_port
from tests.integration.loadclient import LoadClient

ANSWERS = [(200, b"release v1\n"), (200, b"release v2\n"), (503, b"down\n"),
           (200, b"hello\n")]


class Handler(http.server.BaseHTTPRequestHandler):
    answers: Iterator[tuple[int, bytes]] = iter(())

    def do_GET(self) -> None:
        status, body = next(self.answers)
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.answers = itertools.cycle(ANSWERS)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def test_counts_answers_by_release_and_every_non_200(server: str) -> None:
    client = LoadClient(server, rate=100, max_requests=40, max_seconds=10, workers=1)
    client.start()
    assert client.wait(timeout=10)  # stops by itself after max_requests
    result = client.stop()
    assert result.sent == 40
    assert result.ok == 30 and result.failures == ["status 503"] * 10
    assert result.releases == {"v1": 10, "v2": 10, "?": 10}


def test_a_refused_connection_is_an_error() -> None:
    port = free_port()
    with LoadClient(f"http://127.0.0.1:{port}/", rate=50, max_requests=5,
                    max_seconds=5) as client:
        assert client.wait(timeout=5)
    assert client.result.sent == 5 and client.result.ok == 0
    assert client.result.failures == ["error: ConnectionRefusedError"] * 5


def test_time_limit_stops_it(server: str) -> None:
    client = LoadClient(server, rate=20, max_requests=10_000, max_seconds=0.5)
    client.start()
    assert client.wait(timeout=5)
    assert 5 <= client.stop().sent <= 12


@pytest.mark.parametrize("url", ["http://example.com:80/", "http://localhost:8080/",
                                 "https://127.0.0.1:443/", "http://127.0.0.1/"])
def test_only_127_0_0_1_with_a_port(url: str) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        LoadClient(url)
