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
from testbed.virt.migration import Migration

log = logging.getLogger(__name__)

SPICE_MIGRATE_TIMEOUT_S = 10.0  # spice-server's MIGRATE_TIMEOUT for the client's pre-connect
DEFAULT_DOWNTIME_MS = 300  # QEMU's default downtime-limit
UNLIMITED_MIB = 8192
Notify = Callable[..., None]


@dataclass
class GuardConfig:
    client_addr: str  # the client's address as the hypervisors see it
    dst_display_addr: str  # the destination's display address as the client sees it
    hold_bandwidth_mib: int = 1
    hold_downtime_ms: int = 1
    resend_after_s: float = SPICE_MIGRATE_TIMEOUT_S
    give_up_s: float = 90.0
    settle_s: float = 0.3  # channel counts must be stable this long to release


@dataclass
class GuardReport:
    result: str = "watching"  # watching, not-needed, released, gave-up, migration-ended
    actions: list[dict[str, Any]] = field(default_factory=list)
    held_s: float = 0.0
    client_migrate_info_sent: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "held_s": round(self.held_s, 3),
            "client_migrate_info_sent": self.client_migrate_info_sent,
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
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._transfer_started: float | None = None
        self._hold_since: float | None = None
        self._last_cmi: float | None = None
        self._dst_port: int | None = None
        self._stable_since: float | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="spice-guard", daemon=True)
        self._thread.start()

    def stop(self) -> GuardReport:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
        if self._hold_since is not None:
            self._release("migration ended while holding")
        if self.report.result == "watching":
            self.report.result = "not-needed"
        return self.report

    def _act(self, action: str, **detail: Any) -> None:
        entry = {"t": round(self.m.elapsed(), 3), "action": action, **detail}
        self.report.actions.append(entry)
        log.info("guard: %s %s", action, detail)
        self.notify(f"guard.{action}", **detail)

    # -- the policy ----------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set() and not self.m.done:
            try:
                self._tick()
            except libvirt.libvirtError as e:
                if self.m.done:
                    break
                log.debug("guard tick: %s", e)
            self._stop.wait(0.1)

    def _client_on(self, host: str) -> int:
        return self.events.client_channels_on(host, self.cfg.client_addr)

    def _client_rtt_s(self) -> float:
        """The client's round trip to the destination: the longest connect -> initialize
        of its channels there (the SPICE link handshake is one round trip)."""
        connects: dict[str, float] = {}
        rtt = 0.0
        for e in self.events.events(self.dst, kind="graphics"):
            if not e.remote or e.remote[0] != self.cfg.client_addr:
                continue
            if e.phase == "connect":
                connects[e.remote[1]] = e.t
            elif e.phase == "initialize" and e.remote[1] in connects:
                rtt = max(rtt, e.t - connects[e.remote[1]])
        return rtt

    def _first_src_connect(self) -> float | None:
        for e in self.events.events(self.src, kind="graphics"):
            if e.remote and e.remote[0] == self.cfg.client_addr and e.phase == "initialize":
                return e.t
        return None

    def _tick(self) -> None:
        if self._transfer_started is None:
            s = self.m.stats()
            if s.get("memory_processed") or s.get("data_processed"):
                # libvirt sent its own client_migrate_info just before the transfer began
                self._transfer_started = time.monotonic()
                self._act("transfer-started")
            else:
                return
        on_src, on_dst = self._client_on(self.src), self._client_on(self.dst)
        now = time.monotonic()
        if self._hold_since is None:
            if on_src > 0 and on_dst < on_src:
                self._hold(on_src, on_dst)
                first = self._first_src_connect()
                if first is not None and first >= self._transfer_started:
                    self._send_client_migrate_info("client connected after the migration began")
            return
        # holding
        if on_dst >= max(on_src, 1):
            self._stable_since = self._stable_since or now
            # the destination counts a channel once its link handshake is done, but the
            # client still has to tell the source it is ready (one more trip over its
            # link): wait two of the client's round trips, as the destination measured it
            rtt = self._client_rtt_s()
            if now - self._stable_since >= self.cfg.settle_s + 2 * rtt:
                self._release(
                    f"client has {on_dst} channel(s) on {self.dst} "
                    f"(its round trip there: {rtt * 1000:.0f} ms)"
                )
                self.report.result = "released"
            return
        self._stable_since = None
        if on_src == 0 and on_dst == 0:
            self._release("the client left")
            self.report.result = "released"
            return
        if now - self._hold_since > self.cfg.give_up_s:
            self._release(f"client not on {self.dst} after {self.cfg.give_up_s:.0f} s")
            self.report.result = "gave-up"
            self._stop.set()
            return
        since = self._last_cmi if self._last_cmi is not None else self._hold_since
        if now - since > self.cfg.resend_after_s:
            self._send_client_migrate_info("spice-server's connect timeout lapsed")

    def _hold(self, on_src: int, on_dst: int) -> None:
        self.m.set_bandwidth(self.cfg.hold_bandwidth_mib)
        self.m.dom.migrateSetMaxDowntime(self.cfg.hold_downtime_ms, 0)
        self._hold_since = time.monotonic()
        self._act(
            "hold",
            client_channels_src=on_src,
            client_channels_dst=on_dst,
            bandwidth_mib=self.cfg.hold_bandwidth_mib,
            downtime_ms=self.cfg.hold_downtime_ms,
        )

    def _release(self, why: str) -> None:
        if self._hold_since is None:
            return
        held = time.monotonic() - self._hold_since
        self.report.held_s += held
        self._hold_since = None
        bw = self.m.options.bandwidth_mib or UNLIMITED_MIB
        downtime = self.m.options.max_downtime_ms or DEFAULT_DOWNTIME_MS
        if not self.m.done:
            try:
                self.m.dom.migrateSetMaxDowntime(downtime, 0)
                self.m.set_bandwidth(bw)
            except libvirt.libvirtError as e:
                log.debug("release after the end: %s", e)
        self._act("release", why=why, held_s=round(held, 3), bandwidth_mib=bw)

    def _destination_port(self) -> int:
        if self._dst_port is None:
            xml = self.m.dst.lookupByName(self.m.name).XMLDesc(0)
            m = re.search(r"<graphics type='spice' port='(\d+)'", xml)
            if not m:
                raise libvirt.libvirtError("no SPICE port in the destination's domain XML")
            self._dst_port = int(m.group(1))
        return self._dst_port

    def _send_client_migrate_info(self, why: str) -> None:
        port = self._destination_port()
        cmd = json.dumps(
            {
                "execute": "client_migrate_info",
                "arguments": {
                    "protocol": "spice",
                    "hostname": self.cfg.dst_display_addr,
                    "port": port,
                },
            }
        )
        answer = libvirt_qemu.qemuMonitorCommand(self.m.dom, cmd, 0)
        self._last_cmi = time.monotonic()
        self.report.client_migrate_info_sent += 1
        ok = '"return"' in answer
        self._act("client_migrate_info", why=why, host=self.cfg.dst_display_addr, port=port, ok=ok)
