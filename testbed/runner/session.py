"""The client's side of one scenario: the SPICE client, the display watcher, the
screenshots, and when and how the client's episode concluded.

`settle()` judges as soon as the client's log (with the server's events) shows that
the episode set off by the switchover concluded and the console has shown live frames
for `LIVE_S` after it; a client that exited is judged at once; a console that stays
frozen is judged at `FROZEN_S` after the switchover; a client that never concludes, at
`SETTLE_MAX_S` (at `FROZEN_S` when the migration failed: no switchover is coming).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import TestbedError
from testbed.lab.lab import Lab
from testbed.lab.spice import GuestDisplay, guest_display, spice_client
from testbed.model.playbook import ConnectClientStep
from testbed.model.result import LagStats, Stretch
from testbed.runner.result import ScenarioResult
from testbed.runner.timeline import Timeline
from testbed.spice.classifier import Classification, classify
from testbed.spice.client import SpiceClient
from testbed.spice.events import GraphicsEventLog
from testbed.spice.freeze import analyse
from testbed.spice.heartbeat import SerialWatcher
from testbed.spice.heartbeat import write as write_heartbeats
from testbed.spice.screen import DisplayWatcher, screenshot
from testbed.virt.migration import Migration

log = logging.getLogger(__name__)
LIVE_S = 1.5  # live frames after the episode concluded, before judging
FROZEN_S = 6.0  # after the switchover: judge a console that shows no live frames by then
SETTLE_MAX_S = 45.0  # ... and at most this long for a slow client to conclude
BEFORE_S = 5.0  # the unresponsive window starts this long before the switchover
POLL_S = 0.25


@dataclass
class Settled:
    classification: Classification
    at: float  # monotonic: when it was judged
    why: str  # concluded, client-exited, frozen, timeout


class ClientSession:
    """One scenario's SPICE client, from its first connect to its stop."""

    def __init__(self, lab: Lab, out_dir: Path, timeline: Timeline, result: ScenarioResult):
        self.lab, self.dir, self.timeline, self.result = lab, out_dir, timeline, result
        self.client: SpiceClient | None = None
        self.guest: str | None = None
        self.watcher: DisplayWatcher | None = None

    # -- connecting ------------------------------------------------------------------
    def connect(
        self,
        s: ConnectClientStep,
        migration: Migration | None,
        at_pct: float | None = None,
        where: GuestDisplay | None = None,
    ) -> None:
        """Connect the client; `at_pct` is the progress sample that fired its trigger
        (asking libvirt again after the connect would read a later, larger figure), and
        `where` the display to reach (default: where libvirt says the guest runs now)."""
        at = migration.elapsed() if migration else 0.0
        if self.client is None:
            self.client = spice_client(self.lab, self.dir, client=s.client)
        if where is None:
            where = guest_display(self.lab, s.guest)
        self.client.connect(where.uri)
        self.guest = s.guest
        data: dict[str, Any] = {"uri": where.uri, "trigger": s.when.kind}
        if migration:
            pct = migration.last_percent if at_pct is None else at_pct
            self.result.client.connected_at_s = round(at, 3)
            self.result.client.connected_at_progress = round(pct, 1)
            data.update(after_migration_start_s=round(at, 3), progress=round(pct, 1))
        self.timeline.add("client.connect", **data)
        if s.when.kind != "before":  # a late client: its screen before the switchover, async
            threading.Thread(target=self._screenshot_when_connected, daemon=True).start()
        if self.watcher is None:
            self.watcher = DisplayWatcher(
                self.client.host,
                self.client.display,
                self.dir / "display-changes.txt",
                ledger=self.lab.ledger,
            )
            self.watcher.start()

    def wait_connected(self, timeout_s: float) -> None:
        assert self.client
        self.client.wait_connected(timeout_s)
        self.timeline.add("client.connected")

    def connected(self) -> bool:
        return self.client is not None and self.client.connected()

    def alive(self) -> bool:
        return self.client is not None and self.client.running()

    def migration_started(self) -> None:
        """A client connected before the migration: it was there at 0 %."""
        if self.client and self.client.connect_t is not None:
            self.result.client.connected_at_s = round(self.client.connect_t - time.monotonic(), 3)
            self.result.client.connected_at_progress = 0.0

    # -- screenshots -----------------------------------------------------------------
    def screenshot(self, which: str) -> None:
        if self.client is None:
            return
        path = self.dir / f"screen-{which}.png"
        try:
            screenshot(self.client.host, self.client.display, path)
            self.result.artifacts[f"screenshot_{which}"] = str(path)
        except TestbedError as e:
            log.info("screenshot %s: %s", which, e)

    def _screenshot_when_connected(self) -> None:
        try:
            assert self.client
            self.client.wait_connected(30)
            self.timeline.add("client.connected")
            self.screenshot("before")
        except (TestbedError, AssertionError) as e:
            log.info("late client screenshot: %s", e)

    # -- judging ---------------------------------------------------------------------
    def _live_since(self, t: float) -> bool:
        """Has the console changed within the last POLL_S*2, and since `t`?"""
        if self.watcher is None:
            return True
        now = time.monotonic()
        return any(c >= max(t, now - 2 * POLL_S - 0.5) for c in self.watcher.changes())

    def settle(
        self, events: GraphicsEventLog | None, switchover: float | None, max_s: float
    ) -> Settled:
        """Classify once the client has finished what the switchover set off (see the
        module's docstring for when that is)."""
        assert self.client
        end = switchover if switchover is not None else time.monotonic()
        concluded: float | None = None
        while True:
            now = time.monotonic()
            c = classify(self.client.log_text(), events.events() if events else None)
            if not self.client.running():
                return Settled(c, now, "client-exited")
            if c.complete and c.outcome != "lost":
                concluded = concluded or max(now, end)
                if now >= concluded + LIVE_S and self._live_since(concluded):
                    return Settled(c, now, "concluded")
                if now >= max(concluded + LIVE_S, end + FROZEN_S):
                    return Settled(c, now, "frozen")
            else:
                concluded = None
            if now > end + max_s:
                return Settled(c, now, "timeout")
            time.sleep(POLL_S)

    def judge(
        self,
        events: GraphicsEventLog | None,
        switchover: float | None,
        *,
        failed: bool = False,
        heartbeats: list[SerialWatcher] | None = None,
    ) -> None:
        """Settle, then fill the result's outcome, USB fate, evidence and unresponsive ms.
        After a migration that failed no switchover comes: wait at most FROZEN_S."""
        if self.client is None:
            return
        settled = self.settle(events, switchover, FROZEN_S if failed else SETTLE_MAX_S)
        c = settled.classification
        if settled.why != "client-exited":
            self.screenshot("after")
        self.result.outcome = c.outcome
        self.result.client.usbredir = c.usbredir
        self.result.evidence = [
            f"{e.line}: {e.text.strip()[:200]} ({e.means})" for e in c.evidence
        ][:30]
        if self.watcher and switchover is not None:
            start = switchover - BEFORE_S
            if self.client.connect_t:
                start = max(start, self.client.connect_t + 1.0)
            gap = self.watcher.longest_gap_ms((start, settled.at))
            self.result.client.unresponsive_ms = None if gap is None else round(gap, 1)
        if heartbeats:
            self._read_freeze(heartbeats, switchover)
        waited = None if switchover is None else round(settled.at - switchover, 2)
        self.timeline.add(
            "outcome",
            outcome=c.outcome,
            usbredir=c.usbredir,
            reason=c.reason,
            judged=settled.why,
            after_switchover_s=waited,
        )

    def _read_freeze(self, heartbeats: list[SerialWatcher], switchover: float | None) -> None:
        """Client freeze and lag, guest stalls: the heartbeat against what the screen showed."""
        if self.watcher is None:
            return
        arrivals = [a for w in heartbeats for a in w.arrivals()]
        write_heartbeats(self.dir / "heartbeat.txt", arrivals)
        self.result.artifacts["heartbeat"] = str(self.dir / "heartbeat.txt")
        r = analyse(arrivals, self.watcher.frames(), time.monotonic(), switchover)
        t0, c, g = self.timeline.t0, self.result.client, self.result.guest
        c.frozen_ms, c.base_lag_ms = r.frozen_ms, r.base_lag_ms
        c.lag_ms = LagStats.model_validate(r.lag_ms) if r.lag_ms is not None else None
        c.frozen = Stretch.model_validate(r.frozen.to_json(t0)) if r.frozen else None
        c.freeze_window = [round(x - t0, 3) for x in r.window] if r.window else None
        c.lag_trace = r.trace(t0)
        g.stall_ms = r.stall_ms
        g.switchover_stall_ms = r.switchover_stall.ms if r.switchover_stall else None
        longest = sorted(r.stalls, key=lambda s: s.start - s.end)[:50]
        g.stalls = [
            Stretch.model_validate(s.to_json(t0)) for s in sorted(longest, key=lambda s: s.start)
        ]

    # -- the end ---------------------------------------------------------------------
    def stop(self) -> None:
        for what, closer in (
            ("watcher", self.watcher and self.watcher.stop),
            ("client", self.client and self.client.stop),
        ):
            if closer:
                try:
                    closer()
                except Exception as e:  # noqa: BLE001 - teardown must go on
                    log.warning("stopping %s: %s", what, e)
        if self.client:
            self.result.artifacts["client_log"] = str(self.client.log_path)
        if self.watcher:
            self.result.artifacts["display_changes"] = str(self.dir / "display-changes.txt")
