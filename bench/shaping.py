"""Benchmark: how close the shaping engine gets to what it is asked, on scratch namespaces.

Sweeps delay (0, 10, 100, 500 ms), rate (1, 10, 100 mbit, each at 0 and 100 ms), the low
end (256, 512, 1000 kbit at 0, 10, 100 ms), jitter (10 ms, normal and uniform), loss (0,
1, 5 %), plus TCP through the delay line; prints per point asked vs measured and the
error, as JSON (stdout) and a table (stderr). Goals (userspace engine):
- RTT error at most 1 ms + 3 % of the asked delay;
- goodput 90-102 % of the asked rate up to 100 mbit at up to 100 ms delay;
- one TCP flow through the delay line: >= 500 Mbit/s with no added delay (1 us, so the
  packets do go through the queue), >= 200 Mbit/s through 100 ms.
Loss points have no goal, only the binomial spread (400 probes). Not a test: it
reports, it never fails on a slow run. A subset of the cross product, about a minute.

    .venv/bin/python bench/shaping.py [--engine auto|kernel-netem|userspace-nfqueue]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from testbed.hosts.ledger import Ledger
from testbed.model.profile import LinkProfile
from testbed.net.probe import probe
from testbed.net.shaping.base import ShapingEngine, enter_argv
from testbed.net.shaping.detect import ENGINES, select_engine
from testbed.net.shaping.scratch import ScratchNet

DELAYS_MS = (0, 10, 100, 500)
RATES_MBIT = (1, 10, 100)
RATE_DELAYS_MS = (0, 100)
# the low end slow WAN clients live on: each rate at each delay
LOW_RATES_KBIT = (256, 512, 1000)
LOW_DELAYS_MS = (0, 10, 100)
LOSSES_PCT = (0, 1, 5)
LOSS_PROBES = 400


def rtt_goal_ms(delay_ms: float) -> float:
    return 1.0 + 0.03 * delay_ms


def run(eng: ShapingEngine, net: ScratchNet) -> dict[str, Any]:
    c, d = net.hosts["client"], net.hosts["dst"]
    cd = net.direction("client", "dst")
    points: list[dict[str, Any]] = []

    def shape(**kw: Any) -> LinkProfile:
        p = LinkProfile.parse(kw)
        eng.apply({cd: p} if not p.is_empty() else {})
        eng.verify()
        return p

    shape()
    base = probe(c, d, pings=50, goodput_s=0).rtt_ms["avg"]  # type: ignore[index]

    for delay in DELAYS_MS:
        shape(delay=f"{delay}ms")
        r = probe(c, d, pings=20 if delay < 500 else 10, goodput_s=0)
        measured = r.rtt_ms["avg"]  # type: ignore[index]
        err = measured - base - delay
        goal = rtt_goal_ms(delay)
        points.append(
            point(
                "delay",
                f"delay {delay}ms",
                asked=f"+{delay} ms RTT",
                measured=f"{measured:.3f} ms RTT",
                error=round(err, 3),
                unit="ms",
                ok=abs(err) <= goal,
                goal=f"|err| <= {goal:.2f} ms",
                asked_value=delay,
                measured_value=round(measured - base, 3),
                rtt=r.rtt_ms,
            )
        )

    def goodput(kind: str, name: str, asked: str, rate_mbit: float, **window: float) -> None:
        r = probe(c, d, pings=0, **window)
        g = r.goodput_mbit or 0.0
        pct = 100.0 * g / rate_mbit
        shown = f"{g:.3f} Mbit/s" if kind == "rate" else f"{g * 1000:.1f} kbit/s"
        points.append(
            point(
                kind,
                name,
                asked=asked,
                measured=shown,
                error=round(pct - 100, 2),
                unit="%",
                ok=90 <= pct <= 102,
                goal="90-102 % of rate",
                asked_value=rate_mbit,
                measured_value=round(g, 3 if kind == "rate" else 4),
            )
        )

    for delay in RATE_DELAYS_MS:
        for rate in RATES_MBIT:
            shape(rate=f"{rate}mbit", delay=f"{delay}ms")
            name = f"rate {rate}mbit, delay {delay}ms"
            omit = 2.0 if delay else 1.0
            goodput("rate", name, f"{rate} Mbit/s", rate, goodput_s=4.0, omit_s=omit)

    for delay in LOW_DELAYS_MS:
        for kbit in LOW_RATES_KBIT:
            shape(rate=f"{kbit}kbit", delay=f"{delay}ms")
            # a few seconds more at the low end: slow start and the first queue fill
            # are a larger share of a short window there
            name = f"rate {kbit}kbit, delay {delay}ms"
            goodput("low-rate", name, f"{kbit} kbit/s", kbit / 1000, goodput_s=6.0, omit_s=2.0)

    for dist in ("normal", "uniform"):
        # jitter: the spread of the one-way delay, read as the RTTs' standard deviation
        shape(delay="50ms", jitter="10ms", jitter_distribution=dist)
        rt = rtt_samples(c, d, 200)
        sd = statistics.pstdev(rt) if len(rt) > 1 else 0.0
        # what netem draws: normal with sigma = jitter; uniform on +-jitter (sigma j/sqrt3)
        want = 10.0 if dist == "normal" else 10.0 / math.sqrt(3)
        points.append(
            point(
                "jitter",
                f"jitter 10ms {dist}, delay 50ms",
                asked=f"sd {want:.2f} ms",
                measured=f"sd {sd:.2f} ms (n={len(rt)})",
                error=round(sd - want, 2),
                unit="ms",
                ok=None,
                goal="none; the asked standard deviation",
                asked_value=round(want, 3),
                measured_value=round(sd, 3),
            )
        )

    for loss in LOSSES_PCT:
        shape(loss=f"{loss}%")
        r = probe(c, d, pings=LOSS_PROBES, interval_s=0.005, goodput_s=0)
        sigma = 100 * math.sqrt(loss / 100 * (1 - loss / 100) / LOSS_PROBES)
        points.append(
            point(
                "loss",
                f"loss {loss}%",
                asked=f"{loss} %",
                measured=f"{r.loss_pct:.2f} %",
                error=round((r.loss_pct or 0) - loss, 2),
                unit="%",
                ok=None,
                goal=f"none; 1 sigma = {sigma:.2f} %",
                asked_value=loss,
                measured_value=r.loss_pct,
            )
        )

    tcp = (
        ("delay 1us", {"delay": "1us"}, 500.0),
        ("delay 100ms", {"delay": "100ms"}, 200.0),
        # loss makes the kernel hand over wire packets, not GSO ones: the slow path
        ("delay 1us, loss 0.001%", {"delay": "1us", "loss": "0.001%"}, None),
    )
    for name, kw, want in tcp:
        p = shape(**kw)
        r = probe(c, d, pings=0, goodput_s=5.0, omit_s=2.0 if p.delay_ms >= 100 else 1.0)
        g = r.goodput_mbit or 0.0
        points.append(
            point(
                "tcp",
                f"TCP through {name}",
                asked=f">= {want:g} Mbit/s" if want else "-",
                measured=f"{g:.1f} Mbit/s",
                error=None,
                unit="",
                ok=g >= want if want else None,
                goal=f">= {want:g} Mbit/s" if want else "none (per-packet path)",
                asked_value=want,
                measured_value=round(g, 1),
            )
        )
    shape()
    return {"base_rtt_ms": base, "points": points}


def rtt_samples(c: Any, d: Any, count: int) -> list[float]:
    """Each echo's RTT in ms (ping's own lines), from c's namespace to d."""
    out = subprocess.run(
        [*enter_argv(c.netns), "ping", "-n", "-c", str(count), "-i", "0.01", "-W", "2", d.address],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]


def point(kind: str, name: str, **fields: Any) -> dict[str, Any]:
    return {"kind": kind, "point": name, **fields}


def table(result: dict[str, Any]) -> Any:
    from rich.table import Table  # here: the netem VM runs this without rich (JSON only)

    t = Table(title=f"shaping bench: {result['engine']} (base RTT {result['base_rtt_ms']} ms)")
    for col in ("point", "asked", "measured", "error", "goal", "ok"):
        t.add_column(col)
    for p in result["points"]:
        err = "" if p["error"] is None else f"{p['error']:+g} {p['unit']}"
        ok = {True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[p["ok"]]
        t.add_row(p["point"], p["asked"], p["measured"], err, p["goal"], ok)
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", default="auto", choices=ENGINES)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    t0 = time.monotonic()
    with (
        ScratchNet.create(prefix=f"tbbench{os.getpid()}") as net,
        tempfile.TemporaryDirectory() as td,
    ):
        eng = select_engine(Ledger(Path(td) / "ledger.jsonl"), Path(td), engine=args.engine)
        try:
            result = {"engine": eng.name, "kernel": platform.release(), **run(eng, net)}
        finally:
            eng.close()
    result["duration_s"] = round(time.monotonic() - t0, 1)
    judged = [p for p in result["points"] if p["ok"] is not None]
    result["goals_met"] = f"{sum(p['ok'] for p in judged)}/{len(judged)}"
    print(json.dumps(result, indent=1))
    try:
        from rich.console import Console
    except ImportError:  # the netem VM: bench/shaping_vm.py prints the table
        return 0
    Console(stderr=True).print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
