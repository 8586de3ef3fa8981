"""Who stalled: the guest (no new frame emitted) or the client (an old frame kept on screen).

Pure functions on two recorded streams, both in this machine's monotonic clock:
- arrivals: `(t_read, seq, guest_ms)` per serial heartbeat line (`heartbeat.py`);
- frames: `(t, seq | None)` each time the client's screen started showing frame
  `seq` (None: no readable frame), from the screen sampler (`screen.py`).

Emission times. A line is read after it was emitted, and the guest's clock never
runs ahead of the host's (it stops while the VM is paused), so for any later
line j, `emitted_i <= t_read_j - (guest_ms_j - guest_ms_i)`. The smallest such
bound over the next `BOUND_WINDOW_MS` of guest time is the estimate: the
luckiest read after i, so polling delay and bursts of buffered lines drop out.

Definitions:
- lag at time t: `t - emitted(seq the client shows at t)`, on a `GRID_S` grid
  once the client showed its first frame;
- a guest stall: consecutive emitted frames further apart than `STALL_MIN_MS`;
- a client freeze: while the client shows frame s, from the moment it could
  have shown a newer one (`emitted(next) + base lag`, the base lag being the
  client's usual lag at a frame change, its BASE_PERCENTILE) until it shows a
  new frame. A guest stall is no client freeze: nothing newer existed.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from testbed.spice.barcode import SEQ_MASK

Arrival = tuple[float, int, int]
Frame = tuple[float, int | None]

BOUND_WINDOW_MS = 2000
STALL_MIN_MS = 120.0  # three ticks at 25 Hz
GRID_S = 0.01  # the sampler's rate, 100 Hz
BASE_PERCENTILE = 10
LIVE_SLACK_S = 0.1  # "live again": a new frame whose lag is within this of the base lag
BEFORE_SWITCHOVER_S = 5.0
SWITCHOVER_SEARCH_S = 5.0  # the switchover's guest stall lies this long before the job's end


@dataclass(frozen=True)
class Stretch:
    start: float  # monotonic
    end: float

    @property
    def ms(self) -> float:
        return round((self.end - self.start) * 1000.0, 1)

    def overlaps(self, t0: float, t1: float) -> bool:
        return self.start < t1 and self.end > t0

    def to_json(self, t0: float = 0.0) -> dict[str, float]:
        return {
            "start_s": round(self.start - t0, 3),
            "end_s": round(self.end - t0, 3),
            "ms": self.ms,
        }


def emission_times(
    arrivals: Sequence[Arrival], window_ms: int = BOUND_WINDOW_MS
) -> dict[int, float]:
    """seq -> estimated emission time, from the arrival times of the serial lines."""
    lines = sorted({s: (t, s, ms) for t, s, ms in arrivals}.values(), key=lambda a: a[1])
    out: dict[int, float] = {}
    best: deque[tuple[float, int]] = (
        deque()
    )  # (offset, guest_ms), offsets increasing: a sliding min
    # walk from the end so each line sees the lines after it
    for i in range(len(lines) - 1, -1, -1):
        t, s, ms = lines[i]
        off = t - ms / 1000.0
        while best and best[-1][0] >= off:
            best.pop()
        best.append((off, ms))
        while best and best[0][1] - ms > window_ms:
            best.popleft()
        out[s] = ms / 1000.0 + best[0][0]
    return out


def guest_stalls(emitted: dict[int, float], min_ms: float = STALL_MIN_MS) -> list[Stretch]:
    """Stretches with no new frame emitted, longer than `min_ms`."""
    times = [emitted[s] for s in sorted(emitted)]
    return [
        Stretch(a, b) for a, b in zip(times, times[1:], strict=False) if (b - a) * 1000 > min_ms
    ]


def _full_seq(low: int, hint: int) -> int:
    """The full frame number whose low bits the screen showed, nearest to `hint`."""
    base = hint - (hint & SEQ_MASK) + low
    return min((base - SEQ_MASK - 1, base, base + SEQ_MASK + 1), key=lambda c: abs(c - hint))


def shown(frames: Sequence[Frame], emitted: dict[int, float]) -> list[tuple[float, int]]:
    """The frames the client showed that the guest is known to have emitted, in order."""
    out: list[tuple[float, int]] = []
    last = min(emitted, default=0)
    for t, low in frames:
        if low is None:
            continue
        s = _full_seq(low, last)
        if s in emitted:
            out.append((t, s))
            last = s
    return out


def lag_series(
    frames: Sequence[Frame], emitted: dict[int, float], end: float, step: float = GRID_S
) -> list[tuple[float, float]]:
    """(t, lag in s) every `step` from the first shown frame until `end`."""
    sh = shown(frames, emitted)
    if not sh:
        return []
    out = []
    i, t = 0, sh[0][0]
    while t <= end:
        while i + 1 < len(sh) and sh[i + 1][0] <= t:
            i += 1
        out.append((t, t - emitted[sh[i][1]]))
        t += step
    return out


def frame_ages(frames: Sequence[Frame], emitted: dict[int, float]) -> list[tuple[float, float]]:
    """(t, age in s) of each frame as the client starts showing it: the display path's delay.

    Unlike the lag on the grid, this leaves out how long a frame then stays up, which
    grows when the display channel's flow control lets fewer frames through per round
    trip (seen: 25 frames/s idle, about 10 over a 300 ms one-way delay).
    """
    return [(t, t - emitted[s]) for t, s in shown(frames, emitted)]


def base_lag(frames: Sequence[Frame], emitted: dict[int, float]) -> float | None:
    """The client's usual lag when it shows a new frame (its BASE_PERCENTILE), seconds."""
    ages = sorted(a for _t, a in frame_ages(frames, emitted))
    return percentile(ages, BASE_PERCENTILE) if ages else None


def client_freezes(
    frames: Sequence[Frame], emitted: dict[int, float], end: float, min_ms: float = 0.0
) -> list[Stretch]:
    """Stretches where a newer frame could have arrived but the screen kept an old one."""
    sh = shown(frames, emitted)
    base = base_lag(frames, emitted)
    if not sh or base is None:
        return []
    seqs = sorted(emitted)
    out = []
    for k, (ta, s) in enumerate(sh):
        tb = sh[k + 1][0] if k + 1 < len(sh) else end
        i = bisect.bisect_right(seqs, s)
        if i >= len(seqs):
            continue
        start = max(ta, emitted[seqs[i]] + base)
        if tb > start and (tb - start) * 1000 > min_ms:
            out.append(Stretch(start, tb))
    return out


def live_again(frames: Sequence[Frame], emitted: dict[int, float], after: float) -> float | None:
    """The first time after `after` the client shows a new frame at about its base lag."""
    base = base_lag(frames, emitted)
    if base is None:
        return None
    for t, s in shown(frames, emitted):
        if t > after and t - emitted[s] <= base + LIVE_SLACK_S:
            return t
    return None


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of sorted `values`."""
    k = max(0, min(len(values) - 1, round(p / 100 * (len(values) - 1))))
    return values[k]


def longest(
    stretches: Sequence[Stretch], t0: float | None = None, t1: float | None = None
) -> Stretch | None:
    """The longest stretch, clipped to [t0, t1] when given."""
    lo = float("-inf") if t0 is None else t0
    hi = float("inf") if t1 is None else t1
    clipped = [Stretch(max(s.start, lo), min(s.end, hi)) for s in stretches if s.overlaps(lo, hi)]
    return max(clipped, key=lambda s: s.end - s.start, default=None)


@dataclass(frozen=True)
class FreezeReport:
    """What result.json keeps: client freeze and lag, guest stalls, all in ms."""

    frozen_ms: float | None
    frozen: Stretch | None
    window: tuple[float, float] | None
    lag_ms: dict[str, float] | None
    base_lag_ms: float | None
    stall_ms: float | None  # the longest guest stall
    switchover_stall: Stretch | None
    stalls: list[Stretch]
    lag: list[tuple[float, float]]

    def trace(self, t0: float, bin_s: float = 0.1) -> list[list[float]]:
        """The lag as [seconds since t0, ms], the largest per `bin_s` (what a plot needs)."""
        bins: dict[int, float] = {}
        for t, v in self.lag:
            k = int((t - t0) / bin_s)
            bins[k] = max(bins.get(k, v), v)
        return [[round(k * bin_s, 2), round(v * 1000, 1)] for k, v in sorted(bins.items())]


def analyse(
    arrivals: Sequence[Arrival],
    frames: Sequence[Frame],
    end: float,
    switchover: float | None,
) -> FreezeReport:
    """The whole reading for one scenario; `switchover` is when the migration job ended.

    The switchover itself is the end of the longest guest stall in the
    SWITCHOVER_SEARCH_S before the job's end (libvirt reports the end seconds after
    the guest resumed on the destination); the freeze window runs from
    BEFORE_SWITCHOVER_S before it until the client shows a live frame after it.
    """
    emitted = emission_times(arrivals)
    stalls = guest_stalls(emitted)
    lag = lag_series(frames, emitted, end)
    lags = sorted(v for _t, v in lag)
    lag_ms = None
    if lags:
        lag_ms = {k: round(percentile(lags, p) * 1000, 1) for k, p in (("p50", 50), ("p99", 99))}
        lag_ms["max"] = round(lags[-1] * 1000, 1)
    base = base_lag(frames, emitted)
    frozen = window = sw_stall = None
    if switchover is not None:
        # the guest's pause at the switchover: libvirt's job ends seconds after it
        near = [s for s in stalls if s.overlaps(switchover - SWITCHOVER_SEARCH_S, switchover + 0.2)]
        sw_stall = max(near, key=lambda s: s.end - s.start, default=None)
        at = sw_stall.end if sw_stall else switchover
        t0 = at - BEFORE_SWITCHOVER_S
        t1 = live_again(frames, emitted, at) or end
        window = (t0, t1)
        frozen = longest(client_freezes(frames, emitted, end), t0, t1)
    longest_stall = longest(stalls)
    return FreezeReport(
        frozen_ms=None if window is None else (frozen.ms if frozen else 0.0),
        frozen=frozen,
        window=window,
        lag_ms=lag_ms,
        base_lag_ms=None if base is None else round(base * 1000, 1),
        stall_ms=longest_stall.ms if longest_stall else 0.0 if emitted else None,
        switchover_stall=sw_stall,
        stalls=stalls,
        lag=lag,
    )
