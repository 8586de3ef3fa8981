"""One handler per step kind, each over the scenario's Context.

`HANDLERS` maps a step type to its handler; `finish_migration` and
`fire_after_triggers` are what the runner does once the steps ran out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from testbed.errors import LabError
from testbed.lab.guests import finish_migration as record_location
from testbed.lab.guests import migration_for, serial_path, spice_server_mapped, start_guest
from testbed.lab.spice import guest_display
from testbed.model.playbook import (
    ConnectClientStep,
    ExpectStep,
    FaultStep,
    MigrateStep,
    ShapeStep,
    StartGuestStep,
    Step,
    Trigger,
    UpStep,
    WaitStep,
)
from testbed.model.result import GuardReport
from testbed.runner.context import Context
from testbed.runner.faults import fault
from testbed.runner.watch import MigrationWatch
from testbed.spice.events import GraphicsEventLog
from testbed.spice.guard import GuardConfig, SpiceGuard
from testbed.spice.heartbeat import SerialWatcher
from testbed.spice.tls import subject_for
from testbed.virt.migration import Migration

Handler = Callable[[Context, Any], None]


def run_step(ctx: Context, step: Step) -> None:
    ctx.timeline.add("step", step=step.kind)
    HANDLERS[type(step)](ctx, step)
    ctx.raise_trigger_error()


def nothing(ctx: Context, step: Step) -> None:
    """`up` (the lab is up already) and `expect` (read at the verdict)."""


def shape(ctx: Context, s: ShapeStep) -> None:
    assert ctx.links
    if s.clear or s.profile is None or s.profile.is_empty():
        ctx.say(f"clear {s.src} -> {s.dst}")
        ctx.links.clear(s.network, s.src, s.dst, both_ways=s.both_ways)
        ctx.timeline.add(
            "link.clear", network=s.network, src=s.src, dst=s.dst, both_ways=s.both_ways
        )
    else:
        ctx.say(f"shape {s.src} -> {s.dst}: {s.profile.describe()}")
        ctx.links.shape(s.network, s.src, s.dst, s.profile, both_ways=s.both_ways)
        ctx.timeline.add(
            "link.shape",
            network=s.network,
            src=s.src,
            dst=s.dst,
            both_ways=s.both_ways,
            profile=s.profile.describe(),
        )


def boot(ctx: Context, s: StartGuestStep) -> None:
    lab = ctx.need_lab()
    ctx.say(f"boot {s.guest}")
    g = start_guest(
        lab, s.guest, dirty_rate=s.dirty_rate, fill_mib=s.fill_mib, spice_server=s.spice_server
    )
    ctx.timeline.add(
        "guest.boot", guest=s.guest, host=g.host, accel=g.accel, boot_s=round(g.boot_s or 0, 3)
    )
    record_spice_server(ctx, s.guest, g.host)
    ctx.events = GraphicsEventLog(g.domain)
    for hv in lab.topology.hypervisors():
        ctx.events.watch(hv, lab.conn(hv))
        w = SerialWatcher(  # the heartbeat, wherever the guest runs
            lab.hosts[hv], serial_path(lab, hv, g.domain), ledger=lab.ledger
        )
        w.start()
        ctx.heartbeats.append(w)


def connect_client(ctx: Context, s: ConnectClientStep) -> None:
    if s.when.kind != "before":
        ctx.pending.append(s)
        return
    session = ctx.client_session()
    session.connect(s, ctx.watch.m if ctx.watch else None)
    ctx.say("client connecting")
    session.wait_connected(60)
    session.screenshot("before")


def due(when: Trigger, m: Migration, pct: float) -> bool:
    if when.kind == "progress":
        return pct >= (when.value or 0)
    if when.kind == "time":
        return m.elapsed() * 1000 >= (when.value or 0)
    return False


def fire_due_triggers(ctx: Context, m: Migration, pct: float) -> None:
    """From the migration watch's thread: connect each late client whose trigger is due."""
    for s in list(ctx.pending):
        if due(s.when, m, pct):
            ctx.pending.remove(s)
            if s.when.kind == "progress" and pct >= 100 > (s.when.value or 0):
                # the first pass ended between two samples: the client comes at the
                # end of the copy, not where the playbook asked; say so in the timeline
                ctx.timeline.add("client.trigger-late", when=s.when.kind, value=s.when.value)
            # until the switchover the guest runs where it ran at the start: connect there
            before = ctx.display_at_start if pct < 100 and not m.done else None
            ctx.client_session().connect(s, m, pct, before)


def migrate(ctx: Context, s: MigrateStep) -> None:
    lab = ctx.need_lab()
    assert ctx.events
    m = migration_for(
        lab,
        s.guest,
        s.to,
        bandwidth_mib=s.bandwidth_mib,
        max_downtime_ms=s.max_downtime_ms,
        auto_converge=s.auto_converge,
        postcopy=s.postcopy,
        timeout_s=s.timeout_ms / 1000,
    )
    src = lab.record.info["guests"][s.guest]["host"]
    guard = None
    if s.guard:
        client = ctx.scenario_client() or lab.topology.clients()[0]
        dst_addr = lab.address(s.to, "display")
        tls = lab.topology.spice_tls
        cfg = GuardConfig(
            client_addr=lab.address(client, "display"),
            dst_display_addr=dst_addr,
            tls=tls,
            cert_subject=subject_for(dst_addr) if tls else None,
        )
        guard = SpiceGuard(
            m, ctx.events, src, s.to, cfg, notify=lambda kind, **d: ctx.timeline.add(kind, **d)
        )
    ctx.watch = MigrationWatch(
        m,
        s.guest,
        src,
        s.to,
        ctx.timeline,
        guard=guard,
        tick=lambda m, pct: fire_due_triggers(ctx, m, pct),
    )
    if ctx.pending:  # a late client's display, known before the job holds the domain
        ctx.display_at_start = guest_display(lab, s.guest)
    ctx.say(f"migrate {s.guest} {src} -> {s.to}")
    ctx.watch.start()
    ctx.timeline.add(
        "migration.start",
        guest=s.guest,
        src=src,
        dst=s.to,
        bandwidth_mib=s.bandwidth_mib,
        guard=s.guard,
    )
    if ctx.session:  # connected before the start
        ctx.session.migration_started()
    if s.wait:
        finish_migration(ctx)


def finish_migration(ctx: Context) -> None:
    """Wait for the migration's end (once), record it and where the guest now lives."""
    w = ctx.watch
    if w is None or w.end is not None:
        return
    ctx.say("migrating")
    rec = w.finish()
    if w.guard:
        ctx.result.guard = GuardReport.model_validate(w.guard.stop().to_json())
    record_location(ctx.need_lab(), w.guest, w.m, w.to)
    if rec.result == "completed":
        record_spice_server(ctx, w.guest, w.to)
    ctx.timeline.add(
        "migration.end",
        result=rec.result,
        duration_s=rec.duration_s,
        downtime_ms=rec.downtime_ms,
        error=rec.error,
    )
    mig = ctx.result.migration
    assert rec.result != "pending" and rec.result != "running"  # finish() waited for its end
    mig.result, mig.duration_s = rec.result, rec.duration_s
    mig.downtime_ms, mig.bytes = rec.downtime_ms, rec.bytes
    mig.first_byte_s = rec.first_byte_s
    ctx.raise_trigger_error()


def record_spice_server(ctx: Context, guest: str, host: str) -> None:
    """Which libspice-server the guest's QEMU on `host` mapped, into the result."""
    found = spice_server_mapped(ctx.need_lab(), guest, host)
    if found is None:
        ctx.timeline.add("spice-server.unknown", guest=guest, host=host)
        return
    ctx.result.guest.spice_server[host] = found
    ctx.timeline.add(
        "spice-server.mapped", guest=guest, host=host, path=found.path, build_id=found.build_id
    )


def fire_after_triggers(ctx: Context) -> None:
    """A trigger the migration never reached connects after it, and says so."""
    for s in list(ctx.pending):
        if s.when.kind in ("after", "progress", "time"):
            ctx.pending.remove(s)
            if s.when.kind != "after":
                ctx.timeline.add("client.trigger-missed", when=s.when.kind, value=s.when.value)
            ctx.client_session().connect(s, ctx.watch.m if ctx.watch else None)


def wait(ctx: Context, s: WaitStep) -> None:
    cond = s.until
    timeout = (s.timeout_ms or 300_000) / 1000
    if cond.kind == "time":
        time.sleep((cond.value or 0) / 1000)
    elif cond.kind == "migration_done":
        finish_migration(ctx)
    elif cond.kind == "progress":
        if ctx.watch:
            ctx.watch.wait_progress(cond.value or 0, timeout)
    elif cond.kind == "client_connected":
        deadline = time.monotonic() + timeout
        while not (ctx.session and ctx.session.connected()):
            ctx.raise_trigger_error()
            if time.monotonic() > deadline:
                raise LabError(f"the client did not connect in {timeout:.0f} s")
            time.sleep(0.1)
        ctx.timeline.add("client.connected")


HANDLERS: dict[type[Step], Handler] = {
    UpStep: nothing,
    ShapeStep: shape,
    StartGuestStep: boot,
    ConnectClientStep: connect_client,
    MigrateStep: migrate,
    WaitStep: wait,
    FaultStep: fault,
    ExpectStep: nothing,
}
