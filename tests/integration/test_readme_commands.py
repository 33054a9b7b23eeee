"""The README's first command (scripts/demo.sh) and the action's dry run, as a user runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

from tests.conftest import parse_github_output
from tests.integration.conftest import TestRegistry, free_port

ROOT = Path(__file__).resolve().parents[2]


def _down(project: str) -> None:
    subprocess.run(["docker", "compose", "-p", project, "down", "--volumes"],
                   capture_output=True, check=False)
    subprocess.run(["docker", "network", "rm", f"deploykit-lock-{project}"],
                   capture_output=True, check=False)


def test_demo_builds_deploys_and_rolls_back_a_broken_release(
    open_registry: TestRegistry, tmp_path: Path
) -> None:
    project, port = f"demo-{uuid.uuid4().hex[:8]}", free_port()
    env = {**os.environ, "DEPLOYKIT_NO_PROVISION": "1", "DEMO_PORT": str(port),
           "DEMO_REGISTRY": open_registry.host, "DEMO_REPO": open_registry.repo("demo"),
           "DEMO_PROJECT": project, "DEMO_WORKDIR": str(tmp_path)}
    env.pop("GITHUB_ACTIONS", None)
    try:
        result = subprocess.run(["bash", str(ROOT / "scripts/demo.sh")], env=env, cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=600, check=False)
    finally:
        _down(project)
    output = result.stdout
    assert result.returncode == 0, output[-4000:]
    assert f"The app answers at http://127.0.0.1:{port}/ : v1.0.0" in output
    assert f"http://127.0.0.1:{port}/ serves version v1.0.0" in output
    assert "status=rolled_back" in output
    history = [line.split() for line in output[output.index("== 4. What runs now"):]
               .splitlines() if line.startswith("20")]
    assert [(row[3], row[4], row[-2]) for row in history] == [
        ("deploy", "v1.0.0", "deployed"), ("deploy", "v1.0.1", "rolled_back")]
    assert "Traceback" not in output


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
