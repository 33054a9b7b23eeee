"""``deploykit tags`` end to end against the real htpasswd registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from deploykit.cli import main
from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry as Registry
from tests.integration.test_registry import REVISION, add_tags, push_image

EPOCH = "1795815000"  # 2026-11-27 21:30 UTC


def run_tags(registry: Registry, repo: str, tmp_path: Path, ref: str,
             **inputs: str) -> tuple[int, dict[str, str], str]:
    output, summary = tmp_path / "github_output", tmp_path / "step_summary"
    for path in (output, summary):
        path.unlink(missing_ok=True)
    env = {"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
           "GITHUB_STEP_SUMMARY": str(summary), "GITHUB_EVENT_NAME": "push",
           "GITHUB_REF": ref, "GITHUB_SHA": REVISION, "SOURCE_DATE_EPOCH": EPOCH,
           "INPUT_REGISTRY": registry.host, "INPUT_IMAGE_REPO": repo,
           "INPUT_REGISTRY_USERNAME": registry.username,
           "INPUT_REGISTRY_PASSWORD": registry.password,
           **{f"INPUT_{name.upper()}": value for name, value in inputs.items()}}
    code = main(["tags"], env=env)
    outputs = parse_github_output(output.read_text()) if output.exists() else {}
    return code, outputs, summary.read_text() if summary.exists() else ""


def test_tags_plans_a_staging_build_against_the_registry(
    auth_registry: Registry, make_app_context: Callable[..., str], docker_config: str,
    tmp_path: Path,
) -> None:
    repo = auth_registry.repo("dk-tags")
    digest = push_image(auth_registry, repo, ["staging-latest", "test-20261127-1", "sha-0123456"],
                        make_app_context("staging"), docker_config)
    add_tags(auth_registry, repo, "test-20261127-1", ["test-20261127-2"], docker_config)

    code, outputs, summary = run_tags(auth_registry, repo, tmp_path, "refs/heads/pre-release")

    assert code == 0
    assert outputs == {"tags": "staging-latest\ntest-20261127-3\nsha-0123456", "version": "",
                       "status": "planned"}
    image = f"{auth_registry.host}/{repo}"
    assert summary == (
        f"### Tag plan for `{image}` (staging)\n\n"
        "Staging build for branch `pre-release`: publishes staging-latest, test-20261127-3, "
        "sha-0123456 (test-20261127-3: next free number for the date).\n\n"
        "| Tag | Status | Digest | Kind | Revision |\n"
        "| --- | --- | --- | --- | --- |\n"
        f"| staging-latest | exists | {digest} | mutable | - |\n"
        "| test-20261127-3 | new | - | write-once | - |\n"
        f"| sha-0123456 | exists | {digest} | write-once | {REVISION} |\n\n")


def test_tags_plans_a_hotfix_release_without_moving_latest(
    auth_registry: Registry, make_app_context: Callable[..., str], docker_config: str,
    tmp_path: Path,
) -> None:
    repo = auth_registry.repo("dk-tags")
    push_image(auth_registry, repo, ["v2.0.0", "latest"], make_app_context("release"),
               docker_config)

    code, outputs, summary = run_tags(auth_registry, repo, tmp_path, "refs/heads/release",
                                      version="1.4.1")

    assert (code, outputs) == (0, {"tags": "v1.4.1", "version": "v1.4.1", "status": "planned"})
    assert "| v1.4.1 | new | - | write-once | - |" in summary
    assert ("`latest` not added: v2.0.0 is already in the registry and is higher "
            "(latest=auto).") in summary


def test_tags_with_a_wrong_password_fails_without_outputs(
    auth_registry: Registry, tmp_path: Path,
) -> None:
    wrong = Registry(auth_registry.host, auth_registry.username, "not-the-password")
    code, outputs, summary = run_tags(wrong, auth_registry.repo("dk-tags"), tmp_path,
                                      "refs/heads/pre-release")
    assert (code, outputs, summary) == (1, {}, "")
