"""A client of the OCI distribution API (the registry's ``/v2/`` HTTP API).

Reads: resolve a tag to its digest with one ``HEAD``, read manifests,
platforms and labels, list every tag (paginated). Writes, for Build & Push only:
upload a blob, PUT a manifest under its digest or a tag. Authentication is anonymous,
Basic, or the Bearer-token challenge flow GHCR and Docker Hub use, as docker does it:
once the challenge is known, each request carries a token of exactly the scope it needs
(``pull``, or ``pull,push`` for a build's writes), fetched once per scope, shared by the
upload threads and renewed before its ``expires_in`` runs out. Idempotent calls (reads,
content-addressed uploads, a PUT of the same bytes) are retried with tenacity on
timeouts, dropped connections, 429 and 5xx, honouring ``Retry-After``, within
``retry_seconds``; each retry is announced through ``on_retry`` (the callers pass
``Actions.info``) with the wait it honours. A refused connection, a name that does not
resolve, no route and a failing proxy are tried only twice, an untrusted certificate
once: no wait cures them.

Every failure is a typed :class:`~deploykit.errors.RegistryError`, and says what it is:
bad credentials, no permission, an unknown repository, an unreachable host and why; only
a "manifest unknown" answer ever means "this tag does not exist".
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from deploykit.actions import Actions
from deploykit.errors import (
    BadCredentialsError,
    DeniedError,
    InputError,
    InsecureRealmError,
    LoginRequiredError,
    ManifestUnknownError,
    RegistryError,
    RegistryUnreachableError,
    RepositoryUnknownError,
    UnauthorizedError,
)
from deploykit.reference import (
    DIGEST_RE,
    DOCKER_HUB,
    TAG_RE,
)
from deploykit.settings import Settings

if TYPE_CHECKING:
    import requests
    from tenacity import RetryCallState

# requests and tenacity (about 0.1 s of imports) load with the first client, not with
# this module: a build asks the engine about its builder meanwhile (build.run).

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_ACCEPT = ", ".join((OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST))
INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
REVISION_LABEL = "org.opencontainers.image.revision"
ATTESTATION_ANNOTATION = "vnd.docker.reference.type"

_DOCKER_HUB_API = "registry-1.docker.io"
_TAGS_PAGE_SIZE = 1000
_UNKNOWN_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})

# References have one grammar, in deploykit.reference; re-exported for the callers.
_DIGEST_RE = DIGEST_RE
_TAG_RE = TAG_RE


def _manifest_reference(reference: str) -> str:
    """A bare tag or digest; ``tag@sha256:...`` means the digest."""
    _, at, digest = reference.partition("@")
    value = digest if at else reference
    if not (_DIGEST_RE.match(value) or _TAG_RE.match(value)):
        raise InputError("reference", f"{reference!r} is neither a tag nor a sha256 digest.",
                         hint="Pass a tag such as `v1.4.2` or a digest `sha256:<64 hex>`.")
    return value


# -- manifests ------------------------------------------------------------------
@dataclass(frozen=True)
class Manifest:
    media_type: str
    digest: str
    body: dict[str, Any]

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES or "manifests" in self.body


def _media_type(body: Mapping[str, Any], content_type: str) -> str:
    """A manifest's media type: its ``mediaType`` field, else the Content-Type."""
    return str(body.get("mediaType") or content_type.partition(";")[0].strip())


def platform_key(platform: Mapping[str, Any]) -> str:
    """``os/arch[/variant]`` of an index entry's ``platform`` or an image config."""
    key = f"{platform.get('os', 'unknown')}/{platform.get('architecture', 'unknown')}"
    variant = platform.get("variant")
    return f"{key}/{variant}" if variant else key


def _image_entries(index: Manifest) -> list[dict[str, Any]]:
    """The index's runnable images: attestations (unknown/unknown) left out."""
    entries = []
    for entry in index.body.get("manifests") or []:
        annotations = entry.get("annotations") or {}
        platform = entry.get("platform") or {}
        if ATTESTATION_ANNOTATION in annotations or platform_key(platform) == "unknown/unknown":
            continue
        entries.append(entry)
    return entries


# -- errors -----------------------------------------------------------------------
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


class _Retryable(Exception):
    """A failure worth another try: a connection error, 429 or 5xx. ``cause`` names a
    connection failure no wait cures (refused, unknown name, no route, proxy): tried
    only :data:`_FAIL_FAST_ATTEMPTS` times."""

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


def _error_codes(response: requests.Response) -> tuple[set[str], str]:
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


# -- the client ---------------------------------------------------------------------
class RegistryClient:
    """Reads one repository of one registry."""

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

    # -- public reads ------------------------------------------------------------
    def resolve(self, reference: str) -> str:
        """The digest ``reference`` (tag or digest) points to, from one ``HEAD``.

        A missing tag of a repository that does not exist at all is a
        :class:`RepositoryUnknownError` (a typo in ``image_repo``, most likely)."""
        try:
            return self._resolve(reference)
        except ManifestUnknownError as exc:
            try:
                exists = self._repository_exists()
            except RegistryError:
                exists = True  # no better answer than the tag's: it is missing
            if exists:
                raise
            raise RepositoryUnknownError(
                f"{self.name} does not exist: {self.registry} knows no repository "
                f"{self.repository} (so not {self._what(_manifest_reference(reference))}).",
                hint="Check `image_repo` and `registry` for a typo, and that a build has "
                "pushed an image there.") from exc

    def _repository_exists(self) -> bool:
        """False only when the registry says the repository is unknown (``NAME_UNKNOWN``)."""
        what = f"{self.name} (tag list)"
        response = self._call("GET", self._url("tags/list"), what, params={"n": "1"})
        return not (response.status_code == 404
                    and "NAME_UNKNOWN" in _error_codes(response)[0])

    def _resolve(self, reference: str) -> str:
        ref = _manifest_reference(reference)
        what = self._what(ref)
        response = self._call("HEAD", self._url(f"manifests/{ref}"), what,
                              headers={"Accept": MANIFEST_ACCEPT})
        self._raise_for_manifest(response, what)
        digest = response.headers.get("Docker-Content-Digest", "")
        if not _DIGEST_RE.match(digest):
            return self.manifest(ref).digest
        return digest

    def find(self, reference: str) -> str | None:
        """Like :meth:`resolve`, but ``None`` when (and only when) the tag is unknown."""
        try:
            return self._resolve(reference)
        except ManifestUnknownError:
            return None

    def manifest(self, reference: str) -> Manifest:
        ref = _manifest_reference(reference)
        what = self._what(ref)
        if ref in self._by_digest:
            content, content_type = self._by_digest[ref]
            body = self._json(content, what)
            return Manifest(_media_type(body, content_type), ref, body)
        response = self._call("GET", self._url(f"manifests/{ref}"), what,
                              headers={"Accept": MANIFEST_ACCEPT})
        self._raise_for_manifest(response, what)
        computed = "sha256:" + hashlib.sha256(response.content).hexdigest()
        if _DIGEST_RE.match(ref) and computed != ref:
            raise RegistryError(f"{self.registry} sent a manifest for {what} whose digest is "
                                f"{computed}.", hint="The registry or a proxy altered the "
                                "manifest; do not deploy it.")
        body = self._json(response.content, what)
        content_type = response.headers.get("Content-Type", "")
        if _DIGEST_RE.match(ref):
            self._by_digest[ref] = (response.content, content_type)
        digest = response.headers.get("Docker-Content-Digest", "")
        return Manifest(_media_type(body, content_type),
                        digest if _DIGEST_RE.match(digest) else computed, body)

    def platforms(self, reference: str) -> dict[str, str]:
        """``os/arch[/variant]`` -> manifest digest (attestations left out)."""
        manifest = self.manifest(reference)
        if manifest.is_index:
            return {platform_key(entry.get("platform") or {}): str(entry["digest"])
                    for entry in _image_entries(manifest)}
        return {platform_key(self._config(manifest)): manifest.digest}

    def labels(self, reference: str, platform: str | None = None) -> dict[str, str]:
        """The image config's labels (of ``platform``, or of the index's first image)."""
        manifest = self.manifest(reference)
        if manifest.is_index:
            entry = self._pick_platform(manifest, reference, platform)
            manifest = self.manifest(str(entry["digest"]))
        config = self._config(manifest)
        if platform and platform_key(config) != platform:
            raise self._no_platform(reference, platform, [platform_key(config)])
        labels = (config.get("config") or {}).get("Labels") or {}
        return {str(key): str(value) for key, value in labels.items()}

    def tags(self) -> list[str]:
        """Every tag of the repository, following ``Link: <...>; rel="next"`` pages."""
        what = f"{self.name} (tag list)"
        url: str | None = self._url("tags/list")
        params: dict[str, str] | None = {"n": str(_TAGS_PAGE_SIZE)}
        tags: dict[str, None] = {}
        seen: set[str] = set()
        while url:
            response = self._call("GET", url, what, params=params)
            if response.status_code == 404 and "NAME_UNKNOWN" in _error_codes(response)[0]:
                return []  # no image pushed yet: a new repository has no tags
            self._raise_for_status(response, what)
            tags.update(dict.fromkeys(self._json(response.content, what).get("tags") or []))
            url, params = self._next_page(response, seen), None
        return list(tags)

    def manifest_bytes(self, digest: str) -> tuple[str, bytes]:
        """Media type and exact bytes of the manifest ``digest`` (checked against it)."""
        what = self._what(digest)
        if digest not in self._by_digest:
            response = self._call("GET", self._url(f"manifests/{digest}"), what,
                                  headers={"Accept": MANIFEST_ACCEPT})
            self._raise_for_manifest(response, what)
            if "sha256:" + hashlib.sha256(response.content).hexdigest() != digest:
                raise RegistryError(f"{self.registry} sent a manifest for {what} with "
                                    "another digest.", hint="The registry or a proxy altered "
                                    "the manifest; do not publish it.")
            self._json(response.content, what)
            self._by_digest[digest] = (response.content, response.headers.get("Content-Type", ""))
        content, content_type = self._by_digest[digest]
        return _media_type(self._json(content, what), content_type), content

    # -- writes (Build & Push) ------------------------------------------------------------
    def blob_exists(self, digest: str) -> bool:
        what = f"{self.name}@{digest} (blob)"
        response = self._call("HEAD", self._url(f"blobs/{digest}"), what,
                              scope=self.push_scope)
        if response.status_code == 404:
            return False
        self._raise_for_status(response, what)
        return True

    def upload_blob(self, digest: str, path: Path) -> None:
        """Monolithic upload: POST opens it, PUT ``?digest=`` sends the file and closes it.

        The pair is retried as one: the blob is content addressed, so it is idempotent.
        """
        what = f"{self.name}@{digest} (blob upload)"
        self._retrying(what, lambda: self._upload_once(digest, path, what))

    def _upload_once(self, digest: str, path: Path, what: str) -> requests.Response:
        opened = self._authorized("POST", self._url("blobs/uploads/"), what, None, None,
                                  scope=self.push_scope)
        self._raise_for_status(opened, what)
        location = opened.headers.get("Location", "")
        if not location:
            raise RegistryError(f"{self.registry} opened no upload for {what} (no Location).",
                                hint="Is the registry an OCI distribution registry?")
        closed = self._authorized("PUT", urljoin(opened.url, location), what,
                                  {"Content-Type": "application/octet-stream"},
                                  {"digest": digest}, scope=self.push_scope, body=path)
        self._raise_for_status(closed, what)
        return closed

    def put_manifest(self, reference: str, content: bytes, media_type: str) -> None:
        """PUT ``content`` under a tag or its digest (the same bytes again: idempotent)."""
        ref = _manifest_reference(reference)
        what = self._what(ref)
        response = self._call("PUT", self._url(f"manifests/{ref}"), what,
                              headers={"Content-Type": media_type}, scope=self.push_scope,
                              body=content)
        self._raise_for_status(response, what)

    # -- helpers of the reads --------------------------------------------------------
    def _what(self, reference: str) -> str:
        separator = "@" if reference.startswith("sha256:") else ":"
        return f"{self.name}{separator}{reference}"

    def _url(self, path: str) -> str:
        return f"{self.base_url}/v2/{self.repository}/{path}"

    def _next_page(self, response: requests.Response, seen: set[str]) -> str | None:
        link = response.links.get("next", {}).get("url")
        if not link:
            return None
        url = urljoin(response.url, link)
        if url in seen:
            raise RegistryError(f"{self.registry} sent the same tag page twice ({url}).",
                                hint="The registry's pagination is broken; report it.")
        seen.add(url)
        return url

    def _config(self, manifest: Manifest) -> dict[str, Any]:
        digest = str((manifest.body.get("config") or {}).get("digest", ""))
        if digest in self._configs:
            return self._configs[digest]
        what = f"{self.name}@{digest} (image config)"
        response = self._call("GET", self._url(f"blobs/{digest}"), what)
        self._raise_for_status(response, what)
        config = self._json(response.content, what)
        if _DIGEST_RE.match(digest):
            self._configs[digest] = config
        return config

    def _pick_platform(
        self, index: Manifest, reference: str, platform: str | None
    ) -> dict[str, Any]:
        entries = _image_entries(index)
        for entry in entries:
            if platform is None or platform_key(entry.get("platform") or {}) == platform:
                return entry
        raise self._no_platform(reference, platform or "any",
                                [platform_key(e.get("platform") or {}) for e in entries])

    def _no_platform(self, reference: str, platform: str, found: list[str]) -> RegistryError:
        return ManifestUnknownError(
            f"{self._what(_manifest_reference(reference))} has no image for platform "
            f"{platform}.", hint=f"Its platforms: {', '.join(found) or 'none'}.")

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

    def _raise_for_manifest(self, response: requests.Response, what: str) -> None:
        if response.status_code == 404:
            codes, detail = _error_codes(response)
            # A HEAD has no body; a GET names the reason, which must be "unknown".
            if response.request.method == "HEAD" or not codes or codes & _UNKNOWN_CODES:
                raise ManifestUnknownError(
                    f"{what} does not exist in the registry.",
                    hint="Check the tag (e.g. `deploykit tags` or the package page) and that "
                    "the build that publishes it has finished.")
            raise RegistryError(f"{self.registry} answered 404 for {what}: {detail}",
                                hint="Check `registry` and `image_repo`.")
        self._raise_for_status(response, what)

    def _raise_for_status(self, response: requests.Response, what: str) -> None:
        status = response.status_code
        if 200 <= status < 300:
            return
        _, detail = _error_codes(response)
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
            if isinstance(exc, _Retryable) and exc.cause and \
                    state.attempt_number >= _FAIL_FAST_ATTEMPTS:
                return True
            return state.upcoming_sleep > deadline - _monotonic()

        def announce(state: RetryCallState) -> None:
            if self._on_retry is not None:
                self._on_retry(self._retry_line(what, state, deadline))

        retryer = Retrying(retry=retry_if_exception_type(_Retryable), wait=_backoff,
                           stop=give_up, sleep=_sleep, before_sleep=announce,
                           reraise=True)
        try:
            return retryer(call)
        except _Retryable as exc:
            attempts = retryer.statistics.get("attempt_number", 1)
            if exc.cause:
                raise _connection_error(exc, what, self.registry, attempts) from None
            raise RegistryUnreachableError(
                f"{self.registry} did not answer for {what}: {exc.detail} "
                f"(gave up after {attempts} attempts).",
                hint=f"Check that {self.registry} is reachable from this runner and "
                "try again later.") from None

    def _retry_line(self, what: str, state: RetryCallState, deadline: float) -> str:
        """``Registry R answered 503 for X; retrying in 2.0 s (attempt 2 of at most 10).``"""
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Retryable) and exc.status is not None:
            failure = f"answered {exc.status} for {what}"
        elif isinstance(exc, _Retryable) and exc.cause:
            failure = f"did not answer for {what} ({_CAUSE_WORDS[exc.cause]})"
        else:
            cause = exc.detail.split(":", 1)[0] if isinstance(exc, _Retryable) else "no answer"
            failure = f"did not answer for {what} ({cause})"
        wait = state.upcoming_sleep
        attempt = state.attempt_number + 1
        last = (_FAIL_FAST_ATTEMPTS if isinstance(exc, _Retryable) and exc.cause
                else _last_attempt(attempt, deadline - _monotonic() - wait))
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
            raise _tls_error(self.registry, urlsplit(url).netloc, exc) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            cause = "" if isinstance(exc, requests.Timeout) else _connection_cause(exc)
            raise _Retryable(f"{type(exc).__name__}: {exc}", cause=cause,
                             host=urlsplit(url).netloc) from None
        except requests.RequestException as exc:
            raise RegistryUnreachableError(f"Cannot talk to {self.registry}: {exc}",
                                           hint="Check `registry`.") from None
        if response.status_code == 429 or response.status_code >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise _Retryable(f"HTTP {response.status_code}", retry_after,
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
                raise self._login_required(what, _error_codes(response)[1], scope)
            raise self._bad_credentials(what, _error_codes(response)[1])
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
        _, detail = _error_codes(response)
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


# -- connection failures ----------------------------------------------------------------
_FAIL_FAST_ATTEMPTS = 2
_DEFAULT_TOKEN_SECONDS = 60.0
_CAUSE_WORDS = {"refused": "connection refused", "dns": "name not found",
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


def _connection_cause(exc: Exception) -> str:
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


def _connection_error(exc: _Retryable, what: str, registry: str,
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


def _tls_error(registry: str, host: str, exc: Exception) -> RegistryUnreachableError:
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


def _last_attempt(attempt: int, seconds_left: float) -> int:
    """The last attempt the budget allows after ``attempt`` when every wait is the back-off."""
    while _plain_backoff(attempt) <= seconds_left:
        seconds_left -= _plain_backoff(attempt)
        attempt += 1
    return attempt


def _backoff(state: RetryCallState) -> float:
    """Exponential back-off, never shorter than the server's ``Retry-After``."""
    backoff = _plain_backoff(state.attempt_number)
    exc = state.outcome.exception() if state.outcome else None
    if isinstance(exc, _Retryable) and exc.retry_after is not None:
        return max(exc.retry_after, backoff)
    return backoff


# -- the one place a client is made ------------------------------------------------------
def registry_client(settings: Settings, actions: Actions, *, registry: str | None = None,
                    repository: str | None = None) -> RegistryClient:
    """The client of ``settings``' image (or of ``repository`` on ``registry``), its retries
    announced through ``actions``. The credentials go to ``settings.registry`` only: a
    client of another registry reads anonymously."""
    registry = registry or settings.registry
    own_registry = registry == settings.registry
    return RegistryClient(
        registry, repository or settings.image_repo,
        settings.registry_username if own_registry else "",
        settings.registry_password if own_registry else "",
        on_retry=actions.info,
    )

