"""deploy_command: the compose config starts in a thread before the deploy's libraries load."""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import deploykit.deploy_command as deploy_command
from deploykit.compose import ComposeProject
from deploykit.errors import ComposeError
from deploykit.settings import load_settings

PROJECT = ComposeProject(Path("."), Path("compose.yaml"), "shop", ("app",), ("app",))


@dataclass(frozen=True)
class GatedCompose:
    """A compose whose config finishes only when the test opens the gate."""

    gate: threading.Event
    seen_env: list[dict[str, str]] = field(default_factory=list)
    name: str = ""
    failure: Exception | None = None

    def load(self, service_env: dict[str, str]) -> ComposeProject:
        self.seen_env.append(service_env)
        if not self.gate.wait(timeout=10):
            raise AssertionError("the config ran in the caller's thread: it waited for itself")
        if self.failure:
            raise self.failure
        return PROJECT


def settings() -> Any:
    return load_settings({"INPUT_MODE": "deploy", "INPUT_IMAGE_REPO": "org/app",
                          "INPUT_COMPOSE_ENV": "PORT=8080"})


def test_the_config_runs_in_the_background_until_its_result_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    compose = GatedCompose(gate)
    monkeypatch.setattr(deploy_command, "compose_for", lambda settings, docker: compose)
    loading = deploy_command.start_project_load(settings(), docker=None)  # type: ignore[arg-type]
    assert not loading.done()  # returned while the config still runs
    gate.set()
    named, project = loading.result(timeout=10)
    assert (named.name, project) == ("shop", PROJECT)
    assert compose.seen_env == [{"PORT": "8080"}]


def test_the_configs_error_is_raised_where_the_result_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    gate = threading.Event()
    gate.set()
    failure = ComposeError("`docker compose config` rejected compose.yaml:\nyaml: bad")
    monkeypatch.setattr(deploy_command, "compose_for",
                        lambda settings, docker: GatedCompose(gate, failure=failure))
    loading = deploy_command.start_project_load(settings(), docker=None)  # type: ignore[arg-type]
    with pytest.raises(ComposeError) as info:
        loading.result(timeout=10)
    assert info.value is failure


def test_the_command_module_loads_neither_the_sdk_nor_requests() -> None:
    """What it imports runs before the config starts: nothing heavy."""
    code = ("import sys, deploykit.deploy_command; "
            "print([m for m in ('docker', 'requests', 'deploykit.deploy') if m in sys.modules])")
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.strip() == "[]"
