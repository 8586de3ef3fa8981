"""The timeline of one scenario: what happened, when, seen from the runner.

Every layer's observations (migration progress, client connects, guard
actions, link changes, server-side graphics events) land here as events with
seconds since the scenario started, so the report can draw them on one axis.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Event:
    t: float  # seconds since the scenario started
    kind: str  # e.g. migration.start, client.connect, guard.hold, link.shape
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "kind": self.kind, **self.data}


class Timeline:
    """Thread-safe: the migration watcher, the client trigger and the guard all write here."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.started = time.time()
        self._events: list[Event] = []
        self._lock = threading.Lock()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def add(self, kind: str, *, t: float | None = None, **data: Any) -> Event:
        ev = Event(self.now() if t is None else t, kind, data)
        with self._lock:
            self._events.append(ev)
        return ev

    @property
    def events(self) -> list[Event]:
        with self._lock:
            return sorted(self._events, key=lambda e: e.t)

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.events]
