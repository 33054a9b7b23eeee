from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploykit.cli import build_parser, main
from deploykit.settings import INPUTS

ROOT = Path(__file__).resolve().parent.parent


def run_entrypoint(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env,
                          capture_output=True, text=True, check=False, cwd=ROOT)


def test_bogus_mode_is_one_error_line_and_exit_1() -> None:
    result = run_entrypoint({"INPUT_MODE": "bogus", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stdout == (
        "::error title=Invalid input%3A mode::Input 'mode': must be one of build, deploy, "
        "rollback; got 'bogus'.%0AHint: Use one of: build, deploy, rollback.\n")
    assert result.stderr == ""


def test_bad_boolean_changes_nothing_and_writes_no_output(tmp_path: Path) -> None:
    output = tmp_path / "out"
    result = run_entrypoint({"INPUT_MODE": "deploy", "INPUT_DRY_RUN": "yes",
                             "GITHUB_OUTPUT": str(output), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert "::error title=Invalid input%3A dry_run::" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not output.exists()


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([], env={}) == 2
    assert "deploykit tags" in capsys.readouterr().out


def test_secrets_have_no_flags() -> None:
    parser = build_parser()
    for command in ("build", "deploy", "rollback"):
        sub = parser._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
        flags = {opt for action in sub._actions for opt in action.option_strings}
        for spec in INPUTS:
            if spec.kind == "secret":
                assert spec.flag not in flags


def test_every_non_secret_input_has_a_flag_on_its_commands() -> None:
    parser = build_parser()
    subs = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for spec in INPUTS:
        if spec.kind == "secret" or spec.name == "mode":
            continue
        for mode in spec.modes:
            flags = {opt for action in subs[mode]._actions for opt in action.option_strings}
            assert spec.flag in flags, (spec.name, mode)


def test_bare_boolean_flag_means_true() -> None:
    args = build_parser().parse_args(["deploy", "--dry-run", "--force-redeploy", "false"])
    assert args.dry_run == "true"
    assert args.force_redeploy == "false"


def test_unknown_module_error_is_not_swallowed_for_bad_flag(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["deploy", "--cache", "none"], env={})
    assert caught.value.code == 2


def test_python_dash_m_works() -> None:
    result = subprocess.run([sys.executable, "-m", "deploykit", "--version"],
                            capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.startswith("deploykit ")


def test_action_yml_and_readme_tables_are_generated_from_settings() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts/gen_action.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
