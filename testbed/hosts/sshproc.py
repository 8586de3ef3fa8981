"""Processes started detached on an SSH host, found again by pid and start time."""

from __future__ import annotations

import logging
import shlex
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from testbed.hosts.ledger import Ledger

if TYPE_CHECKING:
    from testbed.hosts.ssh import SshHost

log = logging.getLogger(__name__)

# The remote side of a stat line: field 3 (state) onwards, as `s=STATE T=START_TIME`.
_STAT = "sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f1,20"


def stop_script(pid: int, start_time: int | None, grace_s: float) -> str:
    """A shell script: TERM, a grace, KILL, the recorded process only; exit 0 when it is gone
    (a zombie counts as there: it is gone once its parent reaped it)."""
    t = "" if start_time is None else str(int(start_time))
    ticks = max(1, int(grace_s / 0.05))
    return f"""
p={int(pid)}; t={t}
up() {{ set -- $({_STAT.format(pid="$p")}); [ "$#" = 2 ] && \
{{ [ -z "$t" ] || [ "$2" = "$t" ]; }}; }}
up || exit 0
kill -TERM "$p" 2>/dev/null
i=0; while up && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done
up || exit 0
kill -KILL "$p" 2>/dev/null
i=0; while up && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
up && exit 1
exit 0
"""


def _stat_fields(text: str) -> tuple[str, int] | None:
    """(state, start time) from `cut -f1,20` of a stat line; None when the process is gone."""
    parts = text.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


class RemoteProcess:
    """A detached process on an SSH host, with the part of Popen's interface that fits.

    `pid` is the remote pid and `start_time` its start in the remote kernel's clock
    ticks, so a recycled pid is never signalled. The exit code comes from a small
    wrapper shell that waits for the process and writes it to a file; a code above
    128 reads as death by signal (-N), as in Popen.
    """

    def __init__(
        self,
        host: SshHost,
        argv: Sequence[str],
        pid: int,
        start_time: int,
        files: PurePosixPath,
    ) -> None:
        self.host = host
        self.args = list(argv)
        self.pid = pid
        self.start_time = start_time
        self.returncode: int | None = None
        self._files = files  # <files>.pid, <files>.rc
        self._signalled: int | None = None

    def __repr__(self) -> str:
        return f"RemoteProcess({self.host.name!r}, pid={self.pid}, args={self.args[:1]!r})"

    def ledger_fields(self) -> dict[str, Any]:
        return {"host": self.host.name, "pid": self.pid, "start_time": self.start_time}

    def record(self, ledger: Ledger, kind: str = "process", **fields: Any) -> None:
        """Write this process to the ledger as a remote-process, so teardown can stop it."""
        ledger.record("remote-process", **self.ledger_fields(), role=kind, **fields)

    def stop(self, grace_s: float = 3.0) -> None:
        if self.returncode is None:
            self.host.stop_process(self.pid, self.start_time, grace_s)
            self.poll()

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        q = shlex.quote
        rc_file = q(f"{self._files}.rc")
        script = f"{_STAT.format(pid=self.pid)}; echo; cat {rc_file} 2>/dev/null"
        res = self.host.run(["sh", "-c", script], check=False, timeout=30)
        stat, _, rc_text = res.stdout.partition("\n")
        now = _stat_fields(stat)
        if now is not None and now[0] != "Z" and now[1] == self.start_time:
            return None
        rc_text = rc_text.strip()
        if not rc_text:
            # the wrapper writes the code right after the process ends: give it a moment
            deadline = time.monotonic() + 2.0
            while not rc_text and time.monotonic() < deadline:
                time.sleep(0.05)
                rc_text = self.host.run(
                    ["cat", f"{self._files}.rc"], check=False, timeout=30
                ).stdout.strip()
        if rc_text.isdigit():
            rc = int(rc_text)
            self.returncode = -(rc - 128) if 128 < rc < 128 + 65 else rc
        else:
            log.warning("%s: exit status of pid %s is unknown", self.host.name, self.pid)
            self.returncode = -self._signalled if self._signalled else 255
        self.host.run(["rm", "-f", f"{self._files}.pid", f"{self._files}.rc"], check=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.1)
        return rc

    def send_signal(self, sig: int) -> None:
        """Signal the process, unless its pid now belongs to another one."""
        if self.returncode is not None:
            return
        self._signalled = sig
        script = (
            f"set -- $({_STAT.format(pid=self.pid)}); "
            f'[ "$2" = {self.start_time} ] && kill -{int(sig)} {self.pid}; exit 0'
        )
        self.host.run(["sh", "-c", script], timeout=30)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)
