"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import docker.errors
import pytest
import requests

from deploykit.actions import Actions


class CapturedActions(Actions):
    """An Actions writer whose stdout/stderr are kept for exact assertions."""

    def __init__(self, env: dict[str, str]) -> None:
        self.out = io.StringIO()
        self.err = io.StringIO()
        super().__init__(env, stdout=self.out, stderr=self.err)


@pytest.fixture
def make_actions(tmp_path: Path) -> Callable[..., CapturedActions]:
    """Factory: ``make_actions(in_actions=True)`` writes GITHUB_OUTPUT/summary under tmp."""

    def factory(*, in_actions: bool = True, **env: str) -> CapturedActions:
        base = {}
        if in_actions:
            base = {
                "GITHUB_ACTIONS": "true",
                "GITHUB_OUTPUT": str(tmp_path / "github_output"),
                "GITHUB_STEP_SUMMARY": str(tmp_path / "step_summary"),
            }
        return CapturedActions({**base, **env})

    return factory


class FakeClock:
    """A monotonic clock whose sleep() only moves time on (and records the naps)."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def parse_github_output(text: str) -> dict[str, str]:
    """Parse GITHUB_OUTPUT the way the runner does (heredoc and name=value)."""
    outputs: dict[str, str] = {}
    lines = text.split("\n")
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body: list[str] = []
            while lines[index] != delimiter:
                body.append(lines[index])
                index += 1
            index += 1
            outputs[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            outputs[name] = value
    return outputs


def api_error(status: int, cls: type[docker.errors.APIError] = docker.errors.APIError
              ) -> docker.errors.APIError:
    """An error of the Docker SDK as the engine's answer ``status`` raises it."""
    response = requests.Response()
    response.status_code = status
    return cls(f"status {status}", response=response, explanation=f"explanation {status}")
