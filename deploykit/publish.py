"""Publish a built image: upload it untagged, then give it its tags one by one.

OCI registries have no compare-and-set for tags, so no client can make a tag write
atomic. What this module does instead:

- the image goes to the registry **by digest** first (blobs, then manifests, no tag);
- write-once tags follow one by one (``sha-<7>`` / ``vX.Y.Z``, then
  ``test-YYYYMMDD-N``), each with a ``HEAD`` right before its ``PUT`` of the very same
  manifest bytes; a ``test-YYYYMMDD-N`` another build took in that window makes this
  build take the next free ``N``, and says so;
- mutable tags (``staging-latest``, ``latest``) move last, and only when this build
  is still the newest (see :meth:`Publisher.newer_image`);
- every tag is resolved again at the end: a write-once tag another build took in the
  meantime is reported with both digests and, for ``test-YYYYMMDD-N``, a new ``N``
  is taken, up to :data:`TEST_TAG_ATTEMPTS` times.

A failure part-way raises :class:`PartlyPublishedError`, which names every tag this
run published; a re-run finds ``sha-<7>`` (or ``vX.Y.Z``) from the same revision and
completes the missing tags (``build.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from deploykit.actions import Actions
from deploykit.errors import BuildError, DeploykitError, WriteOnceTagError
from deploykit.registry import RegistryClient
from deploykit.tags import (
    LATEST,
    STAGING_LATEST,
    is_test_tag,
    latest_decision,
    next_test_tag,
    number_of_test_tag,
    parse_version,
)

CREATED_LABEL = "org.opencontainers.image.created"
TEST_TAG_ATTEMPTS = 5
UPLOAD_THREADS = 8


class PartlyPublishedError(BuildError):
    """Publishing failed after some tags were published: they are named."""

    title = "Tags partly published"

    def __init__(self, message: str, *, hint: str, digest: str, published: list[str]) -> None:
        super().__init__(message, hint=hint)
        self.digest = digest
        self.published = tuple(published)


# -- the untagged upload --------------------------------------------------------------
def upload_layout(client: RegistryClient, layout: Path, digest: str, media_type: str) -> int:
    """Upload the image ``digest`` of an OCI layout folder by digest (no tag).

    Blobs the registry lacks first (looked up and uploaded several at a time), then the
    manifests one by one, children before the index. Returns the number of blobs uploaded.
    """
    blobs, manifests = _walk(layout, digest, media_type)
    if not blobs:
        missing: list[str] = []
    else:
        # The first HEAD alone: on a client that has not met the registry's challenge yet
        # it learns it once (and gets the `pull,push` token, or Basic); then up to
        # UPLOAD_THREADS blobs at a time (a round trip each to GHCR), all of them sharing
        # that one token (renewed by one thread when its expires_in runs out).
        from concurrent.futures import ThreadPoolExecutor  # noqa: PLC0415  (not at start-up)

        first = [] if client.blob_exists(blobs[0]) else blobs[:1]
        with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="deploykit-blob") as pool:
            there = list(pool.map(client.blob_exists, blobs[1:]))
            missing = first + [blob for blob, known in zip(blobs[1:], there, strict=True)
                               if not known]
            list(pool.map(lambda blob: client.upload_blob(blob, _blob_path(layout, blob)),
                          missing))
    for manifest_digest, manifest_type in manifests:
        client.put_manifest(manifest_digest, _blob_path(layout, manifest_digest).read_bytes(),
                            manifest_type)
    return len(missing)


def _walk(layout: Path, digest: str, media_type: str) -> tuple[list[str], list[tuple[str, str]]]:
    """Plain blobs and (manifest, media type) pairs under ``digest``, children first."""
    blobs: dict[str, None] = {}
    manifests: dict[tuple[str, str], None] = {}

    def visit(node: str, node_type: str) -> None:
        body = json.loads(_blob_path(layout, node).read_bytes())
        for child in body.get("manifests") or []:
            visit(str(child["digest"]), str(child.get("mediaType", "")))
        for blob in _plain_blobs(body):
            blobs[blob] = None
        manifests[(node, str(body.get("mediaType") or node_type))] = None

    visit(digest, media_type)
    return list(blobs), list(manifests)


def _plain_blobs(body: dict[str, object]) -> Iterator[str]:
    config = body.get("config")
    if isinstance(config, dict):
        yield str(config["digest"])
    for layer in body.get("layers") or []:  # type: ignore[attr-defined]
        yield str(layer["digest"])


def _blob_path(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    path = layout / "blobs" / algorithm / hexdigest
    if not path.is_file():
        raise BuildError(f"buildx's OCI layout {layout} lacks the blob {digest}.",
                         hint="Update docker buildx (0.10 or later) and build again.")
    return path


# -- tags -----------------------------------------------------------------------------
@dataclass
class Publisher:
    """Gives the image ``digest`` its tags; remembers which ones this run published."""

    client: RegistryClient
    actions: Actions
    digest: str
    renumber: bool = True  # False: the test tag was given by the git tag
    latest: str = "auto"
    published: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _manifest: tuple[str, bytes] | None = None
    _created: datetime | None = None
    _taken: int = 0  # test tags found taken by another build so far

    @property
    def image(self) -> str:
        return self.client.name

    def publish(self, tags: tuple[str, ...]) -> list[str]:
        """Publish ``tags`` (a plan's, in its order); the tags now naming the image.

        The result keeps the plan's order, with the test tag actually taken, and
        leaves out a mutable tag that stays on a newer image.
        """
        try:
            return self._publish(tags)
        except DeploykitError as exc:
            if not self.published:
                raise
            raise PartlyPublishedError(
                f"{exc.message} This run had already published "
                f"{', '.join(self.published)} (naming {self.digest}); the other tags of "
                "the plan are not published.",
                hint="Run the job again: it finds the image by its write-once tag and "
                f"publishes the missing tags. (The failure: {exc.hint or exc.title})",
                digest=self.digest, published=self.published) from exc

    def _publish(self, tags: tuple[str, ...]) -> list[str]:
        fixed = [t for t in tags if t not in (STAGING_LATEST, LATEST) and not is_test_tag(t)]
        test = next((t for t in tags if is_test_tag(t)), None)
        for tag in fixed:
            self._claim_fixed(tag)
        if test:
            test = self._claim_test_tag(test)
        version = next((t for t in fixed if parse_version(t)), "")
        moved = [tag for tag in tags
                 if tag in (STAGING_LATEST, LATEST) and self._move(tag, test, version)]
        if test:
            test = self._recheck_test_tag(test)
        for tag in fixed:
            self._claim_fixed(tag)  # resolved again: another build may have taken it
        final = {*fixed, *([test] if test else []), *moved}
        return [tag for tag in (test if is_test_tag(t) else t for t in tags) if tag in final]

    # -- write-once ---------------------------------------------------------------------
    def holder(self, tag: str) -> str | None:
        """The digest ``tag`` names now, from one HEAD (None: not published)."""
        return self.client.find(tag)

    def _put(self, tag: str) -> None:
        media_type, content = self.manifest
        self.client.put_manifest(tag, content, media_type)
        if tag not in self.published:
            self.published.append(tag)

    @property
    def manifest(self) -> tuple[str, bytes]:
        if self._manifest is None:  # fetched once, by digest; PUT as is under every tag
            self._manifest = self.client.manifest_bytes(self.digest)
        return self._manifest

    def _claim(self, tag: str) -> str | None:
        """PUT ``tag`` when nobody holds it; the other digest when somebody does."""
        _ = self.manifest  # fetched before the HEAD, so that the PUT follows it at once
        current = self.holder(tag)
        if current is None:
            self._put(tag)
            return None
        return None if current == self.digest else current

    def _claim_fixed(self, tag: str) -> None:
        if other := self._claim(tag):
            if tag in self.published:
                self.published.remove(tag)
            raise WriteOnceTagError(
                f"{self.image}:{tag} was published by another build at {other} while this "
                f"build published {self.digest}; a write-once tag never moves.",
                hint="Two builds of the same revision or version ran at the same time. "
                "Keep one: deploy the digest the tag names.")

    def _claim_test_tag(self, tag: str) -> str:
        while (other := self._claim(tag)) is not None:
            self._count_taken(tag, other)
            tag = self._next_number(tag, other)
        return tag

    def _recheck_test_tag(self, tag: str) -> str:
        """The test tag again after the others: another build may have overwritten it."""
        while (other := self.holder(tag)) != self.digest:
            if tag in self.published:
                self.published.remove(tag)
            if other is None:  # gone (deleted by hand?): claim it again
                tag = self._claim_test_tag(tag)
            else:
                self._count_taken(tag, other)
                tag = self._claim_test_tag(self._next_number(tag, other))
        return tag

    def _count_taken(self, tag: str, other: str) -> None:
        """Count one taken test tag; past the bound, a clear error naming both digests."""
        self._taken += 1
        if self._taken < TEST_TAG_ATTEMPTS:
            return
        raise BuildError(
            f"{self.image}:{tag} names {other}, another build's image, not this build's "
            f"{self.digest}, and so did {TEST_TAG_ATTEMPTS - 1} other test tags this build "
            "published or tried: too many builds publish at once.", title="Test tag taken",
            hint="Many builds of the branch run at once: give build-push.yml's "
            "concurrency group to every workflow that builds it, then run this job again.")

    def _next_number(self, tag: str, other: str) -> str:
        if not self.renumber:
            raise WriteOnceTagError(
                f"{self.image}:{tag} (given by the git tag) was published by another build "
                f"at {other}; this build is {self.digest}.",
                hint="Push a new test-* git tag for this commit.")
        taken = [*self.client.tags(), tag]
        number = next_test_tag(taken, _tag_date(tag))
        message = (f"{self.image}:{tag} was taken by another build ({other}) while this build "
                   f"({self.digest}) published it; taking {number} instead.")
        self.actions.notice(message, title="Test tag taken")
        self.notes.append(message)
        return number

    # -- mutable ---------------------------------------------------------------------------
    def _move(self, tag: str, test_tag: str | None, version: str) -> bool:
        """Move ``tag`` here unless a newer image holds it (checked before and after)."""
        for _ in range(3):
            current = self.holder(tag)
            if current == self.digest:
                return not self._hand_over(tag, test_tag)
            if why := self._keep_reason(tag, current, test_tag, version):
                self._say(why)
                return False
            self._put(tag)
        return self.holder(tag) == self.digest

    def _hand_over(self, tag: str, test_tag: str | None) -> bool:
        """After the move: a newer build that published its test tag meanwhile gets ``tag``.

        That build published its test tag before it looked at ``tag``, so whichever of
        the two moves ``tag`` last, one of them sees the other here.
        """
        if tag != STAGING_LATEST or test_tag is None:
            return False
        for other_tag in self._higher_test_tags(test_tag):
            other = self.holder(other_tag)
            if other and other != self.digest and (why := self.newer_image(other, test_tag)):
                media_type, content = self.client.manifest_bytes(other)
                if self.holder(tag) == self.digest:
                    self.client.put_manifest(tag, content, media_type)
                self._say(f"{self.image}:{tag} goes to {other} ({other_tag}), published "
                          f"meanwhile: {why}.")
                return True
        return False

    def _say(self, text: str) -> None:
        self.actions.info(text)
        self.notes.append(text)

    def _keep_reason(
        self, tag: str, current: str | None, test_tag: str | None, version: str
    ) -> str:
        """Why ``tag`` stays where it is; empty when this build should take it."""
        if tag == LATEST:
            return self._latest_keep_reason(version)
        if current is None:
            return ""
        if newer := self.newer_image(current, test_tag):
            return f"{self.image}:{tag} stays at {current}: {newer}."
        return ""

    def _latest_keep_reason(self, version: str) -> str:
        """``latest: auto`` decided again on the registry's tags of now."""
        parsed = parse_version(version)
        if self.latest != "auto" or parsed is None:
            return ""
        moves, why = latest_decision(parsed, self.client.tags(), "auto")
        return "" if moves else f"{self.image}:latest stays: {why}"

    def newer_image(self, other: str, test_tag: str | None) -> str:
        """Why image ``other`` is newer than this build ("" when it is not).

        The rule: the later ``org.opencontainers.image.created`` (the build date:
        SOURCE_DATE_EPOCH when set, else the time of the build) wins; on the same
        second, the build that holds the higher ``test-YYYYMMDD-N`` of that date wins
        (the numbers are taken in publish order). An image without the label is older.
        """
        theirs = _created(self.client.labels(other).get(CREATED_LABEL, ""))
        ours = self.created
        if theirs is None or ours is None or theirs < ours:
            return ""
        if theirs > ours:
            return (f"it was built at {theirs:%Y-%m-%dT%H:%M:%SZ}, after this build "
                    f"({ours:%Y-%m-%dT%H:%M:%SZ})")
        if test_tag is None:
            return ""
        for tag in self._higher_test_tags(test_tag):
            if self.holder(tag) == other:
                return f"the same build time, and it holds {tag}, a later number than {test_tag}"
        return ""

    @property
    def created(self) -> datetime | None:
        if self._created is None:
            self._created = _created(self.client.labels(self.digest).get(CREATED_LABEL, ""))
        return self._created

    def _higher_test_tags(self, test_tag: str) -> list[str]:
        date, number = _tag_date(test_tag), number_of_test_tag(test_tag)
        found = [t for t in self.client.tags()
                 if is_test_tag(t) and _tag_date(t) == date and number_of_test_tag(t) > number]
        return sorted(found, key=number_of_test_tag, reverse=True)


def _tag_date(tag: str) -> datetime:
    return datetime.strptime(tag.split("-")[1], "%Y%m%d").replace(tzinfo=UTC)


def _created(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
