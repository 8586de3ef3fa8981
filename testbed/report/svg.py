"""One scenario's timeline as inline SVG, drawn from its recorded events alone.

On one time axis: migration progress (a polyline), then a lane each for the lab,
the links, the client, the guard and the verdict, then the client's lag (from the
guest's heartbeat: how old the frame on the client's screen was) with the guest's
stalls as bands and the guard's hold as a band. The switchover (migration.end) is
a line through all of them, so one glance shows whether the client was on the
destination before the switchover and whether the guard held it back. Every mark
carries a <title> with the event's full data (a hover tooltip, no script needed).
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

from testbed.model.result import ScenarioResult

WIDTH = 920
LEFT = 112  # lane labels
RIGHT = 16
TOP = 10
PLOT_H = 110  # migration progress, 0..100 %
LANE_H = 24
LANES = ("lab", "link", "client", "guard", "verdict")
AXIS_H = 30
LAG_H = 100  # the client-lag plot
LAG_GAP = 18  # room for its caption
CHAR_W = 6.2  # an 11 px sans-serif character, for placing labels so they never overlap

GREEN, RED, GREY, BLUE = "#2e7d32", "#c62828", "#757575", "#1565c0"
ORANGE, PURPLE = "#ef6c00", "#6a1b9a"


def _fmt(data: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in data.items() if k not in ("t", "kind"))


class _Canvas:
    """Maps timeline seconds and lanes to pixels, and collects SVG elements."""

    def __init__(self, t_end: float, width: int) -> None:
        self.width = width
        self.t_end = max(t_end, 1.0)
        self.parts: list[str] = []
        self.labels: list[str] = []  # drawn last, over every mark
        self.lanes_top = TOP + PLOT_H + 12
        self.lag_top = self.lanes_top + LANE_H * len(LANES) + LAG_GAP
        self.height = self.lag_top + LAG_H + AXIS_H
        self.taken: dict[str, list[tuple[float, float]]] = {}  # lane -> x spans in use
        self.pending: list[tuple[str, float, float, str, str, bool]] = []
        self.holds: list[tuple[float, float]] = []  # the guard's holds, x spans

    def x(self, t: float) -> float:
        return LEFT + (self.width - LEFT - RIGHT) * max(0.0, t) / self.t_end

    def y_pct(self, pct: float) -> float:
        return TOP + PLOT_H * (1 - min(max(pct, 0.0), 100.0) / 100)

    def lane_y(self, lane: str) -> float:
        return self.lanes_top + LANE_H * LANES.index(lane) + LANE_H / 2

    def add(self, svg: str) -> None:
        self.parts.append(svg)

    def mark(
        self,
        t: float,
        lane: str,
        color: str,
        title: str,
        shape: str = "circle",
        label: str = "",
        left: bool = False,
    ) -> None:
        """A mark with a tooltip; its label goes right of it, or `left` when there is room."""
        x, y = self.x(t), self.lane_y(lane)
        tip = f"<title>{escape(f't={t:.2f} s: {title}')}</title>"
        if shape == "triangle":
            pts = f"{x:.1f},{y - 6:.1f} {x - 5:.1f},{y + 5:.1f} {x + 5:.1f},{y + 5:.1f}"
            self.add(f'<polygon points="{pts}" fill="{color}">{tip}</polygon>')
        elif shape == "diamond":
            pts = f"{x:.1f},{y - 6:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 6:.1f} {x - 5:.1f},{y:.1f}"
            self.add(f'<polygon points="{pts}" fill="{color}">{tip}</polygon>')
        elif shape == "bar":
            self.add(
                f'<rect x="{x - 1.5:.1f}" y="{y - 8:.1f}" width="3" height="16" '
                f'fill="{color}">{tip}</rect>'
            )
        else:
            self.add(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{color}">{tip}</circle>')
        self.taken.setdefault(lane, []).append((x - 6, x + 6))
        if label:  # placed once every mark is down (timeline_svg)
            self.pending.append((lane, x, y, label, color, left))

    def lane_label(
        self, lane: str, x: float, y: float, label: str, color: str, prefer_left: bool = False
    ) -> None:
        """A label beside its mark where it overlaps no other label or mark of the lane.

        Tried right of the mark, then left; where neither fits it is left out (the
        mark's tooltip still says it all). Marks drawn later do not move it.
        """
        w = CHAR_W * len(label)
        right = (x + 8, x + 8 + w)
        left = (x - 8 - w, x - 8)
        taken = self.taken.setdefault(lane, [])
        for x0, x1 in (left, right) if prefer_left else (right, left):
            inside = LEFT <= x0 and x1 <= self.width - 2
            if inside and not any(a < x1 and x0 < b for a, b in taken):
                taken.append((x0, x1))
                self.text(x0, y + 4, label, color, on_top=True)
                return

    def text(
        self,
        x: float,
        y: float,
        s: str,
        color: str = "#222",
        anchor: str = "start",
        on_top: bool = False,
    ) -> None:
        """A label; `on_top` ones are drawn after every mark, with a white halo."""
        at = f'x="{x:.1f}" y="{y:.1f}" font-size="11" text-anchor="{anchor}"'
        svg = f'<text {at} fill="{color}">{escape(s)}</text>'
        if on_top:  # a white copy underneath keeps it readable over lines and marks
            svg = f'<text {at} fill="#fff" stroke="#fff" stroke-width="3">{escape(s)}</text>' + svg
        (self.labels if on_top else self.parts).append(svg)


def timeline_svg(scenario: ScenarioResult, width: int = WIDTH) -> str:
    """The scenario's timeline as an <svg> element (a string), sized `width` pixels."""
    events = sorted(
        (e for e in scenario.timeline if isinstance(e.get("t"), int | float)),
        key=lambda e: e["t"],
    )
    trace = [p for p in scenario.client.lag_trace if len(p) == 2]
    t_end = max([e["t"] for e in events] + [p[0] for p in trace] + [1.0])
    c = _Canvas(t_end * 1.03, width)
    _frame(c)
    _progress(c, events)
    _lag_plot(c, scenario, trace)
    # the marks of every lane first, then their labels, so a label never covers a mark
    for e in events:
        _event(c, e, scenario)
    for args in c.pending:
        c.lane_label(*args)
    _guard_spans(c, events)
    _hold_bands(c, c.lag_top)
    _switchover(c, events)
    label = escape(f"timeline of {scenario.name}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{width}" '
        f'height="{c.height:.0f}" viewBox="0 0 {width} {c.height:.0f}" role="img" '
        f'aria-label="{label}" font-family="sans-serif">' + "".join(c.parts + c.labels) + "</svg>"
    )


def _frame(c: _Canvas) -> None:
    right = c.width - RIGHT
    c.add(
        f'<rect x="{LEFT}" y="{TOP}" width="{right - LEFT}" height="{PLOT_H}" '
        'fill="#fafafa" stroke="#ccc"/>'
    )
    for pct in (0, 50, 100):
        y = c.y_pct(pct)
        c.add(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#e0e0e0"/>')
        c.text(LEFT - 6, y + 4, f"{pct} %", GREY, anchor="end")
    c.text(4, TOP + PLOT_H / 2 + 4, "migration", "#222")
    for lane in LANES:
        y = c.lane_y(lane)
        c.add(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" '
            'stroke="#eee" stroke-width="1"/>'
        )
        c.text(4, y + 4, lane, "#222")
    axis_y = c.height - AXIS_H + 6
    c.add(f'<line x1="{LEFT}" y1="{axis_y}" x2="{right}" y2="{axis_y}" stroke="#999"/>')
    for t in _ticks(c.t_end):
        x = c.x(t)
        c.add(f'<line x1="{x:.1f}" y1="{axis_y}" x2="{x:.1f}" y2="{axis_y + 4}" stroke="#999"/>')
        c.text(x, axis_y + 16, f"{t:g} s", GREY, anchor="middle")


def _ticks(t_end: float) -> Iterable[float]:
    step = next((s for s in (1, 2, 5, 10, 20, 30, 60, 120, 300) if t_end / s <= 12), 600)
    t = 0.0
    while t <= t_end:
        yield t
        t += step


def _progress(c: _Canvas, events: list[dict[str, Any]]) -> None:
    pts: list[tuple[float, float]] = []
    for e in events:
        if e["kind"] == "migration.start":
            pts.append((e["t"], 0.0))
        elif e["kind"] == "migration.progress" and isinstance(e.get("percent"), int | float):
            pts.append((e["t"], float(e["percent"])))
        elif e["kind"] == "migration.end" and e.get("result") == "completed":
            pts.append((e["t"], 100.0))
    if not pts:
        c.text(LEFT + 8, TOP + PLOT_H / 2, "no migration", GREY)
        return
    line = " ".join(f"{c.x(t):.1f},{c.y_pct(p):.1f}" for t, p in pts)
    c.add(
        f'<polyline class="progress" points="{line}" fill="none" stroke="{BLUE}" '
        'stroke-width="2"><title>migration progress (%)</title></polyline>'
    )


def _event(c: _Canvas, e: dict[str, Any], scenario: ScenarioResult) -> None:
    kind, t, info = e["kind"], e["t"], _fmt(e)
    title = f"{kind}: {info}" if info else kind
    if kind == "lab.up":
        c.mark(t, "lab", GREY, title, "bar")
    elif kind == "guest.boot":
        c.mark(t, "lab", GREY, title, "circle", f"boot ({e.get('accel', '')})")
    elif kind == "migration.start":
        x = c.x(t)
        c.add(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{c.height - AXIS_H + 6}" '
            f'stroke="{BLUE}" stroke-dasharray="4 3"><title>{escape(title)}</title></line>'
        )
        c.text(x + 3, TOP + 11, "start", BLUE)
    elif kind == "link.shape":
        arrow = "⇄" if e.get("both_ways") else "→"
        c.mark(
            t,
            "link",
            ORANGE,
            title,
            "bar",
            f"{e.get('src')}{arrow}{e.get('dst')} {e.get('profile')}",
        )
    elif kind == "link.clear":
        c.mark(t, "link", GREY, title, "bar")
    elif kind == "client.connect":
        at = f" @{e['progress']:g} %" if isinstance(e.get("progress"), int | float) else ""
        c.mark(t, "client", BLUE, title, "triangle", f"connect{at}", left=True)
    elif kind == "client.connected":
        c.mark(t, "client", GREEN, title, "circle")
    elif kind.startswith("client."):  # disconnects, missed triggers: whatever the runner saw
        c.mark(t, "client", RED if "dis" in kind or "miss" in kind else GREY, title, "diamond")
    elif kind == "guard.client_migrate_info":
        c.mark(t, "guard", PURPLE, title, "diamond")
    elif kind.startswith("guard.") and kind not in ("guard.hold", "guard.release"):
        c.mark(t, "guard", GREY, title, "bar")
    elif kind == "outcome":
        color = GREEN if scenario.passed else RED
        c.mark(t, "verdict", color, title, "circle", str(e.get("outcome")))
    elif kind == "error":
        c.mark(t, "verdict", RED, title, "diamond", "error")


def _guard_spans(c: _Canvas, events: list[dict[str, Any]]) -> None:
    """Each hold until its release (or the migration's end, or the last event): a bar."""
    end = next((e["t"] for e in events if e["kind"] == "migration.end"), None)
    last = events[-1]["t"] if events else 0.0
    held: dict[str, Any] | None = None
    for e in events:
        if e["kind"] == "guard.hold" and held is None:
            held = e
        elif e["kind"] == "guard.release" and held is not None:
            _span(c, held, e["t"], f"held {e.get('held_s', '')} s, released: {e.get('why', '')}")
            held = None
    if held is not None:
        _span(c, held, end if end is not None else last, "held, never released")


def _span(c: _Canvas, hold: dict[str, Any], t1: float, why: str) -> None:
    x0, x1 = c.x(hold["t"]), c.x(t1)
    y = c.lane_y("guard")
    tip = escape(f"t={hold['t']:.2f}..{t1:.2f} s: hold ({_fmt(hold)}); {why}")
    c.add(
        f'<rect class="hold" x="{x0:.1f}" y="{y - 7:.1f}" width="{max(x1 - x0, 2):.1f}" '
        f'height="14" fill="{PURPLE}" fill-opacity="0.35" stroke="{PURPLE}">'
        f"<title>{tip}</title></rect>"
    )
    c.holds.append((x0, x1))
    c.lane_label("guard", x1 - 4, y, "hold", PURPLE)


def _switchover(c: _Canvas, events: list[dict[str, Any]]) -> None:
    e = next((e for e in events if e["kind"] == "migration.end"), None)
    if e is None:
        return
    x = c.x(e["t"])
    ok = e.get("result") == "completed"
    color = "#000" if ok else RED
    tip = escape(f"t={e['t']:.2f} s: migration.end: {_fmt(e)}")
    c.add(
        f'<line class="switchover" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" '
        f'y2="{c.height - AXIS_H + 6}" stroke="{color}" stroke-width="2">'
        f"<title>{tip}</title></line>"
    )
    what = "switchover" if ok else str(e.get("result"))
    down = f" ({e['downtime_ms']} ms down)" if e.get("downtime_ms") is not None else ""
    c.text(x - 4, TOP + 24, what + down, color, anchor="end", on_top=True)


def _lag_plot(c: _Canvas, scenario: ScenarioResult, trace: list[list[float]]) -> None:
    """The client's lag (ms, the largest per 0.1 s) over time, guest stalls as grey bands."""
    client, guest = scenario.client, scenario.guest
    top, right = c.lag_top, c.width - RIGHT
    c.add(
        f'<g class="lag-plot"><rect x="{LEFT}" y="{top}" width="{right - LEFT}" '
        f'height="{LAG_H}" fill="#fafafa" stroke="#ccc"/>'
    )
    lag = client.lag_ms
    caption = "client lag (how old the frame on screen is)"
    if lag:
        caption += f": p50 {lag.p50} ms, p99 {lag.p99} ms, max {lag.max} ms"
    if client.frozen_ms is not None:
        caption += f"; frozen {client.frozen_ms} ms at the switchover"
    c.text(LEFT, top - 5, caption, "#222")
    top_ms = _nice_ceiling(max([p[1] for p in trace] + [100.0]))

    def y(ms: float) -> float:
        return top + LAG_H * (1 - min(max(ms, 0.0), top_ms) / top_ms)

    for ms in (0, top_ms / 2, top_ms):
        c.add(
            f'<line x1="{LEFT}" y1="{y(ms):.1f}" x2="{right}" y2="{y(ms):.1f}" stroke="#e0e0e0"/>'
        )
        c.text(LEFT - 6, y(ms) + 4, f"{ms:g} ms", GREY, anchor="end")
    c.text(4, top + LAG_H / 2 + 4, "client lag", "#222")
    for st in guest.stalls:
        x0, x1 = c.x(st.start_s), c.x(st.end_s)
        tip = escape(f"guest stall {st.start_s:.2f}..{st.end_s:.2f} s: {st.ms} ms")
        c.add(
            f'<rect class="stall" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1.5):.1f}" '
            f'height="{LAG_H}" fill="#9e9e9e" fill-opacity="0.35"><title>{tip}</title></rect>'
        )
    fz = client.frozen
    if fz:
        x0, x1 = c.x(fz.start_s), c.x(fz.end_s)
        c.add(
            f'<rect class="frozen" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 1.5):.1f}" '
            f'height="{LAG_H}" fill="none" stroke="{RED}" stroke-dasharray="3 2">'
            f"<title>client frozen {escape(str(fz.ms))} ms</title></rect>"
        )
    if trace:
        pts = " ".join(f"{c.x(t):.1f},{y(ms):.1f}" for t, ms in trace)
        c.add(
            f'<polyline class="lag" points="{pts}" fill="none" stroke="{ORANGE}" '
            'stroke-width="1.5"><title>client lag (ms)</title></polyline>'
        )
    else:
        c.text(LEFT + 8, top + LAG_H / 2, "no heartbeat reading", GREY)
    c.add("</g>")


def _hold_bands(c: _Canvas, top: float) -> None:
    """The guard's holds, drawn through the lag plot too."""
    for x0, x1 in c.holds:
        c.add(
            f'<rect class="hold-band" x="{x0:.1f}" y="{top}" width="{max(x1 - x0, 2):.1f}" '
            f'height="{LAG_H}" fill="{PURPLE}" fill-opacity="0.12"><title>guard hold</title></rect>'
        )


def _nice_ceiling(ms: float) -> float:
    return next((v for v in (100, 200, 500, 1000, 2000, 5000, 10000, 20000, 60000) if v >= ms), ms)
