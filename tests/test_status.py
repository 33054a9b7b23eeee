"""deploykit.status: one Status enum, written and stored as its plain value."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from deploykit import build
from deploykit.deploy import report as deploy
from deploykit.errors import DeployError
from deploykit.history import HistoryEntry
from deploykit.settings import DEPLOY, ROLLBACK
from deploykit.status import Status
from tests.conftest import CapturedActions, parse_github_output


def test_every_module_uses_the_one_enum() -> None:
    assert deploy.DEPLOYED is Status.DEPLOYED and deploy.FAILED is Status.FAILED
    assert build.BUILT is Status.BUILT and build.SKIPPED is Status.SKIPPED
    assert DeployError("x").status is Status.FAILED
    assert [s.value for s in Status] == ["deployed", "rolled_back", "failed", "planned",
                                         "built", "skipped", "validated"]


def test_a_status_is_written_as_its_value(make_actions: Callable[..., CapturedActions],
                                          tmp_path: Path) -> None:
    actions = make_actions()
    actions.set_output("status", Status.ROLLED_BACK)
    assert parse_github_output((tmp_path / "github_output").read_text()) == {
        "status": "rolled_back"}
    assert json.dumps({"status": Status.DEPLOYED}) == '{"status": "deployed"}'
    assert f"{Status.PLANNED}" == str(Status.PLANNED) == "planned"


def test_history_compares_plain_strings_read_back_with_the_enum() -> None:
    def entry(action: str, status: str) -> HistoryEntry:
        return HistoryEntry(time="t", action=action, environment="e", project="p", tag="",
                            digest="d", previous_digest="", status=status,
                            duration_seconds=1.0)

    assert entry(DEPLOY, "deployed").release_changed
    assert entry(ROLLBACK, "rolled_back").release_changed
    assert not entry(DEPLOY, "rolled_back").release_changed
    assert not entry(DEPLOY, Status.FAILED).release_changed
