"""A client of the OCI distribution API (the registry's ``/v2/`` HTTP API).

Reads: resolve a tag to its digest with one ``HEAD``, read manifests, platforms and
labels, list every tag (paginated). Writes, for Build & Push only: upload a blob, PUT a
manifest under its digest or a tag. Each request goes through
:class:`~deploykit.registry_auth.RegistryConnection` (the token flow, and the retries of
idempotent calls on timeouts, dropped connections, 429 and 5xx, honouring
``Retry-After``, within ``retry_seconds``, each announced through ``on_retry``); what a
failure means is :mod:`deploykit.registry_errors`. :func:`registry_client` is the one
place a client is made.

Every failure is a typed :class:`~deploykit.errors.RegistryError`, and says what it is:
bad credentials, no permission, an unknown repository, an unreachable host and why; only
a "manifest unknown" answer ever means "this tag does not exist".
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from deploykit.actions import Actions
from deploykit.errors import (
    InputError,
    ManifestUnknownError,
    RegistryError,
    RepositoryUnknownError,
)
from deploykit.reference import DIGEST_RE, TAG_RE
from deploykit.registry_auth import RegistryConnection
from deploykit.registry_errors import error_codes
from deploykit.settings import Settings

if TYPE_CHECKING:
    import requests

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

_TAGS_PAGE_SIZE = 1000
_UNKNOWN_CODES = frozenset({"MANIFEST_UNKNOWN", "NAME_UNKNOWN"})



def _manifest_reference(reference: str) -> str:
    """A bare tag or digest; ``tag@sha256:...`` means the digest."""
    _, at, digest = reference.partition("@")
    value = digest if at else reference
    if not (DIGEST_RE.match(value) or TAG_RE.match(value)):
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


# -- the client ---------------------------------------------------------------------
class RegistryClient(RegistryConnection):
    """Reads one repository of one registry (and writes it, for Build & Push)."""

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
                    and "NAME_UNKNOWN" in error_codes(response)[0])

    def _resolve(self, reference: str) -> str:
        ref = _manifest_reference(reference)
        what = self._what(ref)
        response = self._call("HEAD", self._url(f"manifests/{ref}"), what,
                              headers={"Accept": MANIFEST_ACCEPT})
        self._raise_for_manifest(response, what)
        digest = response.headers.get("Docker-Content-Digest", "")
        if not DIGEST_RE.match(digest):
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
        if DIGEST_RE.match(ref) and computed != ref:
            raise RegistryError(f"{self.registry} sent a manifest for {what} whose digest is "
                                f"{computed}.", hint="The registry or a proxy altered the "
                                "manifest; do not deploy it.")
        body = self._json(response.content, what)
        content_type = response.headers.get("Content-Type", "")
        if DIGEST_RE.match(ref):
            self._by_digest[ref] = (response.content, content_type)
        digest = response.headers.get("Docker-Content-Digest", "")
        return Manifest(_media_type(body, content_type),
                        digest if DIGEST_RE.match(digest) else computed, body)

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
            if response.status_code == 404 and "NAME_UNKNOWN" in error_codes(response)[0]:
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
        if DIGEST_RE.match(digest):
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

    def _raise_for_manifest(self, response: requests.Response, what: str) -> None:
        if response.status_code == 404:
            codes, detail = error_codes(response)
            # A HEAD has no body; a GET names the reason, which must be "unknown".
            if response.request.method == "HEAD" or not codes or codes & _UNKNOWN_CODES:
                raise ManifestUnknownError(
                    f"{what} does not exist in the registry.",
                    hint="Check the tag (e.g. `deploykit tags` or the package page) and that "
                    "the build that publishes it has finished.")
            raise RegistryError(f"{self.registry} answered 404 for {what}: {detail}",
                                hint="Check `registry` and `image_repo`.")
        self._raise_for_status(response, what)

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

