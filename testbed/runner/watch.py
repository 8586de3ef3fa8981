"""The migration's side of one scenario: start it, watch it, end it within a bound.

A thread samples progress into the timeline and calls `tick` (the client's connect
triggers) about ten times a second. A migration whose data stops moving for
`STALL_S` is stalled: a progress wait says so at once, and finishing aborts the job
(the VM stays on the source) instead of sitting out the job's whole timeout. Nothing
closes the lab's libvirt connections while the job's own thread is still inside
`migrate3`: `finish()` and `abort()` wait for it, bounded.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from testbed.errors import LabError
from testbed.runner.timeline import Timeline
from testbed.spice.guard import SpiceGuard
from testbed.virt.migration import Migration, MigrationRecord

log = logging.getLogger(__name__)
STALL_S = 10.0  # no byte moved for this long: the migration has stalled
FIRST_BYTE_S = 30.0  # ... before the first byte (the destination QEMU starts, under TCG)
# ... after the first pass (100 %): the switchover, then libvirt waits for spice-server
# to finish the client's migration, bounded by spice-server's own timeout (10 s) plus
# a slow client's round trips; no data moves meanwhile
SWITCHOVER_S = 30.0
JOIN_S = 30.0  # at most this long for the job's thread to return after an abort
Tick = Callable[[Migration, float], None]


class MigrationStalled(LabError):
    """No data moved for the stall limit."""


class MigrationWatch:
    """One running migration of `guest` from `src` to `to`, and who watches it."""

    def __init__(
        self,
        migration: Migration,
        guest: str,
        src: str,
        to: str,
        timeline: Timeline,
        *,
        guard: SpiceGuard | None = None,
        tick: Tick | None = None,
        stall_s: float = STALL_S,
    ) -> None:
        self.m, self.guest, self.src, self.to = migration, guest, src, to
        self.timeline, self.guard, self.tick, self.stall_s = timeline, guard, tick, stall_s
        self.end: float | None = None  # monotonic, once finished
        self.error: BaseException | None = None  # raised by `tick`, surfaced by the runner
        self.stalled_at: float | None = None  # percent, when it stalled
        self._monitor: threading.Thread | None = None

    def start(self) -> None:
        self.m.start()
        if self.guard:
            self.guard.start()
        self._monitor = threading.Thread(target=self._watch, daemon=True, name="migration-watch")
        self._monitor.start()

    # -- observation -------------------------------------------------------------------
    # motion comes from the same job stats that give progress (one libvirt call a sample:
    # over qemu+ssh a second call per sample made the progress triggers fire late)
    def still_for(self) -> float:
        """Seconds since a byte last moved (since the start before the first byte)."""
        return time.monotonic() - self.m.moved_at

    def limit(self) -> float:
        if not self.m.bytes_moved:
            return max(self.stall_s, FIRST_BYTE_S)
        return max(self.stall_s, SWITCHOVER_S) if self.m.last_percent >= 100 else self.stall_s

    def stalled(self) -> bool:
        return not self.m.done and self.still_for() > self.limit()

    def _watch(self) -> None:
        last = -1.0
        while not self.m.done:
            pct = self.m.progress()
            if self.m.elapsed() - last >= 0.5:
                self.timeline.add("migration.progress", percent=round(pct, 1))
                last = self.m.elapsed()
            if self.tick:
                try:
                    self.tick(self.m, pct)
                except BaseException as e:  # noqa: BLE001 - surfaced by the main thread
                    self.error = e
            time.sleep(0.1)

    def _stall_error(self, what: str) -> MigrationStalled:
        self.stalled_at = round(self.m.last_percent, 1)
        self.timeline.add("migration.stalled", percent=self.stalled_at, still_s=self.stall_s)
        return MigrationStalled(
            f"migration stalled at {self.stalled_at}%: no data moved for {self.stall_s:.0f} s{what}"
        )

    def wait_progress(self, percent: float, timeout_s: float) -> None:
        """Until progress >= percent or the job ends; a stall or the timeout is an error."""
        deadline = time.monotonic() + timeout_s
        while not self.m.done:
            if self.m.last_percent >= percent:  # sampled by the monitor thread
                return
            if self.stalled():
                raise self._stall_error(f" (waiting for {percent:g}%)")
            if time.monotonic() > deadline:
                raise LabError(
                    f"migration progress did not reach {percent:g}% in {timeout_s:.0f} s"
                )
            time.sleep(0.1)

    # -- the end -----------------------------------------------------------------------
    def wait(self) -> MigrationRecord:
        """Until the job ends, its own timeout passes, or it stalls (then abort it)."""
        deadline = time.monotonic() + self.m.options.timeout_s
        while not self.m.done:
            if self.stalled():
                err = self._stall_error("")
                log.warning("%s: aborting", err)
                self._abort_and_join()
                self.m.record.result = "aborted"
                self.m.record.error = str(err)
                break
            if time.monotonic() > deadline:
                self.m.wait(0)  # aborts and records the timeout
                break
            time.sleep(0.2)
        return self.m.record

    def _abort_and_join(self) -> None:
        self.m.abort()
        self.m.wait(JOIN_S)  # returns once the job's thread is out of migrate3

    def finish(self) -> MigrationRecord:
        """End the migration (once); stop the guard; the record."""
        rec = self.wait()
        if self.end is None:
            self.end = time.monotonic()
            if self._monitor:
                self._monitor.join(5)
        return rec

    def abort(self) -> None:
        """Teardown: a job still running is aborted, and its thread given time to return
        before anyone closes the connections it uses."""
        if not self.m.done:
            self._abort_and_join()
        if self._monitor:
            self._monitor.join(5)
