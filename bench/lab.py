"""Benchmark: how long the embedded lab takes to come up, boot, migrate and go away.

Prints JSON (stdout) and a table (stderr). Goals on a 2-core machine under TCG:
lab up < 5 s, guest boot < 15 s, teardown < 5 s, zero leaks. Not a test: it
reports, it never fails on a slow run.

`python bench/lab.py [TOPOLOGY]`: e.g. topologies/ssh-local.yaml for the same lab
driven over SSH (then also the cost of one command over SSH, median of 20).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from pyroute2 import netns
from rich.console import Console
from rich.table import Table

from testbed.lab.guests import finish_migration, migration_for, start_guest
from testbed.lab.lab import Lab
from testbed.lab.state import state_root
from testbed.model.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
GOALS = {"lab_up_s": 5.0, "guest_boot_s": 15.0, "teardown_s": 5.0}


def main() -> int:
    topo = load_topology(sys.argv[1] if len(sys.argv) > 1 else REPO / "topologies" / "local.yaml")
    ns_before = set(netns.listnetns())
    t0 = time.monotonic()
    lab = Lab.up(topo)
    result: dict[str, object] = {
        "topology": topo.name,
        "lab_up_s": round(time.monotonic() - t0, 3),
    }
    try:
        if lab.over_ssh:
            host, times = lab.hosts["src"], []
            for _ in range(20):
                t1 = time.monotonic()
                host.run(["true"])
                times.append(time.monotonic() - t1)
            result["ssh_command_ms"] = round(1000 * statistics.median(times), 1)
        t0 = time.monotonic()
        g = start_guest(lab, "vm")
        result["guest_boot_s"] = round(time.monotonic() - t0, 3)
        result["accel"] = g.accel
        m = migration_for(lab, "vm", "dst")
        m.start()
        rec = m.wait(300)
        finish_migration(lab, "vm", m, "dst")
        result["migration_s"] = rec.duration_s
        result["migration_result"] = rec.result
        result["migration_downtime_ms"] = rec.downtime_ms
        result["migration_mib"] = round((rec.bytes or 0) / 2**20, 1)
    finally:
        t0 = time.monotonic()
        lab.down()
        result["teardown_s"] = round(time.monotonic() - t0, 3)
    leaked = sorted(set(netns.listnetns()) - ns_before)
    leftover = lab.dir.exists() or any(state_root().glob(f"labs/{lab.id}"))
    result["leaks"] = len(leaked) + int(leftover)
    result["goals"] = {
        k: {"goal_s": v, "met": float(result.get(k, 1e9)) < v}  # type: ignore[arg-type]
        for k, v in GOALS.items()
    }
    print(json.dumps(result, indent=2))
    table = Table("measure", "value", "goal", title="bench/lab.py")
    for k, v in result.items():
        if k != "goals":
            goal = GOALS.get(k)
            table.add_row(k, str(v), f"< {goal} s" if goal else ("0" if k == "leaks" else ""))
    Console(stderr=True).print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
