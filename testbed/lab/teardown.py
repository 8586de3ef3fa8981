"""Teardown: remove exactly what a lab's ledger holds, newest first. Idempotent.

Works from the state directory alone, so it can clean up after a crashed
`testbed up` or a killed run. Stray namespaces that carry a lab's name pattern
but have no state directory are swept by `sweep_strays`.
"""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from pyroute2 import netns

from testbed.hosts.procs import stop_netns_processes, stop_recorded
from testbed.lab.state import LabRecord, claimed, release_claim
from testbed.net.links import remove_netns
from testbed.virt.domain import destroy_by_name

log = logging.getLogger(__name__)

NETNS_RE = re.compile(r"^tb-[0-9a-f]{4}-[a-z][a-z0-9]*$")


def teardown(lab: LabRecord) -> list[str]:
    """Remove everything `lab` recorded; return a line per thing removed."""
    done: list[str] = []
    entries = list(lab.ledger.entries())
    for e in reversed(entries):
        if e.kind == "domain":
            destroy_by_name(e["uri"], e["name"])  # a dead daemon's QEMU dies with its netns
            done.append(f"domain {e['name']}")
    for e in reversed(entries):
        if e.kind in ("process", "xvfb"):
            stop_recorded(int(e["pid"]), e.get("start_time"))
            done.append(f"{e.kind} {e.get('name', e['pid'])}")
    for e in reversed(entries):
        if e.kind == "netns":
            stop_netns_processes(e["name"])
            remove_netns(e["name"])
            done.append(f"netns {e['name']}")
    for e in reversed(entries):
        if e.kind in ("file", "dir"):
            p = Path(e["path"])
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            done.append(f"{e.kind} {p}")
    shutil.rmtree(lab.dir, ignore_errors=True)
    release_claim(lab.id, lab.dir)
    for parent in (lab.dir.parent, lab.dir.parent.parent):  # labs/, then the state root
        try:
            parent.rmdir()
        except OSError:
            break  # not empty: another lab lives there
    return done


def sweep_strays() -> list[str]:
    """Remove lab-named namespaces whose lab id no live lab directory claims (any state root)."""
    done = []
    for name in netns.listnetns():
        if NETNS_RE.match(name) and not claimed(name.split("-")[1]):
            stop_netns_processes(name)
            remove_netns(name)
            done.append(f"netns {name}")
    return done
