"""The engine's container events of one compose project, as a stream the health verdict
can wait on (``GET /events``, the raw Docker side; the verdict itself is in health.py).

The subscription is made when :func:`open_project_events` returns, so whatever changes
after that is in the stream; a background thread reads it into a queue, and
:meth:`ProjectEvents.wait` returns what arrived, or nothing after ``timeout``.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, Protocol

from deploykit.docker_sdk import docker

PROJECT_LABEL = "com.docker.compose.project"
# What can change a verdict. `die` covers stop and kill; `create`/`destroy` change the set
# of containers; `health_status` matches every `health_status: <status>`.
WATCHED = ("create", "start", "restart", "die", "oom", "health_status", "destroy")
_END = object()


@dataclass(frozen=True)
class ContainerEvent:
    container_id: str
    action: str  # "start", "die", "health_status: healthy", ...
    time: float  # the engine's clock, epoch seconds

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> ContainerEvent | None:
        actor = raw.get("Actor") or {}
        container_id = str(actor.get("ID") or raw.get("id") or "")
        action = str(raw.get("Action") or raw.get("status") or "")
        if not container_id or not action:
            return None
        nanos = raw.get("timeNano")
        when = int(nanos) / 1e9 if isinstance(nanos, int) else float(raw.get("time") or 0)
        return cls(container_id, action, when)


class EventSource(Protocol):
    alive: bool

    def wait(self, timeout: float) -> list[ContainerEvent]:
        """The events that arrived, waiting at most ``timeout`` s for the first one."""

    def close(self) -> None: ...


class ProjectEvents:
    """A live ``/events`` subscription filtered to the project's containers."""

    def __init__(self, stream: Any) -> None:
        self.alive = True
        self._stream = stream
        self._queue: queue.Queue[object] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="deploykit-events",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            with suppress(Exception):  # a broken stream only ends the subscription
                for raw in self._stream:
                    if isinstance(raw, Mapping) and (event := ContainerEvent.parse(raw)):
                        self._queue.put(event)
        finally:
            self._queue.put(_END)

    def wait(self, timeout: float) -> list[ContainerEvent]:
        if not self.alive:
            return []
        try:
            first = self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return []
        return [event for event in self._items(first) if isinstance(event, ContainerEvent)]

    def _items(self, first: object) -> Iterator[object]:
        item: object = first
        while True:
            if item is _END:
                self.alive = False
                return
            yield item
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def close(self) -> None:
        # Over ssh the SDK cannot cancel a stream: the engine ends it at `until` instead.
        with suppress(Exception):
            self._stream.close()


def open_project_events(api: Any, project: str, *, since: float,
                        until: float) -> ProjectEvents | None:
    """Subscribe to the project's container events (engine time ``since``..``until``);
    ``None`` when the engine refuses, and the verdict then polls."""
    filters = {"label": f"{PROJECT_LABEL}={project}", "type": "container",
               "event": list(WATCHED)}
    try:
        stream = api.events(decode=True, filters=filters, since=int(since),
                            until=math.ceil(until))
    except (docker.errors.APIError, OSError):
        return None
    return ProjectEvents(stream)
