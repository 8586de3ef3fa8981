"""Benchmark: is the fix worth its frozen console? spice_guard and the patched server side by side.

At client<->destination RTT 0, 200 and 1000 ms (half of it as delay each way), a client
that connects late (at 30 %, bug 884631 case 1) with: `off`, no fix (switch-host: the
bug); `guard`, spice_guard (holds the migration at 1 MiB/s from libvirt until the client
reached the destination); `server`, both hypervisors on the patched spice-server of
`make setup` (patch 0001 sends the late client the target, 0003 holds the end of the
migration, not the copy, while it connects); `server-qemu`, the same spice-server on
the patched QEMU of `make build-qemu-fix` (it keeps the migration going, the guest
running, while the client connects; left out, and said so, when it is not built); and
`early`, a client connected before the migration on stock spice-server (the seamless
baseline, the reference).
Measured per cell as guard_cost.py does (its `sample`): the client's longest freeze
around the switchover (`frozen_ms`), the guest's stall at the switchover (`stall_ms`,
next to libvirt's `downtime_ms`), the migration time, the outcome. Writes a normal run
directory (result.json, junit.xml, report.html) per repetition.

Prints JSON (stdout) and a table (stderr). Not a test: it reports, it never fails on a
slow run. Usage: bench/fix_cost.py [--repeat N] [--out DIR] [--rtt 0,200,1000]
"""

from __future__ import annotations

import sys
from typing import Any

from guard_cost import bench_main, medians
from rich.table import Table

from testbed.errors import InputError
from testbed.virt.qemu_build import qemu_build

PLAYBOOK = """
name: fix-cost
description: a late client with no fix, spice_guard, the patched server (and QEMU); an early one
vars: {{bandwidth: 10, fill: 64MiB, half_rtt: 0ms, guard: false, connect: "at 30%",
        server: stock}}
matrix:
  rtt:
{rtt_axis}
  fix:
    off: {{}}
    guard: {{guard: true}}
    server: {{server: patched}}
{qemu_fix}    early: {{connect: before}}
name_format: "rtt-{{rtt}}/fix-{{fix}}"
steps:
  - shape: {{from: client, to: dst, network: display, delay: "{{half_rtt}}", both_ways: true}}
  - start_guest: {{guest: vm, fill: "{{fill}}", spice_server: "{{server}}"}}
  - connect_client: {{client: client, guest: vm, when: "{{connect}}"}}
  - migrate: {{guest: vm, to: dst, bandwidth: "{{bandwidth}}", guard: "{{guard}}", wait: true,
              timeout: 240s}}
  - expect: {{migration: completed}}
"""

MEASURES = ("frozen_ms", "stall_ms", "downtime_ms", "migration_s")
FIXES = ("off", "guard", "server", "server-qemu", "early")


def _qemu_built() -> bool:
    try:
        qemu_build()
    except InputError as e:
        print(f"fix-cost: no server-qemu cells: {e.message} ({e.hint})", file=sys.stderr)
        return False
    return True


def playbook_text(rtts_ms: list[int]) -> str:
    axis = "\n".join(f"    {r}ms: {{half_rtt: {r / 2:g}ms}}" for r in rtts_ms)
    qemu_fix = "    server-qemu: {server: patched-qemu}\n" if _qemu_built() else ""
    return PLAYBOOK.format(rtt_axis=axis, qemu_fix=qemu_fix)


def summarise(samples: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    """Per RTT and fix: the median of each measure and the outcomes."""
    return medians(samples, MEASURES)


def table(summary: dict[str, Any]) -> Table:
    t = Table(
        "client-dst RTT",
        "fix",
        "outcome",
        "frozen ms",
        "guest stall ms (downtime)",
        "migration s",
        title="bench/fix_cost.py: medians (a late client at 30 %; early = connected before)",
    )
    for rtt, cells in summary.items():
        for fix in FIXES:
            c = cells.get(fix)
            if c is None:
                continue
            t.add_row(
                rtt,
                fix,
                ",".join(map(str, c["outcomes"])),
                str(c["frozen_ms"]),
                f"{c['stall_ms']} ({c['downtime_ms']})",
                str(c["migration_s"]),
            )
    return t


def main() -> int:
    return bench_main(__doc__ or "", "fix-cost", playbook_text, summarise, table)


if __name__ == "__main__":
    sys.exit(main())
