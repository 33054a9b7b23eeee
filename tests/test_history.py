from __future__ import annotations

import json
import os
import random
import subprocess
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from deploykit.errors import DeploykitError, InputError
from deploykit.history import (
    ENGINE_HISTORY_LIMIT,
    HISTORY_LABEL,
    RELEASE_LABEL,
    History,
    HistoryEntry,
    bounded_trail,
    distrusted,
    engine_labels,
    engine_stack,
    labels_for_stack,
    labels_for_trail,
    labels_of_release,
    merge,
    next_release_labels,
    release_stack,
    show,
    stack_from_labels,
    state_directory,
    text_table,
    trail_from_labels,
    verified_release,
)
from deploykit.settings import load_settings

D1, D2, D3 = ("sha256:" + c * 64 for c in "123")
NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # these tests read the file
NO_ENGINE_LINE = ("The Docker engine (unix:///nonexistent/docker.sock) did not answer "
                  "(DockerError): the history file only.\n")


def entry(digest: str, *, action: str = "deploy", status: str = "deployed", tag: str = "",
          rolled_back_from: str = "", environment: str = "staging",
          project: str = "shop") -> HistoryEntry:
    return HistoryEntry(time="2026-01-01T00:00:00Z", action=action, environment=environment,
                        project=project, tag=tag, digest=digest, previous_digest="",
                        status=status, duration_seconds=1.5, rolled_back_from=rolled_back_from)


def test_append_writes_one_json_line_per_entry(tmp_path: Path) -> None:
    history = History(tmp_path / "state")
    history.append(entry(D1, tag="v1.0.0"))
    history.append(entry(D2, tag="v1.1.0"))
    lines = (tmp_path / "state" / "history.jsonl").read_text().splitlines()
    assert len(lines) == 2
    assert json.loads(lines[1])["digest"] == D2
    assert json.loads(lines[1])["tag"] == "v1.1.0"
    assert history.entries() == [entry(D1, tag="v1.0.0"), entry(D2, tag="v1.1.0")]


def test_a_corrupt_line_does_not_hide_the_others(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.append(entry(D1))
    with history.path.open("a") as handle:
        handle.write('{"time": "cut in the mid\n')
    history.append(entry(D2))
    assert [e.digest for e in history.entries()] == [D1, D2]


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DeploykitError, match="Cannot write the deploy history") as info:
        History(blocker / "sub").append(entry(D1))
    assert "state_dir" in info.value.hint


def test_previous_successful_is_the_release_below_the_current_one(tmp_path: Path) -> None:
    history = History(tmp_path)
    for digest in (D1, D2, D3):
        history.append(entry(digest))
    previous = history.previous_successful("staging", "shop")
    assert previous is not None and previous.digest == D2


def test_rolling_back_twice_goes_back_two_releases() -> None:
    entries = [entry(D1), entry(D2), entry(D3),
               entry(D2, action="rollback", status="rolled_back", rolled_back_from=D3)]
    assert [e.digest for e in release_stack(entries)] == [D1, D2]
    entries.append(entry(D1, action="rollback", status="rolled_back", rolled_back_from=D2))
    assert [e.digest for e in release_stack(entries)] == [D1]


def test_failed_and_auto_rolled_back_deploys_do_not_change_the_release() -> None:
    entries = [entry(D1), entry(D2, status="rolled_back"), entry(D3, status="failed"),
               entry(D1, action="rollback", status="failed", rolled_back_from=D1)]
    assert [e.digest for e in release_stack(entries)] == [D1]


def test_redeploying_the_same_digest_is_one_release() -> None:
    assert [e.digest for e in release_stack([entry(D1), entry(D2), entry(D2)])] == [D1, D2]


def test_history_is_per_environment_and_project(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.append(entry(D1))
    history.append(entry(D2, environment="production"))
    history.append(entry(D3, project="other"))
    history.append(entry(D2))
    previous = history.previous_successful("staging", "shop")
    assert previous is not None and previous.digest == D1
    assert history.previous_successful("production", "shop") is None


def test_state_directory_default_and_configured(tmp_path: Path) -> None:
    assert state_directory(str(tmp_path)) == tmp_path
    assert state_directory("") == Path.home() / ".local" / "state" / "deploykit"


def test_text_table_aligns_columns() -> None:
    assert text_table(["a", "long"], [["xyz", "1"]]) == "a    long\nxyz  1"


def test_show_prints_the_table_and_summary(tmp_path: Path, make_actions) -> None:  # type: ignore[no-untyped-def]
    history = History(tmp_path)
    history.append(entry(D1, tag="v1.0.0"))
    history.append(entry(D2, tag="v1.1.0", environment="production"))
    settings = load_settings({"INPUT_STATE_DIR": str(tmp_path), "INPUT_ENVIRONMENT": "staging",
                              "GITHUB_REPOSITORY": "org/app"}, {"mode": "deploy"})
    actions = make_actions()
    show(settings, actions, NO_ENGINE)
    printed = actions.out.getvalue()
    assert "v1.0.0" in printed and "sha256:111111111111" in printed
    assert "v1.1.0" not in printed
    summary = actions.summary_parts[0]
    assert summary.startswith("### Deploy history")
    assert "| 2026-01-01T00:00:00Z | staging | shop | deploy | v1.0.0 |" in summary


def test_show_with_no_history_says_so(tmp_path: Path, make_actions) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings({"INPUT_STATE_DIR": str(tmp_path), "GITHUB_REPOSITORY": "o/a"},
                             {"mode": "deploy"})
    actions = make_actions()
    show(settings, actions, NO_ENGINE)
    assert actions.out.getvalue() == (
        f"{NO_ENGINE_LINE}No deploy recorded in {tmp_path / 'history.jsonl'} or on the engine.\n")
    assert actions.summary_parts == []


BAD_LINES = [
    ('{"time": "cut in the mid', "line 2: not JSON"),
    ('["a", "list"]', "line 2: not a JSON object"),
    ('{"time": "t", "action": "deploy", "digest": "' + D3 + '"}', "line 2: no `environment`"),
    (json.dumps({**vars(entry(D3)), "duration_seconds": "12.5"}),
     "line 2: `duration_seconds` is not a number (str)"),
    (json.dumps({**vars(entry(D3)), "duration_seconds": True}),
     "line 2: `duration_seconds` is not a number (bool)"),
    (json.dumps({**vars(entry(D3)), "tag": 7}), "line 2: `tag` is not a string (int)"),
    (json.dumps({**vars(entry(D3)), "status": None}), "line 2: `status` is not a string"),
    ("[" * 100000, "line 2: not JSON"),
    ("\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), "line 2: not JSON"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_LINES)
def test_a_bad_line_is_skipped_with_a_warning(tmp_path: Path, make_actions, bad: str,  # type: ignore[no-untyped-def]
                                              reason: str) -> None:
    warnings: list[str] = []
    history = History(tmp_path, warn=warnings.append)
    history.append(entry(D1))
    with history.path.open("a", encoding="utf-8") as handle:
        handle.write(bad + "\n")
    history.append(entry(D2, tag="v2"))
    assert [e.digest for e in history.entries()] == [D1, D2]
    [warning] = warnings
    assert warning.startswith(f"Skipped 1 unreadable line(s) of the deploy history "
                              f"{history.path}: {reason}")
    assert history.previous_successful("staging", "shop") == entry(D1)


def test_history_command_warns_about_bad_lines_and_shows_the_rest(tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                  make_actions) -> None:
    history = History(tmp_path)
    history.path.write_text(json.dumps({**vars(entry(D3)), "duration_seconds": "x"}) + "\n"
                            + '{"time": "2026"}\n')
    history.append(entry(D1, tag="v1.0.0"))
    settings = load_settings({"INPUT_STATE_DIR": str(tmp_path), "INPUT_ENVIRONMENT": "staging",
                              "GITHUB_REPOSITORY": "org/app"}, {"mode": "deploy"})
    actions = make_actions()
    show(settings, actions, NO_ENGINE)
    printed = actions.out.getvalue()
    assert printed.startswith(
        f"::warning title=Deploy history::Skipped 2 unreadable line(s) of the deploy history "
        f"{history.path}: line 1: `duration_seconds` is not a number (str); line 2: no "
        "`action`.\n")
    assert "v1.0.0" in printed


def test_check_writable_fails_before_anything_with_the_input_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError) as caught:
        History(blocker / "sub").check_writable()
    assert caught.value.message.startswith(
        f"Input 'state_dir': the deploy history {blocker / 'sub' / 'history.jsonl'} is not "
        "writable (")
    assert "DEPLOYKIT_STATE_DIR" in caught.value.hint
    History(tmp_path / "ok").check_writable()
    assert (tmp_path / "ok" / "history.jsonl").read_text() == ""


# -- the engine store: labels on the containers ------------------------------------------
def test_labels_carry_the_release_and_the_ones_below_it() -> None:
    stack = [entry(D1, tag="v1"), entry(D2, tag="v2")]
    labels = labels_for_stack(stack)
    assert json.loads(labels[RELEASE_LABEL]) == asdict(entry(D2, tag="v2"))
    assert json.loads(labels[HISTORY_LABEL]) == [asdict(entry(D1, tag="v1")),
                                                 asdict(entry(D2, tag="v2"))]
    assert stack_from_labels(labels) == stack


def test_labels_of_an_older_deploykit_still_read() -> None:
    """Before the trail: the history label held the releases below the release only."""
    old = {RELEASE_LABEL: json.dumps(asdict(entry(D2, tag="v2"))),
           HISTORY_LABEL: json.dumps([asdict(entry(D1, tag="v1"))])}
    assert stack_from_labels(old) == [entry(D1, tag="v1"), entry(D2, tag="v2")]
    assert distrusted(old, None) == old  # it kept no marker: taken as verified


def test_the_label_history_is_bounded() -> None:
    stack = [entry(f"sha256:{n:064x}", tag=f"v{n}") for n in range(ENGINE_HISTORY_LIMIT + 5)]
    assert stack_from_labels(labels_for_stack(stack)) == stack[-ENGINE_HISTORY_LIMIT - 1:]


def test_a_deploy_pushes_and_a_rollback_pops() -> None:
    running = labels_for_stack([entry(D1, tag="v1"), entry(D2, tag="v2")])
    deployed = next_release_labels(running, entry(D3, tag="v3"))
    assert [e.tag for e in stack_from_labels(deployed)] == ["v1", "v2", "v3"]
    rollback = entry(D2, action="rollback", status="rolled_back", tag="v2",
                     rolled_back_from=D3)
    back = next_release_labels(deployed, rollback)
    assert stack_from_labels(back) == stack_from_labels(running)
    assert trail_from_labels(back) == [entry(D1, tag="v1"), entry(D2, tag="v2"),
                                       entry(D3, tag="v3"), rollback]  # the whole trail
    assert next_release_labels(running, entry(D2, tag="again")) == running  # same release
    # ... also after a rollback (its release label is the rollback's own entry)
    assert next_release_labels(back, entry(D2, tag="again")) == back


def test_a_restore_brings_back_the_labels_of_the_release_it_restores() -> None:
    running = labels_for_stack([entry(D1, tag="v1"), entry(D2, tag="v2")])
    assert labels_of_release(running, D2) == running
    assert stack_from_labels(labels_of_release(running, D1)) == [entry(D1, tag="v1")]
    assert labels_of_release(running, D3) == {}
    assert labels_of_release({}, D1) == {}


@pytest.mark.parametrize("labels", [
    {}, {RELEASE_LABEL: "not json"}, {RELEASE_LABEL: "[]"}, {RELEASE_LABEL: '{"tag": 1}'}])
def test_unreadable_labels_are_no_history(labels: dict[str, str]) -> None:
    assert stack_from_labels(labels) == []


def test_bad_entries_below_the_release_are_skipped() -> None:
    labels = {**labels_for_stack([entry(D1), entry(D2)]),
              HISTORY_LABEL: json.dumps([{"time": 1}, asdict(entry(D1))])}
    assert stack_from_labels(labels) == [entry(D1), entry(D2)]


class FakeApi:
    def __init__(self, containers: list[dict[str, object]],
                 verified: dict[str, str] | None = None) -> None:
        self.listed = containers
        self.filters: list[object] = []
        self.verified = verified or {}  # project -> the digest its marker names

    def networks(self, filters: dict[str, list[str]]) -> list[dict[str, object]]:
        project = filters["label"][0].partition("=")[2]
        return [{"Id": "n", "Created": "t", "Labels": {"deploykit.verified": digest}}
                for name, digest in self.verified.items() if name == project]

    def containers(self, all: bool, filters: dict[str, list[str]]) -> list[dict[str, object]]:
        self.filters.append((all, filters))
        project = [f for f in filters["label"] if f.startswith("com.docker.compose.project=")]
        return [c for c in self.listed if not project or project[0].partition("=")[2]
                == c["Labels"]["com.docker.compose.project"]]  # type: ignore[index]


def container(project: str, stack: list[HistoryEntry], *, state: str = "running",
              created: int = 1) -> dict[str, object]:
    return {"Labels": {"com.docker.compose.project": project, **labels_for_stack(stack)},
            "State": state, "Created": created}


def test_engine_labels_prefer_a_running_container_then_the_newest() -> None:
    api = FakeApi([container("shop", [entry(D1)], state="exited", created=9),
                   container("shop", [entry(D2)], created=5),
                   container("shop", [entry(D3)], created=2),
                   container("blog", [entry(D1, project="blog")])], verified={"shop": D2})
    assert engine_stack(api, "shop") == [entry(D2)]
    assert api.filters[-1] == (True, {"label": [RELEASE_LABEL,
                                                "com.docker.compose.project=shop"]})
    assert sorted(engine_labels(api)) == ["blog", "shop"]
    assert engine_stack(api, "none") == []


def test_merge_adds_the_engine_releases_the_file_does_not_know() -> None:
    in_file = HistoryEntry(**{**asdict(entry(D1, tag="v1")), "time": "2026-01-02T00:00:00Z"})
    on_engine = [entry(D1, tag="v1"), entry(D2, tag="v2")]
    assert merge([in_file], on_engine) == [entry(D2, tag="v2"), in_file]


# -- issue 20: whole lines only, and the trail on the engine --------------------------------
@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of two pages (8 KiB): a history on it fills up after a few lines."""
    if os.geteuid() != 0:  # the test bed and CI run as root: there it must run
        if os.environ.get("CI") == "true":
            pytest.fail("mounting a tmpfs needs root", pytrace=False)
        pytest.skip("mounting a tmpfs needs root")
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mountpoint)],
                   check=True, capture_output=True, timeout=30)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, capture_output=True,
                       timeout=30)


def test_a_full_disk_never_tears_a_line(tiny_filesystem: Path) -> None:
    warnings: list[str] = []
    history = History(tiny_filesystem / "state", warn=warnings.append)
    written, refused = [], []
    for number in range(60):  # ~380 bytes a line: the disk is full long before
        line = entry(f"sha256:{number:064x}", tag=f"v{number}")
        try:
            history.append(line)
        except DeploykitError as error:
            refused.append(error.message)
            continue
        written.append(line)
    assert refused and written
    assert history.entries() == written and warnings == []  # no line torn, none lost
    text = history.path.read_text()
    assert text.endswith("\n")
    assert [json.loads(raw)["tag"] for raw in text.splitlines()] == [e.tag for e in written]
    assert all("the line was not written (nothing was left half-written)" in message
               for message in refused)
    # The next deploy still knows the last verified release and the one below it.
    assert history.releases("staging", "shop")[-1] == written[-1]
    assert history.previous_successful("staging", "shop") == written[-2]


def test_a_line_a_crash_cut_off_does_not_swallow_the_next(tmp_path: Path) -> None:
    history = History(tmp_path)
    history.append(entry(D1))
    with history.path.open("a") as handle:
        handle.write('{"time": "cut')  # no newline: the write of an older version was cut
    history.append(entry(D2))
    assert [e.digest for e in history.entries()] == [D1, D2]


@pytest.mark.parametrize("seed", range(40))
def test_the_bounded_trail_replays_to_the_same_stack(seed: int) -> None:
    chooser = random.Random(seed)
    digests = [f"sha256:{n:064x}" for n in range(6)]
    trail: list[HistoryEntry] = []
    for _ in range(chooser.randint(0, 80)):
        stack = release_stack(trail)
        kind = chooser.random()
        if kind < 0.15 and len(stack) >= 2:
            trail.append(entry(stack[-2].digest, action="rollback", status="rolled_back",
                               rolled_back_from=stack[-1].digest))
        elif kind < 0.3:
            trail.append(entry(chooser.choice(digests), status=chooser.choice(
                ["failed", "rolled_back"])))
        else:
            trail.append(entry(chooser.choice(digests), tag=f"t{len(trail)}"))
    kept = bounded_trail(trail)
    assert release_stack(kept) == release_stack(trail)[-ENGINE_HISTORY_LIMIT - 1:]
    assert kept[-ENGINE_HISTORY_LIMIT:] == trail[-ENGINE_HISTORY_LIMIT:]


def test_a_release_never_verified_is_not_a_rollback_target() -> None:
    """Labels are set at `up`: a release whose deploy failed without a restore (or was
    killed) says `deployed`; the engine's marker names the release verified last."""
    v1, v2, v3 = entry(D1, tag="v1"), entry(D2, tag="v2"), entry(D3, tag="v3")
    left = labels_for_trail([v1, v2, v3], v3)  # v3's deploy failed, its restore too
    checked = distrusted(left, D2)
    assert [e.status for e in trail_from_labels(checked)] == ["deployed", "deployed", "failed"]
    assert stack_from_labels(checked) == [v1, v2]
    assert distrusted(left, D3) == left
    assert stack_from_labels(distrusted(left, None)) == [v1, v2]  # no marker at all
    v4 = entry(sha256(4), tag="v4")
    later = next_release_labels(checked, v4)  # a deploy after it records it failed
    assert [(e.tag, e.status) for e in trail_from_labels(later)] == [
        ("v1", "deployed"), ("v2", "deployed"), ("v3", "failed"), ("v4", "deployed")]
    assert [e.tag for e in stack_from_labels(later)] == ["v1", "v2", "v4"]


def test_a_restore_records_the_failed_deploy_in_the_trail() -> None:
    v1, v2 = entry(D1, tag="v1"), entry(D2, tag="v2")
    failed = entry(D3, tag="v3", status="rolled_back")
    restored = labels_of_release(labels_for_trail([v1, v2], v2), D2, failed)
    assert json.loads(restored[RELEASE_LABEL]) == asdict(v2)
    assert trail_from_labels(restored) == [v1, v2, failed]
    assert stack_from_labels(restored) == [v1, v2]


def test_verified_release_reads_the_newest_marker() -> None:
    class Networks:
        def networks(self, filters: dict[str, list[str]]) -> list[dict[str, object]]:
            assert filters == {"label": ["deploykit.verified.project=shop"]}
            return [{"Created": "2026-01-02T00:00:00Z", "Labels": {"deploykit.verified": D2}},
                    {"Created": "2026-01-01T00:00:00Z", "Labels": {"deploykit.verified": D1}}]

    assert verified_release(Networks(), "shop") == D2


def sha256(number: int) -> str:
    return f"sha256:{number:064x}"
