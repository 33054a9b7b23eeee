"""The README as a newcomer reads it: every terminal command in it runs, as written.

Every ```bash block of README.md is a terminal command block. The first holds the two set-up
commands (`bash scripts/demo.sh`, `bash scripts/test.sh`); the others run after the demo,
against what it deployed. Here the demo runs as the README says, isolated from other runs
on the same test bed through its own `DEMO_*` variables (a fresh registry repository, port,
compose project and work directory); the later commands get the same values in place of the
demo's defaults (`demo/app`, `deploykit-demo`, `/tmp/deploykit-demo`), and run one after the
other in one shell, as a user types them. `bash scripts/test.sh` is the only command not
run: it is this suite (CI runs it; `scripts/fresh-machine-test.sh` runs the demo on a bare
Debian 12). No README command needs GitHub.

The README's workflows are checked too: GitHub's workflow schema, the action's inputs, and
what a first-time reader needs (triggers, runners, permissions, secrets).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, free_port

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SETUP_COMMANDS = [["bash", "scripts/demo.sh"], ["bash", "scripts/test.sh"]]
# What the README's terminal commands take from the demo's defaults (scripts/demo.sh).
DEMO_REGISTRY, DEMO_REPO = "127.0.0.1:5000", "demo/app"
DEMO_PROJECT, DEMO_WORKDIR, DEMO_PORT = "deploykit-demo", "/tmp/deploykit-demo", "28080"


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"(?ms)^```{language}\n(.*?)^```$", text)


def commands(block: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comment lines dropped."""
    found: list[str] = []
    pending = ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        found.append((pending + line).strip())
        pending = ""
    assert not pending, f"a command ends with a line continuation: {pending}"
    return found


def argv(command: str) -> list[str]:
    return shlex.split(command, comments=True)


BASH_BLOCKS = fenced_blocks(README, "bash")
TERMINAL = [command for block in BASH_BLOCKS[1:] for command in commands(block)]


def workflows() -> list[dict[Any, Any]]:
    """The workflow pair: the README's first two YAML blocks."""
    return [yaml.safe_load(block) for block in fenced_blocks(README, "yaml")[:2]]


# ------------------------------------------------------------------ what the README says

def test_the_first_commands_are_the_demo_and_the_test_suite() -> None:
    assert [argv(command) for command in commands(BASH_BLOCKS[0])] == SETUP_COMMANDS
    # both are what CI runs: the suite itself, and the demo on a bare Debian 12
    assert "bash scripts/test.sh" in (ROOT / ".ci/run").read_text()
    fresh = (ROOT / "scripts/fresh-machine-test.sh").read_text()
    assert "bash scripts/demo.sh" in fresh and "bash scripts/test.sh" in fresh


def test_the_first_screen_holds_the_setup_commands_and_the_workflow_pair() -> None:
    first_screen = README[:README.index("\n## What a deploy does")]
    assert "bash scripts/demo.sh" in first_screen
    assert first_screen.count("```yaml") == 2
    assert "self-hosted runner" in first_screen


def _on(workflow: dict[Any, Any]) -> dict[str, Any]:
    on: dict[str, Any] = workflow.get("on", workflow.get(True))  # YAML 1.1 reads `on` as True
    return on


def _deploykit_steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]
            if step.get("uses", "").startswith("deploykit-org/deploykit@")]


def test_the_workflow_pair_builds_on_github_and_deploys_on_the_target() -> None:
    build, deploy = workflows()
    assert _on(build)["push"] and _on(deploy)["workflow_dispatch"]
    for workflow in (build, deploy):
        assert workflow["permissions"] == {}
        for job in workflow["jobs"].values():
            assert job["permissions"] and job["timeout-minutes"]
    (build_job,) = build["jobs"].values()
    (deploy_job,) = deploy["jobs"].values()
    assert build_job["runs-on"] == "ubuntu-latest"
    assert build_job["permissions"]["packages"] == "write"
    assert deploy_job["runs-on"][0] == "self-hosted"
    assert deploy_job["permissions"]["packages"] == "read"
    assert [step["with"]["mode"] for step in _deploykit_steps(build)] == ["build"]
    (deploy_step,) = _deploykit_steps(deploy)
    assert deploy_step["with"]["mode"] == "deploy"
    assert deploy_step["with"]["compose_env"] == "${{ secrets.COMPOSE_ENV }}"
    assert "secrets.GITHUB_TOKEN" in deploy_step["with"]["registry_password"]


def test_the_workflows_pass_only_inputs_the_action_has() -> None:
    inputs = set(yaml.safe_load((ROOT / "action.yml").read_text())["inputs"])
    snippets = [yaml.safe_load(block) for block in fenced_blocks(README, "yaml")[2:]]
    steps = [step for workflow in workflows() for step in _deploykit_steps(workflow)]
    steps += [step for snippet in snippets if isinstance(snippet, list) for step in snippet]
    assert len(steps) >= 3
    for step in steps:
        assert set(step["with"]) <= inputs, set(step["with"]) - inputs


def test_the_workflows_match_githubs_schema(tmp_path: Path) -> None:
    check = Path(sys.executable).parent / "check-jsonschema"
    assert check.exists(), "check-jsonschema missing: pip install -r requirements-lint.lock"
    files = []
    for index, block in enumerate(fenced_blocks(README, "yaml")[:2]):
        files.append(tmp_path / f"workflow{index}.yml")
        files[-1].write_text(block)
    result = subprocess.run([str(check), "--builtin-schema", "vendor.github-workflows",
                             *map(str, files)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("word", ["ADR", "P1", "goal", "Goal", "decision record"])
def test_no_internal_jargon(word: str) -> None:
    assert word not in README


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"(?m)^#+ (.*)$", re.sub(r"(?ms)^```.*?^```$", "", markdown))
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_leads_somewhere() -> None:
    links = re.findall(r"\]\(([^)\s]+)\)", README)
    relative = [link for link in links if not link.startswith(("http://", "https://"))]
    assert len(relative) > 10
    for link in relative:
        path, _, anchor = link.partition("#")
        target = ROOT / path if path else ROOT / "README.md"
        assert target.exists(), link
        if anchor:
            assert anchor in _anchors(target.read_text()), link


def test_the_readme_is_short() -> None:
    # about 14 kB, 5 of them the generated inputs table; it was 38.6 kB before the details
    # moved to docs/
    assert len(README.encode()) < 16_000


# ------------------------------------------------------------------ the commands, run

@dataclass(frozen=True)
class Demo:
    output: str
    registry: TestRegistry
    repo: str
    project: str
    port: int
    workdir: Path


def _down(project: str) -> None:
    subprocess.run(["docker", "compose", "-p", project, "down", "--volumes"],
                   capture_output=True, check=False)
    subprocess.run(["docker", "network", "rm", f"deploykit-lock-{project}"],
                   capture_output=True, check=False)


def _terminal_env() -> dict[str, str]:
    """A terminal's environment: no GitHub context and no action inputs."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(("GITHUB_", "INPUT_", "RUNNER_", "DEPLOYKIT_"))}


@pytest.fixture(scope="module")
def demo(open_registry: TestRegistry,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """`bash scripts/demo.sh` from the README, isolated; the app stays up for the commands."""
    workdir = tmp_path_factory.mktemp("demo")
    project, port = f"demo-{uuid.uuid4().hex[:8]}", free_port()
    repo = open_registry.repo("demo")
    env = {**_terminal_env(), "DEPLOYKIT_NO_PROVISION": "1", "DEMO_PORT": str(port),
           "DEMO_REGISTRY": open_registry.host, "DEMO_REPO": repo, "DEMO_PROJECT": project,
           "DEMO_WORKDIR": str(workdir)}
    (demo_command, _) = commands(BASH_BLOCKS[0])
    try:
        result = subprocess.run(["bash", "-c", demo_command], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=600, check=False)
        assert result.returncode == 0, result.stdout[-4000:]
        yield Demo(result.stdout, open_registry, repo, project, port, workdir)
    finally:
        _down(project)


def test_demo_builds_deploys_and_rolls_back_a_broken_release(demo: Demo) -> None:
    output, port = demo.output, demo.port
    assert f"The app answers at http://127.0.0.1:{port}/ : v1.0.0" in output
    assert f"http://127.0.0.1:{port}/ serves version v1.0.0" in output
    assert "status=rolled_back" in output
    history = [line.split() for line in output[output.index("== 4. What runs now"):]
               .splitlines() if line.startswith("20")]
    assert [(row[3], row[4], row[-2]) for row in history] == [
        ("deploy", "v1.0.0", "deployed"), ("deploy", "v1.0.1", "rolled_back")]
    assert "Traceback" not in output


def _as_on_this_test_bed(command: str, demo: Demo) -> str:
    """The README's command with this run's isolated values for the demo's defaults."""
    for default, value in ((DEMO_WORKDIR, str(demo.workdir)), (DEMO_PROJECT, demo.project),
                           (DEMO_REPO, demo.repo), (DEMO_REGISTRY, demo.registry.host),
                           (DEMO_PORT, str(demo.port))):
        command = command.replace(default, value)
    return command


@pytest.fixture(scope="module")
def terminal(demo: Demo) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Every later README command, in order, in one shell; `::ran N` after each success."""
    script = ["set -euo pipefail"]
    for number, command in enumerate(TERMINAL):
        script += [f"printf '%s\\n' {shlex.quote('$ ' + command)} >&2",
                   _as_on_this_test_bed(command, demo), f"echo '::ran {number}' >&2"]
    result = subprocess.run(["bash", "-c", "\n".join(script)], env=_terminal_env(), cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    return result, [line for line in result.stdout.splitlines() if line]


def test_every_terminal_command_of_the_readme_runs_against_the_demo(
        terminal: tuple[subprocess.CompletedProcess[str], list[str]]) -> None:
    commands_run = [argv(command)[:2] for command in TERMINAL]
    assert ["deploykit", "deploy"] in commands_run and ["deploykit", "history"] in commands_run
    result, _ = terminal
    ran = re.findall(r"(?m)^::ran (\d+)$", result.stderr)
    assert result.returncode == 0 and len(ran) == len(TERMINAL), (
        f"README command {len(ran) + 1} of {len(TERMINAL)} failed: "
        f"{TERMINAL[len(ran)] if len(ran) < len(TERMINAL) else ''}\n{result.stderr[-4000:]}")
    assert "Traceback" not in result.stdout + result.stderr


def test_the_terminal_commands_show_the_demos_release(
        demo: Demo, terminal: tuple[subprocess.CompletedProcess[str], list[str]]) -> None:
    result, stdout = terminal
    assert result.returncode == 0, result.stderr[-4000:]
    deployed = re.search(r"(?m)^digest=(sha256:[0-9a-f]{64})$", demo.output)
    assert deployed
    image = f"{demo.registry.host}/{demo.repo}"
    # resolve: the digest v1.0.0 was built and deployed at
    assert f"{image}:v1.0.0 -> {deployed[1]}" in result.stderr
    assert f"image={image}@{deployed[1]}" in stdout
    # the dry runs plan (and only plan): v1.0.1 over the running v1.0.0, then v1.0.0 back
    plans = [line for line in stdout if line.startswith("status=")]
    assert plans.count("status=planned") >= 3  # tags, deploy, rollback
    assert f"Plan: deploy {demo.project} to staging" in result.stderr
    assert f"Plan: rollback {demo.project} to staging" in result.stderr
    running = subprocess.run(["docker", "compose", "-p", demo.project, "images", "--quiet"],
                             capture_output=True, text=True, check=True).stdout.split()
    assert running, "the demo's containers are gone"
    # history: the demo's deploy and its rolled back broken release, from its state dir
    history = [line.split() for line in result.stderr.splitlines() if line.startswith("20")]
    assert [(row[1], row[3], row[4], row[-2]) for row in history] == [
        ("staging", "deploy", "v1.0.0", "deployed"),
        ("staging", "deploy", "v1.0.1", "rolled_back")]


def test_action_dry_run_writes_the_plan_to_github_output(
    open_registry: TestRegistry, tmp_path: Path
) -> None:
    output_file = tmp_path / "github_output"
    env = {"PATH": os.environ["PATH"], "GITHUB_OUTPUT": str(output_file),
           "INPUT_MODE": "build", "INPUT_DRY_RUN": "true",
           "INPUT_REGISTRY": open_registry.host, "INPUT_IMAGE_REPO": open_registry.repo("dry"),
           "GITHUB_EVENT_NAME": "push", "GITHUB_REF": "refs/tags/v3.1.4",
           "GITHUB_SHA": "0123456789abcdef0123456789abcdef01234567"}
    result = subprocess.run([sys.executable, str(ROOT / "entrypoint.py")], env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    text = output_file.read_text()
    assert text.startswith("tags<<ghadelimiter_")
    outputs = parse_github_output(text)
    assert {k: v for k, v in outputs.items() if k != "duration_seconds"} == {
        "tags": "v3.1.4\nlatest", "version": "v3.1.4", "status": "planned"}
    assert float(outputs["duration_seconds"]) >= 0
