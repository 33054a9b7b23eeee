"""The deploy history: one JSON line per deploy or rollback, under the state directory.

The file is append-only. Which release is "the previous one" is found by
replaying it as a stack of releases per environment and project: a successful
deploy pushes its digest, a successful rollback pops the release it rolled back
from (named in ``rolled_back_from``). Rolling back twice therefore walks two
releases down the stack instead of bouncing between the last two.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

from deploykit.actions import Actions, markdown_table, markdown_text
from deploykit.errors import DeploykitError, InputError
from deploykit.settings import Settings

HISTORY_FILE = "history.jsonl"
DEPLOY, ROLLBACK = "deploy", "rollback"
SUCCESSFUL = frozenset({"deployed", "rolled_back"})


@dataclass(frozen=True)
class HistoryEntry:
    time: str
    action: str  # deploy | rollback
    environment: str
    project: str
    tag: str
    digest: str
    previous_digest: str
    status: str  # deployed | rolled_back | failed
    duration_seconds: float
    run_url: str = ""
    actor: str = ""
    image: str = ""
    rolled_back_from: str = ""  # set by a successful mode=rollback

    @property
    def release_changed(self) -> bool:
        """True when this entry changed the release that runs (not an auto-rollback)."""
        if self.action == ROLLBACK:
            return self.status == "rolled_back"
        return self.status == "deployed"


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def state_directory(configured: str) -> Path:
    """``state_dir`` input, else $DEPLOYKIT_STATE_DIR (already folded in), else XDG."""
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".local" / "state" / "deploykit"


def parse_entry(raw: object) -> HistoryEntry | str:
    """One decoded line as an entry, or why it is not one."""
    if not isinstance(raw, dict):
        return "not a JSON object"
    values = {}
    for spec in fields(HistoryEntry):
        if spec.name not in raw:
            if spec.default is MISSING:
                return f"no `{spec.name}`"
            continue
        value = raw[spec.name]
        if spec.name == "duration_seconds":
            if isinstance(value, bool) or not isinstance(value, int | float):
                return f"`duration_seconds` is not a number ({type(value).__name__})"
            value = float(value)
        elif not isinstance(value, str):
            return f"`{spec.name}` is not a string ({type(value).__name__})"
        values[spec.name] = value
    return HistoryEntry(**values)


class History:
    def __init__(self, directory: Path, warn: Callable[[str], None] | None = None) -> None:
        self.directory = directory
        self.path = directory / HISTORY_FILE
        self.warn = warn

    def check_writable(self) -> None:
        """Before anything changes: the history line at the end must be writable."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.close(descriptor)
        except OSError as exc:
            raise InputError(
                "state_dir", f"the deploy history {self.path} is not writable "
                f"({exc.strerror}); nothing was changed.",
                hint="Set `state_dir` (or DEPLOYKIT_STATE_DIR) to a directory this user can "
                "write, kept between runs (not the workspace).") from exc

    def append(self, entry: HistoryEntry) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            line = json.dumps(asdict(entry), sort_keys=True) + "\n"
            # One write on an O_APPEND descriptor: lines from concurrent writers never interleave.
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(descriptor, line.encode("utf-8"))
            finally:
                os.close(descriptor)
        except OSError as exc:
            raise DeploykitError(
                f"Cannot write the deploy history {self.path}: {exc.strerror}.",
                hint="Set `state_dir` (or DEPLOYKIT_STATE_DIR) to a writable directory.",
                title="History not writable") from exc

    def entries(self) -> list[HistoryEntry]:
        """Every readable entry; a bad line (cut by a full disk, edited by hand) is
        skipped with a warning naming its line number, never fatal."""
        try:
            text = self.path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._warn(f"Cannot read the deploy history {self.path} ({exc.strerror}): "
                       "treated as empty.")
            return []
        result, skipped = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                parsed = parse_entry(json.loads(line))
            except (json.JSONDecodeError, RecursionError):
                parsed = "not JSON"
            if isinstance(parsed, str):
                skipped.append(f"line {number}: {parsed}")
            else:
                result.append(parsed)
        if skipped:
            shown = "; ".join(skipped[:5]) + (f"; and {len(skipped) - 5} more"
                                              if len(skipped) > 5 else "")
            self._warn(f"Skipped {len(skipped)} unreadable line(s) of the deploy history "
                       f"{self.path}: {shown}.")
        return result

    def _warn(self, message: str) -> None:
        if self.warn is not None:
            self.warn(message)

    def select(self, environment: str = "", project: str = "") -> list[HistoryEntry]:
        return [entry for entry in self.entries()
                if (not environment or entry.environment == environment)
                and (not project or entry.project == project)]

    def releases(self, environment: str, project: str) -> list[HistoryEntry]:
        """The release stack, oldest first; the last one is what should run now."""
        return release_stack(self.select(environment, project))

    def previous_successful(self, environment: str, project: str) -> HistoryEntry | None:
        """The release below the current one: the target of mode=rollback."""
        stack = self.releases(environment, project)
        return stack[-2] if len(stack) >= 2 else None


def release_stack(entries: Iterable[HistoryEntry]) -> list[HistoryEntry]:
    stack: list[HistoryEntry] = []
    for entry in entries:
        if not entry.release_changed:
            continue
        if entry.action == ROLLBACK and stack and stack[-1].digest == entry.rolled_back_from:
            stack.pop()
        if not stack or stack[-1].digest != entry.digest:
            stack.append(entry)
    return stack


# -- `deploykit history` --------------------------------------------------------
COLUMNS = ("time", "environment", "project", "action", "tag", "digest", "previous",
           "status", "seconds", "run")


def _row(entry: HistoryEntry) -> list[str]:
    return [entry.time, entry.environment, entry.project, entry.action, entry.tag,
            _short(entry.digest), _short(entry.previous_digest), entry.status,
            f"{entry.duration_seconds:.1f}", entry.run_url]


def _short(digest: str) -> str:
    return digest[:19] if digest.startswith("sha256:") else digest


def text_table(headers: Iterable[str], rows: list[list[str]]) -> str:
    headers = list(headers)
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows,
                                                                          strict=False)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.extend("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                 for row in rows)
    return "\n".join(lines)


def show(settings: Settings, actions: Actions, args: argparse.Namespace) -> None:
    """Handler of ``deploykit history``: the table (or ``--json`` list) of past deploys."""
    history = History(state_directory(settings.state_dir),
                      warn=lambda text: actions.warning(text, title="Deploy history"))
    entries = [entry for entry in history.select(settings.environment, settings.project_name)
               if _of_image(entry, settings.image_name if settings.image_repo else "")]
    limit = int(getattr(args, "limit", 0) or 0)
    shown = entries[-limit:] if limit else entries
    if getattr(args, "json", False):
        actions.print_json([asdict(entry) for entry in shown])
        return
    if not entries:
        actions.info(f"No deploy recorded in {history.path}.")
        return
    rows = [_row(entry) for entry in shown]
    actions.untrusted("", text_table(COLUMNS, rows))  # a file's values: never a command
    if len(shown) < len(entries):
        actions.info(f"The last {len(shown)} of {len(entries)} entries; `--limit 0` shows all.")
    if actions.in_actions:
        actions.add_summary("### Deploy history\n\n" + markdown_table(
            list(COLUMNS), [[markdown_text(cell) for cell in row] for row in rows]))


def _of_image(entry: HistoryEntry, image_name: str) -> bool:
    """``--image-repo``: entries of that image (``registry/repo@...`` or ``:...``) only."""
    if not image_name or not entry.image:  # an entry that names no image is kept
        return True
    return entry.image.startswith((f"{image_name}@", f"{image_name}:")) or entry.image == image_name
