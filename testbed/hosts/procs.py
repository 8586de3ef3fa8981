"""Finding and stopping processes: by recorded pid, and by the network namespace they live in.

A process left inside a namespace keeps that namespace alive after its name
is deleted, so teardown first stops every process whose network namespace is
the lab's, whoever started it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

from testbed.hosts.ledger import same_process
from testbed.hosts.nsexec import netns_path


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def pids_in_netns(netns: str) -> list[int]:
    """Pids of every process whose network namespace is `netns` (by inode)."""
    target = _inode(netns_path(netns))
    if target is None:
        return []
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        if _inode(f"/proc/{entry.name}/ns/net") == target:
            out.append(int(entry.name))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is dead for our purposes
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pids(pids: Iterable[int], grace_s: float = 3.0) -> None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL whatever is left."""
    pids = [p for p in pids if alive(p)]
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        for p in pids:
            _reap(p)
        pids = [p for p in pids if alive(p)]
        if not pids:
            return
        time.sleep(0.05)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 2.0
    while pids and time.monotonic() < deadline:
        for p in pids:
            _reap(p)
        pids = [p for p in pids if alive(p)]
        time.sleep(0.02)


def stop_recorded(pid: int, start_time: int | None, grace_s: float = 3.0) -> None:
    """Stop a ledger-recorded process, unless its pid now belongs to another process."""
    if same_process(pid, start_time):
        stop_pids([pid], grace_s)


def stop_netns_processes(netns: str, grace_s: float = 3.0) -> None:
    stop_pids(pids_in_netns(netns), grace_s)
