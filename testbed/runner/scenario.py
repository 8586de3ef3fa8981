"""Running one scenario: a fresh lab, its steps in order, then the verdict.

Each scenario gets its own lab (bringing one up takes under a second), so no
state leaks from one scenario into the next. The step handlers (`steps`) work over
a Context; the migration is a MigrationWatch (`watch`), the client a ClientSession
(`session`). The lab always comes down, whatever happened, and a running migration
is aborted (the VM stays on the source) before it does.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from testbed.errors import TestbedError
from testbed.lab.lab import Lab
from testbed.lab.links import LabLinks
from testbed.lab.pool import leased, pooled_hosts
from testbed.model.playbook import Scenario
from testbed.model.topology import Topology
from testbed.runner.context import Context
from testbed.runner.faults import reconcile
from testbed.runner.result import ScenarioResult
from testbed.runner.steps import finish_migration, fire_after_triggers, run_step
from testbed.runner.timeline import Timeline
from testbed.runner.verdict import judge

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "scenario"


class ScenarioRun:
    """One scenario: its context, its steps, its teardown."""

    def __init__(
        self, scenario: Scenario, topology: Topology, out_dir: Path, progress: Progress
    ) -> None:
        self.scenario = scenario
        d = out_dir / safe_name(scenario.name)
        result = ScenarioResult(
            name=scenario.name,
            params=dict(scenario.params),
            expected=scenario.expect.model_dump(exclude_none=True) if scenario.expect else {},
            out_dir=str(d),
        )
        self.ctx = Context(scenario, topology, d, progress, Timeline(), result)
        self.dir, self.result, self.timeline = d, result, self.ctx.timeline

    def run(self) -> ScenarioResult:
        ctx = self.ctx
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        with ExitStack() as lease:  # a pooled host is released only once the lab is down
            try:
                chosen: dict[str, str] = {}
                topology = ctx.topology
                if pooled_hosts(topology):
                    ctx.say("leasing hosts from the pool")
                    topology, chosen = lease.enter_context(leased(topology))
                    self.timeline.add("pool.lease", hosts=chosen, at=time.time())
                ctx.say("lab up")
                ctx.lab = Lab.up(topology)
                self.timeline.add("lab.up", lab=ctx.lab.id)
                self.result.hosts = {
                    n: h.reached_as + (f" ({chosen[n]})" if n in chosen else "")
                    for n, h in ctx.lab.hosts.items()
                }
                ctx.links = LabLinks(ctx.lab)
                ctx.links.apply_topology()
                for step in self.scenario.steps:
                    run_step(ctx, step)
                finish_migration(ctx)
                fire_after_triggers(ctx)
                if ctx.session:
                    ctx.say("client settling")
                    w = ctx.watch
                    failed = w is not None and w.m.record.result != "completed"
                    ctx.session.judge(
                        ctx.events, w.end if w else None, failed=failed, heartbeats=ctx.heartbeats
                    )
            except TestbedError as e:
                self.result.error = str(e)
                self.timeline.add("error", message=str(e))
                log.warning("%s: %s", self.scenario.name, e)
            except Exception as e:  # noqa: BLE001 - a bug still ends in a verdict and a result
                self.result.error = f"internal error: {type(e).__name__}: {e}"
                self.timeline.add("error", message=self.result.error)
                log.exception("%s: internal error", self.scenario.name)
            finally:
                self._collect_and_tear_down()
                self.result.duration_s = round(time.monotonic() - t0, 3)
                self.result.timeline = self.timeline.to_json()
                judge(self.result, self.scenario)
        return self.result

    # -- the end ---------------------------------------------------------------------
    def _collect_and_tear_down(self) -> None:
        ctx = self.ctx
        for w in ctx.heartbeats:
            try:
                w.stop()
            except Exception as e:  # noqa: BLE001 - teardown must go on
                log.warning("stopping heartbeat: %s", e)
        if ctx.session:
            ctx.session.stop()
        if ctx.watch:
            if ctx.watch.guard:
                try:
                    ctx.watch.guard.stop()
                except Exception as e:  # noqa: BLE001 - teardown must go on
                    log.warning("stopping guard: %s", e)
            ctx.watch.abort()
            try:
                reconcile(ctx)
            except Exception as e:  # noqa: BLE001 - teardown must go on
                log.warning("reconciling the guest's home: %s", e)
        if ctx.events:
            try:
                ctx.events.close()
            except Exception as e:  # noqa: BLE001 - teardown must go on
                log.warning("stopping events: %s", e)
            p = self.dir / "server-events.json"
            p.write_text(json.dumps(ctx.events.to_json(), indent=1, default=str))
            self.result.artifacts["server_events"] = str(p)
        if ctx.links:
            self.result.links = ctx.links.rows()
            p = self.dir / "links.json"
            p.write_text(json.dumps(self.result.links, indent=1, default=str))
            self.result.artifacts["links"] = str(p)
        if ctx.lab:
            self._copy_logs()
            try:
                if ctx.links:
                    ctx.links.close()
            finally:
                ctx.lab.down()

    def _copy_logs(self) -> None:
        lab = self.ctx.need_lab()
        logs = self.dir / "logs"
        for name, host in lab.hosts.items():
            try:
                host.get_tree(host.state_dir / "log", logs / name)
            except TestbedError as e:  # the logs are evidence, not the verdict: go on
                log.warning("collecting logs from %s: %s", name, e)
        if logs.exists():
            self.result.artifacts["logs"] = str(logs)
