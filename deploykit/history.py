"""The deploy history: one JSON line per deploy or rollback, under the state directory.

The file is append-only. Which release is "the previous one" is found by
replaying it as a stack of releases per environment and project: a successful
deploy pushes its digest, a successful rollback pops the release it rolled back
from (named in ``rolled_back_from``). Rolling back twice therefore walks two
releases down the stack instead of bouncing between the last two.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import MISSING, asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from deploykit.actions import Actions, markdown_table, markdown_text
from deploykit.containers import docker_client
from deploykit.docker_sdk import docker
from deploykit.errors import DeploykitError, InputError
from deploykit.reference import parse_reference
from deploykit.settings import ROLLBACK, Settings
from deploykit.status import Status

HISTORY_FILE = "history.jsonl"


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
            return self.status == Status.ROLLED_BACK
        return self.status == Status.DEPLOYED


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
        """One whole line or nothing: a short write (a full disk) is cut back off."""
        line = (json.dumps(asdict(entry), sort_keys=True) + "\n").encode("utf-8")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise self._not_written(exc.strerror or str(exc)) from exc
        try:
            # Writers take turns (flock), so cutting a short write back off never cuts
            # another writer's line.
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            _append_whole(descriptor, line)
        except OSError as exc:
            raise self._not_written(exc.strerror or str(exc)) from exc
        finally:
            os.close(descriptor)

    def _not_written(self, why: str) -> DeploykitError:
        return DeploykitError(
            f"Cannot write the deploy history {self.path}: {why}; the line was not written "
            "(nothing was left half-written).",
            hint="Free space in, or set `state_dir` (or DEPLOYKIT_STATE_DIR) to, a writable "
            "directory.", title="History not writable")

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


def _append_whole(descriptor: int, line: bytes) -> None:
    """Append ``line`` at the end of the file; on a short write or an error, truncate the
    file back to its size before, so no line is ever torn. A last line a crash cut off
    (no newline at its end) gets one first: the new line is never glued to it."""
    size = os.fstat(descriptor).st_size
    if size and os.pread(descriptor, 1, size - 1) != b"\n":
        line = b"\n" + line
    try:
        written = os.write(descriptor, line)
    except OSError:
        _truncate(descriptor, size)
        raise
    if written != len(line):
        _truncate(descriptor, size)
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (only {written} of "
                      f"{len(line)} bytes fitted)")


def _truncate(descriptor: int, size: int) -> None:
    with suppress(OSError):
        os.ftruncate(descriptor, size)


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


# -- the engine store: release labels on the engine --------------------------------------
# The history must survive the runner (the action container, a fresh CI machine): it is
# kept where the deployment lives, on the engine. The release that runs and the trail of
# events before it (deploys, rollbacks, failures, bounded) are two labels: under compose
# on a config-only network per project written just before each `up` (write_record), not
# on the containers (a label compose did not read from the files changes their config
# hash: a hand-run `docker compose up -d` would recreate them); under Swarm on the
# services. `mode: rollback` and `deploykit history` read them back through the engine API.
# They are written before the verdict: which release was verified is kept apart, in a
# config-only network per project (VERIFIED_LABEL), made after the verdict. docs/deploy.md
# explains the choice.
RELEASE_LABEL = "deploykit.release"
HISTORY_LABEL = "deploykit.history"
ENGINE_HISTORY_LIMIT = 20  # releases kept below the current one (20 rollbacks deep), and
# as many of the latest events (failures included)
PROJECT_LABEL = "com.docker.compose.project"
VERIFIED_LABEL = "deploykit.verified"  # on the marker network: the verified digest
VERIFIED_PROJECT_LABEL = "deploykit.verified.project"
RECORD_PROJECT_LABEL = "deploykit.record.project"  # on the record network: whose labels


def _encode(entry: HistoryEntry) -> dict[str, object]:
    return asdict(entry)


def _decode(text: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _release_of(labels: Mapping[str, str]) -> HistoryEntry | None:
    release = parse_entry(_decode(labels.get(RELEASE_LABEL, "")))
    return None if isinstance(release, str) else release


def trail_from_labels(labels: Mapping[str, str]) -> list[HistoryEntry]:
    """Every event a container's labels carry, oldest first ([] without them). Labels of
    deploykit before the trail held the releases below this one (the release apart)."""
    release = _release_of(labels)
    if release is None:
        return []
    earlier = _decode(labels.get(HISTORY_LABEL, "[]"))
    parsed = [parse_entry(raw) for raw in earlier] if isinstance(earlier, list) else []
    trail = [entry for entry in parsed if isinstance(entry, HistoryEntry)]
    return trail if release in trail else [*trail, release]


def stack_from_labels(labels: Mapping[str, str]) -> list[HistoryEntry]:
    """The release stack a container's labels carry, oldest first ([] without them)."""
    return release_stack(trail_from_labels(labels))


def bounded_trail(trail: list[HistoryEntry]) -> list[HistoryEntry]:
    """The last :data:`ENGINE_HISTORY_LIMIT` events, plus the releases of the stack below
    them (at most that many): its replay gives the same stack, bounded."""
    stack = release_stack(trail)[-ENGINE_HISTORY_LIMIT - 1:]
    in_stack = {id(entry) for entry in stack}
    recent = len(trail) - ENGINE_HISTORY_LIMIT
    return [entry for number, entry in enumerate(trail)
            if number >= recent or id(entry) in in_stack]


def labels_for_trail(trail: list[HistoryEntry], release: HistoryEntry) -> dict[str, str]:
    """The labels of containers that run ``release``, after the events of ``trail``."""
    kept = bounded_trail(trail)
    if release not in kept:
        kept.append(release)
    return {RELEASE_LABEL: _compact(_encode(release)),
            HISTORY_LABEL: _compact([_encode(entry) for entry in kept])}


def labels_for_stack(stack: list[HistoryEntry]) -> dict[str, str]:
    """The labels of the release on top of ``stack`` (the ones below it, bounded)."""
    return labels_for_trail(stack, stack[-1])


def _compact(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def next_release_labels(running: Mapping[str, str], entry: HistoryEntry) -> dict[str, str]:
    """The labels for the containers of ``entry`` (a deploy or a rollback about to run),
    given those of the containers running now. The same release keeps its labels, so
    compose sees no change and recreates nothing."""
    trail = trail_from_labels(running)
    stack = release_stack(trail)
    release = _release_of(running)
    if stack and stack[-1].digest == entry.digest and release and release.digest == entry.digest:
        return {key: running[key] for key in (RELEASE_LABEL, HISTORY_LABEL) if key in running}
    return labels_for_trail([*trail, entry], entry)


def labels_of_release(running: Mapping[str, str], digest: str,
                      failure: HistoryEntry | None = None) -> dict[str, str]:
    """The labels to bring ``digest`` back with (a restore), given the labels of what ran
    before the deploy: its trail, plus ``failure`` (the deploy that is undone); {} when
    they do not know ``digest``."""
    trail = trail_from_labels(running)
    if failure is not None:
        trail.append(failure)
    stack = release_stack(trail)
    releases = [entry for entry in stack if entry.digest == digest]
    if not releases:
        return {}
    if failure is None and releases[-1] == _release_of(running):
        return {key: running[key] for key in (RELEASE_LABEL, HISTORY_LABEL) if key in running}
    if stack[-1].digest != digest:  # deeper than the trail explains: the stack cut down
        return labels_for_stack(stack[:stack.index(releases[-1]) + 1])
    return labels_for_trail(trail, releases[-1])


def distrusted(labels: Mapping[str, str], verified: str | None) -> dict[str, str]:
    """``labels`` with their release marked ``failed`` when it was never verified:
    ``verified`` (the marker's digest) names another release, or there is no marker
    (None) under labels of this version (with the trail): a deploy that failed, was
    killed or cancelled past ``up`` left it."""
    release = _release_of(labels)
    if release is None or release.digest == verified or not release.release_changed:
        return dict(labels)
    earlier = _decode(labels.get(HISTORY_LABEL, "[]"))
    with_trail = isinstance(earlier, list) and _encode(release) in earlier
    if verified is None and not with_trail:
        return dict(labels)  # labels of an older deploykit, which kept no marker
    failed = HistoryEntry(**{**asdict(release), "status": Status.FAILED})
    trail = [failed if entry == release else entry for entry in trail_from_labels(labels)]
    return {**labels, RELEASE_LABEL: _compact(_encode(failed)),
            HISTORY_LABEL: _compact([_encode(entry) for entry in trail])}


def verified_name(project: str) -> str:
    return f"deploykit-verified-{project}"


def verified_release(api: Any, project: str) -> str | None:
    """The digest the project's last verdict verified (None: no marker)."""
    networks = api.networks(filters={"label": [f"{VERIFIED_PROJECT_LABEL}={project}"]})
    newest = max(networks, key=lambda n: str(n.get("Created") or ""), default=None)
    return None if newest is None else str((newest.get("Labels") or {}).get(VERIFIED_LABEL,
                                                                               ""))


def mark_verified(api: Any, project: str, digest: str,
                  create: Callable[[Any, str, Mapping[str, str]], str]) -> None:
    """Record on the engine that ``digest`` runs verified: a new marker, then the old
    ones removed (a run killed in between leaves two; the newest counts)."""
    _replace_marker(api, VERIFIED_PROJECT_LABEL, project, verified_name(project),
                    labels={VERIFIED_LABEL: digest}, create=create)


def record_name(project: str) -> str:
    return f"deploykit-record-{project}"


def write_record(api: Any, project: str, labels: Mapping[str, str],
                 create: Callable[[Any, str, Mapping[str, str]], str]) -> None:
    """Record on the engine the release labels of what a compose ``up`` is about to start
    (:func:`next_release_labels`, :func:`labels_of_release`): a config-only network per
    project, the newest counts. Not on the containers: a label compose did not read from
    the project's files changes their config hash, and a hand-run ``docker compose up -d``
    would recreate them."""
    _replace_marker(api, RECORD_PROJECT_LABEL, project, record_name(project),
                    labels={key: labels[key] for key in (RELEASE_LABEL, HISTORY_LABEL)
                            if key in labels}, create=create)


def _replace_marker(api: Any, project_label: str, project: str, name: str, *,
                    labels: Mapping[str, str],
                    create: Callable[[Any, str, Mapping[str, str]], str]) -> None:
    old = api.networks(filters={"label": [f"{project_label}={project}"]})
    created = create(api, f"{name}-{uuid.uuid4().hex[:8]}", {project_label: project, **labels})
    for network in old:
        if network.get("Id") != created:
            with suppress(docker.errors.APIError):
                api.remove_network(network["Id"])


def engine_labels(api: Any, project: str = "") -> dict[str, dict[str, str]]:
    """project -> its deploykit labels: the newest record (:func:`write_record`), else
    (an older deploykit labelled the containers) those of its newest container that has
    them, a running one first. ``api`` is the Docker SDK's low-level client."""
    found = _container_labels(api, project)
    found.update(_record_labels(api, project))
    return found


def _record_labels(api: Any, project: str) -> dict[str, dict[str, str]]:
    wanted = f"{RECORD_PROJECT_LABEL}={project}" if project else RECORD_PROJECT_LABEL
    newest: dict[str, tuple[str, dict[str, str]]] = {}
    for network in api.networks(filters={"label": [wanted]}):
        labels = {str(k): str(v) for k, v in (network.get("Labels") or {}).items()}
        name, created = labels.get(RECORD_PROJECT_LABEL, ""), str(network.get("Created") or "")
        if name and (name not in newest or created > newest[name][0]):
            newest[name] = (created, {key: labels[key] for key in (RELEASE_LABEL,
                                                                  HISTORY_LABEL)
                                      if key in labels})
    return {name: labels for name, (_, labels) in newest.items()}


def _container_labels(api: Any, project: str) -> dict[str, dict[str, str]]:
    wanted = [RELEASE_LABEL] + ([f"{PROJECT_LABEL}={project}"] if project else [])
    containers = api.containers(all=True, filters={"label": wanted})
    newest: dict[str, tuple[tuple[bool, int], dict[str, str]]] = {}
    for container in containers:
        labels = {str(k): str(v) for k, v in (container.get("Labels") or {}).items()}
        name = labels.get(PROJECT_LABEL, "")
        rank = (container.get("State") == "running", int(container.get("Created") or 0))
        if name and (name not in newest or rank > newest[name][0]):
            newest[name] = (rank, {key: labels[key] for key in (RELEASE_LABEL, HISTORY_LABEL)
                                   if key in labels})
    return {name: labels for name, (_, labels) in newest.items()}


def checked_labels(api: Any, project: str) -> dict[str, str]:
    """The project's labels (compose), its release marked failed unless it was verified."""
    labels = engine_labels(api, project).get(project, {})
    return distrusted(labels, verified_release(api, project)) if labels else {}


def engine_stack(api: Any, project: str) -> list[HistoryEntry]:
    """The release stack of ``project`` as its containers carry it, oldest first: only
    verified releases."""
    return stack_from_labels(checked_labels(api, project))


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


def show(settings: Settings, actions: Actions, env: Mapping[str, str], *,
         repository: str | None = None, registry: str | None = None, limit: int = 0,
         as_json: bool = False) -> None:
    """The table (or JSON list) of past deploys, from the history file and from the engine
    (its release records): the last ``limit`` (0: all), of ``repository``
    (and ``registry``) only when given."""
    history = History(state_directory(settings.state_dir),
                      warn=lambda text: actions.warning(text, title="Deploy history"))
    wanted = (repository, registry)
    entries = merge(history.select(settings.environment, settings.project_name),
                    read_engine(env, settings.project_name, actions.info))
    entries = [entry for entry in entries if _of_image(entry, *wanted)
               and (not settings.environment or entry.environment == settings.environment)]
    shown = entries[-limit:] if limit else entries
    if as_json:
        actions.print_json([asdict(entry) for entry in shown])
        return
    if not entries:
        actions.info(f"No deploy recorded in {history.path} or on the engine.")
        return
    rows = [_row(entry) for entry in shown]
    actions.untrusted("", text_table(COLUMNS, rows))  # a file's values: never a command
    if len(shown) < len(entries):
        actions.info(f"The last {len(shown)} of {len(entries)} entries; `--limit 0` shows all.")
    if actions.in_actions:
        actions.add_summary("### Deploy history\n\n" + markdown_table(
            list(COLUMNS), [[markdown_text(cell) for cell in row] for row in rows]))


def read_engine(env: Mapping[str, str], project: str,
                say: Callable[[str], None]) -> list[HistoryEntry]:
    """The releases the engine's containers carry (every project's, or ``project``'s);
    an engine that does not answer leaves the history file alone, with one line."""
    try:
        api = docker_client(env).api
        labels = {name: distrusted(found, verified_release(api, name))
                  for name, found in engine_labels(api, project).items()}
    except (DeploykitError, docker.errors.DockerException, requests.RequestException) as exc:
        host = env.get("DOCKER_HOST") or "the default socket"
        say(f"The Docker engine ({host}) did not answer ({type(exc).__name__}): the history "
            "file only.")
        return []
    return [entry for name in sorted(labels) for entry in trail_from_labels(labels[name])]


def merge(from_file: list[HistoryEntry], from_engine: list[HistoryEntry]) -> list[HistoryEntry]:
    """Every file entry, plus the engine's releases the file does not know, by time."""
    def key(entry: HistoryEntry) -> tuple[str, str, str, str, str]:
        return entry.project, entry.environment, entry.action, entry.digest, entry.tag

    known = {key(entry) for entry in from_file}
    extra = [entry for entry in from_engine if key(entry) not in known]
    return sorted([*from_file, *extra], key=lambda entry: entry.time)


def _of_image(entry: HistoryEntry, repository: str | None, registry: str | None) -> bool:
    """``--image-repo`` (and ``--registry``), when given: entries of that image only.
    Not the default from GITHUB_REPOSITORY: it often differs from the deployed image."""
    if not repository or not entry.image:  # an entry that names no image is kept
        return True
    try:
        image = parse_reference(entry.image)
    except InputError:
        return False
    return image.repository == repository and (not registry or image.registry == registry)
