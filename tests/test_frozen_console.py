"""The frozen-console reading, calibrated against ground truth on the real lab.

One lab (guest `vm` on src, remote-viewer on the client host, the screen sampler
and the serial heartbeat watcher) serves three tests, each making a known stall
and checking that `spice/freeze.py` reads it, and reads it as the right party's:
- the client SIGSTOPped for 1.5 s: a client freeze of 1.5 s, no guest stall;
- the guest suspended through libvirt for 2 s: a guest stall of 2 s, no client freeze;
- 300 ms one-way delay src -> client on the display network: each frame shown 300 ms
  older (p50 of the frame ages) and the lag p50 up by at least that.
The recorded streams of each test are kept under tests/data/freeze/ by
TESTBED_RECORD_FREEZE=1 (what test_freeze.py replays).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.lab.guests import serial_path, start_guest
from testbed.lab.lab import Lab
from testbed.lab.links import LabLinks
from testbed.lab.spice import guest_display, spice_client
from testbed.model.profile import LinkProfile
from testbed.model.topology import load_topology
from testbed.spice import freeze
from testbed.spice.client import SpiceClient
from testbed.spice.heartbeat import SerialWatcher
from testbed.spice.heartbeat import write as write_heartbeats
from testbed.spice.screen import DisplayWatcher, screenshot

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "local.yaml"
DATA = Path(__file__).parent / "data" / "freeze"
TOLERANCE_S = 0.150
LAG_TOLERANCE_MS = 50.0


@dataclass
class Rig:
    lab: Lab
    client: SpiceClient
    screen: DisplayWatcher
    serial: SerialWatcher
    links: LabLinks

    def streams(self) -> tuple[list[freeze.Arrival], list[freeze.Frame]]:
        return self.serial.arrivals(), self.screen.frames()

    def record(self, name: str, t0: float, t1: float) -> None:
        if os.environ.get("TESTBED_RECORD_FREEZE") != "1":
            return
        arrivals, frames = self.streams()
        DATA.mkdir(parents=True, exist_ok=True)
        write_heartbeats(DATA / f"{name}.heartbeat.txt", arrivals)
        lines = [f"E {t0:.6f} {t1:.6f}"]
        lines += [f"F {t:.6f} {'-' if s is None else s}" for t, s in frames]
        (DATA / f"{name}.frames.txt").write_text("\n".join(lines) + "\n")


def _needs() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, libvirtd)")
    for tool in ("remote-viewer", "Xvfb", "libvirtd"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (make setup)")


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    _needs()
    out = tmp_path_factory.mktemp("frozen")
    lab = Lab.up(load_topology(str(TOPOLOGY)))
    stop: list[Callable[[], object]] = []
    try:
        g = start_guest(lab, "vm", fill_mib=8)
        serial = SerialWatcher(
            lab.hosts[g.host], serial_path(lab, g.host, g.domain), ledger=lab.ledger
        )
        serial.start()
        stop.append(serial.stop)
        client = spice_client(lab, out)
        client.connect(guest_display(lab, "vm").uri)
        client.wait_connected(30)
        stop.append(client.stop)
        screen = DisplayWatcher(
            lab.hosts["client"], lab.display("client"), out / "display.txt", ledger=lab.ledger
        )
        screen.start()
        stop.append(screen.stop)
        screen.wait_started()
        links = LabLinks(lab)
        try:
            _wait_for_frames(screen)
        finally:
            screenshot(lab.hosts["client"], lab.display("client"), out / "screen.png")
            print(f"client screen: {out / 'screen.png'}")
        yield Rig(lab, client, screen, serial, links)
    finally:
        for end in reversed(stop):
            end()
        lab.down()


def _wait_for_frames(screen: DisplayWatcher, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for _t, s in screen.frames() if s is not None) > 25:
            return
        time.sleep(0.2)
    raise AssertionError(f"the sampler read no heartbeat barcode in {timeout_s:.0f} s")


def _reading(
    rig: Rig, t0: float, t1: float
) -> tuple[freeze.Stretch | None, freeze.Stretch | None, dict[int, float]]:
    arrivals, frames = rig.streams()
    emitted = freeze.emission_times(arrivals)
    frozen = freeze.longest(freeze.client_freezes(frames, emitted, t1), t0, t1)
    stall = freeze.longest(freeze.guest_stalls(emitted), t0, t1)
    return frozen, stall, emitted


def _episode(
    begin: Callable[[], object], end: Callable[[], object], hold_s: float
) -> tuple[float, float, float, float]:
    """2 s calm, `begin`, `hold_s`, `end`, 2 s calm: (t0, after begin, after end, t1)."""
    time.sleep(2.0)
    t0 = time.monotonic()
    begin()
    t_a = time.monotonic()
    time.sleep(hold_s)
    end()
    t_b = time.monotonic()
    time.sleep(2.0)
    return t0, t_a, t_b, time.monotonic()


@pytest.mark.lab
@pytest.mark.timeout(240)
def test_a_stopped_client_reads_as_a_client_freeze(rig: Rig) -> None:
    pid = rig.client.pid
    assert pid is not None
    host = rig.lab.hosts["client"]
    t0, t_stop, t_cont, t1 = _episode(
        lambda: host.run(["kill", "-STOP", str(pid)]),
        lambda: host.run(["kill", "-CONT", str(pid)]),
        1.5,
    )
    rig.record("client-sigstop", t0, t1)
    frozen, stall, _ = _reading(rig, t0, t1)
    truth = t_cont - t_stop
    print(f"SIGSTOP {truth * 1e3:.0f} ms: frozen {frozen}, guest stall {stall}")
    assert frozen is not None and abs(frozen.end - frozen.start - truth) <= TOLERANCE_S
    assert stall is None or stall.ms < 300, f"a stopped client read as a guest stall: {stall}"


@pytest.mark.lab
@pytest.mark.timeout(240)
def test_a_suspended_guest_reads_as_a_guest_stall(rig: Rig) -> None:
    dom = rig.lab.conn("src").lookupByName(rig.lab.domain_name("vm"))
    t0, t_pause, t_resume, t1 = _episode(dom.suspend, dom.resume, 2.0)
    rig.record("guest-suspend", t0, t1)
    frozen, stall, _ = _reading(rig, t0, t1)
    truth = t_resume - t_pause
    print(f"suspend {truth * 1e3:.0f} ms: guest stall {stall}, frozen {frozen}")
    assert stall is not None and abs(stall.end - stall.start - truth) <= TOLERANCE_S
    assert frozen is None or frozen.ms < 300, f"a paused guest read as a client freeze: {frozen}"


def _lag_p50_ms(rig: Rig, t0: float, t1: float) -> tuple[float, float, float]:
    """p50 of the lag on the 100 Hz grid, p50 of the frames' ages as shown, frames/s."""
    arrivals, frames = rig.streams()
    emitted = freeze.emission_times(arrivals)
    lags = sorted(v for t, v in freeze.lag_series(frames, emitted, t1) if t0 <= t <= t1)
    ages = sorted(a for t, a in freeze.frame_ages(frames, emitted) if t0 <= t <= t1)
    assert lags and ages, "no lag samples"
    return (
        freeze.percentile(lags, 50) * 1000,
        freeze.percentile(ages, 50) * 1000,
        len(ages) / (t1 - t0),
    )


@pytest.mark.lab
@pytest.mark.timeout(240)
def test_a_delayed_display_link_reads_as_lag(rig: Rig) -> None:
    t0 = time.monotonic()
    time.sleep(4.0)
    idle = _lag_p50_ms(rig, t0, time.monotonic())
    rig.links.shape("display", "src", "client", LinkProfile(delay_ms=300))
    try:
        time.sleep(2.0)  # the frames in flight before the delay pass
        t1 = time.monotonic()
        time.sleep(5.0)
        t2 = time.monotonic()
        delayed = _lag_p50_ms(rig, t1, t2)
    finally:
        rig.links.clear("display", "src", "client")
        rig.links.close()
    rig.record("display-delay-300ms", t0, t2)
    print(
        "idle: lag p50 {:.1f} ms, frame age p50 {:.1f} ms, {:.1f} frames/s; 300 ms one-way delay: "
        "lag p50 {:.1f} ms, frame age p50 {:.1f} ms, {:.1f} frames/s".format(*idle, *delayed)
    )
    assert idle[0] < 150, f"idle lag {idle[0]:.1f} ms"
    # each frame reaches the screen 300 ms later than it does idle
    assert abs(delayed[1] - (300 + idle[1])) <= LAG_TOLERANCE_MS
    # and the lag a user sees is at least that; it is more, as the display channel's
    # flow control lets fewer frames through per round trip
    assert delayed[0] >= 300 + idle[0] - LAG_TOLERANCE_MS
