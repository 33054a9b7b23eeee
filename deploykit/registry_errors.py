"""How a registry's failures read: a 403's fix, what is worth another try (429, 5xx,
a dropped connection) and how long to wait (``Retry-After``, back-off), a connection
that cannot be cured by waiting (refused, unknown name, no route, proxy, certificate)."""

from __future__ import annotations

import errno
import re
import socket
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from deploykit.errors import (
    DeniedError,
    RegistryUnreachableError,
)

if TYPE_CHECKING:
    import requests
    from tenacity import RetryCallState


def denied_error(registry: str, what: str, detail: str = "", *,
                 push: bool = True) -> DeniedError:
    """A 403 (or a push's ``denied:``) as a :class:`DeniedError` with the fix."""
    suffix = f": {detail}" if detail else ""
    if registry == "ghcr.io" or "write_package" in detail or "permission_denied" in detail:
        hint = ("In the package's settings on GitHub (Package settings > Manage Actions "
                "access), grant this repository access with the Write role; with "
                "GITHUB_TOKEN the workflow needs `permissions: packages: write`; a personal "
                "access token needs the `write:packages` scope (`read:packages` is enough to "
                "deploy)." if push else
                "In the package's settings on GitHub (Package settings > Manage Actions "
                "access), grant this repository access (Read is enough to deploy); with "
                "GITHUB_TOKEN the workflow needs `permissions: packages: read`; a personal "
                "access token needs the `read:packages` scope (`write:packages` to build).")
    else:
        hint = ("The credentials were accepted but do not allow this on the repository: "
                "check the account's permissions in the registry"
                + (" (it needs the right to push)" if push else "")
                + ", and `image_repo` (some registries deny a repository that does not "
                "exist the same way).")
    return DeniedError(f"{registry} denied access to {what}{suffix}", hint=hint)


class Retryable(Exception):
    """A failure worth another try: a connection error, 429 or 5xx. ``cause`` names a
    connection failure no wait cures (refused, unknown name, no route, proxy): tried
    only :data:`FAIL_FAST_ATTEMPTS` times."""

    def __init__(self, detail: str, retry_after: float | None = None, *,
                 status: int | None = None, cause: str = "", host: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after
        self.status = status
        self.cause = cause
        self.host = host


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    from email.utils import parsedate_to_datetime  # noqa: PLC0415  (10 ms, rarely needed)

    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def error_codes(response: requests.Response) -> tuple[set[str], str]:
    """The registry's ``errors[].code`` set and a short detail text."""
    try:
        body = response.json()
    except ValueError:
        return set(), response.text.strip()[:200]
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return set(), ""
    codes = {str(error.get("code", "")) for error in errors if isinstance(error, dict)}
    messages = [f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
                for error in errors if isinstance(error, dict)]
    return codes, "; ".join(messages)


# -- connection failures ----------------------------------------------------------------
FAIL_FAST_ATTEMPTS = 2
CAUSE_WORDS = {"refused": "connection refused", "dns": "name not found",
                "no-route": "no route to host", "proxy": "proxy error"}
_CAUSE_ERRNOS = {errno.ECONNREFUSED: "refused", errno.EHOSTUNREACH: "no-route",
                 errno.ENETUNREACH: "no-route"}
_CAUSE_TEXTS = (
    ("dns", re.compile(r"Name or service not known|Temporary failure in name resolution|"
                       r"nodename nor servname|No address associated with hostname|"
                       r"getaddrinfo failed|Failed to resolve", re.IGNORECASE)),
    ("refused", re.compile(r"Connection refused|actively refused", re.IGNORECASE)),
    ("no-route", re.compile(r"No route to host|Network is unreachable", re.IGNORECASE)),
)


def connection_cause(exc: Exception) -> str:
    """``refused``, ``dns``, ``no-route`` or ``proxy``: failures no retry cures; "" for
    the transient ones (reset, aborted, timeouts)."""
    import requests  # noqa: PLC0415

    if isinstance(exc, requests.exceptions.ProxyError):
        return "proxy"
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop()
        seen.append(current)
        if isinstance(current, socket.gaierror):
            return "dns"
        if isinstance(current, OSError) and current.errno in _CAUSE_ERRNOS:
            return _CAUSE_ERRNOS[current.errno]
        todo += [linked for linked in (current.__cause__, current.__context__,
                                       getattr(current, "reason", None), *current.args)
                 if isinstance(linked, BaseException) and linked not in seen]
    text = str(exc)
    return next((cause for cause, pattern in _CAUSE_TEXTS if pattern.search(text)), "")


def connection_error(exc: Retryable, what: str, registry: str,
                      attempts: int) -> RegistryUnreachableError:
    """The host, the cause in plain words and the likely fix."""
    host = exc.host or registry
    name = urlsplit(f"//{host}").hostname or host
    tried = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if exc.cause == "dns":
        return RegistryUnreachableError(
            f"The name {name} does not resolve: no DNS answer for it ({what}, {tried}).",
            title="Registry name not found",
            hint=f"Check `registry` ({registry}) for a typo: a host such as ghcr.io, without "
            "https://. If it is right, this machine has no network or no DNS, or must go "
            "through a proxy (HTTPS_PROXY).")
    if exc.cause == "refused":
        return RegistryUnreachableError(
            f"Nothing accepts connections at {host}: connection refused ({what}, {tried}).",
            title="Registry refused the connection",
            hint=f"Check `registry` ({registry}) for a typo in the host or the port, and that "
            "the registry is running there; behind a proxy, set HTTPS_PROXY.")
    if exc.cause == "no-route":
        return RegistryUnreachableError(
            f"No network route to {host}: the host or its network is unreachable ({what}, "
            f"{tried}).", title="No route to the registry",
            hint=f"This machine has no network path to {name}: check its network and "
            "firewall, a proxy it must use (HTTPS_PROXY), and `registry` for a typo.")
    return RegistryUnreachableError(
        f"The proxy failed the connection to {host} ({what}, {tried}): {exc.detail}",
        title="Proxy error",
        hint="Check HTTPS_PROXY, HTTP_PROXY and NO_PROXY (a registry on this machine belongs "
        "in NO_PROXY).")


def tls_error(registry: str, host: str, exc: Exception) -> RegistryUnreachableError:
    verify = "CERTIFICATE_VERIFY_FAILED" in str(exc) or "certificate verify failed" in str(exc)
    return RegistryUnreachableError(
        f"TLS with {registry} failed: {exc}", title="Registry TLS error",
        hint=(f"The certificate of {host} is not trusted here: a proxy that intercepts TLS "
              "or a private registry needs its CA in the runner's bundle (REQUESTS_CA_BUNDLE "
              "or the system's CA certificates); check `registry` for a typo."
              if verify else f"Check `registry` ({registry}): does {host} speak HTTPS on that "
              "port? A proxy in between (HTTPS_PROXY) may break TLS."))


def _plain_backoff(attempt_number: int) -> float:
    return min(0.5 * 2.0 ** (attempt_number - 1), 10.0)


def last_attempt(attempt: int, seconds_left: float) -> int:
    """The last attempt the budget allows after ``attempt`` when every wait is the back-off."""
    while _plain_backoff(attempt) <= seconds_left:
        seconds_left -= _plain_backoff(attempt)
        attempt += 1
    return attempt


def backoff(state: RetryCallState) -> float:
    """Exponential back-off, never shorter than the server's ``Retry-After``."""
    backoff = _plain_backoff(state.attempt_number)
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, Retryable) and exc.retry_after is not None:
        return max(exc.retry_after, backoff)
    return backoff


