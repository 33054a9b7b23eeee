"""Release notes, pure: the release tag of a version, the release before it, the
changelog from commit messages (Conventional Commits grouped, others kept), the body."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import semver

from deploykit.actions import markdown_table
from deploykit.errors import InputError
from deploykit.tags import parse_version


def release_tag(version: str) -> str:
    """``1.2.3`` or ``v1.2.3`` (pre-releases like ``v1.2.3-rc.1`` too) -> ``v1.2.3``."""
    parsed = parse_version(version)
    if parsed is None:
        raise InputError("version", f"{version!r} is not a version X.Y.Z.",
                         hint="Write e.g. `version: 1.4.2` (or `v1.4.2`).")
    return f"v{parsed}"


def previous_release_tag(tags: Iterable[str], tag: str) -> str | None:
    """The highest ``vX.Y.Z`` below ``tag``; a stable release skips pre-release tags."""
    current = semver.Version.parse(tag.removeprefix("v"))
    candidates = []
    for name in tags:
        version = parse_version(name)
        if version is None or not name.startswith("v"):
            continue
        if version < current and (current.prerelease or not version.prerelease):
            candidates.append((version, name))
    return max(candidates)[1] if candidates else None


_CONVENTIONAL_RE = re.compile(
    r"^(?P<type>[A-Za-z]+)(?:\((?P<scope>[^()]+)\))?(?P<bang>!)?: +(?P<text>\S.*)$"
)
_BREAKING_FOOTER_RE = re.compile(r"^BREAKING[ -]CHANGE: *(?P<note>.*)$", re.MULTILINE)
_MERGE_RE = re.compile(r"^Merge (pull request|branch|remote-tracking branch) ")
FEATURES, FIXES, OTHER, CHANGES = "Features", "Fixes", "Other changes", "Changes"
_GROUP_OF_TYPE = {"feat": FEATURES, "fix": FIXES}


@dataclass(frozen=True)
class ChangelogEntry:
    group: str
    line: str
    conventional: bool
    breaking: bool
    note: str = ""


def parse_commit_message(message: str) -> ChangelogEntry | None:
    """One commit message as a changelog entry; None for empty and merge commits."""
    subject = message.strip().splitlines()[0].strip() if message.strip() else ""
    if not subject or _MERGE_RE.match(subject):
        return None
    footer = _BREAKING_FOOTER_RE.search(message)
    note = footer.group("note").strip() if footer else ""
    match = _CONVENTIONAL_RE.match(subject)
    if not match:
        return ChangelogEntry(OTHER, subject, conventional=False, breaking=bool(footer), note=note)
    kind = match.group("type").lower()
    group = _GROUP_OF_TYPE.get(kind, OTHER)
    scope = match.group("scope")
    line = subject if group == OTHER else (
        f"**{scope}:** {match.group('text')}" if scope else match.group("text"))
    breaking = bool(match.group("bang") or footer)
    return ChangelogEntry(group, line, conventional=True, breaking=breaking, note=note)


def render_changelog(messages: list[str]) -> str:
    """Markdown sections of commit messages, in the order given.

    Conventional commits are grouped (feat -> Features, fix -> Fixes, the rest ->
    Other changes) and breaking ones (``!`` or a ``BREAKING CHANGE:`` footer) are
    flagged; when no message follows the convention, one plain list.
    """
    entries = [entry for entry in map(parse_commit_message, messages) if entry]
    if not entries:
        return "No changes."
    if not any(entry.conventional for entry in entries):
        return f"### {CHANGES}\n\n" + "\n".join(_bullet(entry) for entry in entries)
    sections = []
    for group in (FEATURES, FIXES, OTHER):
        lines = [_bullet(entry) for entry in entries if entry.group == group]
        if lines:
            sections.append(f"### {group}\n\n" + "\n".join(lines))
    return "\n\n".join(sections)


def _bullet(entry: ChangelogEntry) -> str:
    flag = "**BREAKING:** " if entry.breaking else ""
    note = f"\n  - {entry.note}" if entry.note else ""
    return f"- {flag}{entry.line}{note}"


def release_body(
    *, tag: str, changelog: str, image: str, digest: str, platforms: Mapping[str, str],
    prerelease: bool, previous_tag: str | None, compare_url: str = "",
) -> str:
    """The release notes: changes, then the exact image (pull line, digest, platforms)."""
    parts = []
    if prerelease:
        parts.append(f"> **Pre-release.** {tag} is not a stable version.")
    if previous_tag:
        parts.append(f"## Changes since {previous_tag}\n\n{changelog}")
        if compare_url:
            parts.append(f"Full diff: [{previous_tag}...{tag}]({compare_url})")
    else:
        parts.append("## Changes\n\nFirst release: there is no earlier `vX.Y.Z` tag.")
    parts.append(
        f"## Image\n\n```sh\ndocker pull {image}@{digest}\n```\n\n"
        f"- Tag: `{image}:{tag}`\n- Digest: `{digest}`"
    )
    if platforms:
        rows = [[platform, f"`{manifest}`"] for platform, manifest in sorted(platforms.items())]
        parts.append(markdown_table(["Platform", "Manifest digest"], rows))
    return "\n\n".join(parts) + "\n"
