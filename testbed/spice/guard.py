"""spice_guard: the management-side fix for bug 884631, as a migration policy.

A SPICE client must be connected to the destination before the switchover,
or spice-server falls back to switch-host (USB redirection, smartcard and
clipboard are cut). The guard watches the server side only: graphics events
on both hypervisors tell which of the client's channels are open where.
While the client has channels on the source and not yet on the destination,
it holds the switchover; a client that connected after libvirt sent its own
`client_migrate_info` is sent one again (through libvirt's QEMU monitor
pass-through), and again whenever spice-server's own 10 s connect timeout
lapses. Once the destination reports the client's channels it releases the
migration; past `give_up_s` it releases anyway and says so.

The hold: the migration bandwidth drops to 1 MiB/s and the allowed downtime
to 1 ms, both changed on the running job through libvirt (migrateSetMaxSpeed,
migrateSetMaxDowntime). At that downtime the migration cannot converge while
the guest dirties any memory, so the switchover waits; release restores both.
We chose this over QEMU's pause-before-switchover because libvirt does not
expose that capability and owns the migration's capabilities during its job:
flipping it behind libvirt's back is unsupported, while speed and downtime
are documented to change during a job. The cost: a held migration keeps
copying at 1 MiB/s, and the guard adds the client's connect time to the
migration time (bench/guard_cost.py measures it).

The decisions are testbed.spice.guard_policy's (pure, tested on recorded
events); this module only observes and makes the libvirt calls. It fails safe:
any exception, a lost event stream or a dead destination (its libvirtd
connection closed or its keepalive lost) releases the hold at once, restoring
the migration's own bandwidth and downtime, and the result says
`failed-released` with the reason.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import libvirt
import libvirt_qemu

from testbed.spice.events import GraphicsEventLog
from testbed.spice.guard_policy import (
    SPICE_MIGRATE_TIMEOUT_S,
    WATCHING,
    Action,
    GuardPolicy,
    PolicyConfig,
    observe,
)
from testbed.virt.events import event_loop_alive
from testbed.virt.migration import Migration

log = logging.getLogger(__name__)

DEFAULT_DOWNTIME_MS = 300  # QEMU's default downtime-limit
UNLIMITED_MIB = 8192
KEEPALIVE = (1, 3)  # libvirt keepalive on the destination: every 1 s, 3 missed = dead
Notify = Callable[..., object]  # what it returns is not used


@dataclass
class GuardConfig:
    client_addr: str  # the client's address as the hypervisors see it
    dst_display_addr: str  # the destination's display address as the client sees it
    hold_bandwidth_mib: int = 1
    hold_downtime_ms: int = 1
    resend_after_s: float = SPICE_MIGRATE_TIMEOUT_S
    give_up_s: float = 90.0
    settle_s: float = 0.3  # channel counts must be stable this long to release
    # a TLS display: client_migrate_info names the destination's tls-port (read from its
    # domain) and the subject of its certificate
    tls: bool = False
    cert_subject: str | None = None


@dataclass
class GuardReport:
    result: str = WATCHING  # see testbed.spice.guard_policy for the words
    reason: str = ""
    actions: list[dict[str, Any]] = field(default_factory=list)
    held_s: float = 0.0
    client_migrate_info_sent: int = 0
    origin: float = 0.0  # the migration's start, on the server events' clock (monotonic)

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "reason": self.reason,
            "held_s": round(self.held_s, 3),
            "client_migrate_info_sent": self.client_migrate_info_sent,
            "origin": round(self.origin, 6),
            "actions": self.actions,
        }


class SpiceGuard:
    """Runs beside one Migration; start() before or right after migration.start()."""

    def __init__(
        self,
        migration: Migration,
        events: GraphicsEventLog,
        src_host: str,
        dst_host: str,
        config: GuardConfig,
        notify: Notify | None = None,
    ) -> None:
        self.m = migration
        self.events = events
        self.src, self.dst = src_host, dst_host
        self.cfg = config
        self.notify = notify or (lambda kind, **data: None)
        self.report = GuardReport()
        self.policy = GuardPolicy(
            PolicyConfig(
                resend_after_s=config.resend_after_s,
                give_up_s=config.give_up_s,
                settle_s=config.settle_s,
            )
        )
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()  # the loop and stop() both act
        self._dst_closed: str | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self.report.origin = time.monotonic() - self.m.elapsed()
        try:
            self.m.dst.setKeepAlive(*KEEPALIVE)
            self.m.dst.registerCloseCallback(self._on_dst_close, None)
        except libvirt.libvirtError as e:  # the loop notices a dead destination anyway
            log.debug("destination keepalive: %s", e)
        self._thread = threading.Thread(target=self._loop, name="spice-guard", daemon=True)
        self._thread.start()

    def stop(self) -> GuardReport:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        with self._lock:
            if self.policy.holding and not self.m.done:  # stopped while the job runs
                self._do(self.policy.fail(self.m.elapsed(), "the guard was stopped"))
            self._do(self.policy.migration_ended(self.m.elapsed()))
        try:
            self.m.dst.unregisterCloseCallback()
        except libvirt.libvirtError as e:
            log.debug("unregister close callback: %s", e)
        return self.report

    def _on_dst_close(self, _conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        self._dst_closed = f"the destination's libvirtd connection closed (reason {reason})"

    # -- observation -------------------------------------------------------------------
    def _fault(self) -> str | None:
        """Why the guard can no longer trust what it sees, or None."""
        if self._dst_closed:
            return self._dst_closed
        if not event_loop_alive():
            return "the libvirt event stream is lost (its loop thread ended)"
        for name, conn in (("source", self.m.src), ("destination", self.m.dst)):
            try:
                alive = conn.isAlive()
            except libvirt.libvirtError:
                alive = False
            if not alive:
                return f"the {name}'s libvirtd connection is dead (keepalive lost or closed)"
        return None

    def _transferring(self) -> bool:
        if self.policy.transfer_started is not None:
            return True
        s = self.m.stats()
        return bool(s.get("memory_processed") or s.get("data_processed"))

    def _loop(self) -> None:
        while not self._stop.is_set() and not self.m.done and not self.policy.settled:
            try:
                fault = self._fault()
                obs = observe(
                    self.events.events(),
                    src=self.src,
                    dst=self.dst,
                    client_addr=self.cfg.client_addr,
                    now=time.monotonic(),
                    origin=self.report.origin,
                    transferring=fault is None and self._transferring(),
                    fault=fault,
                )
                with self._lock:
                    if self.m.done:
                        break
                    self._do(self.policy.step(obs))
            except Exception as e:  # noqa: BLE001 - fail safe on anything
                if self.m.done:
                    break
                log.warning("guard: %s: releasing", e)
                with self._lock:
                    self._do(self.policy.fail(self.m.elapsed(), f"{type(e).__name__}: {e}"))
            self._stop.wait(0.1)

    # -- actions (libvirt calls) ---------------------------------------------------------
    def _do(self, actions: list[Action]) -> None:
        for a in actions:
            detail: dict[str, Any] = {}
            if a.kind == "hold":
                detail = self._hold(a)
            elif a.kind == "release":
                detail = self._restore()
            elif a.kind == "client_migrate_info":
                try:
                    detail = self._send_client_migrate_info()
                except Exception as e:  # noqa: BLE001 - a failed resend must not keep the hold
                    self._act(a, ok=False, error=f"{type(e).__name__}: {e}")
                    self._do(self.policy.fail(self.m.elapsed(), f"client_migrate_info: {e}"))
                    continue
            self._act(a, **detail)
        self.report.result, self.report.reason = self.policy.result, self.policy.reason
        self.report.held_s = self.policy.held_s

    def _act(self, a: Action, **detail: Any) -> None:
        entry: dict[str, Any] = {"t": round(a.t, 3), "action": a.kind}
        if a.why:
            entry["why"] = a.why
        entry.update(detail)
        self.report.actions.append(entry)
        log.info("guard: %s %s", a.kind, detail)
        # the timeline stamps its own time (since the scenario began); t here is the migration's
        shown = {k: v for k, v in entry.items() if k not in ("t", "action")}
        self.notify(f"guard.{a.kind}", **shown)

    def _hold(self, a: Action) -> dict[str, Any]:
        self.m.set_bandwidth(self.cfg.hold_bandwidth_mib)
        self.m.dom.migrateSetMaxDowntime(int(self.cfg.hold_downtime_ms), 0)
        return {
            "client_channels_src": a.on_src,
            "client_channels_dst": a.on_dst,
            "bandwidth_mib": self.cfg.hold_bandwidth_mib,
            "downtime_ms": self.cfg.hold_downtime_ms,
        }

    def _restore(self) -> dict[str, Any]:
        """The migration's own bandwidth and downtime back; each call tried on its own."""
        bw = int(self.m.options.bandwidth_mib or UNLIMITED_MIB)
        downtime = int(self.m.options.max_downtime_ms or DEFAULT_DOWNTIME_MS)
        detail: dict[str, Any] = {"bandwidth_mib": bw, "downtime_ms": downtime}
        if self.m.done:
            return detail
        errors = []
        for what, call in (
            ("downtime", lambda: self.m.dom.migrateSetMaxDowntime(downtime, 0)),
            ("bandwidth", lambda: self.m.set_bandwidth(bw)),
        ):
            try:
                call()
            except libvirt.libvirtError as e:
                errors.append(f"{what}: {e}")
        if errors and not self.m.done:
            detail["restore_errors"] = errors
        return detail

    def _destination_ports(self) -> tuple[int | None, int | None]:
        """The destination display's (port, tlsPort), each None when it has none."""
        xml = self.m.dst.lookupByName(self.m.name).XMLDesc(0)
        g = re.search(r"<graphics type='spice'[^>]*>", xml)
        if not g:
            raise libvirt.libvirtError("no SPICE display in the destination's domain XML")
        found = []
        for attr in ("port", "tlsPort"):
            m = re.search(rf"\s{attr}='(\d+)'", g.group(0))
            found.append(int(m.group(1)) if m and int(m.group(1)) > 0 else None)
        return found[0], found[1]

    def _send_client_migrate_info(self) -> dict[str, Any]:
        args: dict[str, Any] = {"protocol": "spice", "hostname": self.cfg.dst_display_addr}
        port, tls_port = self._destination_ports()
        if self.cfg.tls:
            if tls_port is None:
                raise libvirt.libvirtError("no SPICE TLS port in the destination's domain XML")
            args["tls-port"] = tls_port
            if self.cfg.cert_subject:
                args["cert-subject"] = self.cfg.cert_subject
        elif port is None:
            raise libvirt.libvirtError("no SPICE port in the destination's domain XML")
        if port is not None:
            args["port"] = port
        cmd = json.dumps({"execute": "client_migrate_info", "arguments": args})
        answer = libvirt_qemu.qemuMonitorCommand(self.m.dom, cmd, 0)
        self.report.client_migrate_info_sent += 1
        shown = {k: v for k, v in args.items() if k != "protocol"}
        return {"host": shown.pop("hostname"), **shown, "ok": '"return"' in answer}
