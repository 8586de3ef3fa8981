"""Benchmark: what the fix costs in frozen console, against what it saves.

At client<->destination RTT 0, 200 and 1000 ms (half of it as delay each way), three
ways to be connected: `off`, a client that connects late (at 30 %) with no fix (it
falls back to switch-host: the bug); `guard`, the same late client with spice_guard;
`early`, a client connected before the migration, no guard (the seamless baseline).
Measured per cell, from the guest's heartbeat (spice/freeze.py): the client's
longest freeze around the switchover (`frozen_ms`), the guest's stall at the
switchover (`stall_ms`, next to libvirt's `downtime_ms`), the migration time, how
long the guard held, the outcome.
Runs through the playbook runner (a playbook built here, in memory) and writes a
normal run directory (result.json, junit.xml, report.html) per repetition.

Prints JSON (stdout) and a table (stderr). Not a test: it reports, it never fails
on a slow run. Usage: bench/guard_cost.py [--repeat N] [--out DIR] [--rtt 0,200,1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from testbed.model.playbook import parse_playbook
from testbed.report.write import write_reports
from testbed.runner.plan import plan, run_plan

REPO = Path(__file__).resolve().parent.parent

PLAYBOOK = """
name: guard-cost
description: frozen console of a late client with no fix, with the guard, and of an early client
vars: {{bandwidth: 10, fill: 64MiB, half_rtt: 0ms, guard: false, connect: before}}
matrix:
  rtt:
{rtt_axis}
  fix:
    off: {{guard: false, connect: "at 30%"}}
    guard: {{guard: true, connect: "at 30%"}}
    early: {{guard: false, connect: before}}
name_format: "rtt-{{rtt}}/fix-{{fix}}"
steps:
  - shape: {{from: client, to: dst, network: display, delay: "{{half_rtt}}", both_ways: true}}
  - start_guest: {{guest: vm, fill: "{{fill}}"}}
  - connect_client: {{client: client, guest: vm, when: "{{connect}}"}}
  - migrate: {{guest: vm, to: dst, bandwidth: "{{bandwidth}}", guard: "{{guard}}", wait: true,
              timeout: 240s}}
  - expect: {{migration: completed}}
"""

MEASURES = ("frozen_ms", "stall_ms", "downtime_ms", "migration_s", "guard_held_s")
FIXES = ("off", "guard", "early")


def playbook_text(rtts_ms: list[int]) -> str:
    axis = "\n".join(f"    {r}ms: {{half_rtt: {r / 2:g}ms}}" for r in rtts_ms)
    return PLAYBOOK.format(rtt_axis=axis)


def sample(s: dict[str, Any]) -> dict[str, Any]:
    guard = s.get("guard") or {}
    return {
        "outcome": s.get("outcome"),
        "passed": s.get("passed"),
        "migration_s": s["migration"].get("duration_s"),
        "downtime_ms": s["migration"].get("downtime_ms"),
        "frozen_ms": s["client"].get("frozen_ms"),
        "stall_ms": (s.get("guest") or {}).get("switchover_stall_ms"),
        "guard_held_s": guard.get("held_s", 0.0) if guard else None,
        "guard_result": guard.get("result") if guard else None,
    }


def median(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float)]
    return round(statistics.median(nums), 3) if nums else None


def medians(
    samples: dict[tuple[str, str], list[dict[str, Any]]], measures: tuple[str, ...]
) -> dict[str, Any]:
    """rtt -> fix -> the median of each measure, the outcomes and the sample count."""
    out: dict[str, Any] = {}
    for (rtt, fix), runs in samples.items():
        cell = {m: median([r[m] for r in runs]) for m in measures}
        cell["outcomes"] = [r["outcome"] for r in runs]
        cell["samples"] = len(runs)
        out.setdefault(rtt, {})[fix] = cell
    return out


def summarise(samples: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    """Per RTT: the median of each measure per fix, and what the guard adds over early."""
    out = medians(samples, MEASURES)
    for (rtt, fix), runs in samples.items():
        out[rtt][fix]["guard_results"] = [r["guard_result"] for r in runs if r["guard_result"]]
    for cells in out.values():
        early, guard = cells.get("early", {}), cells.get("guard", {})
        cells["guard_minus_early"] = {
            m: round(guard[m] - early[m], 3)
            for m in ("frozen_ms", "stall_ms", "migration_s")
            if guard.get(m) is not None and early.get(m) is not None
        }
    return out


def table(summary: dict[str, Any]) -> Table:
    t = Table(
        "client-dst RTT",
        "frozen ms off / guard / early",
        "guard - early",
        "guest stall ms (downtime)",
        "migration s",
        "guard held s",
        "outcomes off / guard / early",
        title="bench/guard_cost.py: medians",
    )
    for rtt, cells in summary.items():
        c = [cells.get(f, {}) for f in FIXES]

        def each(m: str, cs: list[dict[str, Any]] = c) -> str:
            return " / ".join(str(x.get(m)) for x in cs)

        t.add_row(
            rtt,
            each("frozen_ms"),
            str(cells.get("guard_minus_early", {}).get("frozen_ms")),
            " / ".join(f"{x.get('stall_ms')} ({x.get('downtime_ms')})" for x in c),
            each("migration_s"),
            str(c[1].get("guard_held_s")),
            " / ".join(",".join(map(str, x.get("outcomes", []))) for x in c),
        )
    return t


def bench_args(doc: str, name: str) -> argparse.Namespace:
    """The options every cost bench takes (--repeat, --rtt, --out, --topology)."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of the whole matrix")
    ap.add_argument("--rtt", default="0,200,1000", help="client-destination RTTs in ms")
    ap.add_argument("--out", default=None, help=f"output root (default runs/<stamp>-{name})")
    ap.add_argument("--topology", default=str(REPO / "topologies" / "local.yaml"))
    args = ap.parse_args()
    args.rtts = [int(r) for r in args.rtt.split(",")]
    return args


def run_cells(
    text: str, source: str, name: str, args: argparse.Namespace
) -> tuple[list[str], dict[tuple[str, str], list[dict[str, Any]]]]:
    """Run the bench's playbook `args.repeat` times; its run dirs and (rtt, fix) -> samples."""
    the_plan = plan([parse_playbook(text, source)], topology=args.topology)
    root = Path(args.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{name}")
    err = Console(stderr=True, width=150)  # a table wide enough to read whole in a log
    samples: dict[tuple[str, str], list[dict[str, Any]]] = {}
    dirs = []
    for i in range(args.repeat):
        out = root / f"rep-{i + 1}" if args.repeat > 1 else root
        (run,) = run_plan(
            the_plan,
            out,
            on_scenario=lambda s, i=i: err.print(
                f"[{i + 1}/{args.repeat}] {s.name}: {s.outcome}, "
                f"{s.migration.duration_s} s, frozen {s.client.frozen_ms} ms",
                highlight=False,
            ),
        )
        write_reports(out)
        dirs.append(str(out))
        for s in run.to_json()["scenarios"]:
            key = (s["params"]["rtt"], s["params"]["fix"])
            samples.setdefault(key, []).append(sample(s))
    return dirs, samples


def bench_main(
    doc: str,
    name: str,
    text_of: Callable[[list[int]], str],
    summarise: Callable[[dict[tuple[str, str], list[dict[str, Any]]]], dict[str, Any]],
    table: Callable[[dict[str, Any]], Table],
) -> int:
    """A cost bench: its playbook at the asked RTTs, run, summarised as JSON and a table."""
    args = bench_args(doc, name)
    dirs, samples = run_cells(text_of(args.rtts), f"bench:{name}", name, args)
    summary = summarise(samples)
    print(json.dumps({"runs": dirs, "repeat": args.repeat, "rtt": summary}, indent=2))
    Console(stderr=True, width=150).print(table(summary))
    return 0


def main() -> int:
    return bench_main(__doc__ or "", "guard-cost", playbook_text, summarise, table)


if __name__ == "__main__":
    sys.exit(main())
