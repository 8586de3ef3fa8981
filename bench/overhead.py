"""Benchmark: each scenario's overhead, phase by phase, against the migration's copy.

Runs bug-884631 (4 scenarios) `--rounds` times (default 3) on local and on ssh-local
and reads every phase from result.json's timeline:

  lab_up       lab up (namespaces, links, daemons, X)
  start_guest  the start_guest step (define, start, boot to the guest's marker)
  boot         the guest's own boot inside it
  to_migrate   the guest booted until the migrate step: shaping, and the client's
               connect where the scenario connects it first (through its link's delay)
  first_byte   migration start until the job first moved data
  copy         first byte until the job ended: what the scenario is about
  judge        the job's end until the verdict
  teardown     the verdict until the scenario's end (guest located, lab down)
  overhead     the scenario's wall time minus `copy`

Medians per topology, with the goals of the time-to-verdict issue: overhead <= 5 s
on local and <= 8 s on ssh-local, first byte <= 1.5 s. Prints JSON (stdout) and a
table (stderr); it reports, never fails.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from testbed.model.result import ScenarioResult
from testbed.runner.plan import plan, run_plan

REPO = Path(__file__).resolve().parent.parent
GOALS = {
    "local": {"overhead": 5.0, "first_byte": 1.5},
    "ssh-local": {"overhead": 8.0, "first_byte": 1.5},
}
PHASES = (
    "lab_up",
    "start_guest",
    "boot",
    "to_migrate",
    "first_byte",
    "copy",
    "judge",
    "teardown",
    "overhead",
)


def _t(s: ScenarioResult, kind: str, **match: Any) -> float | None:
    for e in s.timeline:
        if e["kind"] == kind and all(e.get(k) == v for k, v in match.items()):
            return float(e["t"])
    return None


def phases(s: ScenarioResult) -> dict[str, float | None]:
    """One scenario's phases, in seconds (None where the timeline lacks the event)."""
    up, step = _t(s, "lab.up"), _t(s, "step", step="start_guest")
    migrate = _t(s, "step", step="migrate")
    booted, end = _t(s, "guest.boot"), _t(s, "migration.end")
    verdict = _t(s, "outcome")
    boot = next((e.get("boot_s") for e in s.timeline if e["kind"] == "guest.boot"), None)
    m = s.migration
    copy = None
    if m.duration_s is not None and m.first_byte_s is not None:
        copy = m.duration_s - m.first_byte_s
    wall = s.duration_s
    return {
        "lab_up": up,
        "start_guest": booted - step if booted is not None and step is not None else None,
        "boot": boot,
        "to_migrate": migrate - booted if migrate is not None and booted is not None else None,
        "first_byte": m.first_byte_s,
        "copy": copy,
        "judge": verdict - end if verdict is not None and end is not None else None,
        "teardown": wall - verdict if wall is not None and verdict is not None else None,
        "overhead": wall - copy if wall is not None and copy is not None else None,
    }


def _median(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return round(statistics.median(vals), 2) if vals else None


def _within(x: float | None, goal: float) -> bool:
    return x is not None and x <= goal


def bench(topology: str, rounds: int) -> dict[str, Any]:
    rows: list[dict[str, float | None]] = []
    walls, passed = [], True
    loads: list[float] = []
    for _ in range(rounds):
        the_plan = plan(
            [REPO / "playbooks" / "bug-884631.yaml"],
            topology=REPO / "topologies" / f"{topology}.yaml",
        )
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-overhead-") as out:
            (run,) = run_plan(the_plan, Path(out))
        walls.append(round(time.monotonic() - t0, 1))
        loads.append(round(os.getloadavg()[1], 2))  # what else ran: the 5-minute load
        passed = passed and run.passed
        rows += [phases(s) for s in run.scenarios]
    med = {p: _median([r[p] for r in rows]) for p in PHASES}
    goals = GOALS[topology]
    return {
        "topology": topology,
        "rounds": rounds,
        "scenarios": len(rows),
        "playbook_wall_s": walls,
        "load_avg_5min": loads,
        "median_s": med,
        "per_scenario": rows,
        "goals_s": goals,
        "goals_met": {k: _within(med[k], v) for k, v in goals.items()},
        "all_passed": passed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--topology", action="append", choices=sorted(GOALS))
    a = ap.parse_args(argv)
    results = [bench(t, a.rounds) for t in a.topology or ["local", "ssh-local"]]
    print(json.dumps(results, indent=2))
    t = Table("phase (median s)", *(r["topology"] for r in results), title="bench/overhead.py")
    for p in PHASES:
        t.add_row(p, *(str(r["median_s"][p]) for r in results))
    t.add_row("playbook wall", *(str(r["playbook_wall_s"]) for r in results))
    t.add_row("goals met", *(str(r["goals_met"]) for r in results))
    Console(stderr=True).print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
