"""Finding and stopping processes: by recorded pid, and by the network namespace they live in.

A process left inside a namespace keeps that namespace alive after its name
is deleted, so teardown first stops every process whose network namespace is
the lab's, whoever started it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from testbed.hosts.ledger import process_start_time, same_process
from testbed.hosts.nsexec import netns_path

log = logging.getLogger(__name__)


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


def _gone(pid: int, start_time: int | None) -> bool:
    """Exited AND reaped: no /proc entry, or the pid now names another process."""
    now = process_start_time(pid)
    return now is None or (start_time is not None and now != start_time)


#: how long a stopped process's parent (often init, for a lab's daemons) gets to reap it
REAP_S = 10.0


def stop_pids(pids: Iterable[int], grace_s: float = 3.0) -> list[int]:
    """SIGTERM, wait up to `grace_s`, then SIGKILL whatever is left; then wait until each is
    reaped (ours by us, others' by their parent), so no <defunct> is left when this returns.

    Returns the pids still there after all that (normally none).
    """
    return stop_processes(identify(pids), grace_s)


def identify(pids: Iterable[int]) -> dict[int, int]:
    """pid -> start time of the pids that exist now (a recycled pid is then told apart)."""
    found = {p: process_start_time(p) for p in pids}
    return {p: t for p, t in found.items() if t is not None}


def pids_naming(text: str) -> list[int]:
    """Pids whose command line contains `text` (not this process)."""
    me, out = os.getpid(), []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != me:
            try:
                if needle in (entry / "cmdline").read_bytes():
                    out.append(int(entry.name))
            except OSError:
                continue
    return out


def stop_processes(known: Mapping[int, int | None], grace_s: float = 3.0) -> list[int]:
    """`stop_pids` for processes known by pid and start time: a pid whose start time
    changed is another process, left alone. Returns the pids still there."""
    procs = dict(known)

    def dead(p: int) -> bool:
        return _gone(p, procs[p]) or not alive(p)

    def reaped(p: int) -> bool:
        return _gone(p, procs[p])

    def wait(seconds: float, done: Callable[[int], bool]) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            for p in procs:
                _reap(p)
            if all(done(p) for p in procs):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def signal_all(sig: int) -> None:
        for p in procs:
            if not dead(p):
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass

    signal_all(signal.SIGTERM)
    if not wait(grace_s, dead):
        signal_all(signal.SIGKILL)
        wait(2.0, dead)
    wait(REAP_S, reaped)  # dead: now its parent (we, or init) reaps it
    left = sorted(p for p, t in procs.items() if not _gone(p, t))
    for p in left:
        log.warning("pid %s is still there after SIGKILL (%s)", p, _state(p))
    return left


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def stop_recorded(pid: int, start_time: int | None, grace_s: float = 3.0) -> bool:
    """Stop a ledger-recorded process, unless its pid now belongs to another process.
    True when it is gone (exited and reaped)."""
    if same_process(pid, start_time):
        return not stop_pids([pid], grace_s)
    return True


def stop_netns_processes(netns: str, grace_s: float = 3.0) -> list[int]:
    return stop_pids(pids_in_netns(netns), grace_s)
