"""Old images of this repository, removed after a verified deploy (``keep_images``).

Every release leaves its image on the deploy host; without pruning the disk only grows.
After a deploy ends ``deployed`` (never after a failed or rolled-back one, nor a dry run),
the images of ``registry/repo`` that no container uses, running or stopped, are removed,
except those of the ``keep_images`` most recent releases of every release stack deploykit
keeps on this engine (the running release included): a rollback finds its image here and
pulls nothing.

:func:`plan_prune` decides, without a daemon; :func:`prune_images` makes the engine calls.
Images are removed by this repository's names only (``registry/repo:tag``,
``registry/repo@sha256:...``), never by image ID: with the containerd image store one image
can carry names of other repositories too, and those names (and the content) stay. The
engine does not stop the removal of a name a container still uses (the containerd store
untags it): deploykit checks every container itself first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import requests

from deploykit.actions import Actions, markdown_table, markdown_text
from deploykit.docker_sdk import docker
from deploykit.errors import DeploykitError, InputError
from deploykit.history import RELEASE_LABEL, HistoryEntry, engine_labels, stack_from_labels
from deploykit.reference import ImageReference, parse_reference

if TYPE_CHECKING:
    from deploykit.history import History
    from deploykit.settings import Settings


class Deployed(Protocol):
    """What pruning reads of a deploy (the deploy's runtime)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def actions(self) -> Actions: ...
    @property
    def engine(self) -> Any: ...
    @property
    def history(self) -> History: ...
    @property
    def image_name(self) -> str: ...


class HasDigest(Protocol):
    @property
    def digest(self) -> str: ...


@dataclass(frozen=True)
class LocalImage:
    """One image of the engine's list: its ID, its names (RepoTags and RepoDigests as the
    engine lists them) and its size."""

    id: str
    names: tuple[str, ...]
    size: int = 0

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> LocalImage:
        names = [*(raw.get("RepoTags") or []), *(raw.get("RepoDigests") or [])]
        return cls(str(raw.get("Id") or ""), tuple(dict.fromkeys(str(n) for n in names)),
                   int(raw.get("Size") or 0))


def _parsed(name: str) -> ImageReference | None:
    try:
        return parse_reference(name)
    except InputError:  # `<none>:<none>`, `<none>@<none>`
        return None


def names_of(image: LocalImage, image_name: str) -> tuple[str, ...]:
    """The names of ``image`` in repository ``image_name`` (``registry/repo``, registry
    included: ``ghcr.io/org/app`` is not ``docker.io/org/app`` nor ``ghcr.io/org/app2``)."""
    return tuple(dict.fromkeys(
        name for name in image.names
        if (parsed := _parsed(name)) is not None and parsed.name == image_name))


def digests_of(names: Iterable[str]) -> set[str]:
    """The registry digests ``names`` carry (``repo@sha256:...``)."""
    return {parsed.digest for name in names
            if (parsed := _parsed(name)) is not None and parsed.digest}


def releases_to_keep(stacks: Iterable[list[HistoryEntry]], image_name: str,
                     keep: int) -> set[str]:
    """The digests of the ``keep`` most recent releases of ``image_name`` in each release
    stack (oldest first): the current release and those a rollback walks down to."""
    kept: set[str] = set()
    for stack in stacks:
        newest_first: list[str] = []
        for entry in reversed(stack):
            if entry.image and not entry.image.startswith(image_name + "@"):
                continue  # another image's release (the history names it)
            if entry.digest and entry.digest not in newest_first:
                newest_first.append(entry.digest)
        kept.update(newest_first[:keep])
    return kept


@dataclass(frozen=True)
class Removal:
    image: LocalImage
    names: tuple[str, ...]  # the names to remove: this repository's only

    def label(self, tags: Mapping[str, str]) -> str:
        """A tag of the image: its own, else the one the history gave its digest; else
        its short digest (a pulled image is named ``repo@sha256:...`` only)."""
        own = sorted(p.tag for n in self.names if (p := _parsed(n)) is not None and p.tag)
        digests = sorted(digests_of(self.names)) or [self.image.id]
        named = [tags[digest] for digest in digests if tags.get(digest)]
        return (own or named or [digests[0].removeprefix("sha256:")[:12]])[0]


@dataclass(frozen=True)
class PrunePlan:
    remove: tuple[Removal, ...]
    kept: tuple[LocalImage, ...]  # of a release kept for a rollback
    in_use: tuple[LocalImage, ...]  # used by a container, running or stopped


def plan_prune(images: Iterable[LocalImage], image_name: str, keep_digests: set[str],
               used_image_ids: set[str]) -> PrunePlan:
    """What to remove of ``image_name``'s images: those of no release kept and of no
    container. Images of other repositories are not in the plan at all."""
    remove, kept, in_use = [], [], []
    for image in images:
        ours = names_of(image, image_name)
        if not ours:
            continue
        if digests_of(ours) & keep_digests:
            kept.append(image)
        elif image.id in used_image_ids:
            in_use.append(image)
        else:
            remove.append(Removal(image, ours))
    return PrunePlan(tuple(remove), tuple(kept), tuple(in_use))


@dataclass(frozen=True)
class PruneResult:
    removed: tuple[str, ...]  # labels of the images removed
    reclaimed: int  # bytes the engine's images take less
    kept: int
    in_use: int
    failed: tuple[str, ...] = ()  # "name: why" of names the engine refused

    def line(self, image_name: str, keep: int) -> str:
        kept = (f"kept {self.kept} of the newest releases (keep_images: {keep})"
                + (f" and {self.in_use} a container uses" if self.in_use else ""))
        if not self.removed:
            return f"No old image of {image_name} to prune: {kept}."
        return (f"Pruned {len(self.removed)} old image(s) of {image_name} "
                f"({', '.join(self.removed)}): {human_size(self.reclaimed)} reclaimed; "
                f"{kept}.")

    def summary(self, keep: int) -> str:
        removed = f" ({markdown_text(', '.join(self.removed))})" if self.removed else ""
        value = (f"{len(self.removed)} removed{removed}, {human_size(self.reclaimed)} "
                 f"reclaimed; {self.kept} kept (`keep_images: {keep}`)"
                 + (f", {self.in_use} in use" if self.in_use else ""))
        if self.failed:
            value += f"; {len(self.failed)} could not be removed"
        return markdown_table(["", "value"], [["old images", value]])


def human_size(size: int) -> str:
    amount = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} GB"  # not reached


# -- the engine ----------------------------------------------------------------------
def release_stacks(api: Any, *, swarm: bool) -> list[list[HistoryEntry]]:
    """Every release stack deploykit keeps on this engine: each compose project's release
    record and, on a Swarm manager, the labels of each stack's services."""
    stacks = [stack_from_labels(labels) for labels in engine_labels(api).values()]
    if swarm:
        for service in api.services(filters={"label": RELEASE_LABEL}):
            labels = (service.get("Spec") or {}).get("Labels") or {}
            stacks.append(stack_from_labels({str(k): str(v) for k, v in labels.items()}))
    return [stack for stack in stacks if stack]


def used_image_ids(api: Any) -> set[str]:
    return {str(c.get("ImageID") or "") for c in api.containers(all=True)} - {""}


def images_size(api: Any) -> int:
    """The bytes the engine's images take (``docker system df``, images only: the volumes'
    sizes are not computed)."""
    usage = api._result(api._get(api._url("/system/df"), params={"type": "image"}),
                        json=True)
    return int(usage.get("LayersSize") or 0)


def prune_images(api: Any, image_name: str, keep: int, stacks: Iterable[list[HistoryEntry]],
                 running: str) -> PruneResult:
    """Remove ``image_name``'s images but those of the ``keep`` most recent releases of
    each stack, the ``running`` digest's and those a container uses."""
    stacks = list(stacks)
    keep_digests = releases_to_keep(stacks, image_name, keep) | {running}
    tags = {entry.digest: entry.tag for stack in stacks for entry in stack if entry.tag}
    plan = plan_prune((LocalImage.of(raw) for raw in api.images()), image_name,
                      keep_digests, used_image_ids(api))
    if not plan.remove:
        return PruneResult((), 0, len(plan.kept), len(plan.in_use))
    before = images_size(api)
    removed, failed = [], []
    for removal in plan.remove:
        refused = ""
        for name in removal.names:
            try:
                api.remove_image(name)
            except docker.errors.ImageNotFound:
                continue  # went with an earlier name of the same image
            except docker.errors.APIError as exc:
                refused = f"{name}: {exc.explanation}"
                break
        if refused:
            failed.append(refused)
        else:
            removed.append(removal.label(tags))
    return PruneResult(tuple(removed), max(before - images_size(api), 0), len(plan.kept),
                       len(plan.in_use), tuple(failed))


def prune_after_deploy(deployment: Deployed, project: str, target: HasDigest) -> None:
    """After a deploy ended ``deployed``: prune, log one line and a summary row. A failure
    is a warning: the deploy is verified and stays ``deployed``."""
    settings, actions = deployment.settings, deployment.actions
    keep = settings.keep_images
    if keep == 0:
        return
    try:
        api = deployment.engine.api
        stacks = [*release_stacks(api, swarm=settings.orchestrator == "swarm"),
                  deployment.history.releases(settings.environment, project)]
        result = prune_images(api, deployment.image_name, keep, stacks, target.digest)
    except (docker.errors.APIError, requests.RequestException, DeploykitError) as exc:
        why = exc.explanation if isinstance(exc, docker.errors.APIError) else str(exc)
        actions.warning(f"Pruning the old images of {deployment.image_name} failed: {why} "
                        "The deploy is still `deployed`.", title="Old images not pruned")
        return
    report(actions, result, deployment.image_name, keep)


def report(actions: Actions, result: PruneResult, image_name: str, keep: int) -> None:
    actions.info(result.line(image_name, keep))
    for refused in result.failed:
        actions.warning(f"Not removed: {refused}", title="Old image kept")
    actions.add_summary(result.summary(keep))


__all__ = [
    "LocalImage",
    "PrunePlan",
    "PruneResult",
    "Removal",
    "plan_prune",
    "prune_after_deploy",
    "prune_images",
    "releases_to_keep",
]
