"""The build plan (``deploykit tags``) against a fake registry and recorded answers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import responses

from deploykit.cli import main
from deploykit.errors import InputError, RegistryUnreachableError
from deploykit.plan import BuildPlan, PlannedTag, format_plan, make_plan, plan_command
from deploykit.settings import Settings, load_settings
from tests.conftest import CapturedActions, parse_github_output

SHA = "0123456789abcdef0123456789abcdef01234567"
EPOCH = "1795815000"  # 2026-11-27 21:30 UTC
OLD = "sha256:" + "1" * 64
STAGING = "sha256:" + "2" * 64


class FakeRegistry:
    """Tags -> digests, and digests -> revision labels; records every call."""

    def __init__(self, tags: dict[str, str], revisions: dict[str, str] | None = None) -> None:
        self._tags = tags
        self._revisions = revisions or {}
        self.calls: list[str] = []

    def tags(self) -> list[str]:
        self.calls.append("tags")
        return list(self._tags)

    def find(self, reference: str) -> str | None:
        self.calls.append(f"find {reference}")
        return self._tags.get(reference)

    def labels(self, reference: str, platform: str | None = None) -> dict[str, str]:
        self.calls.append(f"labels {reference}")
        revision = self._revisions.get(reference)
        return {"org.opencontainers.image.revision": revision} if revision else {}


def settings_for(ref: str, event: str = "push", **inputs: str) -> Settings:
    env = {"INPUT_MODE": "build", "INPUT_REGISTRY": "127.0.0.1:5000",
           "INPUT_IMAGE_REPO": "org/app", "GITHUB_EVENT_NAME": event, "GITHUB_REF": ref,
           "GITHUB_SHA": SHA, "SOURCE_DATE_EPOCH": EPOCH}
    env.update({f"INPUT_{name.upper()}": value for name, value in inputs.items()})
    return load_settings(env)


def test_staging_plan_marks_existing_tags_with_digest_and_revision() -> None:
    fake = FakeRegistry({"staging-latest": STAGING, "test-20261127-1": OLD, "sha-0123456": OLD,
                         "v1.0.0": OLD}, {OLD: "f" * 40})
    plan = make_plan(settings_for("refs/heads/pre-release"), fake)  # type: ignore[arg-type]
    assert plan.image == "127.0.0.1:5000/org/app"
    assert plan.entries == (
        PlannedTag("staging-latest", False, STAGING, None),
        PlannedTag("test-20261127-2", True, None, None),
        PlannedTag("sha-0123456", True, OLD, "f" * 40),
    )
    assert fake.calls == ["tags", "find staging-latest", "find sha-0123456", f"labels {OLD}"]
    assert [e.tag for e in plan.new] == ["test-20261127-2"]
    assert [e.tag for e in plan.existing] == ["staging-latest", "sha-0123456"]
    assert plan.registry_tags == ("staging-latest", "test-20261127-1", "sha-0123456", "v1.0.0")


def test_existing_write_once_tag_without_revision_label_has_empty_revision() -> None:
    fake = FakeRegistry({"v1.2.0": OLD})
    plan = make_plan(settings_for("refs/tags/v1.2.0"), fake)  # type: ignore[arg-type]
    assert plan.entries == (PlannedTag("v1.2.0", True, OLD, ""), PlannedTag("latest", False, None))


def test_validation_builds_never_touch_the_registry() -> None:
    fake = FakeRegistry({})
    plan = make_plan(settings_for("refs/pull/7/merge", "pull_request"), fake)  # type: ignore[arg-type]
    assert (plan.entries, plan.tag_plan.push, fake.calls) == ((), False, [])


def test_release_plan_reads_the_registry_for_latest() -> None:
    fake = FakeRegistry({"v2.0.0": OLD, "latest": OLD})
    plan = make_plan(settings_for("refs/heads/release", version="1.9.1"), fake)  # type: ignore[arg-type]
    assert plan.tags == ("v1.9.1",)
    assert fake.calls == ["tags"]


def test_plan_command_outputs_log_and_summary(
    make_actions: Callable[..., CapturedActions], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = FakeRegistry({"staging-latest": STAGING, "sha-0123456": OLD}, {OLD: "f" * 40})
    monkeypatch.setattr("deploykit.plan.registry_client", lambda *args, **kwargs: fake)
    actions = make_actions()
    plan_command(settings_for("refs/heads/pre-release"), actions)
    assert actions.outputs == {"tags": "staging-latest\ntest-20261127-1\nsha-0123456",
                               "version": "", "status": "planned"}
    assert parse_github_output((tmp_path / "github_output").read_text()) == actions.outputs
    reason = ("Staging build for branch `pre-release`: publishes staging-latest, "
              "test-20261127-1, sha-0123456 (test-20261127-1: next free number for the date).")
    assert actions.out.getvalue() == (
        "::group::Tag plan for 127.0.0.1:5000/org/app\n"
        f"{reason}\n"
        "Image: 127.0.0.1:5000/org/app\n"
        "Tag              Status  Digest                                                       "
        "            Kind        Revision\n"
        f"staging-latest   exists  {STAGING}  mutable     -\n"
        f"test-20261127-1  new     -                                                            "
        "            write-once  -\n"
        f"sha-0123456      exists  {OLD}  write-once  {'f' * 40}\n"
        "::endgroup::\n")
    assert (tmp_path / "step_summary").read_text() == (
        "### Tag plan for `127.0.0.1:5000/org/app` (staging)\n\n"
        f"{reason}\n\n"
        "| Tag | Status | Digest | Kind | Revision |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| staging-latest | exists | {STAGING} | mutable | - |\n"
        "| test-20261127-1 | new | - | write-once | - |\n"
        f"| sha-0123456 | exists | {OLD} | write-once | {'f' * 40} |\n\n")


def test_format_plan_of_a_validation_build() -> None:
    fake = FakeRegistry({})
    plan: BuildPlan = make_plan(settings_for("refs/heads/develop"), fake)  # type: ignore[arg-type]
    assert format_plan(plan) == (
        "Validation build for branch `develop`: the image is built but nothing is pushed. "
        "Only branch `pre-release`, git tags `test-*` and `vX.Y.Z`, and branch `release` "
        "publish.\nNo tag for 127.0.0.1:5000/org/app.")


def tags_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path / "out"),
            "GITHUB_STEP_SUMMARY": str(tmp_path / "summary"), "INPUT_REGISTRY": "127.0.0.1:5001",
            "INPUT_IMAGE_REPO": "org/app", "GITHUB_EVENT_NAME": "push",
            "GITHUB_REF": "refs/heads/pre-release", "GITHUB_SHA": SHA, "SOURCE_DATE_EPOCH": EPOCH,
            **extra}


def test_an_unauthorised_registry_fails_the_plan_instead_of_assuming_no_tags(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "http://127.0.0.1:5001/v2/org/app/tags/list", status=401,
                 headers={"WWW-Authenticate": 'Basic realm="r"'})
        rsps.add(responses.GET, "http://127.0.0.1:5001/v2/org/app/tags/list", status=401,
                 headers={"WWW-Authenticate": 'Basic realm="r"'})
        code = main(["tags"], env=tags_env(tmp_path, INPUT_REGISTRY_USERNAME="deploykit",
                                           INPUT_REGISTRY_PASSWORD="wrong-password"))
    assert code == 1
    out = capsys.readouterr().out
    assert ("::error title=Registry authentication failed::127.0.0.1:5001 rejected the "
            "credentials of deploykit for 127.0.0.1:5001/org/app (tag list).") in out
    assert out.startswith("::add-mask::wrong-password\n")  # the runner's mask, never a log
    assert out.count("wrong-password") == 1
    assert not (tmp_path / "out").exists()


def test_an_unreachable_registry_fails_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise RegistryUnreachableError("127.0.0.1:5001 did not answer", hint="")

    fake = FakeRegistry({})
    monkeypatch.setattr(fake, "tags", unreachable)
    with pytest.raises(RegistryUnreachableError):
        make_plan(settings_for("refs/heads/pre-release"), fake)  # type: ignore[arg-type]


def test_a_missing_release_version_fails_before_any_connection() -> None:
    fake = FakeRegistry({})
    with pytest.raises(InputError) as error:
        make_plan(settings_for("refs/heads/release"), fake)  # type: ignore[arg-type]
    assert (error.value.input_name, fake.calls) == ("version", [])


def test_tags_on_a_terminal_plans_from_the_local_git_checkout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14: with no GITHUB_* it planned for "`unknown` event on `no ref`"."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "pre-release"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q",
                  "--allow-empty", "-m", "one"]):
        subprocess.run(["git", "-C", str(repo), *args], check=True, timeout=10)
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True, timeout=10,
                         capture_output=True, text=True).stdout.strip()
    monkeypatch.chdir(repo)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "http://127.0.0.1:5000/v2/org/app/tags/list",
                 json={"name": "org/app", "tags": None})
        code = main(["tags", "--registry", "127.0.0.1:5000", "--image-repo", "org/app"],
                    env={"SOURCE_DATE_EPOCH": EPOCH})
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.out == (f"tags=\n  staging-latest\n  test-20261127-1\n  sha-{sha[:7]}\n"
                            "version=\nstatus=planned\n")
    assert captured.err.splitlines()[0] == (
        "Event from the local git checkout (GITHUB_REF is not set): branch `pre-release` at "
        f"{sha[:7]}.")
    assert "Staging build for branch `pre-release`" in captured.err


@pytest.mark.parametrize("summary", ["true", "false"])
def test_summary_input_turns_the_job_summary_off(tmp_path: Path, summary: str) -> None:
    env = tags_env(tmp_path, INPUT_MODE="build", INPUT_DRY_RUN="true", INPUT_SUMMARY=summary)
    with responses.RequestsMock() as rsps:
        rsps.add(responses.GET, "http://127.0.0.1:5001/v2/org/app/tags/list",
                 json={"name": "org/app", "tags": None})
        assert main([], env=env, from_action=True) == 0
    assert parse_github_output((tmp_path / "out").read_text())["status"] == "planned"
    assert (tmp_path / "summary").exists() == (summary == "true")
