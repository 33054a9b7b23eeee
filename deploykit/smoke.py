"""The smoke test: every URL answers the expected status and text, retried until a deadline.

``smoke_timeout`` is a deadline for the whole check of a URL: connecting, the headers and
the whole body of every attempt, and the pauses between attempts. An endpoint that
trickles its answer a byte at a time fails at the deadline, whatever its pace.

Credentials in a URL (``http://user:PASSWORD@host/``) go into the Authorization header
of the requests to that URL's origin and nowhere else: the URL is shown without them,
and a redirect to another origin is not followed (its host would answer for ours).
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests
import tenacity

from deploykit.actions import Actions, without_credentials
from deploykit.errors import DeployError

REQUEST_TIMEOUT = 10.0  # one attempt, whole answer included; never past the deadline
RETRY_INTERVAL = 1.0
MIN_ATTEMPT = 1.0  # `smoke_timeout: 0` still gets one attempt of a second
LAST_ATTEMPT = 0.5  # no retry begins with less time than this left
MAX_REDIRECTS = 5  # to the same origin
MAX_BODY = 4 * 1024 * 1024  # a health page is small; `smoke_contains` is looked for in this
CHUNK = 16384


@dataclass(frozen=True)
class SmokeResult:
    url: str  # without credentials
    ok: bool
    detail: str  # "200" or why it failed


class SmokeCheckFailed(Exception):
    """One attempt failed; tenacity retries it until the deadline."""


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port (the default one filled in): what a redirect must keep."""
    parts = urllib.parse.urlsplit(url)
    default = {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), parts.port or default


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without its userinfo, and the (decoded) user and password of it."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    user = urllib.parse.unquote(parts.username or "")
    return without_credentials(url), (user, urllib.parse.unquote(parts.password or ""))


def check_url(session: requests.Session, url: str, status: int, contains: str,
              deadline: float, *, clock: Callable[[], float] = time.monotonic) -> str:
    """One attempt, over by ``deadline`` (a ``clock`` time) whatever the server's pace:
    the answer is awaited in a daemon thread that stops reading at the deadline too.
    Returns the status seen; raises SmokeCheckFailed otherwise."""
    outcome: list[str | SmokeCheckFailed] = []

    def attempt() -> None:
        try:
            outcome.append(_get(session, url, status, contains, deadline, clock=clock))
        except SmokeCheckFailed as failed:
            outcome.append(failed)

    worker = threading.Thread(target=attempt, name="smoke-request", daemon=True)
    worker.start()
    worker.join(max(deadline - clock(), 0.0))
    if not outcome:
        raise SmokeCheckFailed("gave no complete answer in time (a stalled or trickling "
                               "response)")
    if isinstance(outcome[0], SmokeCheckFailed):
        raise outcome[0]
    return outcome[0]


def _get(session: requests.Session, url: str, status: int, contains: str,
         deadline: float, *, clock: Callable[[], float]) -> str:
    address, auth = split_credentials(url)
    home = origin(address)
    for _ in range(MAX_REDIRECTS + 1):
        try:
            with session.get(address, auth=auth, timeout=max(deadline - clock(), 0.001),
                             allow_redirects=False, stream=True) as response:
                if response.is_redirect and response.status_code != status:
                    address = urllib.parse.urljoin(address, response.headers["location"])
                    if origin(address) != home:
                        raise SmokeCheckFailed(
                            f"answered {response.status_code}, a redirect to another "
                            f"origin ({without_credentials(address)}): not followed, that "
                            "host's answer says nothing of this deploy")
                    continue
                if response.status_code != status:
                    raise SmokeCheckFailed(
                        f"answered {response.status_code}, expected {status}")
                body = _read_body(response, deadline, clock)
        except requests.RequestException as exc:
            raise SmokeCheckFailed(f"no answer ({type(exc).__name__})") from exc
        if contains and contains not in body:
            raise SmokeCheckFailed(f"answered {status} without the text {contains!r}")
        return str(status)
    raise SmokeCheckFailed(f"redirected more than {MAX_REDIRECTS} times")


def _read_body(response: requests.Response, deadline: float,
               clock: Callable[[], float]) -> str:
    """The whole body (up to MAX_BODY), read by the deadline."""
    data = bytearray()
    for chunk in response.iter_content(CHUNK):
        if clock() >= deadline:
            raise SmokeCheckFailed("gave no complete answer in time (a stalled or "
                                   "trickling response)")
        data += chunk
        if len(data) >= MAX_BODY:
            break
    return bytes(data).decode(response.encoding or "utf-8", errors="replace")


def smoke_test(
    urls: Sequence[str], *, status: int, contains: str, timeout: float, actions: Actions,
    session: requests.Session | None = None,
    wait: Callable[[tenacity.RetryCallState], float] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[SmokeResult]:
    """Check every URL, each within ``timeout`` seconds in all; raise DeployError naming
    the first URL still failing at its deadline."""
    session = session or requests.Session()
    results = []
    for url in urls:
        shown = without_credentials(url)
        started = clock()
        deadline = started + max(timeout, MIN_ATTEMPT)  # no attempt runs past it
        last_start = started + timeout - LAST_ATTEMPT  # nor begins after this

        def out_of_time(state: tenacity.RetryCallState, last_start: float = last_start) -> bool:
            return clock() + (state.upcoming_sleep or 0.0) > last_start

        retrying = tenacity.Retrying(
            stop=out_of_time,
            wait=wait or tenacity.wait_fixed(RETRY_INTERVAL),
            retry=tenacity.retry_if_exception_type(SmokeCheckFailed),
            reraise=True,
        )
        try:
            seen = retrying(lambda deadline=deadline, url=url: check_url(
                session, url, status, contains,
                min(deadline, clock() + REQUEST_TIMEOUT), clock=clock))
        except SmokeCheckFailed as exc:
            results.append(SmokeResult(shown, False, str(exc)))
            raise DeployError(
                f"Smoke test: {shown} {exc} (retried for {timeout:g} s).",
                hint="Check the URL (`smoke_url`) and the app's logs; raise `smoke_timeout` "
                "if the app needs longer to start.", title="Smoke test failed") from exc
        actions.info(f"Smoke test: {shown} answered {seen}"
                     + (f" and contains {contains!r}." if contains else "."))
        results.append(SmokeResult(shown, True, seen))
    return results
