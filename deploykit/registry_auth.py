"""The connection to one registry: every request authenticated and, when idempotent,
retried. Auth is anonymous, Basic, or the Bearer-token challenge flow of GHCR and Docker
Hub, as docker does it: once the challenge is known, each request carries a token of the
scope it needs (``pull``, or ``pull,push`` for a build's writes), fetched once per scope,
shared by the upload threads and renewed before its ``expires_in`` runs out."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from deploykit.errors import (
    BadCredentialsError,
    DeniedError,
    InsecureRealmError,
    LoginRequiredError,
    RegistryError,
    RegistryUnreachableError,
    UnauthorizedError,
)
from deploykit.reference import DOCKER_HUB
from deploykit.registry_errors import (
    CAUSE_WORDS,
    FAIL_FAST_ATTEMPTS,
    Retryable,
    backoff,
    connection_cause,
    connection_error,
    denied_error,
    error_codes,
    last_attempt,
    parse_retry_after,
    tls_error,
)

if TYPE_CHECKING:
    import requests
    from tenacity import RetryCallState

_DOCKER_HUB_API = "registry-1.docker.io"
_DEFAULT_TOKEN_SECONDS = 60.0


# Patched by tests: the clock and the sleep of the retry loop.
def _sleep(seconds: float) -> None:
    time.sleep(seconds)


def _monotonic() -> float:
    return time.monotonic()


def _scheme(registry: str) -> str:
    """Plain HTTP only on loopback (as dockerd allows), HTTPS everywhere else."""
    host = urlsplit(f"//{registry}").hostname or ""
    if host == "localhost":
        return "http"
    try:
        return "http" if ipaddress.ip_address(host).is_loopback else "https"
    except ValueError:
        return "https"


class RegistryConnection:
    """Authenticated, retried requests to one repository of one registry."""

    def __init__(
        self,
        registry: str,
        repository: str,
        username: str = "",
        password: str = "",
        *,
        session: requests.Session | None = None,
        timeout: float = 30,
        retry_seconds: float = 60,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        self.registry = registry
        self.repository = repository
        self._username = username
        self._password = password
        import requests  # noqa: PLC0415  (see the imports)

        self._session = session or requests.Session()
        self._timeout = timeout
        self._retry_seconds = retry_seconds
        self._on_retry = on_retry
        api_host = _DOCKER_HUB_API if registry == DOCKER_HUB else registry
        self.base_url = f"{_scheme(registry)}://{api_host}"
        # Auth, shared by the upload threads: the challenge (learned from the first 401,
        # then every request asks for its scope's token up front, as docker does), one
        # token per scope, and a scope the registry asked for beyond the one needed.
        self._lock = threading.Lock()
        self._challenge: _Challenge | None = None
        self._tokens: dict[str, _Token] = {}
        self._extra_scopes: dict[str, str] = {}
        # Content addressed, so it never changes: a manifest read by digest (checked
        # against it) and an image config, read once per client. Tags are always read.
        self._by_digest: dict[str, tuple[bytes, str]] = {}  # content, Content-Type
        self._configs: dict[str, dict[str, Any]] = {}

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}"

    @property
    def pull_scope(self) -> str:
        return f"repository:{self.repository}:pull"

    @property
    def push_scope(self) -> str:
        return f"repository:{self.repository}:pull,push"

    def _json(self, content: bytes, what: str) -> dict[str, Any]:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RegistryError(f"{self.registry} sent a body that is not a JSON object for "
                                f"{what}.", hint="Is the registry an OCI distribution "
                                "registry? Check `registry`.")
        return body


    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        _, detail = error_codes(response)
        if status == 401:
            raise self._auth_error(response, _Sent(), self.pull_scope, what)
        if status == 403:
            raise denied_error(self.registry, what, detail)
        raise RegistryError(f"{self.registry} answered {status} for {what}"
                            + (f": {detail}" if detail else "."),
                            hint="Check `registry` and `image_repo`.")


    # -- transport: auth and retries ------------------------------------------------------
    def _call(
        self,
        method: str,
        url: str,
        what: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        scope: str = "",
        body: bytes | Path | None = None,
    ) -> requests.Response:
        """One idempotent request, authenticated, retried when transient."""
        return self._retrying(what, lambda: self._authorized(
            method, url, what, headers, params, scope=scope, body=body))

    def _retrying(
        self, what: str, call: Callable[[], requests.Response]
    ) -> requests.Response:
        from tenacity import Retrying, retry_if_exception_type  # noqa: PLC0415

        deadline = _monotonic() + self._retry_seconds

        def give_up(state: RetryCallState) -> bool:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, Retryable) and exc.cause and \
                    state.attempt_number >= FAIL_FAST_ATTEMPTS:
                return True
            return state.upcoming_sleep > deadline - _monotonic()

        def announce(state: RetryCallState) -> None:
            if self._on_retry is not None:
                self._on_retry(self._retry_line(what, state, deadline))

        retryer = Retrying(retry=retry_if_exception_type(Retryable), wait=backoff,
                           stop=give_up, sleep=_sleep, before_sleep=announce,
                           reraise=True)
        try:
            return retryer(call)
        except Retryable as exc:
            attempts = retryer.statistics.get("attempt_number", 1)
            if exc.cause:
                raise connection_error(exc, what, self.registry, attempts) from None
            raise RegistryUnreachableError(
                f"{self.registry} did not answer for {what}: {exc.detail} "
                f"(gave up after {attempts} attempts).",
                hint=f"Check that {self.registry} is reachable from this runner and "
                "try again later.") from None

    def _retry_line(self, what: str, state: RetryCallState, deadline: float) -> str:
        """``Registry R answered 503 for X; retrying in 2.0 s (attempt 2 of at most 10).``"""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, Retryable) and exc.status is not None:
            failure = f"answered {exc.status} for {what}"
        elif isinstance(exc, Retryable) and exc.cause:
            failure = f"did not answer for {what} ({CAUSE_WORDS[exc.cause]})"
        else:
            cause = exc.detail.split(":", 1)[0] if isinstance(exc, Retryable) else "no answer"
            failure = f"did not answer for {what} ({cause})"
        wait = state.upcoming_sleep
        attempt = state.attempt_number + 1
        last = (FAIL_FAST_ATTEMPTS if isinstance(exc, Retryable) and exc.cause
                else last_attempt(attempt, deadline - _monotonic() - wait))
        return (f"Registry {self.registry} {failure}; retrying in {wait:.1f} s (attempt "
                f"{attempt} of at most {last}).")

    def _authorized(
        self,
        method: str,
        url: str,
        what: str,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        *,
        scope: str = "",
        body: bytes | Path | None = None,
    ) -> requests.Response:
        """Send with the credentials ``scope`` needs. A 401 or 403 is answered at most twice
        (a challenge learned, a stale token renewed, a wider scope asked for); then it is
        the error it names."""
        scope = scope or self.pull_scope
        sent = self._credentials(scope, what)
        response = self._send(method, url, sent, headers, params, body=body)
        for _ in range(2):  # a challenge learned, then maybe a wider scope asked for
            if response.status_code not in (401, 403) or \
                    not self._worth_again(response, sent, scope):
                break
            sent = self._credentials(scope, what, stale=sent.token)
            response = self._send(method, url, sent, headers, params, body=body)
        if response.status_code not in (401, 403):
            return response
        raise self._auth_error(response, sent, scope, what)

    def _worth_again(self, response: requests.Response, sent: _Sent, scope: str) -> bool:
        """Whether other credentials might pass: a challenge learned now, a token not
        fetched for this very request (it may have expired), or a wider scope asked for."""
        challenge = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        with self._lock:
            if challenge is None and self._challenge is None and \
                    response.status_code == 403 and self._password:
                # A registry may answer 403 instead of 401: ask /v2/ how it wants auth.
                challenge = self._ping()
            known = self._challenge
            if challenge is not None and (known is None or (challenge.scheme, challenge.realm)
                                          != (known.scheme, known.realm)):
                self._challenge = known = challenge
            if known is None or sent.basic:
                return False
            if sent.token is None:  # nothing sent: send what the challenge wants
                return known.scheme == "bearer" or bool(self._password)
            wider = challenge is not None and bool(challenge.scope) and \
                not _covers(sent.token.scopes, challenge.scope)
            if wider and challenge is not None:
                self._extra_scopes[scope] = challenge.scope
                return True
            # insufficient_scope for the scope the token has: a new one would grant the same
            lacking = challenge is not None and challenge.error == "insufficient_scope"
            return not sent.fresh and not lacking

    def _ping(self) -> _Challenge | None:
        """The challenge of ``GET /v2/`` (how the registry wants to be authenticated)."""
        url = f"{self.base_url}/v2/"
        response = self._transient_checked(
            lambda: self._session.get(url, timeout=self._timeout), url)
        return _parse_challenge(response.headers.get("WWW-Authenticate", ""))

    def _credentials(self, scope: str, what: str, *, stale: _Token | None = None) -> _Sent:
        """What to send for ``scope``: a token (fetched once, shared by the threads, renewed
        before ``expires_in`` runs out), Basic, or nothing until a challenge asks."""
        with self._lock:
            challenge = self._challenge
            if challenge is None:
                return _Sent()
            if challenge.scheme == "basic":
                return _Sent(basic=bool(self._password))
            token = self._tokens.get(scope)
            if token is not None and token is not stale and _monotonic() < token.fresh_until:
                return _Sent(token=token)
            token = self._fetch_token(challenge, scope, what)
            self._tokens[scope] = token
            return _Sent(token=token, fresh=True)

    def _send(
        self,
        method: str,
        url: str,
        sent: _Sent,
        headers: Mapping[str, str] | None,
        params: Mapping[str, str] | None,
        *,
        body: bytes | Path | None = None,
    ) -> requests.Response:
        request_headers = dict(headers or {})
        auth = self._basic_auth() if sent.basic else None
        if sent.token is not None:
            request_headers["Authorization"] = f"Bearer {sent.token.value}"

        def send() -> requests.Response:
            if isinstance(body, Path):  # a file is opened anew for every attempt
                with body.open("rb") as stream:
                    return self._session.request(
                        method, url, headers=request_headers, params=params, auth=auth,
                        data=stream, timeout=self._timeout)
            return self._session.request(method, url, headers=request_headers,
                                         params=params, auth=auth, data=body,
                                         timeout=self._timeout)
        return self._transient_checked(send, url)

    def _transient_checked(
        self, send: Callable[[], requests.Response], url: str
    ) -> requests.Response:
        import requests  # noqa: PLC0415  (loaded by __init__ already)

        try:
            response = send()
        except requests.exceptions.SSLError as exc:
            raise tls_error(self.registry, urlsplit(url).netloc, exc) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            cause = "" if isinstance(exc, requests.Timeout) else connection_cause(exc)
            raise Retryable(f"{type(exc).__name__}: {exc}", cause=cause,
                             host=urlsplit(url).netloc) from None
        except requests.RequestException as exc:
            raise RegistryUnreachableError(f"Cannot talk to {self.registry}: {exc}",
                                           hint="Check `registry`.") from None
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise Retryable(f"HTTP {response.status_code}", retry_after,
                             status=response.status_code)
        return response

    def _basic_auth(self) -> requests.auth.HTTPBasicAuth:
        from requests.auth import HTTPBasicAuth  # noqa: PLC0415

        return HTTPBasicAuth(self._username, self._password)

    def _fetch_token(self, challenge: _Challenge, scope: str, what: str) -> _Token:
        """One token request for ``scope`` (plus a scope the registry asked for beyond it)."""
        realm = challenge.realm
        scopes = (scope, *([self._extra_scopes[scope]] if scope in self._extra_scopes else []))
        query: dict[str, str | list[str]] = {"scope": list(scopes)}
        if challenge.service:
            query["service"] = challenge.service
        auth = None
        if self._password:
            self._check_realm(realm, what)
            auth = self._basic_auth()
        response = self._transient_checked(lambda: self._session.get(
            realm, params=query, auth=auth, timeout=self._timeout), realm)
        if response.status_code in (401, 403):
            if not self._password:
                raise self._login_required(what, error_codes(response)[1], scope)
            raise self._bad_credentials(what, error_codes(response)[1])
        if response.status_code != 200:
            raise RegistryError(f"The token service {realm} answered {response.status_code} "
                                f"for {what}.", hint="Check `registry`.")
        body = self._json(response.content, f"a token for {what}")
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RegistryError(f"The token service {realm} sent no token for {what}.",
                                hint="Check `registry`.")
        lifetime = _lifetime(body.get("expires_in"))
        return _Token(str(token), scopes, _monotonic() + lifetime - min(30.0, lifetime / 2))

    def _check_realm(self, realm: str, what: str) -> None:
        """Credentials go over plain HTTP only to a token service on this loopback registry's
        own host (the test bed); anywhere else they would cross the network in clear."""
        parts = urlsplit(realm)
        registry_host = urlsplit(self.base_url).hostname
        if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname == registry_host
                                      and self.base_url.startswith("http:")):
            return
        raise InsecureRealmError(
            f"{self.registry} sends its token requests for {what} to {realm}, "
            + ("over plain HTTP on another host: deploykit does not send the credentials "
               "of " + (self._username or "(no user)") + " there."
               if parts.scheme == "http" else "which is not an https:// address."),
            hint=f"Check `registry` ({self.registry}): a registry whose token service is "
            "not https:// is misconfigured, or a proxy rewrote its answer.")

    # -- what a 401 or 403 means ---------------------------------------------------------
    def _auth_error(
        self, response: requests.Response, sent: _Sent, scope: str, what: str
    ) -> RegistryError:
        _, detail = error_codes(response)
        challenge = _parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is not None and challenge.error:
            detail = f"{detail} ({challenge.error})" if detail else challenge.error
        if not self._password:
            return self._login_required(what, detail, scope)
        if sent.basic and response.status_code == 401:
            return self._bad_credentials(what, detail)
        if sent.token is None and not sent.basic and response.status_code == 401:
            return UnauthorizedError(
                f"{self.registry} answered 401 for {what} without a challenge deploykit "
                f"understands (Bearer or Basic){': ' + detail if detail else '.'}",
                hint="Check `registry`: is it an OCI distribution registry?")
        if challenge is not None and challenge.error == "invalid_token":
            return UnauthorizedError(
                f"{self.registry} refused the token its token service issued for {what}: "
                f"{detail}", hint="The token expired at once: check the clocks of the runner, "
                "the registry and its token service, then try again.")
        return self._no_permission(what, detail, scope)

    def _login_required(self, what: str, detail: str, scope: str) -> LoginRequiredError:
        suffix = f": {detail}" if detail else "."
        verb = "push to" if scope.endswith("push") else "read"
        return LoginRequiredError(
            f"{self.registry} requires a login to {verb} {what}{suffix}",
            hint="Set `registry_username` and `registry_password` (for GHCR a token with "
            "`read:packages`, and `write:packages` to build).")

    def _bad_credentials(self, what: str, detail: str) -> BadCredentialsError:
        suffix = f": {detail}" if detail else "."
        hint = ("Check `registry_username` and `registry_password`: the password or token is "
                "wrong, expired or revoked.")
        if self.registry == "ghcr.io":
            hint += (" For GHCR: `registry_username` is a GitHub user (github.actor) and "
                     "`registry_password` a token: GITHUB_TOKEN of this run, or a personal "
                     "access token with `read:packages` (`write:packages` to build).")
        return BadCredentialsError(
            f"{self.registry} rejected the credentials of {self._username or '(no user)'} "
            f"for {what}{suffix}", hint=hint)

    def _no_permission(self, what: str, detail: str, scope: str) -> DeniedError:
        push = scope.endswith("push")
        user = self._username or "(no user)"
        error = denied_error(self.registry, what, detail, push=push)
        return DeniedError(
            f"{self.registry} accepted the credentials of {user} but denied "
            f"{'push' if push else 'pull'} access to {what}"
            + (f": {detail}" if detail else "."), hint=error.hint)


@dataclass(frozen=True)
class _Challenge:
    """A ``WWW-Authenticate`` challenge: ``bearer`` (a token service) or ``basic``."""

    scheme: str
    realm: str = ""
    service: str = ""
    scope: str = ""
    error: str = ""


def _parse_challenge(header: str) -> _Challenge | None:
    from requests.utils import parse_dict_header  # noqa: PLC0415

    scheme, _, params_text = header.strip().partition(" ")
    params = parse_dict_header(params_text)  # type: ignore[no-untyped-call]
    scheme = scheme.lower()
    if scheme == "bearer" and params.get("realm"):
        return _Challenge(scheme, str(params["realm"]), str(params.get("service") or ""),
                          str(params.get("scope") or ""), str(params.get("error") or ""))
    if scheme == "basic":
        return _Challenge(scheme)
    return None


@dataclass(frozen=True)
class _Token:
    value: str
    scopes: tuple[str, ...]
    fresh_until: float  # _monotonic() time after which it is renewed before use


@dataclass(frozen=True)
class _Sent:
    """The credentials one request carried."""

    token: _Token | None = None
    fresh: bool = False  # the token was fetched for this very request
    basic: bool = False


def _covers(scopes: tuple[str, ...], wanted: str) -> bool:
    """Whether ``repository:NAME:ACTIONS`` scopes include every action of ``wanted``."""
    kind, _, rest = wanted.partition(":")
    name, _, actions = rest.rpartition(":")
    for scope in scopes:
        have_kind, _, have_rest = scope.partition(":")
        have_name, _, have_actions = have_rest.rpartition(":")
        if (have_kind, have_name) == (kind, name) and \
                set(actions.split(",")) <= set(have_actions.split(",")):
            return True
    return False


def _lifetime(expires_in: object) -> float:
    """Seconds a token lives: its ``expires_in``, 60 when absent (the token spec's default)."""
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) \
            and expires_in > 0:
        return float(expires_in)
    return _DEFAULT_TOKEN_SECONDS
