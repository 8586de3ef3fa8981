"""One scenario's timeline as inline SVG, drawn from its recorded events alone.

On one time axis: migration progress (a polyline), then a lane each for the lab,
the links, the client, the guard and the verdict. The switchover (migration.end) is
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
        self.height = self.lanes_top + LANE_H * len(LANES) + AXIS_H

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
        if label and left and x - 8 - 6.5 * len(label) > LEFT:
            self.text(x - 8, y + 4, label, color, anchor="end", on_top=True)
        elif label:
            self.text(x + 7, y + 4, label, color, on_top=True)

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
        if anchor == "start" and x > self.width - RIGHT - 6 * len(s):
            x, anchor = x - 14, "end"  # near the right edge: label to the left of its mark
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
    c = _Canvas(max((e["t"] for e in events), default=1.0) * 1.03, width)
    _frame(c)
    _progress(c, events)
    for e in events:
        _event(c, e, scenario)
    _guard_spans(c, events)
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
    c.text(x1 + 4, y + 4, "hold", PURPLE, on_top=True)


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
