"""Live migration through libvirt-python: start, watch, steer, abort, record.

The client (testbed) drives the migration with `migrate3` between two
connections, so neither libvirtd needs to reach the other. The call blocks,
so it runs in a thread; progress comes from the source's job stats, and the
bandwidth can be changed while the job runs (the spice guard uses that). A
timeout aborts the job, which leaves the VM running on the source.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal
from xml.sax.saxutils import escape

import libvirt

from testbed.errors import LabError
from testbed.model.outcome import MigrationResult

log = logging.getLogger(__name__)


@dataclass
class MigrationOptions:
    migrate_uri: str  # tcp://<dst address on the migration network>
    graphics_uri: str | None = None  # spice://<dst display address as the client sees it>
    bandwidth_mib: int | None = None  # MiB/s
    max_downtime_ms: int | None = None
    auto_converge: bool = False
    postcopy: bool = False
    timeout_s: float = 300.0
    dest_emulator: str | None = None  # the destination's QEMU, when it is not the source's


MigrationState = Literal["pending", "running"] | MigrationResult


@dataclass
class MigrationRecord:
    started: float = 0.0  # wall clock (time.time())
    ended: float | None = None
    duration_s: float | None = None
    downtime_ms: int | None = None
    bytes: int | None = None
    result: MigrationState = "pending"
    error: str | None = None
    first_byte_s: float | None = None  # s since start when the job first reported data moved
    progress: list[tuple[float, float]] = field(default_factory=list)  # (s since start, %)
    bandwidth_changes: list[tuple[float, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Migration:
    """One live migration of `domain` from `src` to `dst`."""

    def __init__(
        self,
        src: libvirt.virConnect,
        dst: libvirt.virConnect,
        domain: str,
        options: MigrationOptions,
    ) -> None:
        self.src, self.dst, self.name, self.options = src, dst, domain, options
        self.record = MigrationRecord()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0
        self._done = threading.Event()
        self._max_pct = 0.0
        # the job's data counter at the last sample, and when it last changed (monotonic)
        self.bytes_moved: int | None = None
        self.moved_at = time.monotonic()
        try:
            self.dom = src.lookupByName(domain)
        except libvirt.libvirtError as e:
            raise LabError(f"no guest {domain} on the source: {e}") from None

    # -- control ------------------------------------------------------------
    def start(self) -> None:
        self._t0 = self.moved_at = time.monotonic()
        self.record.started = time.time()
        self.record.result = "running"
        if self.options.bandwidth_mib:
            self.record.bandwidth_changes.append((0.0, self.options.bandwidth_mib))
        self._thread = threading.Thread(target=self._run, name=f"migrate-{self.name}", daemon=True)
        self._thread.start()

    def _params(self) -> dict[str, Any]:
        p: dict[str, Any] = {libvirt.VIR_MIGRATE_PARAM_URI: self.options.migrate_uri}
        if self.options.graphics_uri:
            p[libvirt.VIR_MIGRATE_PARAM_GRAPHICS_URI] = self.options.graphics_uri
        if self.options.bandwidth_mib:
            p[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = int(self.options.bandwidth_mib)
        if self.options.dest_emulator:
            p[libvirt.VIR_MIGRATE_PARAM_DEST_XML] = self._dest_xml(self.options.dest_emulator)
        return p

    def _dest_xml(self, emulator: str) -> str:
        """The domain as it migrates, with the destination's own emulator."""
        flags = libvirt.VIR_DOMAIN_XML_MIGRATABLE | libvirt.VIR_DOMAIN_XML_SECURE
        xml = self.dom.XMLDesc(flags)
        new, n = re.subn(
            r"<emulator>[^<]*</emulator>", f"<emulator>{escape(emulator)}</emulator>", xml
        )
        if n != 1:
            raise LabError(f"{self.name}: the domain XML has {n} <emulator> elements, not one")
        return new

    def _flags(self) -> int:
        f = libvirt.VIR_MIGRATE_LIVE
        if self.options.auto_converge:
            f |= libvirt.VIR_MIGRATE_AUTO_CONVERGE
        if self.options.postcopy:
            f |= libvirt.VIR_MIGRATE_POSTCOPY
        return f

    def _run(self) -> None:
        try:
            if self.options.max_downtime_ms:
                self.dom.migrateSetMaxDowntime(int(self.options.max_downtime_ms), 0)
            self.dom.migrate3(self.dst, self._params(), self._flags())
            self.record.result = "completed"
        except libvirt.libvirtError as e:
            aborted = "cancel" in str(e).lower() or "abort" in str(e).lower()
            self.record.result = "aborted" if aborted else "failed"
            self.record.error = str(e)
        finally:
            self.record.ended = time.time()
            self.record.duration_s = round(time.monotonic() - self._t0, 3)
            self._collect_completed_stats()
            self._done.set()

    def _collect_completed_stats(self) -> None:
        if self.record.result != "completed":
            return
        try:
            stats = self.dst.lookupByName(self.name).jobStats(
                libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED
            )
        except libvirt.libvirtError as e:
            log.debug("completed job stats unavailable: %s", e)
            return
        self.record.downtime_ms = stats.get("downtime")
        self.record.bytes = stats.get("data_processed") or stats.get("memory_processed")

    def set_bandwidth(self, mib_s: int) -> None:
        """Change the migration bandwidth while the job runs."""
        self.dom.migrateSetMaxSpeed(int(mib_s), 0)
        self.record.bandwidth_changes.append((self.elapsed(), int(mib_s)))

    def start_postcopy(self) -> None:
        self.dom.migrateStartPostCopy(0)

    def abort(self) -> None:
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as e:
            log.debug("abort: %s", e)

    # -- observation ----------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self._t0 if self._t0 else 0.0

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def stats(self) -> dict[str, Any]:
        try:
            return self.dom.jobStats() or {}
        except libvirt.libvirtError:
            return {}

    def progress(self) -> float:
        """Percent of guest memory sent in the first pass (monotonic, 0-100)."""
        if self.done:
            return self.last_percent
        s = self.stats()
        moved = s.get("data_processed") or s.get("memory_processed")
        if moved and self.record.first_byte_s is None:
            self.record.first_byte_s = round(self.elapsed(), 3)
        if moved is not None and moved != self.bytes_moved:
            self.bytes_moved, self.moved_at = moved, time.monotonic()
        total, remaining = s.get("memory_total"), s.get("memory_remaining")
        if total:
            pct = max(0.0, min(100.0, 100.0 * (1 - (remaining or 0) / total)))
            self._max_pct = max(self._max_pct, pct)
            self.record.progress.append((round(self.elapsed(), 3), round(self._max_pct, 2)))
        return self._max_pct

    @property
    def last_percent(self) -> float:
        """The progress at the last sample, without asking libvirt again."""
        if self.done:
            return 100.0 if self.record.result == "completed" else self._max_pct
        return self._max_pct

    def wait(self, timeout_s: float | None = None) -> MigrationRecord:
        """Wait for the end; past the timeout abort (the VM stays on the source)."""
        limit = self.options.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit
        while not self._done.wait(0.2):
            self.progress()
            if time.monotonic() > deadline:
                log.warning("migration of %s timed out after %.0f s: aborting", self.name, limit)
                self.abort()
                self._done.wait(30)
                self.record.result = "aborted"
                self.record.error = f"timed out after {limit:.0f} s"
                break
        return self.record
