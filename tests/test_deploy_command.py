"""deploy_command: the compose config starts before the deploy's libraries load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.commands.deploy_run import check_local
from deploykit.errors import InputError
from deploykit.settings import Settings, load_settings


def test_the_command_module_loads_neither_the_sdk_nor_requests() -> None:
    """What it imports runs before the config starts: nothing heavy."""
    code = ("import sys, deploykit.commands.deploy_run; "
            "print([m for m in ('docker', 'requests', 'deploykit.deploy') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"


def _settings(workspace: Path, **inputs: str) -> Settings:
    env = {"INPUT_MODE": "deploy", "GITHUB_REPOSITORY": "o/a", "GITHUB_ACTIONS": "true",
           "GITHUB_WORKSPACE": str(workspace),
           **{f"INPUT_{name.upper()}": value for name, value in inputs.items()}}
    return load_settings(env)


def _workspace(tmp_path: Path) -> tuple[Path, Path]:
    workspace, outside = tmp_path / "workspace", tmp_path / "outside"
    for directory in (workspace, outside):
        directory.mkdir()
        (directory / "compose.yaml").write_text("services: {}\n")
    return workspace, outside


def test_a_project_dir_linked_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    """Issue 20: the check was lexical, so `deploy -> /elsewhere` deployed from outside."""
    workspace, outside = _workspace(tmp_path)
    (workspace / "deploy").symlink_to(outside)
    settings = _settings(workspace, project_dir="deploy")
    with pytest.raises(InputError) as caught:
        check_local(settings, {"GITHUB_ACTIONS": "true"})
    assert caught.value.input_name == "project_dir"
    assert caught.value.message == (f"Input 'project_dir': 'deploy' leads to {outside}, outside "
                                    f"the workspace {workspace} (through a symbolic link).")


def test_a_compose_file_linked_out_of_the_workspace_is_refused(tmp_path: Path) -> None:
    workspace, outside = _workspace(tmp_path)
    (workspace / "linked.yaml").symlink_to(outside / "compose.yaml")
    with pytest.raises(InputError) as caught:
        check_local(_settings(workspace, compose_file="linked.yaml"), {"GITHUB_ACTIONS": "true"})
    assert caught.value.input_name == "compose_file"


def test_links_inside_the_workspace_and_terminals_are_fine(tmp_path: Path) -> None:
    workspace, outside = _workspace(tmp_path)
    (workspace / "app").mkdir()
    (workspace / "app" / "compose.yaml").write_text("services: {}\n")
    (workspace / "current").symlink_to(workspace / "app")
    (workspace / "away").symlink_to(outside)
    check_local(_settings(workspace, project_dir="current"), {"GITHUB_ACTIONS": "true"})
    check_local(_settings(workspace, project_dir="away"), {})  # a terminal: any directory


def test_a_missing_project_dir_fails_before_anything_else(tmp_path: Path) -> None:
    with pytest.raises(InputError) as caught:
        check_local(_settings(tmp_path, project_dir="missing"), {})
    assert caught.value.input_name == "project_dir"
