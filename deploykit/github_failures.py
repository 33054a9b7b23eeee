"""How a GitHub API failure is read: rate limited or transient (retried, honouring
``Retry-After`` and the rate-limit reset), its reason, and the hint that fixes it."""

from __future__ import annotations

import time

import requests
import tenacity
from github import GithubException

from deploykit.settings import Settings

ATTEMPTS = 4
MAX_WAIT_SECONDS = 90.0  # a rate-limit reset further away fails the record instead of stalling
SECONDARY_RATE_LIMIT_WAIT = 60.0  # GitHub's advice when it sends no Retry-After
TRANSIENT_STATUSES = frozenset({500, 502, 503, 504})


def header(exc: BaseException, name: str) -> str:
    headers = getattr(exc, "headers", None) or {}
    for key, value in headers.items():
        if key.lower() == name:
            return str(value)
    return ""


def message(exc: BaseException) -> str:
    data = getattr(exc, "data", None)
    if isinstance(data, dict):
        return str(data.get("message") or "")
    return str(data or "")


def is_rate_limited(exc: BaseException) -> bool:
    if not isinstance(exc, GithubException):
        return False
    if exc.status == 429:
        return True
    return exc.status == 403 and (
        bool(header(exc, "retry-after")) or header(exc, "x-ratelimit-remaining") == "0"
        or "rate limit" in message(exc).lower()
    )


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, requests.ConnectionError | requests.Timeout):
        return True
    return isinstance(exc, GithubException) and (
        exc.status in TRANSIENT_STATUSES or is_rate_limited(exc))


def outcome_exception(state: tenacity.RetryCallState) -> BaseException | None:
    return state.outcome.exception() if state.outcome else None


def wait_seconds(state: tenacity.RetryCallState) -> float:
    exc = outcome_exception(state)
    retry_after = header(exc, "retry-after") if exc else ""
    if retry_after.isdigit():
        return float(retry_after)
    if exc is not None and is_rate_limited(exc):
        reset = header(exc, "x-ratelimit-reset")
        if header(exc, "x-ratelimit-remaining") == "0" and reset.isdigit():
            return max(float(reset) - time.time(), 0.0) + 1.0
        return SECONDARY_RATE_LIMIT_WAIT
    return float(min(2 ** (state.attempt_number - 1), 8))


def should_stop(state: tenacity.RetryCallState) -> bool:
    return state.attempt_number >= ATTEMPTS or wait_seconds(state) > MAX_WAIT_SECONDS


def reason(exc: BaseException) -> str:
    if not isinstance(exc, GithubException):
        return f"{type(exc).__name__}: {exc}"
    data = exc.data if isinstance(exc.data, dict) else {}
    details = [str(error.get("message") or error.get("code") or "")
               for error in data.get("errors") or [] if isinstance(error, dict)]
    details = [detail for detail in details if detail]
    reason = f"{exc.status} {message(exc)}".strip()
    return reason + (f" ({'; '.join(details)})" if details else "")


def hint(exc: BaseException, permission: str, settings: Settings) -> str:
    status = exc.status if isinstance(exc, GithubException) else 0
    if is_rate_limited(exc):
        return "GitHub's API rate limit was reached; re-run the job later to record it."
    if status == 401:
        return ("GitHub rejected the `github_token`: pass `github_token: ${{ github.token }}` "
                "or a token that has not expired.")
    if status in (403, 404):
        return (f"Give the job `permissions: {permission}` (or use a token that has it) and "
                f"check that it can see `{settings.github.repository}`.")
    if status == 422 and "no ref found" in message(exc).lower():
        return ("A deployment needs a ref that exists in the repository: a pushed `vX.Y.Z` "
                "tag or a commit SHA.")
    if status in TRANSIENT_STATUSES or is_transient(exc):
        return (f"GitHub ({settings.github.api_url}) failed {ATTEMPTS} times; re-run the job "
                "to record it. On GitHub Enterprise Server, GITHUB_API_URL must be "
                "`https://HOST/api/v3`.")
    return "See the message above; the request was not retried."
