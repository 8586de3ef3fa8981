"""Benchmark: the nightly matrix with 1 and 2 pytest-xdist workers on this machine.

Runs `pytest playbooks/nightly-matrix.yaml -n N` (the nightly job's own path, through
the pytest plugin) for each worker count and prints scenarios per hour and the speed-up,
as JSON (stdout) and a table (stderr). `-k` narrows the matrix for a quicker look.
It reports; it never fails on a slow run.

`--pool`: the same on hosts leased from a pool instead of local labs: a bare
topologies/site-local.yaml (six SSH machines on this machine) is brought up, written
as an inventory, and topologies/pooled.yaml leases three of them per scenario.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent


def run(
    workers: int, pattern: str | None, out: Path, topology: Path | None = None
) -> dict[str, object]:
    argv = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", str(workers),
            "playbooks/nightly-matrix.yaml", "--testbed-out", str(out)]
    if pattern:
        argv += ["-k", pattern]
    if topology:
        argv += ["--testbed-topology", str(topology)]
    t0 = time.monotonic()
    p = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
    wall = time.monotonic() - t0
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|error)", p.stdout)}
    n = sum(counts.values())
    return {"workers": workers, "scenarios": n, "wall_s": round(wall, 1),
            "scenarios_per_hour": round(n * 3600 / wall, 1) if n else 0.0, **counts}


def _pooled_topology(tmp: Path, stack: ExitStack) -> Path:
    """A bare site of six SSH machines (down when the bench ends) and pooled.yaml on it."""
    from testbed.lab.lab import Lab
    from testbed.lab.site import write_inventory
    from testbed.model.topology import load_topology

    site = Lab.up(load_topology(REPO / "topologies" / "site-local.yaml"), services=False)
    stack.callback(site.down)
    inventory = write_inventory(site, tmp / "site.yaml")
    text = (REPO / "topologies" / "pooled.yaml").read_text()
    path = tmp / "pooled.yaml"
    path.write_text(text.replace("inventory: /tmp/site.yaml", f"inventory: {inventory}"))
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("-k", dest="pattern", default=None, help="only these scenarios")
    ap.add_argument("--workers", default="1,2", help="worker counts to compare")
    ap.add_argument("--pool", action="store_true", help="lease hosts from a site of SSH machines")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp, ExitStack() as stack:
        topology = None
        if args.pool:
            topology = _pooled_topology(Path(tmp), stack)
        for w in (int(x) for x in args.workers.split(",")):
            rows.append(run(w, args.pattern, Path(tmp) / f"n{w}", topology))
    base = rows[0]["wall_s"]
    for r in rows:
        r["speedup"] = round(float(base) / float(r["wall_s"]), 2)  # type: ignore[arg-type]
    print(json.dumps({"pattern": args.pattern, "pool": args.pool, "runs": rows}, indent=2))
    t = Table("workers", "scenarios", "passed", "wall s", "scenarios/hour", "speed-up",
              title="bench/parallel.py: nightly matrix")
    for r in rows:
        t.add_row(*(str(r.get(k, 0)) for k in ("workers", "scenarios", "passed", "wall_s",
                                              "scenarios_per_hour", "speedup")))
    Console(stderr=True).print(t)
    return 0


if __name__ == "__main__":
    sys.exit(main())
