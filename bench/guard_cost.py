"""Benchmark: what spice_guard costs when nothing is wrong.

The plain seamless baseline (client connected before the migration) with the guard
off and on, at client<->destination RTT 0, 200 and 1000 ms (half of it as delay each
way). Measured per cell: migration time, downtime, the client's longest display gap
around the switchover (`unresponsive_ms`), how long the guard held, the outcome.
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
description: the seamless baseline with spice_guard off and on, per client-destination RTT
vars: {{bandwidth: 10, fill: 64MiB, half_rtt: 0ms, guard: false}}
matrix:
  rtt:
{rtt_axis}
  fix:
    off: {{guard: false}}
    on: {{guard: true}}
name_format: "rtt-{{rtt}}/fix-{{fix}}"
steps:
  - shape: {{from: client, to: dst, network: display, delay: "{{half_rtt}}", both_ways: true}}
  - start_guest: {{guest: vm, fill: "{{fill}}"}}
  - connect_client: {{client: client, guest: vm, when: before}}
  - migrate: {{guest: vm, to: dst, bandwidth: "{{bandwidth}}", guard: "{{guard}}", wait: true,
              timeout: 240s}}
  - expect: {{outcome: seamless, migration: completed}}
"""

MEASURES = ("migration_s", "downtime_ms", "unresponsive_ms", "guard_held_s")


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
        "unresponsive_ms": s["client"].get("unresponsive_ms"),
        "guard_held_s": guard.get("held_s", 0.0) if guard else None,
        "guard_result": guard.get("result") if guard else None,
    }


def median(values: list[Any]) -> float | None:
    nums = [float(v) for v in values if isinstance(v, int | float)]
    return round(statistics.median(nums), 3) if nums else None


def summarise(samples: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    """Per RTT: the median of each measure with the guard off and on, and on minus off."""
    out: dict[str, Any] = {}
    for (rtt, fix), runs in samples.items():
        cell = {m: median([r[m] for r in runs]) for m in MEASURES}
        cell["outcomes"] = [r["outcome"] for r in runs]
        cell["guard_results"] = [r["guard_result"] for r in runs if r["guard_result"]]
        cell["samples"] = len(runs)
        out.setdefault(rtt, {})[fix] = cell
    for cells in out.values():
        off, on = cells.get("off", {}), cells.get("on", {})
        cells["cost"] = {
            m: round(on[m] - off[m], 3)
            for m in ("migration_s", "downtime_ms", "unresponsive_ms")
            if on.get(m) is not None and off.get(m) is not None
        }
    return out


def table(summary: dict[str, Any]) -> Table:
    t = Table(
        "client-dst RTT",
        "migration s off / on (cost)",
        "downtime ms off / on",
        "unresponsive ms off / on (cost)",
        "guard",
        "outcomes off / on",
        title="bench/guard_cost.py: spice_guard on the seamless baseline (medians)",
    )
    for rtt, cells in summary.items():
        off, on, cost = cells.get("off", {}), cells.get("on", {}), cells.get("cost", {})
        t.add_row(
            rtt,
            f"{off.get('migration_s')} / {on.get('migration_s')} ({cost.get('migration_s')})",
            f"{off.get('downtime_ms')} / {on.get('downtime_ms')}",
            f"{off.get('unresponsive_ms')} / {on.get('unresponsive_ms')} "
            f"({cost.get('unresponsive_ms')})",
            f"{', '.join(on.get('guard_results', []))} (held {on.get('guard_held_s')} s)",
            f"{', '.join(map(str, off.get('outcomes', [])))} / "
            f"{', '.join(map(str, on.get('outcomes', [])))}",
        )
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1, help="runs of the whole matrix")
    ap.add_argument("--rtt", default="0,200,1000", help="client-destination RTTs in ms")
    ap.add_argument("--out", default=None, help="output root (default runs/<stamp>-guard-cost)")
    ap.add_argument("--topology", default=str(REPO / "topologies" / "local.yaml"))
    args = ap.parse_args()
    rtts = [int(r) for r in args.rtt.split(",")]
    pb = parse_playbook(playbook_text(rtts), "bench/guard_cost.py:guard-cost")
    the_plan = plan([pb], topology=args.topology)
    root = Path(args.out or f"runs/{datetime.now():%Y%m%d-%H%M%S}-guard-cost")
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
                f"{s.migration.duration_s} s, {s.client.unresponsive_ms} ms",
                highlight=False,
            ),
        )
        write_reports(out)
        dirs.append(str(out))
        for s in run.to_json()["scenarios"]:
            key = (s["params"]["rtt"], s["params"]["fix"])
            samples.setdefault(key, []).append(sample(s))
    summary = summarise(samples)
    print(json.dumps({"runs": dirs, "repeat": args.repeat, "rtt": summary}, indent=2))
    err.print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
