"""What a deploy prints outside a workflow, and where smoke_url credentials go (issues 20
and 23), on the fakes of tests/test_deploy.py."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from deploykit import actions as actions_module
from deploykit.cli import main
from tests.conftest import parse_github_output
from tests.runner_log import live_commands
from tests.test_deploy import D1, FakeRecorder, World, recorder, world

__all__ = ["recorder", "world"]  # fixtures, used by name
HEALTH_HEADER = "service  container   state    health  restarts  verdict"


def base_env(tmp_path: Path, **inputs: str) -> dict[str, str]:
    (tmp_path / "compose.yaml").touch()  # the workspace's project (checked before all)
    env = {"GITHUB_REPOSITORY": "org/app", "GITHUB_RUN_ID": "42", "GITHUB_ACTOR": "ana",
           "GITHUB_WORKSPACE": str(tmp_path), "INPUT_REGISTRY": "127.0.0.1:5000",
           "INPUT_STATE_DIR": str(tmp_path / "state"), "INPUT_ENVIRONMENT": "staging",
           "INPUT_HEALTH_SETTLE": "0"}
    env.update({f"INPUT_{k.upper()}": v for k, v in inputs.items()})
    return env


def test_a_terminal_gets_plain_tables_and_the_health_table_once(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the summary's Markdown on stderr, and the health table twice."""
    world.running = {"app": D1, "worker": D1}
    code = main(["deploy"], env=base_env(tmp_path, image_tag="v2.0.0"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "###" not in captured.err and "---" not in captured.err
    assert "|" not in captured.err
    assert captured.err.count(HEALTH_HEADER) == 1, captured.err
    assert "\nDeploy: deployed\n" in captured.err
    assert "status=deployed\n" in captured.out


def test_smoke_url_credentials_reach_no_output_and_not_github(
        world: World, recorder: FakeRecorder, tmp_path: Path,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    checked: list[str] = []
    world.smoke = lambda urls: checked.extend(urls) or []
    world.running = {"app": D1, "worker": D1}
    output, summary = tmp_path / "output", tmp_path / "summary"
    env = base_env(tmp_path, image_tag="v2.0.0",
                   smoke_url="http://smoke:Sm0ke-PW@127.0.0.1:8080/health")
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(summary)})
    code = main(["deploy"], env=env)
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert checked == ["http://smoke:Sm0ke-PW@127.0.0.1:8080/health"]  # the request has them
    [finish] = [call for call in recorder.calls if call[0] == "finish"]
    assert finish[2]["environment_url"] == "http://127.0.0.1:8080/health"
    everything = captured.out + captured.err + output.read_text() + summary.read_text()
    assert "Sm0ke-PW" not in everything
    assert parse_github_output(output.read_text())["status"] == "deployed"
    assert [line for line in live_commands(captured.out)
            if line.startswith(("::error", "::warning"))] == []


@pytest.mark.parametrize("command", ["deploy", "rollback"])
def test_an_unwritable_github_output_is_an_error_never_a_traceback(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str) -> None:
    """Before: OSError out of main() (a traceback, no ::error). A rollback with nothing to
    roll back to fails before any output: its status is the first write."""
    world.running = {"app": D1, "worker": D1}
    env = base_env(tmp_path, image_tag="v2.0.0") if command == "deploy" else base_env(tmp_path)
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(tmp_path),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")})
    code = main([command], env=env)
    errors = [line for line in live_commands(capsys.readouterr().out)
              if line.startswith("::error")]
    assert code == 1
    assert errors[0].startswith(
        f"::error title=Cannot write GITHUB_OUTPUT::Cannot write to GITHUB_OUTPUT ({tmp_path}): "
        "Is a directory.")
    if command == "rollback":
        assert errors[1].startswith("::error title=Nothing to roll back to::")


def test_a_disk_full_at_the_last_output_is_a_warning_and_no_torn_block(
        world: World, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The deploy's own outputs are written; `duration_seconds` (set after the command)
    meets a full disk: a warning, nothing half-written, exit 0."""
    real_append = actions_module.append_whole

    def full_at_duration(path: str, text: str) -> None:
        if text.startswith("duration_seconds<<"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real_append(path, text)

    monkeypatch.setattr(actions_module, "append_whole", full_at_duration)
    world.running = {"app": D1, "worker": D1}
    output = tmp_path / "output"
    env = base_env(tmp_path, image_tag="v2.0.0")
    env.update({"GITHUB_ACTIONS": "true", "GITHUB_OUTPUT": str(output),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "summary")})
    code = main(["deploy"], env=env)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "::warning title=Cannot write GITHUB_OUTPUT::Cannot write to GITHUB_OUTPUT" in out
    outputs = parse_github_output(output.read_text())
    assert outputs["status"] == "deployed" and "duration_seconds" not in outputs
