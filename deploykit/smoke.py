"""The smoke test: every URL answers the expected status and text, retried until a deadline."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import requests
import tenacity

from deploykit.actions import Actions
from deploykit.errors import DeployError

REQUEST_TIMEOUT = 10.0
RETRY_INTERVAL = 1.0


@dataclass(frozen=True)
class SmokeResult:
    url: str
    ok: bool
    detail: str  # "200" or why it failed


class SmokeCheckFailed(Exception):
    """One attempt failed; tenacity retries it until the deadline."""


def check_url(session: requests.Session, url: str, status: int, contains: str,
              timeout: float) -> str:
    """One GET (idempotent); returns the status seen, raises SmokeCheckFailed otherwise."""
    try:
        response = session.get(url, timeout=timeout, allow_redirects=True)
    except requests.RequestException as exc:
        raise SmokeCheckFailed(f"no answer ({type(exc).__name__})") from exc
    if response.status_code != status:
        raise SmokeCheckFailed(f"answered {response.status_code}, expected {status}")
    if contains and contains not in response.text:
        raise SmokeCheckFailed(f"answered {status} without the text {contains!r}")
    return str(response.status_code)


def smoke_test(
    urls: Sequence[str], *, status: int, contains: str, timeout: float, actions: Actions,
    session: requests.Session | None = None,
    wait: Callable[[tenacity.RetryCallState], float] | None = None,
) -> list[SmokeResult]:
    """Check every URL; raise DeployError naming the first URL still failing at the deadline."""
    session = session or requests.Session()
    results = []
    for url in urls:
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_delay(timeout),
            wait=wait or tenacity.wait_fixed(RETRY_INTERVAL),
            retry=tenacity.retry_if_exception_type(SmokeCheckFailed),
            reraise=True,
        )
        try:
            seen = retrying(check_url, session, url, status, contains,
                            min(REQUEST_TIMEOUT, max(timeout, 1.0)))
        except SmokeCheckFailed as exc:
            results.append(SmokeResult(url, False, str(exc)))
            raise DeployError(
                f"Smoke test: {url} {exc} (retried for {timeout:g} s).",
                hint="Check the URL (`smoke_url`) and the app's logs; raise `smoke_timeout` "
                "if the app needs longer to start.", title="Smoke test failed") from exc
        actions.info(f"Smoke test: {url} answered {seen}"
                     + (f" and contains {contains!r}." if contains else "."))
        results.append(SmokeResult(url, True, seen))
    return results
