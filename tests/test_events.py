from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import docker.errors
import requests

from deploykit.events import ContainerEvent, ProjectEvents, open_project_events

RAW = {"status": "health_status: healthy", "id": "c1", "Type": "container",
       "Action": "health_status: healthy",
       "Actor": {"ID": "c1", "Attributes": {"name": "shop-app-1"}},
       "time": 1796041780, "timeNano": 1796041780376441376}


class Stream:
    """A CancellableStream stand-in: yields the given events, then blocks until closed."""

    def __init__(self, *events: Any, fail: bool = False) -> None:
        self.events, self.fail = list(events), fail
        self.released = threading.Event()

    def __iter__(self) -> Iterator[Any]:
        yield from self.events
        if self.fail:
            raise requests.exceptions.ChunkedEncodingError("connection reset")
        self.released.wait(timeout=10)

    def close(self) -> None:
        self.released.set()


def test_parse_an_engine_event() -> None:
    assert ContainerEvent.parse(RAW) == ContainerEvent("c1", "health_status: healthy",
                                                       1796041780376441376 / 1e9)
    assert ContainerEvent.parse({"id": "c2", "status": "die", "time": 5}) == \
        ContainerEvent("c2", "die", 5.0)
    assert ContainerEvent.parse({"Type": "container"}) is None


def test_wait_returns_what_arrived_then_nothing_after_the_timeout() -> None:
    stream = Stream(RAW, {"Action": "die", "Actor": {"ID": "c1"}, "timeNano": 2 * 10**9},
                    "not an event")
    events = ProjectEvents(stream)
    first = events.wait(5)
    rest = first[1:] or events.wait(5)
    assert [e.action for e in first[:1] + rest] == ["health_status: healthy", "die"]
    assert events.wait(0.01) == []
    assert events.alive
    events.close()
    assert events.wait(5) == [] and not events.alive  # the reader ended with the stream


def test_a_broken_stream_ends_the_subscription() -> None:
    events = ProjectEvents(Stream(RAW, fail=True))
    seen = events.wait(5)
    while events.alive:
        seen += events.wait(5)
    assert [e.container_id for e in seen] == ["c1"]


def test_close_never_raises() -> None:
    class SSHStream(Stream):
        def close(self) -> None:
            self.released.set()
            raise docker.errors.DockerException("Cancellable streams not supported for SSH")

    ProjectEvents(SSHStream()).close()


def test_subscription_filters_the_project_and_bounds_the_stream() -> None:
    calls: list[dict[str, Any]] = []

    class API:
        def events(self, **kwargs: Any) -> Stream:
            calls.append(kwargs)
            return Stream()

    events = open_project_events(API(), "shop", since=100.7, until=230.2)
    assert events is not None
    events.close()
    assert calls == [{"decode": True, "since": 100, "until": 231, "filters": {
        "label": "com.docker.compose.project=shop", "type": "container",
        "event": ["create", "start", "restart", "die", "oom", "health_status", "destroy"]}}]


def test_an_engine_that_refuses_events_gives_no_stream() -> None:
    class API:
        def events(self, **kwargs: Any) -> Stream:
            response = requests.Response()
            response.status_code = 500
            raise docker.errors.APIError("x", response=response, explanation="no")

    assert open_project_events(API(), "shop", since=0, until=1) is None
