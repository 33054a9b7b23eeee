"""Which tags a build publishes: the ADR's tag strategy as a pure function.

- branch ``pre-release`` or git tag ``test-*`` (staging):
  ``staging-latest``, ``test-YYYYMMDD-N``, ``sha-<7>``
- git tag ``vX.Y.Z[-pre]`` (release): ``vX.Y.Z``, plus ``latest`` per the ``latest`` input
- branch ``release`` (release): ``v`` + the ``version`` input, plus ``latest`` likewise
- anything else, and every pull request (validation): no tag, nothing is pushed

No I/O here: the registry's current tags and the build date come in as arguments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import semver

from deploykit.errors import InputError

STAGING, RELEASE, VALIDATION = "staging", "release", "validation"
STAGING_LATEST = "staging-latest"
LATEST = "latest"
PULL_REQUEST_EVENTS = ("pull_request", "pull_request_target", "merge_group")

_NUMBER = r"(?:0|[1-9][0-9]*)"
_PRE_PART = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_VERSION_RE = re.compile(
    rf"^v?(?P<core>{_NUMBER}\.{_NUMBER}\.{_NUMBER})(?:-(?P<pre>{_PRE_PART}(?:\.{_PRE_PART})*))?$"
)
_TEST_TAG_RE = re.compile(r"^test-(?P<date>[0-9]{8})-(?P<n>[1-9][0-9]*)$")
_SHA_TAG_RE = re.compile(r"^sha-[0-9a-f]{7}$")
_SHA_RE = re.compile(r"^[0-9a-fA-F]{7,64}$")


@dataclass(frozen=True)
class TagPlan:
    """The tags of one build and why."""

    tags: tuple[str, ...]
    write_once: tuple[str, ...]
    mutable: tuple[str, ...]
    version: str
    push: bool
    kind: str
    reason: str


# -- the tag grammar ---------------------------------------------------------------
def parse_version(text: str) -> semver.Version | None:
    """``vX.Y.Z[-pre]`` or ``X.Y.Z[-pre]`` as a semver Version; None otherwise.

    Build metadata (``+...``) is refused: ``+`` cannot appear in an image tag.
    """
    if not _VERSION_RE.match(text.strip()):
        return None
    return semver.Version.parse(text.strip().removeprefix("v"))


def is_release_tag(tag: str) -> bool:
    """``vX.Y.Z`` or ``vX.Y.Z-pre`` exactly as published (with the ``v``)."""
    return tag.startswith("v") and parse_version(tag) is not None


def is_test_tag(tag: str) -> bool:
    match = _TEST_TAG_RE.match(tag)
    return bool(match) and _valid_date(match.group("date") if match else "")


def is_write_once(tag: str) -> bool:
    """``vX.Y.Z[-pre]``, ``test-YYYYMMDD-N`` and ``sha-<7>`` never move once published."""
    return is_release_tag(tag) or is_test_tag(tag) or bool(_SHA_TAG_RE.match(tag))


def _valid_date(text: str) -> bool:
    try:
        datetime.strptime(text, "%Y%m%d")  # a calendar date: no time zone needed
    except ValueError:
        return False
    return True


# -- classification ------------------------------------------------------------------
def build_kind(event_name: str, ref: str) -> str:
    """``staging``, ``release`` or ``validation`` for an event and ``GITHUB_REF``."""
    if event_name in PULL_REQUEST_EVENTS:
        return VALIDATION
    if ref == "refs/heads/pre-release" or ref.startswith("refs/tags/test-"):
        return STAGING
    git_tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else None
    if ref == "refs/heads/release" or (git_tag is not None and is_release_tag(git_tag)):
        return RELEASE
    return VALIDATION


def _ref_label(event_name: str, ref: str) -> str:
    if ref.startswith("refs/heads/"):
        return f"branch `{ref.removeprefix('refs/heads/')}`"
    if ref.startswith("refs/tags/"):
        return f"git tag `{ref.removeprefix('refs/tags/')}`"
    return f"`{event_name or 'unknown'}` event on `{ref or 'no ref'}`"


# -- the plan ------------------------------------------------------------------------
def plan_tags(
    *,
    event_name: str,
    ref: str,
    sha: str,
    version: str,
    existing_tags: Iterable[str],
    build_date: datetime,
    latest: str,
) -> TagPlan:
    """The tags a build of ``ref`` publishes, given the registry's ``existing_tags``."""
    kind = build_kind(event_name, ref)
    if kind == STAGING:
        return _staging_plan(ref, sha, existing_tags, build_date)
    if kind == RELEASE:
        return _release_plan(ref, version, existing_tags, latest)
    what = "a pull request" if event_name in PULL_REQUEST_EVENTS else _ref_label(event_name, ref)
    return _make_plan((), version="", kind=VALIDATION, reason=(
        f"Validation build for {what}: the image is built but nothing is pushed. Only "
        "branch `pre-release`, git tags `test-*` and `vX.Y.Z`, and branch `release` publish."))


def _staging_plan(
    ref: str, sha: str, existing_tags: Iterable[str], build_date: datetime
) -> TagPlan:
    git_tag = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else ""
    test_tag = git_tag if is_test_tag(git_tag) else next_test_tag(existing_tags, build_date)
    tags = (STAGING_LATEST, test_tag, sha_tag(sha))
    how = "given by the git tag" if test_tag == git_tag else "next free number for the date"
    return _make_plan(tags, version="", kind=STAGING, reason=(
        f"Staging build for {_ref_label('', ref)}: publishes {', '.join(tags)} "
        f"({test_tag}: {how})."))


def _release_plan(ref: str, version_input: str, existing_tags: Iterable[str],
                  latest: str) -> TagPlan:
    version, parsed = _release_version(ref, version_input)
    add_latest, why_latest = latest_decision(parsed, existing_tags, latest)
    tags = (version, LATEST) if add_latest else (version,)
    return _make_plan(tags, version=version, kind=RELEASE, reason=(
        f"Release build for {_ref_label('', ref)}: publishes {version}; {why_latest}"))


def _release_version(ref: str, version_input: str) -> tuple[str, semver.Version]:
    """The release tag ``vX.Y.Z`` (from the git tag, else the input) and its version."""
    text = ref.removeprefix("refs/tags/") if ref.startswith("refs/tags/") else version_input
    text = text.strip()
    if not text:
        raise InputError("version", "is required for a build of branch `release`.",
                         hint="Set `version: 1.4.2` (or `v1.4.2`): it becomes the tag "
                         "`v1.4.2`. Or push a git tag `v1.4.2` instead.")
    parsed = parse_version(text)
    if parsed is None:
        raise InputError("version", f"{text!r} is not a semantic version X.Y.Z.",
                         hint="Write e.g. `1.4.2`, `v1.4.2` or `v2.0.0-rc.1` (no `+build`).")
    return f"v{parsed}", parsed


def latest_decision(
    version: semver.Version, existing_tags: Iterable[str], latest: str
) -> tuple[bool, str]:
    """Whether a release of ``version`` gets ``latest``, and why (one sentence)."""
    if latest == "true":
        return True, "`latest` added (latest=true)."
    if latest == "false":
        return False, "`latest` not added (latest=false)."
    if version.prerelease:
        return False, "`latest` not added: a pre-release never moves it (latest=auto)."
    higher = max(released_versions(existing_tags), default=None)
    if higher is not None and higher > version:
        return False, (f"`latest` not added: v{higher} is already in the registry and is "
                       "higher (latest=auto).")
    return True, "`latest` added: the highest release in the registry (latest=auto)."


def released_versions(tags: Iterable[str]) -> list[semver.Version]:
    """The non-pre-release ``vX.Y.Z`` versions among ``tags``."""
    versions = (parse_version(tag) for tag in tags if tag.startswith("v"))
    return [v for v in versions if v is not None and not v.prerelease]


def next_test_tag(existing_tags: Iterable[str], build_date: datetime) -> str:
    """``test-YYYYMMDD-N`` with N one more than the highest of that UTC date (1 if none)."""
    date = _utc(build_date).strftime("%Y%m%d")
    numbers = [int(m.group("n")) for m in map(_TEST_TAG_RE.match, existing_tags)
               if m and m.group("date") == date]
    return f"test-{date}-{max(numbers, default=0) + 1}"


def number_of_test_tag(tag: str) -> int:
    """``N`` of ``test-YYYYMMDD-N`` (0 for any other tag)."""
    match = _TEST_TAG_RE.match(tag)
    return int(match.group("n")) if match else 0


def sha_tag(sha: str) -> str:
    if not _SHA_RE.match(sha.strip()):
        raise InputError("GITHUB_SHA", f"{sha!r} is not a commit SHA.",
                         hint="Run inside GitHub Actions, or set GITHUB_SHA to the commit "
                         "being built (`git rev-parse HEAD`).")
    return f"sha-{sha.strip().lower()[:7]}"


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _make_plan(tags: tuple[str, ...], *, version: str, kind: str, reason: str) -> TagPlan:
    return TagPlan(
        tags=tags,
        write_once=tuple(tag for tag in tags if is_write_once(tag)),
        mutable=tuple(tag for tag in tags if not is_write_once(tag)),
        version=version,
        push=bool(tags),
        kind=kind,
        reason=reason,
    )
