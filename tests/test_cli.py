from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import responses

from deploykit.cli import COMMANDS, build_parser, main
from deploykit.inputs import INPUTS

ROOT = Path(__file__).resolve().parent.parent
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # history tests read the file


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
    # every problem in one ::error: the bad boolean and what deploy needs (issue 23)
    assert result.stdout.startswith("::error title=Invalid inputs%3A dry_run%2C image_repo%2C "
                                    "environment%2C image_tag::4 inputs are invalid:")
    assert result.stdout.count("::error") == 1
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


@pytest.mark.parametrize("command", [["-m", "deploykit"], [str(ROOT / "entrypoint.py")]])
def test_the_process_ends_with_mains_code_and_flushed_output(command: list[str]) -> None:
    """exit_process skips the interpreter's teardown: the code and every line still
    arrive (stdout is a pipe here, so it is block-buffered until the flush)."""
    result = subprocess.run([sys.executable, *command, "deploy", "--image-repo", "org/app",
                             "--environment", "staging", "--image-tag", "v1",
                             "--project-dir", "/nonexistent/project"],
                            capture_output=True, text=True, check=False, cwd=ROOT,
                            env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 1
    assert result.stdout.startswith("duration_seconds=")
    assert result.stderr.startswith("error: Invalid input: --project-dir: --project-dir: "
                                    "/nonexistent/project is not a directory.")


def test_action_yml_and_readme_tables_are_generated_from_settings() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts/gen_action.py"), "--check"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


DIGEST = "sha256:" + "cd" * 32


def _registry_answers(rsps: responses.RequestsMock, host: str) -> None:
    """A Bearer-challenge registry at https://HOST: 401, token, then the digest."""
    manifest = f"https://{host}/v2/org/app/manifests/v1"
    rsps.add(responses.HEAD, manifest, status=401, headers={
        "WWW-Authenticate": f'Bearer realm="https://{host}/token",service="{host}",'
                            'scope="repository:org/app:pull"'})
    rsps.add(responses.GET, f"https://{host}/token", json={"token": "t0k3n"})
    rsps.add(responses.HEAD, manifest, status=200, headers={"Docker-Content-Digest": DIGEST})


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.mark.parametrize("registry_input", ["", "ghcr.io"])
def test_resolve_sends_no_credentials_to_another_registry(
    registry_input: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The finding: `_load` made REF's host the `registry`, so the password went there."""
    env = {"INPUT_REGISTRY_USERNAME": "me", "INPUT_REGISTRY_PASSWORD": "ghcr-pat-s3cret",
           "INPUT_REGISTRY": registry_input}
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        _registry_answers(rsps, "other.example")
        assert main(["resolve", "other.example/org/app:v1"], env=env) == 0
        sent = [call.request.headers.get("Authorization", "") for call in rsps.calls]
    assert sent == ["", "", "Bearer t0k3n"]
    assert f"digest={DIGEST}\n" in capsys.readouterr().out


def test_resolve_logs_in_to_its_own_registry() -> None:
    env = {"INPUT_REGISTRY_USERNAME": "me", "INPUT_REGISTRY_PASSWORD": "ghcr-pat-s3cret"}
    with responses.RequestsMock(assert_all_requests_are_fired=True) as rsps:
        _registry_answers(rsps, "registry.example")
        assert main(["resolve", "--registry", "registry.example",
                     "registry.example/org/app:v1"], env=env) == 0
        sent = [call.request.headers.get("Authorization", "") for call in rsps.calls]
    assert sent == ["", _basic("me", "ghcr-pat-s3cret"), "Bearer t0k3n"]


def test_history_values_never_drive_the_runner(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Finding 5: a history entry with `::stop-commands::` was printed raw under Actions."""
    hostile = "staging\n::stop-commands::pwned\n::add-mask::x"
    line = {"time": "2026-01-01T00:00:00Z", "action": "deploy", "environment": hostile,
            "project": "shop", "tag": "v1 <img src=x>|x", "digest": DIGEST,
            "previous_digest": "", "status": "deployed", "duration_seconds": 1.0}
    (tmp_path / "history.jsonl").write_text(json.dumps(line) + "\n")
    summary = tmp_path / "summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(summary),
           "GITHUB_REPOSITORY": "o/a", "GITHUB_OUTPUT": str(tmp_path / "out"),
           "INPUT_STATE_DIR": str(tmp_path), **NO_ENGINE}
    assert main(["history"], env=env) == 0
    engine_line, *lines = capsys.readouterr().out.splitlines()
    assert engine_line.startswith("The Docker engine (unix:///nonexistent/docker.sock) did not")
    token = lines[0].removeprefix("::stop-commands::")
    assert lines[0].startswith("::stop-commands::deploykit-")
    assert lines[-1] == f"::{token}::"
    assert not [text for text in lines[1:-1] if text.startswith(f"::{token}")]
    text = summary.read_text()
    assert "<img" not in text
    assert "| staging ::stop-commands::pwned ::add-mask::x | shop | deploy | v1 &lt;img " \
           "src=x&gt;&#124;x |" in text


@pytest.mark.parametrize("argv", [["deploy", "--image-t", "v1"],
                                  ["resolve", "--registry-user", "me", "ghcr.io/o/a:v1"],
                                  ["history", "--env", "staging"]])
def test_a_flag_prefix_is_no_flag(argv: list[str]) -> None:
    """`--registry` once meant `--registry-username` on a command without `--registry`."""
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2


def test_history_needs_no_image_repo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's `deploykit history` on a terminal, where GITHUB_REPOSITORY is unset."""
    assert main(["history", "--state-dir", str(tmp_path)], env=NO_ENGINE) == 0
    assert capsys.readouterr().err == (
        "The Docker engine (unix:///nonexistent/docker.sock) did not answer (DockerError): the "
        f"history file only.\nNo deploy recorded in {tmp_path / 'history.jsonl'} or on the "
        "engine.\n")


def _history_line(environment: str, tag: str, image: str = "", **extra: object) -> str:
    line = {"time": f"2026-01-0{tag[-1]}T00:00:00Z", "action": "deploy",
            "environment": environment, "project": "shop", "tag": tag,
            "digest": "sha256:" + tag[-1] * 64, "previous_digest": "", "status": "deployed",
            "duration_seconds": 2.5, "image": image, **extra}
    return json.dumps(line) + "\n"


def test_history_json_prints_the_entries(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    """`deploykit history --json` printed `{}` (the outputs, of which history has none)."""
    (tmp_path / "history.jsonl").write_text(
        _history_line("staging", "v1", "127.0.0.1:5000/org/app@sha256:" + "1" * 64)
        + _history_line("staging", "v2", "127.0.0.1:5000/other/app@sha256:" + "2" * 64)
        + _history_line("production", "v3", "127.0.0.1:5000/org/app@sha256:" + "3" * 64))
    assert main(["history", "--state-dir", str(tmp_path), "--json", "--environment", "staging",
                 "--registry", "127.0.0.1:5000", "--image-repo", "org/app"], env=NO_ENGINE) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out) == [{
        "action": "deploy", "actor": "", "digest": "sha256:" + "1" * 64,
        "duration_seconds": 2.5, "environment": "staging",
        "image": "127.0.0.1:5000/org/app@sha256:" + "1" * 64, "previous_digest": "",
        "project": "shop", "rolled_back_from": "", "run_url": "", "status": "deployed",
        "tag": "v1", "time": "2026-01-01T00:00:00Z"}]
    assert captured.err == ("The Docker engine (unix:///nonexistent/docker.sock) did not answer "
                            "(DockerError): the history file only.\n")


def test_history_limit_shows_the_last_entries(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "history.jsonl").write_text("".join(_history_line("staging", f"v{n}")
                                                    for n in (1, 2, 3)))
    assert main(["history", "--state-dir", str(tmp_path), "--limit", "2", "--json"],
                env=NO_ENGINE) == 0
    assert [entry["tag"] for entry in json.loads(capsys.readouterr().out)] == ["v2", "v3"]
    assert main(["history", "--state-dir", str(tmp_path), "--limit", "1"], env=NO_ENGINE) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[2:] == [
        "2026-01-03T00:00:00Z  staging      shop     deploy  v3   sha256:333333333333  "
        "          deployed  2.5",
        "The last 1 of 3 entries; `--limit 0` shows all."]


def _flags(command: str) -> set[str]:
    sub = build_parser()._subparsers._group_actions[0].choices[command]  # type: ignore[union-attr]
    return {opt for action in sub._actions for opt in action.option_strings}


def test_each_command_takes_only_the_flags_that_apply() -> None:
    assert _flags("history") == {"-h", "--help", "--json", "--limit", "--registry",
                                 "--image-repo", "--environment", "--project-name",
                                 "--state-dir"}
    assert _flags("tags") == {"-h", "--help", "--json", "--registry", "--image-repo",
                              "--registry-username", "--release-version", "--latest"}
    assert _flags("resolve") == {"-h", "--help", "--json", "--registry", "--registry-username"}
    assert "--release-version" in _flags("build")
    assert "--version" not in _flags("build")  # only the global `deploykit --version`
    assert "--environment" not in _flags("build")


def test_release_version_flag_sets_the_version_input() -> None:
    args = build_parser().parse_args(["build", "--release-version", "1.4.2"])
    assert args.version == "1.4.2"


def test_compose_env_masks_by_rule_before_anything_is_printed() -> None:
    """Issue 14: every compose_env value was masked, so `8080` printed as `***`."""
    result = run_entrypoint({"INPUT_MODE": "deploy", "INPUT_DRY_RUN": "yes",
                             "INPUT_COMPOSE_ENV": "PORT=8080\nDATABASE_URL=postgres://u:pw@db/x",
                             "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stdout.splitlines()[:2] == ["::add-mask::postgres://u:pw@db/x",
                                              "::add-mask::pw"]
    assert "8080" not in result.stdout


def test_compose_env_that_does_not_parse_is_masked_whole() -> None:
    result = run_entrypoint({"INPUT_MODE": "deploy", "PATH": "/usr/bin:/bin",
                             "GITHUB_REPOSITORY": "o/a",
                             "INPUT_ENVIRONMENT": "staging", "INPUT_IMAGE_TAG": "v1",
                             "INPUT_COMPOSE_ENV": "PORT=8080\nnot a pair s3cr3t"})
    assert result.returncode == 1
    assert "::add-mask::not a pair s3cr3t" in result.stdout.splitlines()
    assert "::error title=Invalid input%3A compose_env::Input 'compose_env': line 2 is not " \
           "KEY=VALUE." in result.stdout


def test_history_filters_by_image_only_when_asked(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """GITHUB_REPOSITORY (the default image_repo) often differs from the deployed image:
    it filtered every entry out of scripts/demo.sh's history."""
    (tmp_path / "history.jsonl").write_text(
        _history_line("staging", "v1", "127.0.0.1:5000/org/app@sha256:" + "1" * 64)
        + _history_line("staging", "v2", "ghcr.io/org/app@sha256:" + "2" * 64)
        + _history_line("staging", "v3", "127.0.0.1:5000/other/app@sha256:" + "3" * 64))
    env = {"GITHUB_REPOSITORY": "deploykit-org/demo", **NO_ENGINE}
    cases = {(): ["v1", "v2", "v3"], ("--image-repo", "org/app"): ["v1", "v2"],
             ("--image-repo", "org/app", "--registry", "ghcr.io"): ["v2"]}
    for flags, tags in cases.items():
        assert main(["history", "--state-dir", str(tmp_path), "--json", *flags], env=env) == 0
        assert [entry["tag"] for entry in json.loads(capsys.readouterr().out)] == tags, flags


# -- issue 23: a terminal that speaks CLI ----------------------------------------------
def test_a_terminal_hint_names_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Hints said ``Set `image_repo: <org>/<app>` `` to a terminal user."""
    monkeypatch.chdir(tmp_path)  # no checkout, so no origin remote names the repository
    assert main(["deploy", "--environment", "staging", "--image-tag", "v1"], env={}) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "error: Invalid input: --image-repo: --image-repo: is not set (no `--image-repo`, no "
        "GITHUB_REPOSITORY) and this directory is no git checkout whose `origin` remote names "
        "an `<owner>/<repo>`.\n  Hint: Set `--image-repo <org>/<app>`, or run in a clone of "
        "the repository (`git remote -v` shows its origin).")
    assert "image_repo" not in err


def test_a_terminal_hint_names_a_secret_by_its_variable(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A secret has no flag: the hint names INPUT_COMPOSE_ENV, not `compose_env`."""
    env = {"INPUT_COMPOSE_ENV": "DOCKER_HOST=tcp://10.0.0.9:2375"}
    assert main(["deploy", "--image-repo", "org/app", "--environment", "staging",
                 "--image-tag", "v1"], env=env) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid input: INPUT_COMPOSE_ENV: INPUT_COMPOSE_ENV: line 1 "
                          "sets DOCKER_HOST")
    assert "10.0.0.9" not in err


def test_the_action_hint_names_the_input(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    env = {"INPUT_MODE": "deploy", "INPUT_ENVIRONMENT": "staging", "INPUT_IMAGE_TAG": "v1",
           "GITHUB_OUTPUT": str(tmp_path / "out")}
    assert main([], env=env, from_action=True) == 1
    assert capsys.readouterr().out == (
        "::error title=Invalid input%3A image_repo::Input 'image_repo': is empty and "
        "GITHUB_REPOSITORY is not set.%0AHint: Set `image_repo: <org>/<app>`.\n")


def test_every_missing_input_is_reported_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """They came one per run: image_repo, then environment, then image_tag."""
    monkeypatch.chdir(tmp_path)  # no checkout, so no origin remote names the repository
    assert main(["deploy", "--health-timeout", "0"], env={}) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: Invalid inputs: --health-timeout, --image-repo, --environment, "
                          "--image-tag: 4 inputs are invalid:\n")
    for fragment in ("  - --health-timeout: must be from 1 to 86400, got '0'.",
                     "  - --image-repo: is not set (no `--image-repo`, no GITHUB_REPOSITORY) "
                     "and this directory is no git checkout whose `origin` remote names an "
                     "`<owner>/<repo>`.",
                     "    Hint: Set `--image-repo <org>/<app>`, or run in a clone of the "
                     "repository (`git remote -v` shows its origin).",
                     "  - --environment: is empty: deploykit must know where it deploys.",
                     "    Hint: Set `--environment staging` or `--environment production`.",
                     "  - --image-tag: is empty."):
        assert fragment + "\n" in err


def test_all_at_once_is_one_annotation_in_actions(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    env = {"INPUT_MODE": "deploy", "INPUT_ENVIRONMENT": "production",
           "INPUT_SMOKE_URL": "ftp://x/", "GITHUB_REPOSITORY": "o/a",
           "GITHUB_OUTPUT": str(tmp_path / "out")}
    assert main([], env=env, from_action=True) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    assert out[0].startswith("::error title=Invalid inputs%3A smoke_url%2C image_tag::2 inputs "
                             "are invalid:%0A- Input 'smoke_url': 'ftp://x/' is not an http")
    assert "%0A- No image tag given for production environment production." in out[0]
    assert "%0A  Hint: Pass a release tag such as `image_tag: v1.4.2`" in out[0]


def test_a_mistyped_flag_gets_the_closest_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """`deploy --enviroment` printed the top-level usage and no suggestion."""
    with pytest.raises(SystemExit) as caught:
        main(["deploy", "--enviroment", "staging"], env={})
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: deploykit deploy ")
    assert err.endswith("deploykit deploy: error: unrecognized arguments: --enviroment staging\n"
                        "did you mean --environment? (--enviroment is no flag of deploykit "
                        "deploy)\n")


def test_an_unknown_flag_with_nothing_close_has_no_suggestion(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--zzzz"], env={})
    err = capsys.readouterr().err
    assert err.endswith("deploykit build: error: unrecognized arguments: --zzzz\n")


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_fits_100_columns_without_markdown(
        command: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Help lines ran to 144 characters, with Markdown backticks."""
    monkeypatch.setenv("COLUMNS", "300")
    with pytest.raises(SystemExit):
        main([*filter(None, [command]), "--help"], env={})
    text = capsys.readouterr().out
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "`" not in text
    if command:  # what it does, and an example of it
        assert COMMANDS[command].summary.split()[0] in text
        assert "examples:\n  " in text and f"deploykit {command}" in text


def test_unused_inputs_get_one_warning(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A build with smoke_url and environment said nothing about them."""
    env = {"INPUT_MODE": "build", "GITHUB_REPOSITORY": "o/a", "GITHUB_WORKSPACE": str(tmp_path),
           "INPUT_CONTEXT": "missing", "INPUT_SMOKE_URL": "http://127.0.0.1/",
           "INPUT_ENVIRONMENT": "staging", "INPUT_HEALTH_TIMEOUT": "120",  # its default
           "GITHUB_OUTPUT": str(tmp_path / "out")}
    assert main([], env=env, from_action=True) == 1
    warnings = [line for line in capsys.readouterr().out.splitlines()
                if line.startswith("::warning")]
    assert warnings == [
        "::warning title=Inputs unused in mode build::`environment`, `smoke_url` are set, but "
        "mode build never reads them (they apply to deploy and rollback). Remove them from "
        "this step, or run the mode they are for."]


def test_no_warning_when_every_input_is_used(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    env = {"INPUT_MODE": "build", "GITHUB_REPOSITORY": "o/a", "GITHUB_WORKSPACE": str(tmp_path),
           "INPUT_CONTEXT": "missing", "GITHUB_OUTPUT": str(tmp_path / "out"),
           **{f"INPUT_{spec.name.upper()}": spec.default for spec in INPUTS
              if spec.default and spec.name != "mode"}}
    assert main([], env=env, from_action=True) == 1
    assert "::warning" not in capsys.readouterr().out


def test_local_checks_run_before_any_network_call(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """`--project-dir /nonexistent` waited 55 s on the registry before the path was checked."""
    started = time.monotonic()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        code = main(["deploy", "--image-repo", "org/app", "--environment", "staging",
                     "--image-tag", "v1", "--registry", "127.0.0.1:9",
                     "--project-dir", str(tmp_path / "nonexistent")], env=NO_ENGINE)
        assert not rsps.calls
    assert code == 1
    assert time.monotonic() - started < 5
    assert "error: Invalid input: --project-dir: --project-dir: " in capsys.readouterr().err


def test_a_build_checks_its_context_before_the_registry(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        code = main(["build", "--image-repo", "org/app", "--registry", "127.0.0.1:9",
                     "--context", "missing"], env={"GITHUB_WORKSPACE": str(tmp_path),
                                                   "PATH": "/nonexistent"})
        assert not rsps.calls
    assert code == 1
    assert "error: Invalid input: --context: --context: " in capsys.readouterr().err


def test_an_over_long_secret_is_refused_in_milliseconds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A 100 kB compose_env took 36-111 s in the masking and parsing patterns."""
    env = {"INPUT_MODE": "deploy", "GITHUB_REPOSITORY": "o/a", "INPUT_ENVIRONMENT": "staging",
           "INPUT_IMAGE_TAG": "v1", "INPUT_COMPOSE_ENV": "A=" + "x" * 100_000,
           "GITHUB_OUTPUT": str(tmp_path / "out")}
    started = time.monotonic()
    assert main([], env=env, from_action=True) == 1
    assert time.monotonic() - started < 2
    assert capsys.readouterr().out == (
        "::error title=Invalid input%3A compose_env::Input 'compose_env': is 100002 characters "
        "long; at most 65536.%0AHint: Shorten it: no valid `compose_env` is that long.\n")


def test_a_flag_of_another_command_is_named_so(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--environment", "staging"], env={})
    assert capsys.readouterr().err.endswith(
        "deploykit build: error: unrecognized arguments: --environment staging\n"
        "--environment is a flag of deploykit deploy, rollback, history, not of deploykit "
        "build\n")
