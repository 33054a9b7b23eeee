"""A bounded HTTP load client for the zero-downtime tests and the bench.

``rate`` requests per second to a 127.0.0.1 URL only, each on a new connection (as many
clients would), until ``max_requests`` were sent or ``max_seconds`` passed or :meth:`stop`.
Every answer other than 200, and every error, is a failure; a 200's body names the release
that answered (``release v2``), and those are counted per release.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RELEASE = re.compile(r"release (\S+)")


@dataclass
class LoadResult:
    sent: int = 0
    ok: int = 0
    failures: list[str] = field(default_factory=list)  # "status 502", "error: ..."
    releases: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def summary(self) -> str:
        kinds = Counter(self.failures)
        return (f"{self.sent} sent, {self.ok} ok, {len(self.failures)} failed "
                f"{dict(kinds)}, by release {dict(self.releases)}, {self.elapsed:.1f} s")


class LoadClient:
    def __init__(self, url: str, *, rate: float = 40, max_requests: int = 4000,
                 max_seconds: float = 120, timeout: float = 5, workers: int = 16) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or parts.hostname != "127.0.0.1" or not parts.port:
            raise ValueError(f"the load client only sends to http://127.0.0.1:PORT, not {url}")
        if not 0 < rate <= 200 or max_requests <= 0 or max_seconds <= 0:
            raise ValueError("rate in (0, 200], max_requests and max_seconds > 0")
        self.port, self.path = parts.port, parts.path or "/"
        self.rate, self.max_requests, self.max_seconds = rate, max_requests, max_seconds
        self.timeout = timeout
        self.result = LoadResult()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="load")
        self._thread = threading.Thread(target=self._run, name="load-client", daemon=True)
        self._pending: list[Future[None]] = []

    def __enter__(self) -> LoadClient:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Until it stopped sending by itself (its count or time limit); True when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> LoadResult:
        """Stop sending, wait for the requests in flight, and return the counts."""
        self._stop.set()
        self._thread.join()
        for future in self._pending:
            future.result()
        self._pool.shutdown(wait=True)
        return self.result

    def _run(self) -> None:
        began = time.monotonic()
        interval = 1.0 / self.rate
        for number in range(self.max_requests):
            due = began + number * interval
            if due - began > self.max_seconds or self._stop.wait(max(due - time.monotonic(),
                                                                     0.0)):
                break
            with self._lock:
                self.result.sent += 1
            self._pending.append(self._pool.submit(self._one))
        self.result.elapsed = time.monotonic() - began

    def _one(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            connection.request("GET", self.path, headers={"Connection": "close"})
            response = connection.getresponse()
            body = response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            self._record(f"error: {type(exc).__name__}")
            return
        finally:
            connection.close()
        if response.status != 200:
            self._record(f"status {response.status}")
            return
        match = RELEASE.search(body)
        with self._lock:
            self.result.ok += 1
            self.result.releases[match.group(1) if match else "?"] += 1

    def _record(self, failure: str) -> None:
        with self._lock:
            self.result.failures.append(failure)
