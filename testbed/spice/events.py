"""Server-side SPICE signals: libvirt graphics and lifecycle events, with the time they came.

The client's log says what the client saw; these events say what each
hypervisor saw. During an incoming migration the destination's libvirt
reports `connect` and `initialize` for every channel the client opens to it
(remote address = the client's), so the server side can tell when the client
has arrived on the destination without reading the client's log.
Callbacks arrive on libvirt's event loop thread (testbed.virt.events), so every
access to the list goes through a lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import libvirt

log = logging.getLogger(__name__)

GRAPHICS_PHASES = {
    libvirt.VIR_DOMAIN_EVENT_GRAPHICS_CONNECT: "connect",
    libvirt.VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE: "initialize",
    libvirt.VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT: "disconnect",
}
LIFECYCLE = {
    libvirt.VIR_DOMAIN_EVENT_DEFINED: "defined",
    libvirt.VIR_DOMAIN_EVENT_UNDEFINED: "undefined",
    libvirt.VIR_DOMAIN_EVENT_STARTED: "started",
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: "suspended",
    libvirt.VIR_DOMAIN_EVENT_RESUMED: "resumed",
    libvirt.VIR_DOMAIN_EVENT_STOPPED: "stopped",
    libvirt.VIR_DOMAIN_EVENT_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED: "pmsuspended",
    libvirt.VIR_DOMAIN_EVENT_CRASHED: "crashed",
}
# details that matter around a migration; others are reported as numbers
LIFECYCLE_DETAIL = {
    ("started", libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED): "migrated",
    ("suspended", libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED): "migrated",
    ("resumed", libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED): "migrated",
    ("resumed", libvirt.VIR_DOMAIN_EVENT_RESUMED_UNPAUSED): "unpaused",
    ("stopped", libvirt.VIR_DOMAIN_EVENT_STOPPED_MIGRATED): "migrated",
    ("stopped", libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): "destroyed",
    ("stopped", libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED): "failed",
}


@dataclass(frozen=True)
class ServerEvent:
    """One libvirt domain event as a hypervisor reported it."""

    t: float  # time.monotonic() when the callback ran
    wall: float  # time.time() at the same moment
    host: str
    domain: str
    kind: str  # "graphics" or "lifecycle"
    phase: str  # graphics: connect/initialize/disconnect; lifecycle: started, resumed, ...
    detail: str = ""  # lifecycle detail (migrated, unpaused, ...)
    local: tuple[str, str] | None = None  # (address, port) of the SPICE server
    remote: tuple[str, str] | None = None  # (address, port) of the client's socket
    auth: str = ""
    subject: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        """A one-line form for evidence lists and logs."""
        if self.kind == "graphics":
            r = f"{self.remote[0]}:{self.remote[1]}" if self.remote else "?"
            lo = f"{self.local[0]}:{self.local[1]}" if self.local else "?"
            return f"{self.host}: graphics {self.phase} {r} -> {lo}"
        return f"{self.host}: lifecycle {self.phase} {self.detail}".rstrip()


def _addr(a: dict[str, Any] | None) -> tuple[str, str] | None:
    if not a:
        return None
    return (str(a.get("node", "")), str(a.get("service", "")))


class GraphicsEventLog:
    """Collects graphics (and lifecycle) events from one or more hypervisors' libvirtds.

    Register each host's connection with `watch`; `close` deregisters them all.
    The connections must have been opened after the event loop was registered
    (testbed.virt.conn.open_conn does that).
    """

    def __init__(self, domain: str | None = None) -> None:
        self.domain = domain  # only events of this domain, or all when None
        self._events: list[ServerEvent] = []
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._callbacks: list[tuple[libvirt.virConnect, int]] = []

    # -- registration -----------------------------------------------------------
    def watch(self, host: str, conn: libvirt.virConnect, *, lifecycle: bool = True) -> None:
        gid = conn.domainEventRegisterAny(
            None, libvirt.VIR_DOMAIN_EVENT_ID_GRAPHICS, self._on_graphics, host
        )
        self._callbacks.append((conn, gid))
        if lifecycle:
            lid = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._on_lifecycle, host
            )
            self._callbacks.append((conn, lid))

    def close(self) -> None:
        for conn, cid in self._callbacks:
            try:
                conn.domainEventDeregisterAny(cid)
            except libvirt.libvirtError as e:  # the connection may be gone already
                log.debug("deregister %s: %s", cid, e)
        self._callbacks.clear()

    def __enter__(self) -> GraphicsEventLog:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- callbacks (libvirt event loop thread) ----------------------------------------
    def _add(self, ev: ServerEvent) -> None:
        if self.domain is not None and ev.domain != self.domain:
            return
        log.debug("event %s", ev.line())
        with self._cond:
            self._events.append(ev)
            self._cond.notify_all()

    def _on_graphics(
        self,
        _conn: libvirt.virConnect,
        dom: libvirt.virDomain,
        phase: int,
        local: dict[str, Any],
        remote: dict[str, Any],
        auth: str,
        subject: list[tuple[str, str]],
        host: str,
    ) -> None:
        self._add(
            ServerEvent(
                t=time.monotonic(),
                wall=time.time(),
                host=host,
                domain=dom.name(),
                kind="graphics",
                phase=GRAPHICS_PHASES.get(phase, str(phase)),
                local=_addr(local),
                remote=_addr(remote),
                auth=auth or "",
                subject=tuple((str(a), str(b)) for a, b in (subject or [])),
            )
        )

    def _on_lifecycle(
        self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, host: str
    ) -> None:
        name = LIFECYCLE.get(event, str(event))
        self._add(
            ServerEvent(
                t=time.monotonic(),
                wall=time.time(),
                host=host,
                domain=dom.name(),
                kind="lifecycle",
                phase=name,
                detail=LIFECYCLE_DETAIL.get((name, detail), str(detail)),
            )
        )

    # -- queries ------------------------------------------------------------------
    def events(
        self, host: str | None = None, *, kind: str | None = None, since: float | None = None
    ) -> list[ServerEvent]:
        with self._lock:
            evs = list(self._events)
        return [
            e
            for e in evs
            if (host is None or e.host == host)
            and (kind is None or e.kind == kind)
            and (since is None or e.t >= since)
        ]

    def client_channels_on(self, host: str, client_addr: str, since: float | None = None) -> int:
        """Channels of the client at `client_addr` open on `host`: initialized minus closed."""
        return open_channels(self.events(host, kind="graphics", since=since), client_addr)

    def wait_for(self, predicate: Callable[[GraphicsEventLog], bool], timeout_s: float) -> bool:
        """Block until `predicate(self)` holds (checked on each new event) or the timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                seen = len(self._events)
            if predicate(self):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._cond:
                if len(self._events) == seen:
                    self._cond.wait(min(left, 0.5))

    def to_json(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.events()]


def open_channels(events: list[ServerEvent], client_addr: str) -> int:
    """Graphics channels from `client_addr` that were initialized and are not closed yet.

    Each connection is its own remote (address, port): a connection that closes
    before it was initialized (a plain link refused with "need secured", the client
    then linking again over TLS) closes no channel."""
    live: set[tuple[str, str] | None] = set()
    for e in events:
        if e.kind != "graphics" or not e.remote or e.remote[0] != client_addr:
            continue
        if e.phase == "initialize":
            live.add(e.remote)
        elif e.phase == "disconnect":
            live.discard(e.remote)
    return len(live)
