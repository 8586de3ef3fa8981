"""Benchmark: both shaping engines side by side, in the netem VM, in one run.

This machine's kernel has no sch_netem; the netem VM (Debian's cloud kernel, built by
`make setup`) has. This boots it once (`scratch_netem_vm`), sends testbed and
`bench/shaping.py` as to any SSH host, and runs the shaping bench there twice, with
the kernel engine and with the userspace engine, on the same kernel, the same TCG
clock and the same scratch namespaces. Prints both JSON results (stdout) and one
table of the points side by side (stderr), with the kernel engine's goals:
RTT error <= 0.5 ms + 2 % of the delay, goodput 90-102 % of the rate. It reports,
it never fails.

    .venv/bin/python bench/shaping_vm.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any

from rich.console import Console
from rich.table import Table

from testbed.hosts.bundle import ensure_bundle
from testbed.virt.netem_boot import scratch_netem_vm

HERE = Path(__file__).resolve().parent
INNER = PurePosixPath("/var/lib/testbed/bench")
ENGINES = ("kernel-netem", "userspace-nfqueue")


def kernel_goal(p: dict[str, Any]) -> bool | None:
    """The kernel engine's goal for one point (None where there is none)."""
    if p["kind"] == "delay":
        return abs(p["error"]) <= 0.5 + 0.02 * p["asked_value"]
    if p["kind"] in ("rate", "low-rate"):
        return 90 <= 100 + p["error"] <= 102
    return None


def main() -> int:
    if os.geteuid() != 0:
        print("needs root: boots QEMU on a tap in a network namespace", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    t0 = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="bench-shaping-vm-") as td,
        scratch_netem_vm(str(os.getpid() % 100000), Path(td)) as (vm, host),
    ):
        bundle = ensure_bundle(host)
        host.makedirs(INNER)
        host.put(HERE / "shaping.py", Path(str(INNER / "shaping.py")))
        for engine in ENGINES:
            res = host.run(
                [
                    "sh",
                    "-c",
                    'cd "$1" && PYTHONPATH="$2" python3 shaping.py --engine "$3"',
                    "sh",
                    str(INNER),
                    str(bundle),
                    engine,
                ],
                timeout=1800,
                check=False,
            )
            try:
                results[engine] = json.loads(res.stdout)
            except ValueError:
                results[engine] = {"error": (res.stderr or res.stdout)[-2000:]}
        boot_s = vm.boot_s
    out = {"vm_boot_s": boot_s, "wall_s": round(time.monotonic() - t0, 1), "engines": results}
    for r in results.values():
        for p in r.get("points", []):
            if r.get("engine") == "kernel-netem":
                p["kernel_goal_ok"] = kernel_goal(p)
    print(json.dumps(out, indent=1))
    Console(stderr=True).print(side_by_side(results))
    return 0


def side_by_side(results: dict[str, Any]) -> Table:
    t = Table(title="shaping in the netem VM: kernel-netem vs userspace-nfqueue")
    t.add_column("point")
    for e in ENGINES:
        t.add_column(f"{e} measured")
        t.add_column("error")
    t.add_column("kernel goal")
    by = {e: {p["point"]: p for p in results.get(e, {}).get("points", [])} for e in ENGINES}
    for name in by[ENGINES[0]] or by[ENGINES[1]]:
        row = [name]
        for e in ENGINES:
            p = by[e].get(name)
            err = "" if not p or p["error"] is None else f"{p['error']:+g} {p['unit']}"
            row += [p["measured"] if p else "-", err]
        k = by[ENGINES[0]].get(name, {}).get("kernel_goal_ok")
        row.append({True: "[green]yes[/]", False: "[red]NO[/]", None: "-"}[k])
        t.add_row(*row)
    for e in ENGINES:
        if "error" in results.get(e, {}):
            t.add_row(f"{e}: FAILED", results[e]["error"][-200:], "", "", "", "")
    return t


if __name__ == "__main__":
    sys.exit(main())
