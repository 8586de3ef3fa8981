"""Teardown: remove exactly what a lab's ledger holds, newest first. Idempotent.

Works from the state directory alone, so it can clean up after a crashed
`testbed up` or a killed run. Stray namespaces that carry a lab's name pattern
but have no state directory are swept by `sweep_strays`.
"""

from __future__ import annotations

import logging
import re
import shlex
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pyroute2 import netns

from testbed.errors import TestbedError
from testbed.hosts.base import Host
from testbed.hosts.factory import remote_hosts_from_record
from testbed.hosts.ledger import Entry, same_process
from testbed.hosts.procs import (
    identify,
    pids_in_netns,
    pids_naming,
    stop_netns_processes,
    stop_processes,
)
from testbed.lab.state import LabRecord, claimed, release_claim
from testbed.net.links import remove_netns, remove_root_link
from testbed.virt.domain import destroy_by_name

log = logging.getLogger(__name__)

NETNS_RE = re.compile(r"^tb-[0-9a-f]{4}-[a-z][a-z0-9]*$")


def _ssh_hosts(lab: LabRecord) -> tuple[dict[str, Host], set[str]]:
    """The lab's SSH hosts, and which of them are namespaces here (whose processes the
    local sweep stops anyway, so a failure to reach them over SSH is no warning)."""
    recorded = lab.info.get("hosts", {})
    hosts = remote_hosts_from_record(recorded)
    return hosts, {n for n in hosts if "netns" in recorded[n]}


def _on_host(
    hosts: Mapping[str, Host], covered: set[str], name: str, what: str, fn: Any, *args: Any
) -> bool:
    """Run `fn(host, *args)`; an unreachable host is reported, not fatal (teardown goes on)."""
    host = hosts.get(name)
    if host is None:
        log.warning("teardown: no record of host %s for %s", name, what)
        return False
    try:
        fn(host, *args)
        return True
    except TestbedError as e:
        level = logging.DEBUG if name in covered else logging.WARNING
        log.log(level, "teardown: %s on %s: %s", what, name, e)
        return False


def teardown(lab: LabRecord) -> list[str]:
    """Remove everything `lab` recorded; return a line per thing removed."""
    done: list[str] = []
    entries = list(lab.ledger.entries())
    # everything of the lab on this machine, known now (a zombie has no command line):
    # teardown returns only once each has exited and been reaped
    watched = identify(_local_pids(lab, entries))
    ssh, covered = _ssh_hosts(lab)
    if ssh and any(e.kind == "shaping-agent" for e in entries):
        _close_shaping(lab, ssh)  # real hosts keep qdiscs and rules; a namespace drops them
    domains = [e for e in reversed(entries) if e.kind == "domain"]
    # each on its own host, at once: a TCG QEMU takes a second or two to die, and over
    # SSH each destroy opens its own connection
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(domains)))) as pool:
        # a dead daemon's QEMU dies with its netns
        list(pool.map(lambda e: destroy_by_name(e["uri"], e["name"]), domains))
    done += [f"domain {e['name']}" for e in domains]
    # over SSH first, while the embedded SSH lab's own sshds still run; all at once
    remote = [e for e in reversed(entries) if e.kind == "remote-process"]

    def stop_remote(e: Entry) -> bool:
        pid, what = int(e["pid"]), f"stopping pid {e['pid']}"
        return _on_host(ssh, covered, e["host"], what, _stop_pid, pid, e.get("start_time"))

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(remote)))) as pool:
        for e, ok in zip(remote, pool.map(stop_remote, remote), strict=True):
            if ok:
                done.append(f"process {e.get('name', e['pid'])} on {e['host']}")
    def sweep(name: str) -> list[str]:  # started but not yet recorded when the caller died
        swept: list[str] = []
        what = "sweeping leftover processes"
        _on_host(ssh, covered, name, what, _sweep_remote, str(ssh[name].state_dir), swept)
        return [f"process {pid} of {ssh[name].state_dir} on {name}" for pid in swept]

    dirs = [e for e in reversed(entries) if e.kind == "remote-dir"]

    def remove_dir(e: Entry) -> bool:
        what = f"removing {e['path']}"
        return _on_host(ssh, covered, e["host"], what, _remove_remote_dir, e["path"])

    # each host at once: a sweep that finds something waits a second for it to go
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(ssh) + len(dirs)))) as pool:
        for lines in pool.map(sweep, list(ssh)):
            done += lines
        for e, ok in zip(dirs, pool.map(remove_dir, dirs), strict=True):
            if ok:
                done.append(f"dir {e['path']} on {e['host']}")
    # every recorded process and every process in the lab's namespaces, at once
    recorded = [e for e in reversed(entries) if e.kind in ("process", "xvfb")]
    known = {
        int(e["pid"]): e.get("start_time")
        for e in recorded
        if same_process(int(e["pid"]), e.get("start_time"))
    }
    for e in entries:
        if e.kind == "netns":
            known.update(identify(pids_in_netns(e["name"])))
    left = set(stop_processes(known))
    done += [f"{e.kind} {e.get('name', e['pid'])}" for e in recorded if e["pid"] not in left]
    for h in ssh.values():
        h.close()
    for e in reversed(entries):
        if e.kind == "link":
            remove_root_link(e["name"])
            done.append(f"link {e['name']}")
    for e in reversed(entries):
        if e.kind == "netns":
            stop_netns_processes(e["name"])
            remove_netns(e["name"])
            done.append(f"netns {e['name']}")
    left = set(stop_processes(watched))  # stragglers, and zombies until they are reaped
    if left:
        log.warning("teardown: pids %s of lab %s are still there", sorted(left), lab.id)
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


def _local_pids(lab: LabRecord, entries: list[Entry]) -> list[int]:
    """This machine's processes of the lab: recorded, in its namespaces, or naming its
    folder on their command line (what runs on its embedded SSH hosts, too)."""
    pids = [int(e["pid"]) for e in entries if e.kind in ("process", "xvfb")]
    for e in entries:
        if e.kind == "netns":
            pids += pids_in_netns(e["name"])
    return pids + pids_naming(f"{lab.dir}/")


def _close_shaping(lab: LabRecord, ssh: Mapping[str, Host]) -> None:
    from testbed.net.shaping.hosts import HostAgentsEngine

    try:
        HostAgentsEngine(ssh, lab.ledger, lab.dir / "shaping").close()
    except TestbedError as e:
        log.warning("teardown: shaped links: %s", e)


def _sweep_remote(host: Host, state_dir: str, swept: list[str]) -> None:
    """Stop every process on the host whose command line names the lab's state folder.

    Everything a lab starts there does (libvirtd -f, Xvfb -auth, the delay line's
    control socket), so this finds what a killed `testbed up` started but never
    recorded. `[/]` keeps pgrep from matching the shell that runs it; an sshd (the
    embedded SSH lab's own, whose config lives there too) is the caller's way in and
    is left to the local teardown.
    """
    if "/testbed" not in state_dir and "/labs/" not in state_dir:
        raise TestbedError(f"refusing to sweep {state_dir}: not a testbed state folder")
    pattern = shlex.quote("[/]" + state_dir.lstrip("/") + "/")
    script = f"""
for sig in TERM KILL; do
  pids=$(pgrep -f {pattern} | while read -r p; do
    [ "$(cat /proc/$p/comm 2>/dev/null)" = sshd ] || echo "$p"; done)
  [ -n "$pids" ] || exit 0
  [ $sig = TERM ] && echo $pids
  kill -$sig $pids 2>/dev/null; sleep 1
done
exit 0
"""
    swept += host.run(["sh", "-c", script], timeout=60).stdout.split()


def _stop_pid(host: Host, pid: int, start_time: int | None) -> None:
    if not host.stop_pid(pid, start_time):
        raise TestbedError(f"pid {pid} is still there after SIGKILL")


def _remove_remote_dir(host: Host, path: str) -> None:
    if "/testbed/" not in path:  # only what a lab made under the remote state folder
        raise TestbedError(f"refusing to remove {path}: not a testbed state folder")
    host.run(["rm", "-rf", "--one-file-system", path], timeout=120)


def sweep_strays() -> list[str]:
    """Remove lab-named namespaces whose lab id no live lab directory claims (any state root)."""
    done = []
    for name in netns.listnetns():
        if NETNS_RE.match(name) and not claimed(name.split("-")[1]):
            stop_netns_processes(name)
            remove_netns(name)
            done.append(f"netns {name}")
    return done
