"""What the client's screen shows: screenshots, window lists, and a sampler of display changes.

The client's Xvfb listens only on an abstract socket of the client host's network
namespace, so every X call runs in a child process on that host
(`python -m testbed.spice.screen ...`, through `Host.module_argv`). The parent
side uses only the Host interface: the child writes its files on the host, and
the parent reads them there (`read_bytes`) or copies them back (`get`), so the
same code serves a namespace on this machine and a machine over SSH.

The sampler's times are the host's CLOCK_MONOTONIC. Another machine's clock
differs from ours by a constant, measured when the watcher starts (`clock_offset`),
so every time the watcher returns is this machine's `time.monotonic()`.

The guest redraws its whole screen in a new colour 25 times a second, so the
longest gap between display changes measures how long the client showed a
frozen picture (`unresponsive_ms`), e.g. across a migration switchover.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import struct
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

from testbed.errors import LabError
from testbed.hosts.base import Host, Process
from testbed.hosts.display import XDisplay, x_env
from testbed.hosts.ledger import Ledger
from testbed.spice import barcode
from testbed.spice.freeze import Stretch

log = logging.getLogger(__name__)

VIEWER_CLASS = "remote-viewer"
SAMPLE_HZ = 100
SAMPLE_SIZE = 16
STATUS_EVERY_S = 0.25
CLOCK_TRIALS = 3
MODULE = "testbed.spice.screen"


# ---- parent side -----------------------------------------------------------------


def _scratch(host: Host, stem: str, suffix: str) -> PurePath:
    """A fresh path for a file of this module on `host`, under its state folder."""
    return host.state_dir / "screen" / f"{stem}-{secrets.token_hex(4)}{suffix}"


def clock_offset(host: Host, trials: int = CLOCK_TRIALS) -> float:
    """`host`'s CLOCK_MONOTONIC minus ours, in seconds (0 for a namespace of this machine).

    Each trial reads the host's clock once, between our readings t0 and t1, so the
    offset lies in [r - t1, r - t0]. A command's session is set up before it runs
    and its answer comes back in one trip, and the child reads its clock as its last
    act, so r - t1 is the tight side: the best trial's (largest) r - t1 is kept.
    """
    argv = host.module_argv(MODULE, "clock")
    best: float | None = None
    for _ in range(max(1, trials)):
        t0 = time.monotonic()
        out = host.run(argv, timeout=30).stdout
        t1 = time.monotonic()
        try:
            r = float(out.split()[0])
        except (IndexError, ValueError):
            raise LabError(
                f"{host.name}: cannot read its monotonic clock: {out[-200:]!r}"
            ) from None
        best = r - t1 if best is None else max(best, r - t1)
        log.debug(
            "%s: clock trial: round trip %.1f ms, r - t1 %.2f ms",
            host.name,
            (t1 - t0) * 1e3,
            (r - t1) * 1e3,
        )
    assert best is not None
    return best


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
    """Save the whole X screen of `display` (on `host`) as a PNG at `path` on this machine."""
    remote = _scratch(host, "shot", ".png")
    host.makedirs(remote.parent)
    try:
        host.run(host.module_argv(MODULE, "shot", str(remote)), env=x_env(display), timeout=30)
        host.get(remote, path)
    finally:
        host.run(["rm", "-f", str(remote)], check=False)
    if not path.exists() or path.stat().st_size == 0:
        raise LabError(f"screenshot of {display.name} on {host.name} wrote nothing at {path}")
    return path


def list_windows(host: Host, display: XDisplay) -> list[Window]:
    """Top-level windows of `display`."""
    res = host.run(host.module_argv(MODULE, "windows"), env=x_env(display), timeout=30)
    return [Window(**{**w, "wm_class": tuple(w["wm_class"])}) for w in json.loads(res.stdout)]


def viewer_window(windows: list[Window]) -> Window | None:
    """The largest mapped remote-viewer window (the display, not its 10x10 leader)."""
    cands = [
        w for w in windows if w.mapped and VIEWER_CLASS in w.wm_class and w.width > 64 < w.height
    ]
    return max(cands, key=lambda w: w.area, default=None)


class DisplayWatcher:
    """Samples a small square of the viewer's display at ~100 Hz in a child on the host.

    The child appends to a file on the host one line per pixel change
    (`C <t> <crc>`), a status line every 0.25 s (`S <t> <samples>`), and a line
    whenever it (re)finds the viewer window (`W <t> <id> <x> <y> <w> <h>` or
    `W <t> none`), times in the host's clock. The parent reads what was appended
    since its last look and keeps the lines, times turned into ours. `stop` writes
    them to `out_path` (on this machine), in our clock, after an `O <offset>` line.
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
        self.clock_offset = 0.0  # host's monotonic clock minus ours, seconds
        self.remote_path: PurePath | None = None  # the child's file, on the host
        self._proc: Process | None = None
        self._reset()

    def _reset(self) -> None:
        self._offset = 0
        self._partial = b""
        self._lines_seen: list[list[str]] = []  # times already in our clock
        self._changes: list[float] = []
        self._frames: list[tuple[float, int | None]] = []
        self._first: float | None = None
        self._last: float | None = None
        self._n = 0

    def start(self) -> None:
        self._reset()
        self.clock_offset = clock_offset(self.host)
        self.remote_path = _scratch(self.host, self.path.stem, ".txt")
        self.host.write_text(self.remote_path, "")
        args = ["watch", str(self.remote_path), "--hz", str(self.hz), "--size", str(self.size)]
        self._proc = self.host.start(
            self.host.module_argv(MODULE, *args),
            log=self.remote_path.with_suffix(".err"),
            env=x_env(self.display),
        )
        self.pid = self._proc.pid
        if self.ledger is not None:
            self.host.record_process(self.ledger, self._proc, "process", name="display-watcher")
        log.info(
            "display watcher on %s (pid %s), clock offset %.2f ms",
            self.host.name,
            self.pid,
            self.clock_offset * 1e3,
        )

    def wait_started(self, timeout_s: float = 10) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.samples()[1] > 0:
                return
            if self._proc is not None and self._proc.poll() is not None:
                break
            time.sleep(0.05)
        detail = ""
        if self.remote_path is not None:
            detail = self.host.read_text(self.remote_path.with_suffix(".err")).strip()[-300:]
        raise LabError(f"display watcher on {self.host.name} did not start: {detail}")

    def stop(self) -> None:
        """End the child, keep its last lines, write them to `out_path`, remove its files."""
        if self._proc is None:
            return
        try:
            self.host.stop(self._proc, grace_s=2)
            self._refresh()
        finally:
            self._proc = None
            if self.remote_path is not None:
                err = self.remote_path.with_suffix(".err")
                self.host.run(["rm", "-f", str(self.remote_path), str(err)], check=False)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        head = f"O {self.clock_offset:.6f} {self.host.name}\n"
        body = "".join(" ".join(p) + "\n" for p in self._lines_seen)
        self.path.write_text(head + body)

    def __enter__(self) -> DisplayWatcher:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # -- reading what the child wrote ---------------------------------------------------
    def _refresh(self) -> None:
        """Take in what the child appended since the last look (nothing once stopped)."""
        if self._proc is None or self.remote_path is None:
            return
        chunk = self.host.read_bytes(self.remote_path, self._offset)
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            p = raw.decode(errors="replace").split()
            if len(p) < 2 or p[0] not in ("B", "C", "F", "S", "U", "W", "Y"):
                continue
            try:
                t = float(p[1]) - self.clock_offset
            except ValueError:
                continue
            p[1] = f"{t:.6f}"
            self._lines_seen.append(p)
            if p[0] == "C" and len(p) >= 3:
                self._changes.append(t)
            elif p[0] == "F" and len(p) >= 3:
                self._frames.append((t, int(p[2])))
            elif p[0] == "U":
                self._frames.append((t, None))
            elif p[0] == "S" and len(p) >= 3:
                self._first = t if self._first is None else self._first
                self._last, self._n = t, int(p[2])

    def changes(self) -> list[float]:
        """Times (our monotonic clock) at which the sampled pixels changed."""
        self._refresh()
        return list(self._changes)

    def frames(self) -> list[tuple[float, int | None]]:
        """(time, frame number the client started showing, None: no readable frame)."""
        self._refresh()
        return list(self._frames)

    def samples(self) -> tuple[float | None, int, float | None]:
        """(first sample time, samples taken, last sample time), in our monotonic clock."""
        self._refresh()
        return self._first, self._n, self._last

    def longest_gap(self, window: tuple[float, float] | None = None) -> Stretch | None:
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


def read_frames(path: Path) -> list[tuple[float, int | None]]:
    """The `F`/`U` lines of a watcher's file (`stop` wrote it, our clock) as frames."""
    out: list[tuple[float, int | None]] = []
    for line in path.read_text().splitlines():
        p = line.split()
        if len(p) >= 3 and p[0] == "F":
            out.append((float(p[1]), int(p[2])))
        elif len(p) >= 2 and p[0] == "U":
            out.append((float(p[1]), None))
    return out


def longest_gap(
    changes: list[float],
    window: tuple[float, float] | None,
    samples: tuple[float | None, int, float | None],
) -> Stretch | None:
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
    return Stretch(best[0], best[1])


# ---- child side (runs on the client host) ---------------------------------------


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


def _viewer(d: Any) -> dict[str, Any] | None:
    ws = [
        w
        for w in _windows(d)
        if w["mapped"] and VIEWER_CLASS in w["wm_class"] and w["width"] > 64 < w["height"]
    ]
    return max(ws, key=lambda w: w["width"] * w["height"], default=None)


def _find_band(d: Any, w: dict[str, Any]) -> int | None:
    """The window row (root y) through the middle of the guest's barcode, if it shows one."""
    from Xlib import X

    msb = d.display.info.image_byte_order == 1
    try:
        img = d.screen().root.get_image(
            w["x"], w["y"], w["width"], w["height"], X.ZPixmap, 0xFFFFFFFF
        )
    except Exception:  # noqa: BLE001 - the window moved or went while we looked
        return None
    stride = len(img.data) // w["height"]
    rows = [
        y
        for y in range(0, w["height"], 2)
        if barcode.decode(barcode.bright_mask(img.data[y * stride :], w["width"], msb)) is not None
    ]
    return w["y"] + rows[len(rows) // 2] if rows else None


def _watch(out: Path, hz: int, size: int) -> None:
    """Sample one pixel row across the viewer window `hz` times a second.

    The row goes through the guest's barcode once it is found (`Y` line); each
    sample's CRC tells a display change (`C`), its decoded frame number a new
    frame (`F <t> <seq>`), and `U <t>` the first sample that showed no readable
    frame after one that did. Until the band is found the row sits at 3/5 of the
    window's height (below the menu and tool bars), so `C` lines still come.
    """
    from Xlib import X

    d = _connect()
    root = d.screen().root
    msb = d.display.info.image_byte_order == 1
    period = 1.0 / hz
    f = open(out, "a", buffering=1)  # noqa: SIM115 - line-buffered for the parent to read
    f.write(f"B {time.monotonic():.6f} {hz} {size}\n")
    last_crc: int | None = None
    last_seq: int | None = -1
    where, band = "", None
    win: dict[str, Any] | None = None
    next_locate = next_status = 0.0
    n = misses = 0
    while True:
        now = time.monotonic()
        if now >= next_locate:
            win = _viewer(d)
            desc = (
                "none"
                if win is None
                else " ".join(str(win[k]) for k in ("id", "x", "y", "width", "height"))
            )
            if desc != where:
                where, band = desc, None
                f.write(f"W {now:.6f} {desc}\n")
            if win is not None and (band is None or misses > hz // 2):
                band, misses = _find_band(d, win), 0
                if band is not None:
                    f.write(f"Y {time.monotonic():.6f} {band}\n")
            next_locate = now + 0.5
        if win is None:
            s = d.screen()
            x, y, width = 0, s.height_in_pixels // 2, s.width_in_pixels
        else:
            x, width = win["x"], win["width"]
            y = band if band is not None else win["y"] + (win["height"] * 3) // 5
        try:
            img = root.get_image(x, y, width, 1, X.ZPixmap, 0xFFFFFFFF)
        except Exception:  # noqa: BLE001 - a BadMatch while the screen changes; retry
            time.sleep(period)
            continue
        t = time.monotonic()
        n += 1
        crc = zlib.crc32(img.data)
        if crc != last_crc:
            f.write(f"C {t:.6f} {crc:08x}\n")
            last_crc = crc
            seq = barcode.decode(barcode.bright_mask(img.data, width, msb))
            if seq is not None and seq != last_seq:
                f.write(f"F {t:.6f} {seq}\n")
            elif seq is None and last_seq is not None:
                f.write(f"U {t:.6f}\n")
            misses = misses + 1 if seq is None else 0
            last_seq = seq
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
    sub.add_parser("clock", help="print this host's monotonic clock, as the last act")
    wa = sub.add_parser("watch", help="append display-change times to a file")
    wa.add_argument("path", type=Path)
    wa.add_argument("--hz", type=int, default=SAMPLE_HZ)
    wa.add_argument("--size", type=int, default=SAMPLE_SIZE)
    a = p.parse_args(argv)
    if a.cmd == "clock":
        # read as late as possible and leave at once: the reading ends the exchange
        os.write(1, f"{time.monotonic():.9f}\n".encode())
        os._exit(0)
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
