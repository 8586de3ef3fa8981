"""What the SPICE client saw across a migration, judged from its debug log.

Pure functions: text in, a Classification out. The log is remote-viewer's
stdout+stderr with `SPICE_DEBUG=1 --debug` (spice-gtk 0.42, virt-viewer 11).
Each pattern below names the source line that prints it (file:line as the
0.42 build prints it in the log itself). The last migration in the log decides.

Outcomes:
  seamless       migrate-begin-seamless, the destination acked, every channel
                 pre-connected, and the switchover swapped them in place
  semi-seamless  migrate-begin (or a seamless begin the destination nacked):
                 channels pre-connected, switched at migrate-end, no handshake
  switch-host    the source told the client to reconnect to the destination
                 after the migration (channels dropped, then up again there)
  lost           the client never had its display back: the reconnection
                 failed, or the log ends in the middle (`complete` is False)
  no-migration   the client was connected and saw no migration (or a cancelled one)
  unknown        the text is not a remote-viewer debug log
usbredir: migrated (moved with the session), reconnected (torn down, a new one
came up), lost, kept (no migration touched it), none (there never was one).
Server-side events (testbed.spice.events), when given, add the hypervisors'
view; it is reported next to the log's verdict and never overrides it.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from testbed.model.outcome import Observed as Outcome
from testbed.model.outcome import UsbRedir as UsbFate


class _Pattern:
    """A log message spice-gtk or virt-viewer prints, and where in their sources."""

    def __init__(self, key: str, regex: str, source: str) -> None:
        self.key, self.re, self.source = key, re.compile(regex), source


P = {
    p.key: p
    for p in [
        _Pattern("begin-seamless", r"migration message: migrate-begin-seamless\b",
                 "spice-gtk src/channel-main.c:2528 main_handle_migrate_begin_seamless"),
        _Pattern("begin", r"migration message: migrate-begin\s*$",
                 "spice-gtk src/channel-main.c:2518 main_handle_migrate_begin"),
        _Pattern("seamless-ack", r"migration message: migrate-dst-seamless-ack\b",
                 "spice-gtk src/channel-main.c:2538 main_handle_migrate_dst_seamless_ack"),
        _Pattern("seamless-nack", r"migration message: migrate-dst-seamless-nack\b",
                 "spice-gtk src/channel-main.c:2550 main_handle_migrate_dst_seamless_nack"),
        _Pattern("connected-seamless", r"migration \(seamless\): connections all ok",
                 "spice-gtk src/channel-main.c:2497 main_migrate_connect"),
        _Pattern("connected-semi", r"migration \(semi-seamless\): connections all ok",
                 "spice-gtk src/channel-main.c:2500 main_migrate_connect"),
        _Pattern("connect-failed", r"migrate failed: some channels failed to connect",
                 "spice-gtk src/channel-main.c:2493 main_migrate_connect"),
        _Pattern("end", r"migration message: migrate-end\b",
                 "spice-gtk src/channel-main.c:2576 main_handle_migrate_end"),
        _Pattern("all-migrated", r"migration: all channel migrated, success",
                 "spice-gtk src/spice-session.c:1897 spice_session_channel_migrate"),
        _Pattern("switch-host", r"migration message: migrate-switch-host\b",
                 "spice-gtk src/channel-main.c:2611 main_handle_migrate_switch_host"),
        _Pattern("switch-target", r"migrate_switch (\S+) (-?\d+) (-?\d+)",
                 "spice-gtk src/channel-main.c:2620 main_handle_migrate_switch_host"),
        _Pattern("vv-switching", r"main channel: switching host",
                 "virt-viewer src/virt-viewer-session-spice.c (SPICE_CHANNEL_SWITCHING)"),
        _Pattern("cancel", r"migration message: migrate-cancel\b",
                 "spice-gtk src/channel-main.c:2647 main_handle_migrate_cancel"),
        _Pattern("abort", r"migration: abort\b",
                 "spice-gtk src/spice-session.c:1839 spice_session_abort_migration"),
        _Pattern("channel-up", r"\b(\w+)-(\d+):(\d+): channel up, state (\d+)",
                 "spice-gtk src/spice-channel.c:1350 spice_channel_recv_link_msg"),
        _Pattern("migrating-channel", r"\b(\w+)-\d+:\d+: migrating channel id:\d+ type:(\d+)",
                 "spice-gtk src/spice-session.c:1885 spice_session_channel_migrate"),
        _Pattern("usb-disconnect", r"(usbredir-\d+:\d+): disconnecting device from usb channel",
                 "spice-gtk src/channel-usbredir.c:403 spice_usbredir_channel_dispose"),
        _Pattern("main-closed", r"main channel: closed\b",
                 "virt-viewer src/virt-viewer-session-spice.c (SPICE_CHANNEL_CLOSED)"),
        _Pattern("main-failed", r"main channel: failed to connect|Can't connect to channel",
                 "virt-viewer src/virt-viewer-session-spice.c (SPICE_CHANNEL_ERROR_CONNECT)"),
        _Pattern("session-disconnect", r"session: disconnecting \d+",
                 "spice-gtk src/spice-session.c:2027 spice_session_disconnect"),
    ]
}  # fmt: skip

# a remote-viewer debug line: "(remote-viewer:PID): GSpice-DEBUG: HH:MM:SS.mmm: message"
LINE = re.compile(r"^\((?:remote-viewer|virt-viewer)[^)]*\): [\w-]+: (\d\d:\d\d:\d\d\.\d+): ")
READY = "3"  # SPICE_CHANNEL_STATE_READY in spice-channel-priv.h


@dataclass(frozen=True)
class Evidence:
    """One log line (or server event) that decided part of the classification."""

    line: int  # 1-based line number in the log; 0 for a server event
    text: str
    means: str
    source: str = ""  # where the message is printed (spice-gtk / virt-viewer file:line)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Classification:
    outcome: Outcome
    usbredir: UsbFate
    reason: str
    evidence: list[Evidence] = field(default_factory=list)
    migrations: int = 0  # migration episodes the client saw
    complete: bool = True  # False when the log ends before the last episode concluded
    times: dict[str, str] = field(default_factory=dict)  # log clock (HH:MM:SS.mmm) of milestones
    server: ServerView | None = None  # the hypervisors' view, when events were given

    def to_json(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "usbredir": self.usbredir,
            "reason": self.reason,
            "migrations": self.migrations,
            "complete": self.complete,
            "times": dict(self.times),
            "evidence": [e.to_json() for e in self.evidence],
            "server": None if self.server is None else asdict(self.server),
        }


class _ServerEvent(Protocol):
    """What the classifier reads of a testbed.spice.events.ServerEvent (or its JSON form);
    read-only, as the frozen dataclass is."""

    @property
    def t(self) -> float: ...
    @property
    def host(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def remote(self) -> tuple[str, str] | None: ...


def _field(e: Any, name: str) -> Any:
    return e.get(name) if isinstance(e, dict) else getattr(e, name, None)


@dataclass(frozen=True)
class ServerView:
    """When the client's channels reached the destination, as the hypervisors saw it."""

    source: str | None
    destination: str | None
    client: str | None  # the client's address (remote address of its channels)
    preconnected: int  # client channels initialized on the destination before the switchover
    after_switchover: int  # ... at or after it
    verdict: str  # pre-connected, reconnected-after-switchover, not-on-destination, no-migration

    def line(self) -> str:
        return (
            f"server: {self.verdict} (client {self.client}: {self.preconnected} channel(s) on "
            f"{self.destination} before the switchover, {self.after_switchover} after)"
        )


def server_view(events: Iterable[_ServerEvent | dict[str, Any]]) -> ServerView:
    """Summarize graphics and lifecycle events of a migration from both hypervisors.

    The switchover is the source's `suspended/migrated` lifecycle event: a client
    whose channels initialized on the destination before it had pre-connected
    (seamless); channels that arrive only after it came by switch-host.
    """
    evs = sorted(events, key=lambda e: float(_field(e, "t") or 0))
    life = [e for e in evs if _field(e, "kind") == "lifecycle"]
    gfx = [e for e in evs if _field(e, "kind") == "graphics" and _field(e, "remote")]

    def last(phase: str) -> Any:
        hits = [e for e in life if (_field(e, "phase"), _field(e, "detail")) == (phase, "migrated")]
        return hits[-1] if hits else None

    src, dst = last("suspended"), last("started")
    addrs = [str(_field(e, "remote")[0]) for e in gfx]
    client = max(set(addrs), key=addrs.count) if addrs else None
    if dst is None:
        return ServerView(None, None, client, 0, 0, "no-migration")
    dhost = _field(dst, "host")
    cut = float(_field(src, "t")) if src is not None else float("inf")
    inits = [
        float(_field(e, "t"))
        for e in gfx
        if _field(e, "host") == dhost
        and _field(e, "phase") == "initialize"
        and str(_field(e, "remote")[0]) == client
    ]
    pre = sum(t < cut for t in inits)
    post = len(inits) - pre
    verdict = (
        "pre-connected" if pre else "reconnected-after-switchover" if post else "not-on-destination"
    )
    return ServerView(
        _field(src, "host") if src is not None else None, dhost, client, pre, post, verdict
    )


@dataclass
class _Hit:
    key: str
    lineno: int
    text: str
    time: str
    m: re.Match[str]


def _scan(lines: Sequence[str]) -> tuple[list[_Hit], int]:
    """Every line that matches a known pattern, in order; and how many lines look like ours."""
    hits: list[_Hit] = []
    ours = 0
    for i, raw in enumerate(lines, 1):
        lm = LINE.match(raw)
        if lm:
            ours += 1
        if "migrat" not in raw and "channel" not in raw and "session" not in raw:
            continue
        for p in P.values():
            m = p.re.search(raw)
            if m:
                hits.append(_Hit(p.key, i, raw.strip()[:400], lm.group(1) if lm else "", m))
                break
    return hits, ours


def _ev(h: _Hit, means: str) -> Evidence:
    return Evidence(h.lineno, h.text, means, P[h.key].source)


def _up(h: _Hit, kind: str | None = None) -> bool:
    if h.key != "channel-up" or h.m.group(4) != READY:
        return False
    return kind is None or h.m.group(1) == kind


@dataclass
class _Episode:
    """One migration as the client saw it: from a begin (or a bare switch-host) to its end."""

    start: _Hit
    hits: list[_Hit] = field(default_factory=list)

    def first(self, *keys: str) -> _Hit | None:
        return next((h for h in self.hits if h.key in keys), None)


def _episodes(hits: list[_Hit]) -> list[_Episode]:
    eps: list[_Episode] = []
    cur: _Episode | None = None
    for h in hits:
        opens = h.key in ("begin", "begin-seamless") or (
            h.key == "switch-host" and (cur is None or cur.first("switch-host") is not None)
        )
        if opens:
            cur = _Episode(h)
            eps.append(cur)
        if cur is not None:
            cur.hits.append(h)
    return eps


def _judge(ep: _Episode) -> tuple[Outcome | None, str, list[Evidence]]:
    """The outcome of one episode, or None when the log ends before it concluded."""
    ev: list[Evidence] = []
    begin = ep.first("begin", "begin-seamless")
    if begin is not None:
        how = "seamless" if begin.key == "begin-seamless" else "semi-seamless"
        ev.append(_ev(begin, f"the source asked the client to pre-connect ({how})"))
    switch = ep.first("switch-host")
    failed = ep.first("connect-failed")
    cancel = ep.first("cancel")  # not "abort": spice-gtk also aborts after a failed pre-connect
    if switch is not None:
        if failed is not None and failed.lineno < switch.lineno:
            ev.append(_ev(failed, "pre-connect to the destination failed"))
        ev.append(_ev(switch, "the source told the client to reconnect to the destination"))
        tgt = ep.first("switch-target")
        if tgt is not None:
            ev.append(_ev(tgt, "where the client was sent"))
        after = [h for h in ep.hits if h.lineno > switch.lineno]
        main_up = next((h for h in after if _up(h, "main")), None)
        disp_up = next((h for h in after if _up(h, "display")), None)
        if main_up is not None and disp_up is not None:
            ev.append(_ev(main_up, "main channel up again after the switch"))
            ev.append(_ev(disp_up, "display channel up again: the client has a display"))
            return "switch-host", "channels dropped and reconnected to the destination", ev
        closed = next((h for h in after if h.key in ("main-failed", "main-closed")), None)
        if closed is not None:
            ev.append(_ev(closed, "the client could not reconnect"))
            return "lost", "switch-host, and the reconnection failed", ev
        return None, "switch-host, and the log ends before the channels came back", ev
    if cancel is not None:
        ev.append(_ev(cancel, "the migration was cancelled; the client stays on the source"))
        return "no-migration", "migration cancelled", ev
    if begin is None:
        return None, "no migration message", ev
    ack = ep.first("seamless-ack")
    nack = ep.first("seamless-nack")
    ok_seamless = ep.first("connected-seamless")
    ok_semi = ep.first("connected-semi")
    done = ep.first("all-migrated")
    end = ep.first("end")
    if failed is not None:
        ev.append(_ev(failed, "pre-connect to the destination failed"))
        return None, "pre-connect failed; the log ends before the fallback switch-host", ev
    if ack is not None:
        ev.append(_ev(ack, "the destination accepted seamless migration"))
    if nack is not None:
        ev.append(_ev(nack, "the destination refused seamless migration"))
    if ok_seamless is not None:
        ev.append(_ev(ok_seamless, "every channel pre-connected to the destination (seamless)"))
    if ok_semi is not None:
        ev.append(_ev(ok_semi, "every channel pre-connected to the destination (semi-seamless)"))
    if end is not None:
        ev.append(_ev(end, "the source announced the end of the migration"))
    if done is not None:
        ev.append(_ev(done, "every channel switched to its destination connection"))
    if done is None:
        return None, "migration began; the log ends before the switchover", ev
    if ok_seamless is not None and ack is not None and begin.key == "begin-seamless":
        return "seamless", "seamless migration: channels moved in place", ev
    if ok_semi is not None:
        return "semi-seamless", "semi-seamless migration: channels switched at migrate-end", ev
    return None, "switchover without a complete pre-connect in the log", ev


def _usbredir(hits: list[_Hit], outcome: Outcome, cut: int) -> tuple[UsbFate, list[Evidence]]:
    """What became of the USB redirection channel across the last migration (after line `cut`)."""
    ups = [h for h in hits if _up(h, "usbredir")]
    if not ups:
        return "none", []
    after = [h for h in ups if h.lineno > cut]
    later = [h for h in hits if h.lineno > cut]
    moved = next(
        (h for h in later if h.key == "migrating-channel" and h.m.group(1) == "usbredir"), None
    )
    dropped = next((h for h in later if h.key == "usb-disconnect"), None)
    if outcome in ("seamless", "semi-seamless") and moved is not None:
        return "migrated", [_ev(moved, "the usbredir channel moved with the session")]
    if outcome == "no-migration":
        return "kept", [_ev(ups[0], "the usbredir channel was up")]
    if outcome == "switch-host":
        ev = [_ev(dropped, "the usbredir channel was torn down")] if dropped else []
        if after:
            return "reconnected", [*ev, _ev(after[0], "a new usbredir channel came up")]
        return "lost", ev
    ev = [_ev(dropped, "the usbredir channel was torn down")] if dropped else []
    return "lost", ev


def classify(
    client_log: str, events: Iterable[_ServerEvent | dict[str, Any]] | None = None
) -> Classification:
    """Classify a remote-viewer debug log (and optional server-side events)."""
    lines = client_log.splitlines()
    hits, ours = _scan(lines)
    server = None if events is None else server_view(events)
    if ours == 0:
        return Classification(
            "unknown",
            "none",
            "no remote-viewer debug line (run it with SPICE_DEBUG=1 --debug)",
            server=server,
        )
    first_main = next((h for h in hits if _up(h, "main")), None)
    first_disp = next((h for h in hits if _up(h, "display")), None)
    if first_main is None or first_disp is None:
        bad = next((h for h in hits if h.key in ("main-failed", "main-closed")), None)
        if bad is not None:
            ev = [_ev(bad, "the client could not connect")]
            return Classification("lost", "none", "the client never connected", ev, server=server)
        reason = "the log ends before the client had a display (client killed, or the log is cut)"
        return Classification("lost", "none", reason, complete=False, server=server)
    eps = _episodes(hits)
    times = {"connected": first_disp.time}
    evidence = [
        _ev(first_main, "the client connected (main channel up)"),
        _ev(first_disp, "the client had a display"),
    ]
    if not eps:
        usb, uev = _usbredir(hits, "no-migration", 0)
        reason = "the client saw no migration"
        evidence = sorted(evidence + uev, key=lambda e: e.line)
        return Classification("no-migration", usb, reason, evidence, times=times, server=server)
    last = eps[-1]
    outcome, reason, ev = _judge(last)
    complete = outcome is not None
    if outcome is None:
        outcome, reason = "lost", reason + " (client killed, or the log is cut)"
    times["migration_begin"] = last.start.time
    for key, name in (("all-migrated", "switched"), ("switch-host", "switch_host")):
        h = last.first(key)
        if h is not None:
            times[name] = h.time
    usb, uev = _usbredir(hits, outcome, last.start.lineno)
    if server is not None:
        agrees = {
            "seamless": "pre-connected",
            "semi-seamless": "pre-connected",
            "switch-host": "reconnected-after-switchover",
        }.get(outcome)
        if agrees is not None and server.verdict != agrees:
            reason += f"; the hypervisors disagree: {server.line()}"
    return Classification(
        outcome,
        usb,
        reason,
        sorted(evidence + ev + uev, key=lambda e: e.line),
        migrations=len(eps),
        complete=complete,
        times=times,
        server=server,
    )


def read_log(path: Path) -> str:
    """A client log as text; `.gz` files are decompressed."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    return path.read_text(encoding="utf-8", errors="replace")


def classify_file(path: str | Path) -> Classification:
    """Classify the client log at `path` (plain or gzip)."""
    return classify(read_log(Path(path)))
