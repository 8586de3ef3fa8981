"""spice/freeze.py and spice/barcode.py as pure functions, on streams recorded on the real lab.

tests/data/freeze/ holds what test_frozen_console.py recorded (TESTBED_RECORD_FREEZE=1):
`<name>.heartbeat.txt` (serial heartbeat arrivals) and `<name>.frames.txt` (an `E t0 t1`
line: the test's window, then the frames the screen sampler read), in one clock.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.spice import barcode, freeze
from testbed.spice.heartbeat import parse

DATA = Path(__file__).parent / "data" / "freeze"


def _load(name: str) -> tuple[list[freeze.Arrival], list[freeze.Frame], float, float]:
    arrivals = parse((DATA / f"{name}.heartbeat.txt").read_text())
    head, *rows = (DATA / f"{name}.frames.txt").read_text().splitlines()
    t0, t1 = (float(x) for x in head.split()[1:])
    frames: list[freeze.Frame] = []
    for row in rows:
        _f, t, s = row.split()
        frames.append((float(t), None if s == "-" else int(s)))
    return arrivals, frames, t0, t1


def test_a_stopped_client_is_a_client_freeze_not_a_guest_stall() -> None:
    arrivals, frames, t0, t1 = _load("client-sigstop")
    emitted = freeze.emission_times(arrivals)
    frozen = freeze.longest(freeze.client_freezes(frames, emitted, t1), t0, t1)
    stall = freeze.longest(freeze.guest_stalls(emitted), t0, t1)
    assert frozen is not None and 1350 <= frozen.ms <= 1650  # SIGSTOP for 1.50 s
    assert stall is None or stall.ms < 300


def test_a_paused_guest_is_a_guest_stall_not_a_client_freeze() -> None:
    arrivals, frames, t0, t1 = _load("guest-suspend")
    emitted = freeze.emission_times(arrivals)
    stall = freeze.longest(freeze.guest_stalls(emitted), t0, t1)
    frozen = freeze.longest(freeze.client_freezes(frames, emitted, t1), t0, t1)
    assert stall is not None and 1850 <= stall.ms <= 2150  # suspended for 2.00 s
    assert frozen is None or frozen.ms < 300
    # the lag grows while nothing new exists, but only the guest's stall explains it
    lag = [v for t, v in freeze.lag_series(frames, emitted, t1) if stall.start < t < stall.end]
    assert max(lag) > 1.8


def test_a_delayed_link_shows_in_the_frames_age() -> None:
    arrivals, frames, t0, t1 = _load("display-delay-300ms")
    emitted = freeze.emission_times(arrivals)
    ages = freeze.frame_ages(frames, emitted)
    idle = sorted(a for t, a in ages if t0 <= t < t0 + 4)
    delayed = sorted(a for t, a in ages if t1 - 5 <= t <= t1)
    up = freeze.percentile(delayed, 50) - freeze.percentile(idle, 50)
    assert 0.25 <= up <= 0.35
    # live frames at a lag: no client freeze although every frame is 300 ms old
    frozen = freeze.longest(freeze.client_freezes(frames, emitted, t1), t1 - 5, t1)
    assert frozen is None or frozen.ms < 1000


def test_emission_times_undo_read_delays_and_survive_a_pause() -> None:
    # emitted every 40 ms from t=100 s; the guest clock stops for a 2 s pause after seq 50
    true = {s: 100 + 0.04 * s + (2.0 if s > 50 else 0.0) for s in range(1, 101)}
    guest_ms = {s: 5000 + 40 * s for s in true}
    # reads 1-9 ms late, and a 300 ms burst where the reader was starved (seq 20-27)
    arrivals = [
        (
            true[s] + (0.3 - 0.04 * (s - 20) if 20 <= s <= 27 else 0.001 + (s * 7 % 9) / 1000),
            s,
            guest_ms[s],
        )
        for s in true
    ]
    est = freeze.emission_times(arrivals)
    errors = sorted(est[s] - true[s] for s in true)
    assert errors[0] >= 0 and errors[-1] < 0.010  # never before the truth, at most a read late
    assert errors[len(errors) // 2] < 0.002  # mostly the luckiest read's 1 ms
    stalls = freeze.guest_stalls(est)
    assert len(stalls) == 1 and abs(stalls[0].ms - 2040) <= 10


def test_lag_and_freeze_on_a_synthetic_stopped_client() -> None:
    emitted = {s: 10 + 0.04 * s for s in range(0, 200)}
    # shows each frame 30 ms after it was emitted, except frames 50..87: stuck on 49
    frames: list[freeze.Frame] = [
        (emitted[s] + 0.03, s & barcode.SEQ_MASK) for s in range(0, 200) if not 50 <= s < 88
    ]
    fr = freeze.client_freezes(frames, emitted, end=emitted[199] + 0.1)
    longest = freeze.longest(fr)
    assert longest is not None and abs(longest.ms - 38 * 40) < 1
    assert freeze.base_lag(frames, emitted) == pytest.approx(0.03)


@pytest.mark.parametrize("seq", [0, 1, 2, 60, 61, 1234, barcode.SEQ_MASK])
def test_barcode_round_trip_at_any_scale(seq: int) -> None:
    for slot_px, left, right in ((27, 14, 15), (10, 0, 3), (41, 100, 7)):
        row = [0] * left + [b for b in barcode.encode(seq) for _ in range(slot_px)] + [0] * right
        assert barcode.decode(bytes(row)) == seq


def test_barcode_rejects_a_torn_or_missing_row() -> None:
    row = bytearray(b for b in barcode.encode(777) for _ in range(27))
    row[27 * 18 + 13] ^= 1  # one slot's middle flipped: a torn frame
    assert barcode.decode(bytes(row)) is None
    assert barcode.decode(bytes(200)) is None
    flipped = barcode.encode(777)
    flipped[18] ^= 1  # a clean one-bit error: the check catches it
    assert barcode.decode(bytes(b for b in flipped for _ in range(27))) is None


def test_bright_mask_reads_zpixmap_rows() -> None:
    grey, blue, white = (0xAA, 0xAA, 0xAA), (0xAA, 0, 0), (0xFF, 0xFF, 0xFF)  # B, G, R
    data = b"".join(bytes([*px, 0]) for px in (grey, blue, white, (0, 0, 0)))
    assert barcode.bright_mask(data, 4) == bytes([1, 0, 1, 0])


def test_a_seamless_switchover_reads_its_downtime_not_a_long_freeze() -> None:
    """late-client/fix-on of bug-884631 (seamless; libvirt's downtime 81 ms)."""
    arrivals, frames, switchover, end = _load("scenario-late-client-fix-on")
    r = freeze.analyse(arrivals, frames, end, switchover)
    assert r.switchover_stall is not None and 81 <= r.switchover_stall.ms < 400
    # the switchover is the guest's pause, seconds before libvirt's job ended
    assert r.window is not None and r.window[1] < switchover
    assert r.frozen_ms is not None and r.frozen_ms < 81 + 1000  # downtime + 1 s
    assert r.lag_ms is not None and r.lag_ms["p50"] < 150


def test_a_switch_host_over_a_slow_link_reads_the_reconnect() -> None:
    """slow-dst/fix-off of bug-884631 (switch-host over a 1 s one-way client -> dst link)."""
    arrivals, frames, switchover, end = _load("scenario-slow-dst-fix-off")
    r = freeze.analyse(arrivals, frames, end, switchover)
    assert r.frozen is not None and r.frozen_ms is not None and r.frozen_ms > 10_000
    assert r.switchover_stall is not None and r.switchover_stall.ms < 500  # not the guest
    assert r.window is not None and r.frozen.end <= r.window[1]
