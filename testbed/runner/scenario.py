"""Running one scenario: a fresh lab, its steps in order, then the verdict.

Each scenario gets its own lab (bringing one up takes under a second), so no
state leaks from one scenario into the next. The migration is watched by a
thread that samples progress into the timeline and fires the client's
connect trigger (at a progress percentage or a time after the start). The
lab always comes down, whatever happened.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from testbed.errors import LabError, TestbedError
from testbed.lab.guests import finish_migration, migration_for, serial_path, start_guest
from testbed.lab.lab import Lab
from testbed.lab.links import LabLinks
from testbed.lab.pool import leased, pooled_hosts
from testbed.lab.spice import guest_display, spice_client
from testbed.model.playbook import (
    ConnectClientStep,
    ExpectStep,
    MigrateStep,
    Scenario,
    ShapeStep,
    StartGuestStep,
    Step,
    Trigger,
    UpStep,
    WaitStep,
)
from testbed.model.topology import Topology
from testbed.runner.result import ScenarioResult
from testbed.runner.timeline import Timeline
from testbed.runner.verdict import judge
from testbed.spice.classifier import Classification, classify
from testbed.spice.client import SpiceClient
from testbed.spice.events import GraphicsEventLog
from testbed.spice.freeze import analyse
from testbed.spice.guard import GuardConfig, SpiceGuard
from testbed.spice.heartbeat import SerialWatcher
from testbed.spice.heartbeat import write as write_heartbeats
from testbed.spice.screen import DisplayWatcher, screenshot
from testbed.virt.migration import Migration

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
SETTLE_S = 6.0  # after the switchover, at least this long before judging
SETTLE_MAX_S = 45.0  # ... and at most this long for a slow client to conclude
UNRESPONSIVE_WINDOW_S = (5.0, SETTLE_S)  # before / after the switchover


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scenario"


class ScenarioRun:
    """The state of one scenario while its steps run."""

    def __init__(
        self, scenario: Scenario, topology: Topology, out_dir: Path, progress: Progress
    ) -> None:
        self.scenario = scenario
        self.topology = topology
        self.dir = out_dir / safe_name(scenario.name)
        self.say = progress
        self.timeline = Timeline()
        self.result = ScenarioResult(
            name=scenario.name,
            params=dict(scenario.params),
            expected=scenario.expect.model_dump(exclude_none=True) if scenario.expect else {},
            out_dir=str(self.dir),
        )
        self.lab: Lab | None = None
        self.links: LabLinks | None = None
        self.events: GraphicsEventLog | None = None
        self.client: SpiceClient | None = None
        self.client_guest: str | None = None
        self.watcher: DisplayWatcher | None = None
        self.serials: list[SerialWatcher] = []
        self.pending: list[ConnectClientStep] = []
        self.migration: Migration | None = None
        self.migration_to: str | None = None
        self.migration_guest: str | None = None
        self.migration_end: float | None = None  # monotonic
        self.guard: SpiceGuard | None = None
        self._monitor: threading.Thread | None = None
        self._trigger_error: BaseException | None = None

    # -- the whole scenario ----------------------------------------------------------
    def run(self) -> ScenarioResult:
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as lease:  # a pooled host is released only once the lab is down
            try:
                chosen: dict[str, str] = {}
                topology = self.topology
                if pooled_hosts(topology):
                    self.say("leasing hosts from the pool")
                    topology, chosen = lease.enter_context(leased(topology))
                    self.timeline.add("pool.lease", hosts=chosen, at=time.time())
                self.say("lab up")
                self.lab = Lab.up(topology)
                self.timeline.add("lab.up", lab=self.lab.id)
                self.result.hosts = {
                    n: h.reached_as + (f" ({chosen[n]})" if n in chosen else "")
                    for n, h in self.lab.hosts.items()
                }
                self.links = LabLinks(self.lab)
                self.links.apply_topology()
                for step in self.scenario.steps:
                    self._step(step)
                self._finish_migration()
                self._fire_after_triggers()
                self._settle_and_judge()
            except TestbedError as e:
                self.result.error = str(e)
                self.timeline.add("error", message=str(e))
                log.warning("%s: %s", self.scenario.name, e)
            finally:
                self._collect_and_tear_down()
                self.result.duration_s = round(time.monotonic() - t0, 3)
                self.result.timeline = self.timeline.to_json()
                judge(self.result, self.scenario)
        return self.result

    # -- steps -----------------------------------------------------------------------
    def _step(self, step: Step) -> None:
        self.timeline.add("step", step=step.kind)
        handler = {
            UpStep: lambda s: None,
            ShapeStep: self._shape,
            StartGuestStep: self._start_guest,
            ConnectClientStep: self._connect_client,
            MigrateStep: self._migrate,
            WaitStep: self._wait,
            ExpectStep: lambda s: None,
        }[type(step)]
        handler(step)
        if self._trigger_error:
            raise self._trigger_error

    def _shape(self, s: ShapeStep) -> None:
        assert self.links
        if s.clear or s.profile is None or s.profile.is_empty():
            self.say(f"clear {s.src} -> {s.dst}")
            self.links.clear(s.network, s.src, s.dst, both_ways=s.both_ways)
            self.timeline.add(
                "link.clear", network=s.network, src=s.src, dst=s.dst, both_ways=s.both_ways
            )
        else:
            self.say(f"shape {s.src} -> {s.dst}: {s.profile.describe()}")
            self.links.shape(s.network, s.src, s.dst, s.profile, both_ways=s.both_ways)
            self.timeline.add(
                "link.shape",
                network=s.network,
                src=s.src,
                dst=s.dst,
                both_ways=s.both_ways,
                profile=s.profile.describe(),
            )

    def _start_guest(self, s: StartGuestStep) -> None:
        assert self.lab
        self.say(f"boot {s.guest}")
        g = start_guest(self.lab, s.guest, dirty_rate=s.dirty_rate, fill_mib=s.fill_mib)
        self.timeline.add(
            "guest.boot", guest=s.guest, host=g.host, accel=g.accel, boot_s=round(g.boot_s or 0, 3)
        )
        self.events = GraphicsEventLog(g.domain)
        for hv in self.lab.topology.hypervisors():
            self.events.watch(hv, self.lab.conn(hv))
            w = SerialWatcher(  # the heartbeat, wherever the guest runs
                self.lab.hosts[hv], serial_path(self.lab, hv, g.domain), ledger=self.lab.ledger
            )
            w.start()
            self.serials.append(w)

    def _connect_client(self, s: ConnectClientStep) -> None:
        if s.when.kind == "before":
            self._connect(s)
            assert self.client
            self.say("client connecting")
            self.client.wait_connected(60)
            self.timeline.add("client.connected")
            self._screenshot("before")
        else:
            self.pending.append(s)

    def _connect(self, s: ConnectClientStep) -> None:
        assert self.lab
        if self.client is None:
            self.client = spice_client(self.lab, self.dir, client=s.client)
        where = guest_display(self.lab, s.guest)
        self.client.connect(where.uri)
        self.client_guest = s.guest
        data: dict[str, Any] = {"uri": where.uri, "trigger": s.when.kind}
        if self.migration:
            at = self.migration.elapsed()
            pct = self.migration.progress()
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

    def _migrate(self, s: MigrateStep) -> None:
        assert self.lab and self.events
        m = migration_for(
            self.lab,
            s.guest,
            s.to,
            bandwidth_mib=s.bandwidth_mib,
            max_downtime_ms=s.max_downtime_ms,
            auto_converge=s.auto_converge,
            postcopy=s.postcopy,
            timeout_s=s.timeout_ms / 1000,
        )
        self.migration, self.migration_to, self.migration_guest = m, s.to, s.guest
        src = self.lab.record.info["guests"][s.guest]["host"]
        if s.guard:
            client = self.scenario_client() or self.lab.topology.clients()[0]
            cfg = GuardConfig(
                client_addr=self.lab.address(client, "display"),
                dst_display_addr=self.lab.address(s.to, "display"),
            )
            self.guard = SpiceGuard(
                m,
                self.events,
                src,
                s.to,
                cfg,
                notify=lambda kind, **d: self.timeline.add(kind, **d),
            )
        self.say(f"migrate {s.guest} {src} -> {s.to}")
        m.start()
        self.timeline.add(
            "migration.start",
            guest=s.guest,
            src=src,
            dst=s.to,
            bandwidth_mib=s.bandwidth_mib,
            guard=s.guard,
        )
        if self.client and self.client.connect_t is not None:  # connected before the start
            self.result.client.connected_at_s = round(self.client.connect_t - time.monotonic(), 3)
            self.result.client.connected_at_progress = 0.0
        if self.guard:
            self.guard.start()
        self._monitor = threading.Thread(
            target=self._watch_migration, daemon=True, name="migration-monitor"
        )
        self._monitor.start()
        if s.wait:
            self._finish_migration()

    def scenario_client(self) -> str | None:
        for step in self.scenario.steps:
            if isinstance(step, ConnectClientStep):
                return step.client
        return None

    def _watch_migration(self) -> None:
        m = self.migration
        assert m
        last = -1.0
        while not m.done:
            pct = m.progress()
            if m.elapsed() - last >= 0.5:
                self.timeline.add("migration.progress", percent=round(pct, 1))
                last = m.elapsed()
            for s in list(self.pending):
                if self._due(s.when, m, pct):
                    self.pending.remove(s)
                    try:
                        self._connect(s)
                    except BaseException as e:  # surfaced by the main thread
                        self._trigger_error = e
            time.sleep(0.1)

    @staticmethod
    def _due(when: Trigger, m: Migration, pct: float) -> bool:
        if when.kind == "progress":
            return pct >= (when.value or 0)
        if when.kind == "time":
            return m.elapsed() * 1000 >= (when.value or 0)
        return False

    def _finish_migration(self) -> None:
        m = self.migration
        if m is None or self.migration_end is not None:
            return
        self.say("migrating")
        rec = m.wait()
        self.migration_end = time.monotonic()
        if self._monitor:
            self._monitor.join(5)
        if self.guard:
            self.result.guard = self.guard.stop().to_json()
        assert self.lab and self.migration_guest and self.migration_to
        finish_migration(self.lab, self.migration_guest, m, self.migration_to)
        self.timeline.add(
            "migration.end",
            result=rec.result,
            duration_s=rec.duration_s,
            downtime_ms=rec.downtime_ms,
            error=rec.error,
        )
        self.result.migration.result = rec.result
        self.result.migration.duration_s = rec.duration_s
        self.result.migration.downtime_ms = rec.downtime_ms
        self.result.migration.bytes = rec.bytes
        if self._trigger_error:
            raise self._trigger_error

    def _fire_after_triggers(self) -> None:
        for s in list(self.pending):
            if s.when.kind in ("after", "progress", "time"):
                # a trigger the migration never reached connects after it, and says so
                self.pending.remove(s)
                if s.when.kind != "after":
                    self.timeline.add("client.trigger-missed", when=s.when.kind, value=s.when.value)
                self._connect(s)

    def _wait(self, s: WaitStep) -> None:
        cond = s.until
        timeout = (s.timeout_ms or 300_000) / 1000
        if cond.kind == "time":
            time.sleep((cond.value or 0) / 1000)
        elif cond.kind == "migration_done":
            self._finish_migration()
        elif cond.kind == "progress":
            deadline = time.monotonic() + timeout
            while self.migration and not self.migration.done:
                if self.migration.progress() >= (cond.value or 0):
                    break
                if time.monotonic() > deadline:
                    raise LabError(
                        f"migration progress did not reach {cond.value}% in {timeout:.0f} s"
                    )
                time.sleep(0.1)
        elif cond.kind == "client_connected":
            deadline = time.monotonic() + timeout
            while self.client is None or not self.client.connected():
                if self._trigger_error:
                    raise self._trigger_error
                if time.monotonic() > deadline:
                    raise LabError(f"the client did not connect in {timeout:.0f} s")
                time.sleep(0.1)
            self.timeline.add("client.connected")

    # -- the end ---------------------------------------------------------------------
    def _screenshot(self, which: str) -> None:
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
            self._screenshot("before")
        except (TestbedError, AssertionError) as e:
            log.info("late client screenshot: %s", e)

    def _settle_and_judge(self) -> None:
        if self.client is None:
            return
        self.say("client settling")
        if self.migration_end is not None:
            time.sleep(max(0.0, self.migration_end + SETTLE_S - time.monotonic()))
        c = self._settled_classification()
        self._screenshot("after")
        self.result.outcome = c.outcome
        self.result.client.usbredir = c.usbredir
        self.result.evidence = [
            f"{e.line}: {e.text.strip()[:200]} ({e.means})" for e in c.evidence
        ][:30]
        if self.watcher and self.migration_end is not None:
            before, after = UNRESPONSIVE_WINDOW_S
            start = self.migration_end - before
            if self.client.connect_t:
                start = max(start, self.client.connect_t + 1.0)
            gap = self.watcher.longest_gap_ms((start, self.migration_end + after))
            self.result.client.unresponsive_ms = None if gap is None else round(gap, 1)
        self._read_freeze()
        self.timeline.add("outcome", outcome=c.outcome, usbredir=c.usbredir, reason=c.reason)

    def _read_freeze(self) -> None:
        """Client freeze and lag, guest stalls: the heartbeat against what the screen showed."""
        if self.watcher is None or not self.serials:
            return
        arrivals = [a for w in self.serials for a in w.arrivals()]
        write_heartbeats(self.dir / "heartbeat.txt", arrivals)
        self.result.artifacts["heartbeat"] = str(self.dir / "heartbeat.txt")
        r = analyse(arrivals, self.watcher.frames(), time.monotonic(), self.migration_end)
        t0, c, g = self.timeline.t0, self.result.client, self.result.guest
        c.frozen_ms, c.lag_ms, c.base_lag_ms = r.frozen_ms, r.lag_ms, r.base_lag_ms
        c.frozen = r.frozen.to_json(t0) if r.frozen else None
        c.freeze_window = [round(x - t0, 3) for x in r.window] if r.window else None
        c.lag_trace = r.trace(t0)
        g.stall_ms = r.stall_ms
        g.switchover_stall_ms = r.switchover_stall.ms if r.switchover_stall else None
        longest = sorted(r.stalls, key=lambda s: s.start - s.end)[:50]
        g.stalls = [s.to_json(t0) for s in sorted(longest, key=lambda s: s.start)]

    def _settled_classification(self) -> Classification:
        """Classify once the client has finished what the switchover set off.

        A switch-host client over a slow link needs seconds to reconnect; until its log
        shows the episode concluded, wait (up to SETTLE_MAX_S after the switchover).
        """
        assert self.client
        end = (self.migration_end or time.monotonic()) + SETTLE_MAX_S
        while True:
            events = self.events.events() if self.events else None
            c = classify(self.client.log_text(), events)
            if (c.complete and c.outcome != "lost") or time.monotonic() > end:
                return c
            time.sleep(0.5)

    def _collect_and_tear_down(self) -> None:
        for what, closer in (
            *(("heartbeat", w.stop) for w in self.serials),
            ("watcher", self.watcher and self.watcher.stop),
            ("client", self.client and self.client.stop),
            ("guard", self.guard and self.guard.stop),
            ("events", self.events and self.events.close),
        ):
            if closer:
                try:
                    closer()
                except Exception as e:  # noqa: BLE001 - teardown must go on
                    log.warning("stopping %s: %s", what, e)
        if self.migration and not self.migration.done:
            self.migration.abort()
        if self.client:
            self.result.artifacts["client_log"] = str(self.client.log_path)
        if self.watcher:
            self.result.artifacts["display_changes"] = str(self.dir / "display-changes.txt")
        if self.events:
            p = self.dir / "server-events.json"
            p.write_text(json.dumps(self.events.to_json(), indent=1, default=str))
            self.result.artifacts["server_events"] = str(p)
        if self.links:
            self.result.links = self.links.rows()
            p = self.dir / "links.json"
            p.write_text(json.dumps(self.result.links, indent=1, default=str))
            self.result.artifacts["links"] = str(p)
        if self.lab:
            self._copy_logs()
            try:
                if self.links:
                    self.links.close()
            finally:
                self.lab.down()

    def _copy_logs(self) -> None:
        assert self.lab
        logs = self.dir / "logs"
        for name, host in self.lab.hosts.items():
            try:
                host.get_tree(host.state_dir / "log", logs / name)
            except TestbedError as e:  # the logs are evidence, not the verdict: go on
                log.warning("collecting logs from %s: %s", name, e)
        if logs.exists():
            self.result.artifacts["logs"] = str(logs)
