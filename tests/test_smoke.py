from __future__ import annotations

import base64
import contextlib
import http.server
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import responses
import tenacity

from deploykit.errors import DeployError
from deploykit.smoke import smoke_test

URL = "http://app.test/health"
NO_WAIT = tenacity.wait_none()


@responses.activate
def test_passes_when_status_and_text_match(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body="hello v1", status=200)
    actions = make_actions()
    results = smoke_test([URL], status=200, contains="v1", timeout=5, actions=actions,
                         wait=NO_WAIT)
    assert [(r.url, r.ok, r.detail) for r in results] == [(URL, True, "200")]
    assert actions.out.getvalue() == f"Smoke test: {URL} answered 200 and contains 'v1'.\n"


@responses.activate
def test_retries_until_the_app_answers(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body=requests.ConnectionError("refused"))
    responses.get(URL, status=502)
    responses.get(URL, body="ok", status=200)
    results = smoke_test([URL], status=200, contains="", timeout=30, actions=make_actions(),
                         wait=NO_WAIT)
    assert results[0].ok
    assert len(responses.calls) == 3


@responses.activate
def test_wrong_status_fails_after_the_deadline(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, status=500)
    with pytest.raises(DeployError) as info:
        smoke_test([URL], status=200, contains="", timeout=0, actions=make_actions(),
                   wait=NO_WAIT)
    assert info.value.message == f"Smoke test: {URL} answered 500, expected 200 (retried for 0 s)."
    assert "smoke_timeout" in info.value.hint
    assert info.value.status == "failed"


@responses.activate
def test_missing_text_fails(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body="hello v2", status=200)
    with pytest.raises(DeployError, match="answered 200 without the text 'v1'"):
        smoke_test([URL], status=200, contains="v1", timeout=0, actions=make_actions(),
                   wait=NO_WAIT)


@responses.activate
def test_every_url_is_checked_with_its_own_expected_status(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get("http://a.test/", status=204)
    responses.get("http://b.test/", status=404)
    with pytest.raises(DeployError, match=r"http://b\.test/ answered 404, expected 204"):
        smoke_test(["http://a.test/", "http://b.test/"], status=204, contains="", timeout=0,
                   actions=make_actions(), wait=NO_WAIT)


@responses.activate
def test_connection_error_is_named(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, body=requests.ConnectionError("refused"))
    with pytest.raises(DeployError, match=r"no answer \(ConnectionError\)"):
        smoke_test([URL], status=200, contains="", timeout=0, actions=make_actions(),
                   wait=NO_WAIT)


# -- issue 20: smoke_timeout is a deadline for the whole check ---------------------------
class Trickle(http.server.BaseHTTPRequestHandler):
    """200 with a 40-byte body, one byte every 0.25 s (10 s in all); or no answer."""

    def do_GET(self) -> None:
        if self.path == "/silent":
            time.sleep(10)
            return
        self.send_response(200)
        self.send_header("Content-Length", "40")
        self.end_headers()
        with contextlib.suppress(OSError):
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.25)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def trickling_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("path", ["/trickle", "/silent"])
def test_a_trickling_or_silent_endpoint_fails_at_the_deadline(
        make_actions, trickling_server: str, path: str) -> None:  # type: ignore[no-untyped-def]
    """Before: the body arrived in 10 s and passed (each read was within its timeout)."""
    started = time.monotonic()
    with pytest.raises(DeployError, match="gave no complete answer in time") as caught:
        smoke_test([trickling_server + path], status=200, contains="", timeout=2,
                   actions=make_actions())
    elapsed = time.monotonic() - started
    assert elapsed < 3.5, elapsed  # 2 s, with room for a slow machine; not 10 s
    assert "(retried for 2 s)" in caught.value.message


@responses.activate
def test_a_redirect_to_another_origin_is_not_followed(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, status=302, headers={"Location": "https://elsewhere.test/ok"})
    responses.get("https://elsewhere.test/ok", body="fine", status=200)
    with pytest.raises(DeployError) as caught:
        smoke_test([URL], status=200, contains="", timeout=0, actions=make_actions(),
                   wait=NO_WAIT)
    assert caught.value.message == (
        f"Smoke test: {URL} answered 302, a redirect to another origin "
        "(https://elsewhere.test/ok): not followed, that host's answer says nothing of this "
        "deploy (retried for 0 s).")
    assert [call.request.url for call in responses.calls] == [URL]


@responses.activate
def test_a_redirect_on_the_same_origin_is_followed(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, status=301, headers={"Location": "/health/"})
    responses.get("http://app.test/health/", body="v1", status=200)
    results = smoke_test([URL], status=200, contains="v1", timeout=0, actions=make_actions(),
                         wait=NO_WAIT)
    assert results[0].ok


@responses.activate
def test_an_expected_redirect_status_is_not_followed(make_actions) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, status=302, headers={"Location": "https://login.test/"})
    assert smoke_test([URL], status=302, contains="", timeout=0, actions=make_actions(),
                      wait=NO_WAIT)[0].ok


# -- issue 20: credentials in smoke_url --------------------------------------------------
@responses.activate
@pytest.mark.parametrize("answer", [200, 500])
def test_credentials_go_in_the_request_only(make_actions, answer: int) -> None:  # type: ignore[no-untyped-def]
    responses.get(URL, status=answer, body="ok")
    actions = make_actions()
    secret_url = "http://smoke%40user:Sm0ke-Pw@app.test/health"
    try:
        results = smoke_test([secret_url], status=200, contains="", timeout=0,
                             actions=actions, wait=NO_WAIT)
        shown = f"{results}"
    except DeployError as exc:
        shown = f"{exc} {exc.title}"
    sent = responses.calls[0].request
    assert sent.url == URL
    assert sent.headers["Authorization"] == "Basic " + base64.b64encode(
        b"smoke@user:Sm0ke-Pw").decode()
    assert URL in shown + actions.out.getvalue()
    for text in (shown, actions.out.getvalue(), actions.err.getvalue()):
        assert "Sm0ke-Pw" not in text and "smoke%40user" not in text
