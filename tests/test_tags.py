"""The tag strategy of issue 3, table by table, plus properties of the grammar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
import semver
from hypothesis import given
from hypothesis import strategies as st

from deploykit.errors import InputError
from deploykit.tags import (
    TagPlan,
    build_kind,
    is_write_once,
    latest_decision,
    next_test_tag,
    number_of_test_tag,
    parse_version,
    plan_tags,
)

SHA = "0123456789abcdef0123456789abcdef01234567"
DATE = datetime(2026, 11, 27, 21, 30, tzinfo=UTC)


def plan(ref: str, *, event: str = "push", version: str = "", existing: tuple[str, ...] = (),
         latest: str = "auto", date: datetime = DATE) -> TagPlan:
    return plan_tags(event_name=event, ref=ref, sha=SHA, version=version,
                     existing_tags=existing, build_date=date, latest=latest)


# -- staging -------------------------------------------------------------------------
def test_pre_release_branch_publishes_the_three_staging_tags() -> None:
    result = plan("refs/heads/pre-release")
    assert result == TagPlan(
        tags=("staging-latest", "test-20261127-1", "sha-0123456"),
        write_once=("test-20261127-1", "sha-0123456"),
        mutable=("staging-latest",),
        version="",
        push=True,
        kind="staging",
        reason="Staging build for branch `pre-release`: publishes staging-latest, "
        "test-20261127-1, sha-0123456 (test-20261127-1: next free number for the date).",
    )


def test_n_is_one_more_than_the_highest_of_the_same_utc_date() -> None:
    existing = ("test-20261127-1", "test-20261127-9", "test-20261127-10", "test-20261126-40",
                "test-20261128-7", "test-2026112-99", "test-20261127-x", "staging-latest")
    assert plan("refs/heads/pre-release", existing=existing).tags[1] == "test-20261127-11"


def test_the_date_is_the_utc_date_of_the_build() -> None:
    # 01:30 on the 28th in UTC+3 is still the 27th in UTC.
    local = datetime(2026, 11, 28, 1, 30, tzinfo=timezone(timedelta(hours=3)))
    assert plan("refs/heads/pre-release", date=local).tags[1] == "test-20261127-1"
    naive = datetime(2026, 11, 28, 1, 30)  # naive means UTC
    assert plan("refs/heads/pre-release", date=naive).tags[1] == "test-20261128-1"


def test_a_git_tag_that_is_exactly_a_test_tag_is_used_as_given() -> None:
    result = plan("refs/tags/test-20260101-7", existing=("test-20261127-3",))
    assert result.tags == ("staging-latest", "test-20260101-7", "sha-0123456")
    assert result.reason.endswith("(test-20260101-7: given by the git tag).")


@pytest.mark.parametrize("git_tag", ["test-smoke", "test-20261399-1", "test-20261127-0",
                                     "test-20261127-1-extra"])
def test_other_test_git_tags_get_the_next_number(git_tag: str) -> None:
    result = plan(f"refs/tags/{git_tag}", existing=("test-20261127-2",))
    assert result.kind == "staging"
    assert result.tags == ("staging-latest", "test-20261127-3", "sha-0123456")


def test_a_staging_build_needs_a_commit_sha() -> None:
    with pytest.raises(InputError) as error:
        plan_tags(event_name="push", ref="refs/heads/pre-release", sha="", version="",
                  existing_tags=(), build_date=DATE, latest="auto")
    assert error.value.input_name == "GITHUB_SHA"


# -- releases ----------------------------------------------------------------------------
def test_a_version_git_tag_publishes_itself_and_latest_when_highest() -> None:
    result = plan("refs/tags/v1.4.2", existing=("v1.4.1", "v1.3.0", "staging-latest"))
    assert result == TagPlan(
        tags=("v1.4.2", "latest"), write_once=("v1.4.2",), mutable=("latest",),
        version="v1.4.2", push=True, kind="release",
        reason="Release build for git tag `v1.4.2`: publishes v1.4.2; `latest` added: the "
        "highest release in the registry (latest=auto).",
    )


def test_a_hotfix_after_a_higher_release_does_not_move_latest() -> None:
    result = plan("refs/tags/v1.4.1", existing=("v2.0.0", "v1.4.0", "latest"))
    assert result.tags == ("v1.4.1",)
    assert result.reason.endswith("`latest` not added: v2.0.0 is already in the registry "
                                  "and is higher (latest=auto).")


def test_latest_auto_compares_semver_not_strings() -> None:
    assert plan("refs/tags/v1.10.0", existing=("v1.9.0", "v1.2.0")).tags == ("v1.10.0", "latest")
    assert plan("refs/tags/v1.9.1", existing=("v1.10.0",)).tags == ("v1.9.1",)


def test_latest_auto_ignores_pre_releases_in_the_registry_and_republishing_is_highest() -> None:
    assert plan("refs/tags/v1.5.0", existing=("v2.0.0-rc.1",)).tags == ("v1.5.0", "latest")
    assert plan("refs/tags/v1.5.0", existing=("v1.5.0",)).tags == ("v1.5.0", "latest")


def test_a_pre_release_never_gets_latest_with_auto() -> None:
    result = plan("refs/tags/v2.0.0-rc.1", existing=())
    assert result.tags == ("v2.0.0-rc.1",)
    assert result.version == "v2.0.0-rc.1"
    assert result.write_once == ("v2.0.0-rc.1",)


@pytest.mark.parametrize(("latest", "expected"), [
    ("true", ("v1.0.1", "latest")),
    ("false", ("v1.0.1",)),
])
def test_latest_true_and_false_are_absolute(latest: str, expected: tuple[str, ...]) -> None:
    assert plan("refs/tags/v1.0.1", existing=("v9.0.0",), latest=latest).tags == expected
    assert plan("refs/tags/v9.1.0", existing=(), latest=latest).tags[0] == "v9.1.0"


def test_latest_true_tags_even_a_pre_release() -> None:
    assert plan("refs/tags/v3.0.0-beta", latest="true").tags == ("v3.0.0-beta", "latest")


@pytest.mark.parametrize("version", ["1.4.2", "v1.4.2", " 1.4.2 "])
def test_release_branch_takes_the_version_input_with_or_without_v(version: str) -> None:
    result = plan("refs/heads/release", version=version)
    assert result.tags == ("v1.4.2", "latest")
    assert result.version == "v1.4.2"
    assert result.kind == "release"


def test_release_branch_without_version_is_an_input_error() -> None:
    with pytest.raises(InputError) as error:
        plan("refs/heads/release")
    assert error.value.input_name == "version"
    assert "`version: 1.4.2`" in error.value.hint


@pytest.mark.parametrize("version", ["1.4", "v1.4.2+build.5", "01.2.3", "latest", "v1.2.3.4"])
def test_release_branch_with_a_bad_version_is_an_input_error(version: str) -> None:
    with pytest.raises(InputError, match="is not a semantic version") as error:
        plan("refs/heads/release", version=version)
    assert error.value.input_name == "version"


# -- validation builds -------------------------------------------------------------------------
@pytest.mark.parametrize(("event", "ref"), [
    ("pull_request", "refs/pull/12/merge"),
    ("pull_request", "refs/heads/release"),
    ("pull_request_target", "refs/heads/pre-release"),
    ("push", "refs/heads/feature/login"),
    ("push", "refs/heads/develop"),
    ("push", "refs/heads/hotfix/crash"),
    ("push", "refs/heads/main"),
    ("push", "refs/tags/v1.2"),
    ("push", "refs/tags/1.2.3"),
    ("workflow_dispatch", "refs/heads/deploy"),
])
def test_everything_else_is_a_validation_build_that_pushes_nothing(event: str, ref: str) -> None:
    result = plan(ref, event=event, version="1.2.3")
    assert (result.tags, result.push, result.kind, result.version) == ((), False, "validation", "")
    assert result.reason.startswith("Validation build for ")
    assert result.reason.endswith("nothing is pushed. Only branch `pre-release`, git tags "
                                  "`test-*` and `vX.Y.Z`, and branch `release` publish.")


def test_validation_reason_names_the_pull_request_or_the_ref() -> None:
    assert plan("refs/pull/1/merge", event="pull_request").reason.startswith(
        "Validation build for a pull request:")
    assert plan("refs/heads/develop").reason.startswith("Validation build for branch `develop`:")


def test_build_kind_of_workflow_dispatch_follows_the_ref() -> None:
    assert build_kind("workflow_dispatch", "refs/heads/pre-release") == "staging"
    assert build_kind("workflow_dispatch", "refs/heads/release") == "release"
    assert build_kind("schedule", "refs/tags/v1.0.0") == "release"


# -- the grammar ------------------------------------------------------------------------
@pytest.mark.parametrize(("tag", "expected"), [
    ("v1.2.3", True), ("v1.2.3-rc.1", True), ("test-20261127-1", True), ("sha-0123abc", True),
    ("staging-latest", False), ("latest", False), ("1.2.3", False), ("v1.2", False),
    ("sha-0123abcd", False), ("sha-0123ABC", False), ("test-20261127-0", False),
    ("test-20261340-1", False), ("buildcache", False),
])
def test_is_write_once(tag: str, expected: bool) -> None:
    assert is_write_once(tag) is expected


@pytest.mark.parametrize(("text", "expected"), [
    ("v1.2.3", semver.Version(1, 2, 3)), ("1.2.3", semver.Version(1, 2, 3)),
    ("v1.2.3-rc.1", semver.Version(1, 2, 3, "rc.1")), (" v0.0.0 ", semver.Version(0, 0, 0)),
    ("v1.2", None), ("v1.2.3+meta", None), ("vv1.2.3", None), ("v01.2.3", None), ("", None),
    ("v1.2.3-", None), ("v1.2.3-01", None),
])
def test_parse_version(text: str, expected: semver.Version | None) -> None:
    assert parse_version(text) == expected


versions = st.builds(semver.Version, st.integers(0, 10_000), st.integers(0, 10_000),
                     st.integers(0, 10_000))
pre_releases = st.from_regex(r"\A(rc|alpha|beta)\.(0|[1-9][0-9]{0,3})\Z")


@given(versions, st.one_of(st.none(), pre_releases))
def test_every_semver_round_trips_through_its_v_tag(version: semver.Version,
                                                     pre: str | None) -> None:
    version = version.replace(prerelease=pre)
    tag = f"v{version}"
    assert parse_version(tag) == version
    assert is_write_once(tag)
    result = plan(f"refs/tags/{tag}", latest="false")
    assert (result.tags, result.version, result.write_once) == ((tag,), tag, (tag,))


@given(versions, st.lists(versions, max_size=8))
def test_latest_auto_iff_at_least_every_existing_release(new: semver.Version,
                                                         existing: list[semver.Version]) -> None:
    result = plan(f"refs/tags/v{new}", existing=tuple(f"v{v}" for v in existing))
    assert ("latest" in result.tags) is all(new >= old for old in existing)
    assert result.mutable == (("latest",) if "latest" in result.tags else ())


@given(st.lists(st.integers(1, 500), max_size=20), st.lists(st.integers(1, 500), max_size=20))
def test_n_ignores_other_dates(today: list[int], yesterday: list[int]) -> None:
    existing = [f"test-20261127-{n}" for n in today] + [f"test-20261126-{n}" for n in yesterday]
    assert next_test_tag(existing, DATE) == f"test-20261127-{max(today, default=0) + 1}"


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-._", min_size=1, max_size=30))
def test_no_random_branch_publishes_anything(branch: str) -> None:
    result = plan(f"refs/heads/{branch}", version="1.0.0")
    if branch in ("pre-release", "release"):
        assert result.push
    else:
        assert (result.tags, result.push, result.kind) == ((), False, "validation")


@pytest.mark.parametrize(("tag", "number"), [
    ("test-20261127-1", 1), ("test-20261127-12", 12), ("sha-0123456", 0), ("v1.2.3", 0),
    ("test-2026112-1", 0)])
def test_test_tag_number(tag: str, number: int) -> None:
    assert number_of_test_tag(tag) == number


def test_latest_decision_is_the_plans_rule_on_any_tag_list() -> None:
    """publish.py decides `latest` again at publish time with the same function."""
    version = semver.Version.parse("1.2.3")
    assert latest_decision(version, ["v1.3.0"], "auto") == (
        False, "`latest` not added: v1.3.0 is already in the registry and is higher "
        "(latest=auto).")
    assert latest_decision(version, ["v1.2.2", "v2.0.0-rc.1"], "auto")[0] is True
    assert latest_decision(version, ["v9.0.0"], "true")[0] is True
