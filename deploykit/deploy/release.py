"""The release value: what a deploy puts in place (tag + digest), and what ran before it.

:class:`Release` is the one immutable tag + digest of the deploy: resolved from the gate,
read from the engine or the history for a rollback, restored after a failure. It prints
itself (:attr:`Release.label`, :meth:`Release.reference`); nothing is rebuilt from a
``tag@digest`` string.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from deploykit.compose import image_environment
from deploykit.containers import RunningService
from deploykit.errors import InputError
from deploykit.reference import parse_reference
from deploykit.settings import Settings


def image_reference(image_name: str, tag: str | None, digest: str) -> str:
    """``registry/repo:tag@sha256:...``, or ``registry/repo@sha256:...`` with no tag."""
    return f"{image_name}:{tag}@{digest}" if tag else f"{image_name}@{digest}"


@dataclass(frozen=True)
class Release:
    """One release of the image: a digest, and the tag that names it (when one does)."""

    tag: str | None
    digest: str

    @property
    def label(self) -> str:
        return f"{self.tag}@{self.digest}" if self.tag else self.digest

    def reference(self, image_name: str) -> str:
        return image_reference(image_name, self.tag, self.digest)

    def image_env(self, settings: Settings) -> dict[str, str]:
        """The image variables the compose file reads (``IMAGE_TAG``...)."""
        return image_environment(settings.registry, settings.image_repo, self.tag, self.digest)


@dataclass(frozen=True)
class Running:
    """What ran before the deploy: the rollback target (known without any history), and
    the engine-side release labels of what runs (the engine's history)."""

    services: tuple[RunningService, ...] = ()
    digest: str = ""
    tag: str | None = None
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, services: list[RunningService], image_name: str,
           labels: dict[str, str] | None = None) -> Running:
        digests = Counter(s.digest for s in services if s.digest)
        if not digests:
            return cls(tuple(services), labels=dict(labels or {}))
        digest = digests.most_common(1)[0][0]
        reference = next(s.reference for s in services if s.digest == digest)
        return cls(tuple(services), digest, _tag_of(reference, image_name), dict(labels or {}))

    @property
    def release(self) -> Release:
        return Release(self.tag, self.digest)

    @property
    def unverified(self) -> str:
        """The digest that runs when it is not the verified release ('' otherwise)."""
        running = Counter(s.digest for s in self.services if s.digest)
        if not running:
            return ""
        digest = running.most_common(1)[0][0]
        return digest if digest != self.digest else ""


def _tag_of(reference: str, image_name: str) -> str | None:
    try:
        parsed = parse_reference(reference)
    except InputError:
        return None
    return parsed.tag if parsed.name == image_name else None


__all__ = ["Release", "Running", "image_reference"]
