"""The build plan: the tags a build would publish, checked against the registry.

``deploykit tags`` (and ``mode: build`` with ``dry_run: true``) print it without
building: every tag, whether it is new or already published (at which digest,
and from which revision for write-once tags). A registry that cannot be read
fails the plan: "unreachable" or "unauthorised" is never taken for "no tags".
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from deploykit.actions import Actions, markdown_table
from deploykit.git import local_checkout
from deploykit.registry import REVISION_LABEL, RegistryClient, registry_client
from deploykit.settings import Settings
from deploykit.status import Status
from deploykit.tags import TagPlan, plan_tags


@dataclass(frozen=True)
class PlannedTag:
    tag: str
    write_once: bool
    digest: str | None  # None: not in the registry yet
    revision: str | None = None  # org.opencontainers.image.revision of an existing write-once tag

    @property
    def exists(self) -> bool:
        return self.digest is not None


@dataclass(frozen=True)
class BuildPlan:
    image: str  # registry/repo
    tag_plan: TagPlan
    entries: tuple[PlannedTag, ...]
    registry_tags: tuple[str, ...] = ()  # every tag of the repository when planned

    @property
    def tags(self) -> tuple[str, ...]:
        return self.tag_plan.tags

    @property
    def existing(self) -> tuple[PlannedTag, ...]:
        return tuple(entry for entry in self.entries if entry.exists)

    @property
    def new(self) -> tuple[PlannedTag, ...]:
        return tuple(entry for entry in self.entries if not entry.exists)


def make_plan(settings: Settings, client: RegistryClient) -> BuildPlan:
    """Plan the tags of this build; the registry is read only when something is pushed."""
    github = settings.github

    def plan_with(existing: list[str]) -> TagPlan:
        return plan_tags(event_name=github.event_name, ref=github.ref, sha=github.sha,
                         version=settings.version, existing_tags=existing,
                         build_date=settings.build_date, latest=settings.latest)

    tag_plan = plan_with([])  # checks the inputs before any connection
    existing = client.tags() if tag_plan.push else []
    if existing:
        tag_plan = plan_with(existing)
    present = set(existing)
    entries = tuple(_planned_tag(client, tag, tag in tag_plan.write_once, tag in present)
                    for tag in tag_plan.tags)
    return BuildPlan(settings.image_name, tag_plan, entries, tuple(existing))


def _planned_tag(client: RegistryClient, tag: str, write_once: bool, listed: bool) -> PlannedTag:
    digest = client.find(tag) if listed else None
    revision = None
    if digest and write_once:
        revision = client.labels(digest).get(REVISION_LABEL, "")
    return PlannedTag(tag, write_once, digest, revision)


def plan_table(plan: BuildPlan) -> tuple[list[str], list[list[str]]]:
    """Headers and rows: tag, new/exists, digest, write-once or mutable, revision."""
    headers = ["Tag", "Status", "Digest", "Kind", "Revision"]
    rows = [[entry.tag, "exists" if entry.exists else "new", entry.digest or "-",
             "write-once" if entry.write_once else "mutable",
             entry.revision or "-"] for entry in plan.entries]
    return headers, rows


def format_plan(plan: BuildPlan) -> str:
    """The plan as an aligned plain-text table for the log."""
    headers, rows = plan_table(plan)
    if not rows:
        return f"{plan.tag_plan.reason}\nNo tag for {plan.image}."
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
             .rstrip() for row in [headers, *rows]]
    return "\n".join([plan.tag_plan.reason, f"Image: {plan.image}", *lines])


def plan_summary(plan: BuildPlan) -> str:
    headers, rows = plan_table(plan)
    parts = [f"### Tag plan for `{plan.image}` ({plan.tag_plan.kind})", "",
             plan.tag_plan.reason, ""]
    parts.append(markdown_table(headers, rows) if rows else "Nothing is pushed.")
    return "\n".join(parts)


def with_event(settings: Settings, actions: Actions) -> Settings:
    """The event to plan for, and where it came from: ``GITHUB_REF`` when it is set,
    else the local git checkout (a terminal run), else none (nothing is pushed)."""
    github = settings.github
    if github.ref or github.event_name:
        if not actions.in_actions:  # in a workflow that goes without saying
            actions.info(f"Event from GITHUB_EVENT_NAME/GITHUB_REF: `{github.event_name}` on "
                         f"`{github.ref}`.")
        return settings
    checkout = local_checkout()
    if checkout is None:
        actions.info("No GITHUB_REF and no git checkout here: planning for no event.")
        return settings
    actions.info(f"Event from the local git checkout (GITHUB_REF is not set): "
                 f"{checkout.described}.")
    return replace(settings, github=replace(github, event_name=checkout.event_name,
                                            ref=checkout.ref, sha=github.sha or checkout.sha))


def plan_command(settings: Settings, actions: Actions) -> None:
    """``deploykit tags``: print the plan, set outputs tags, version, status=planned."""
    actions.mask(settings.registry_password)
    settings = with_event(settings, actions)
    client = registry_client(settings, actions)
    with actions.group(f"Tag plan for {settings.image_name}"):
        plan = make_plan(settings, client)
        if actions.in_actions:  # on a terminal the summary below shows the same table
            actions.info(format_plan(plan))
    actions.add_summary(plan_summary(plan))
    actions.set_output("tags", "\n".join(plan.tags))
    actions.set_output("version", plan.tag_plan.version)
    actions.set_output("status", Status.PLANNED)
