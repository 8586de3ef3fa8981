"""The ledger: an append-only record of every resource a lab makes.

Each line is one JSON object written and fsynced before (or right after) the
resource exists, so a crash leaves a ledger that still names everything.
`testbed down` walks it in reverse and removes exactly those resources.
Kinds in use: netns, process, mount, file, dir, domain, xvfb.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Entry:
    kind: str
    fields: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


class Ledger:
    """Records resources of one lab in `<state>/ledger.jsonl`."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def record(self, kind: str, **fields: Any) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"kind": kind, **fields}, sort_keys=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def record_process(self, kind: str, pid: int, **fields: Any) -> None:
        """Record a process with its start time, so a recycled pid is never killed."""
        self.record(kind, pid=pid, start_time=process_start_time(pid), **fields)

    def entries(self) -> Iterator[Entry]:
        if not self.path.exists():
            return
        with open(self.path, encoding="utf-8") as f:
            for raw in f:
                raw = raw.strip()
                if not raw:
                    continue
                try:
                    obj = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a torn last line after a crash
                kind = obj.pop("kind", None)
                if kind:
                    yield Entry(kind, obj)

    def of_kind(self, kind: str) -> list[Entry]:
        return [e for e in self.entries() if e.kind == kind]


def process_start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def same_process(pid: int, start_time: int | None) -> bool:
    """True when `pid` still names the process that was recorded."""
    now = process_start_time(pid)
    return now is not None and (start_time is None or now == start_time)
