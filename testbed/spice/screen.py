"""What the client's screen shows: screenshots, window lists, and a sampler of display changes.

The client's Xvfb listens only on an abstract socket of the client's network
namespace, so every X call runs in a child process inside that namespace
(`python -m testbed.spice.screen ...`, started through the host). The parent
side only reads what the child writes. Times are CLOCK_MONOTONIC, which the
namespace shares with the parent, so they compare with `time.monotonic()`.

The guest redraws its whole screen in a new colour 25 times a second, so the
longest gap between display changes measures how long the client showed a
frozen picture (`unresponsive_ms`), e.g. across a migration switchover.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import LabError
from testbed.hosts.base import Host
from testbed.hosts.display import XDisplay
from testbed.hosts.ledger import Ledger
from testbed.hosts.procs import stop_pids

log = logging.getLogger(__name__)

VIEWER_CLASS = "remote-viewer"
SAMPLE_HZ = 100
SAMPLE_SIZE = 16
STATUS_EVERY_S = 0.25


# ---- parent side -----------------------------------------------------------------


def _child_env(display: XDisplay) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **display.env()}


def _child_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "testbed.spice.screen", *args]


@dataclass(frozen=True)
class Window:
    """A top-level X window, as `windows` lists it."""

    id: int
    name: str
    wm_class: tuple[str, ...]
    mapped: bool
    x: int
    y: int
    width: int
    height: int

    @property
    def area(self) -> int:
        return self.width * self.height


def screenshot(host: Host, display: XDisplay, path: Path) -> Path:
    """Save the whole X screen of `display` as a PNG at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    host.run(_child_argv("shot", str(path)), env=_child_env(display), timeout=30)
    if not path.exists() or path.stat().st_size == 0:
        raise LabError(f"screenshot of {display.name} on {host.name} wrote nothing at {path}")
    return path


def list_windows(host: Host, display: XDisplay) -> list[Window]:
    """Top-level windows of `display`."""
    res = host.run(_child_argv("windows"), env=_child_env(display), timeout=30)
    return [Window(**{**w, "wm_class": tuple(w["wm_class"])}) for w in json.loads(res.stdout)]


def viewer_window(windows: list[Window]) -> Window | None:
    """The largest mapped remote-viewer window (the display, not its 10x10 leader)."""
    cands = [
        w for w in windows if w.mapped and VIEWER_CLASS in w.wm_class and w.width > 64 < w.height
    ]
    return max(cands, key=lambda w: w.area, default=None)


@dataclass(frozen=True)
class Gap:
    start: float  # monotonic
    end: float

    @property
    def ms(self) -> float:
        return (self.end - self.start) * 1000.0


class DisplayWatcher:
    """Samples a small square of the viewer's display at ~100 Hz in a child process.

    The child writes one line per pixel change (`C <t> <crc>`), a status line
    every 0.25 s (`S <t> <samples>`), and a line whenever it (re)finds the
    viewer window (`W <t> <id> <x> <y> <w> <h>` or `W <t> none`).
    """

    def __init__(
        self,
        host: Host,
        display: XDisplay,
        out_path: Path,
        *,
        ledger: Ledger | None = None,
        hz: int = SAMPLE_HZ,
        size: int = SAMPLE_SIZE,
    ) -> None:
        self.host, self.display, self.path = host, display, out_path
        self.ledger, self.hz, self.size = ledger, hz, size
        self.pid: int | None = None
        self._proc: Any = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        err = open(self.path.with_suffix(".err"), "wb")  # noqa: SIM115 - handed to the child
        try:
            self._proc = self.host.popen(
                _child_argv(
                    "watch", str(self.path), "--hz", str(self.hz), "--size", str(self.size)
                ),
                stdout=err,
                stderr=err,
                env=_child_env(self.display),
            )
        finally:
            err.close()
        self.pid = self._proc.pid
        if self.ledger is not None:
            self.ledger.record_process(
                "process", self.pid, name="display-watcher", netns=getattr(self.host, "netns", None)
            )

    def wait_started(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.samples()[1] > 0:
                return
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.05)
        err = self.path.with_suffix(".err")
        detail = err.read_text(errors="replace").strip()[-300:] if err.exists() else ""
        raise LabError(f"display watcher on {self.host.name} did not start: {detail}")

    def stop(self) -> None:
        if self._proc is not None:
            stop_pids([self._proc.pid], grace_s=2)
            self._proc.wait(timeout=5)
            self._proc = None

    def __enter__(self) -> DisplayWatcher:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- reading what the child wrote ---------------------------------------------------
    def _lines(self) -> list[list[str]]:
        try:
            text = self.path.read_text(errors="replace")
        except OSError:
            return []
        return [ln.split() for ln in text.splitlines() if ln.strip()]

    def changes(self) -> list[float]:
        """Monotonic times at which the sampled pixels changed."""
        return [float(p[1]) for p in self._lines() if p[0] == "C" and len(p) >= 3]

    def samples(self) -> tuple[float | None, int, float | None]:
        """(first sample time, samples taken, last sample time)."""
        first = last = None
        n = 0
        for p in self._lines():
            if p[0] == "S" and len(p) >= 3:
                t = float(p[1])
                first = t if first is None else first
                last, n = t, int(p[2])
        return first, n, last

    def longest_gap(self, window: tuple[float, float] | None = None) -> Gap | None:
        return longest_gap(self.changes(), window, self.samples())

    def longest_gap_ms(self, window: tuple[float, float] | None = None) -> float | None:
        """Longest time with no display change inside `window` (monotonic times), in ms."""
        g = self.longest_gap(window)
        return None if g is None else round(g.ms, 1)

    def rate_hz(self, window: tuple[float, float] | None = None) -> float:
        ch = self.changes()
        first, _n, last = self.samples()
        if first is None or last is None:
            return 0.0
        t0, t1 = window or (first, last)
        inside = [c for c in ch if t0 <= c <= t1]
        return len(inside) / (t1 - t0) if t1 > t0 else 0.0


def longest_gap(
    changes: list[float],
    window: tuple[float, float] | None,
    samples: tuple[float | None, int, float | None],
) -> Gap | None:
    """The longest interval with no change, within `window` clipped to when sampling ran."""
    first, _n, last = samples
    if first is None or last is None:
        return None
    t0, t1 = window or (first, last)
    t0, t1 = max(t0, first), min(t1, last)
    if t1 <= t0:
        return None
    points = [t0, *sorted(c for c in changes if t0 < c < t1), t1]
    best = max(zip(points, points[1:], strict=False), key=lambda ab: ab[1] - ab[0])
    return Gap(best[0], best[1])


# ---- child side (runs inside the client's namespace) ---------------------------------------


def _connect() -> Any:
    from Xlib import display as xdisplay

    return xdisplay.Display()


def _windows(d: Any) -> list[dict[str, Any]]:
    out = []
    for w in d.screen().root.query_tree().children:
        try:
            attrs, geom = w.get_attributes(), w.get_geometry()
            cls = w.get_wm_class() or ()
            name = w.get_wm_name() or ""
        except Exception:  # noqa: BLE001 - windows come and go while we look
            continue
        out.append(
            {
                "id": int(w.id),
                "name": str(name),
                "wm_class": [str(c) for c in cls],
                "mapped": attrs.map_state == 2,  # IsViewable
                "x": int(geom.x),
                "y": int(geom.y),
                "width": int(geom.width),
                "height": int(geom.height),
            }
        )
    return out


def _rgb(d: Any, data: bytes, width: int, height: int) -> bytes:
    """ZPixmap 32 bpp (depth 24) to packed RGB."""
    n = width * height
    rgb = bytearray(n * 3)
    msb = d.display.info.image_byte_order == 1  # X.MSBFirst
    b, g, r = (3, 2, 1) if msb else (0, 1, 2)
    rgb[0::3] = data[r::4][:n]
    rgb[1::3] = data[g::4][:n]
    rgb[2::3] = data[b::4][:n]
    return bytes(rgb)


def write_png(path: Path, width: int, height: int, rgb: bytes) -> None:
    """An 8-bit RGB PNG, no filters: enough for screenshots, no imaging library needed."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body))
            + kind
            + body
            + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
        )

    stride = width * 3
    raw = b"".join(b"\x00" + rgb[y * stride : (y + 1) * stride] for y in range(height))
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 6))
        + chunk(b"IEND", b"")
    )
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(png)
    tmp.replace(path)


def _shot(path: Path) -> None:
    from Xlib import X

    d = _connect()
    s = d.screen()
    w, h = s.width_in_pixels, s.height_in_pixels
    img = s.root.get_image(0, 0, w, h, X.ZPixmap, 0xFFFFFFFF)
    write_png(path, w, h, _rgb(d, img.data, w, h))


def _locate(d: Any, size: int) -> tuple[int, int, str]:
    """Where to sample: the centre of the viewer window, else of the screen."""
    ws = [
        w
        for w in _windows(d)
        if w["mapped"] and VIEWER_CLASS in w["wm_class"] and w["width"] > 64 < w["height"]
    ]
    s = d.screen()
    if not ws:
        return s.width_in_pixels // 2 - size // 2, s.height_in_pixels // 2 - size // 2, "none"
    w = max(ws, key=lambda w: w["width"] * w["height"])
    # below the menu and tool bars: the lower-middle of the window is the guest's display
    cx, cy = w["x"] + w["width"] // 2, w["y"] + (w["height"] * 3) // 5
    desc = f"{w['id']} {w['x']} {w['y']} {w['width']} {w['height']}"
    return cx - size // 2, cy - size // 2, desc


def _watch(out: Path, hz: int, size: int) -> None:
    from Xlib import X

    d = _connect()
    root = d.screen().root
    period = 1.0 / hz
    f = open(out, "a", buffering=1)  # noqa: SIM115 - line-buffered for the parent to read
    f.write(f"B {time.monotonic():.6f} {hz} {size}\n")
    last_crc: int | None = None
    where, x, y = "", 0, 0
    next_locate = next_status = 0.0
    n = 0
    while True:
        now = time.monotonic()
        if now >= next_locate:
            x, y, desc = _locate(d, size)
            if desc != where:
                where = desc
                f.write(f"W {now:.6f} {desc}\n")
            next_locate = now + 0.5
        try:
            img = root.get_image(x, y, size, size, X.ZPixmap, 0xFFFFFFFF)
        except Exception:  # noqa: BLE001 - a BadMatch while the screen changes; retry
            time.sleep(period)
            continue
        t = time.monotonic()
        n += 1
        crc = zlib.crc32(img.data)
        if crc != last_crc:
            f.write(f"C {t:.6f} {crc:08x}\n")
            last_crc = crc
        if t >= next_status:
            f.write(f"S {t:.6f} {n}\n")
            next_status = t + STATUS_EVERY_S
        time.sleep(max(0.0, period - (time.monotonic() - now)))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.spice.screen")
    sub = p.add_subparsers(dest="cmd", required=True)
    sh = sub.add_parser("shot", help="save the X screen as PNG")
    sh.add_argument("path", type=Path)
    sub.add_parser("windows", help="list top-level windows as JSON")
    wa = sub.add_parser("watch", help="append display-change times to a file")
    wa.add_argument("path", type=Path)
    wa.add_argument("--hz", type=int, default=SAMPLE_HZ)
    wa.add_argument("--size", type=int, default=SAMPLE_SIZE)
    a = p.parse_args(argv)
    if a.cmd == "shot":
        _shot(a.path)
    elif a.cmd == "windows":
        print(json.dumps(_windows(_connect())))
    else:
        try:
            _watch(a.path, a.hz, a.size)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
