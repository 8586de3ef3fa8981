#!/usr/bin/env python3
"""Record real remote-viewer debug logs of live migrations, for the classifier's tests.

Each scenario brings up its own lab from topologies/local.yaml, starts guest
`vm` on src, attaches the real client (remote-viewer under Xvfb) at the moment
the scenario says, migrates `vm` to dst, and takes the lab down again, whatever
happens. It writes, per scenario, into the output directory:

  NAME.log.gz   the client's whole stdout+stderr (SPICE_DEBUG=1 --debug)
  NAME.json     timings (seconds since the migration started), the migration
                record, the server-side graphics/lifecycle events, the display
                watcher's longest gap, and the classification at record time

Scenarios:
  seamless        client connected and idle before the migration starts
  switch-host     client connected after the destination QEMU started (libvirt
                  has already sent client_migrate_info): bug 884631, case 1
  lost-killed     client connected before; SIGKILLed once it reached the
                  destination, mid-migration
  lost-unreachable  client connected before; its packets to the destination's
                  display address are rejected (iptables in the client's
                  namespace) for the whole run: pre-connect fails, switch-host
                  at the end cannot reach the destination
  semi-seamless   as seamless, but the guest's QEMU runs with SPICE_DEBUG_ALLOW_MC=1
                  (a qemu:env in the domain XML, set by this script only): the
                  destination then answers migrate-dst-seamless-nack
  failed-preconnect client connected before; the destination is rejected only
                  until the pre-connect failed, then reachable again: fallback
                  to switch-host that succeeds

Run as root from the repository: .venv/bin/python tools/record_spice_logs.py [NAME ...]
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import shutil
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import libvirt

from testbed.lab.guests import finish_migration, location, migration_for, serial_path, start_guest
from testbed.lab.lab import Lab
from testbed.lab.spice import guest_display, spice_client
from testbed.model.topology import load_topology
from testbed.spice.classifier import classify, read_log
from testbed.spice.events import GraphicsEventLog
from testbed.spice.screen import DisplayWatcher, screenshot
from testbed.virt.accel import READY_MARKER
from testbed.virt.domain import wait_for_serial
from testbed.virt.migration import Migration

log = logging.getLogger("record_spice_logs")
REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = REPO / "topologies" / "local.yaml"
GUEST, SRC, DST, CLIENT = "vm", "src", "dst", "client"


class Run:
    """One scenario's lab, client, watchers and the times it marks."""

    def __init__(self, lab: Lab, work: Path) -> None:
        self.lab, self.work = lab, work
        self.events = GraphicsEventLog(lab.domain_name(GUEST))
        for h in (SRC, DST):
            self.events.watch(h, lab.conn(h))
        self.client = spice_client(lab, work, client=CLIENT)
        self.watcher = DisplayWatcher(
            lab.hosts[CLIENT], lab.display(CLIENT), work / "display.txt", ledger=lab.ledger
        )
        self.marks: dict[str, float] = {}
        self.where: dict[str, str] = {}
        self.migration: Migration | None = None
        self.client_addr = lab.address(CLIENT, "display")
        self.dst_addr = lab.address(DST, "display")

    def mark(self, name: str) -> None:
        self.marks[name] = time.monotonic()
        log.info("%s", name)

    def connect(self) -> None:
        self.mark("client_connect")
        where = guest_display(self.lab, GUEST)
        self.client.connect(where.uri)
        self.where = {"uri": where.uri, "host": where.host}
        self.client.wait_connected(30)
        self.mark("client_connected")

    def migrate(self, bandwidth: int) -> Migration:
        self.migration = migration_for(self.lab, GUEST, DST, bandwidth_mib=bandwidth, timeout_s=180)
        self.mark("migration_start")
        self.migration.start()
        return self.migration

    def dst_started(self) -> bool:
        return any(e.phase == "started" for e in self.events.events(DST, kind="lifecycle"))

    def client_on_dst(self, n: int = 5) -> bool:
        return self.events.client_channels_on(DST, self.client_addr) >= n

    def block_dst(self, on: bool) -> None:
        """Reject the client's packets to the destination's SPICE port (client namespace only)."""
        rule = ["OUTPUT", "-d", self.dst_addr, "-p", "tcp", "-j", "REJECT",
                "--reject-with", "tcp-reset"]  # fmt: skip
        self.lab.hosts[CLIENT].run(["iptables", "-I" if on else "-D", *rule])
        self.mark("dst_blocked" if on else "dst_unblocked")


QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def restart_with_qemu_env(lab: Lab, guest: str, env: dict[str, str]) -> None:
    """Boot the running guest again with extra environment for its QEMU (here and after
    migration: the variables travel in the domain XML)."""
    conn = lab.conn(location(lab, guest))
    dom = conn.lookupByName(lab.domain_name(guest))
    ET.register_namespace("qemu", QEMU_NS)
    root = ET.fromstring(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
    cmd = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
    for k, v in env.items():
        ET.SubElement(cmd, f"{{{QEMU_NS}}}env", name=k, value=v)
    serial = serial_path(lab, location(lab, guest), lab.domain_name(guest))
    since = serial.stat().st_size if serial.exists() else 0
    dom.destroy()
    conn.createXML(ET.tostring(root, encoding="unicode"), 0)
    wait_for_serial(serial, READY_MARKER, 90, since=since)


def scenario_seamless(r: Run, bw: int) -> None:
    r.connect()
    time.sleep(2)
    m = r.migrate(bw)
    m.wait()


def scenario_switch_host(r: Run, bw: int) -> None:
    m = r.migrate(bw)
    # libvirt sends client_migrate_info to the source right after the destination's
    # QEMU started; a client that connects after that is not told to pre-connect
    if not r.events.wait_for(lambda _ev: r.dst_started(), 60):
        raise RuntimeError("destination QEMU did not start")
    r.mark("dst_started")
    time.sleep(1.0)
    r.connect()
    m.wait()


def scenario_semi_seamless(r: Run, bw: int) -> None:
    # spice-server turns seamless migration off when it allows several clients
    # (seamless_migration_enabled = enable && !allow_multiple_clients); seen here:
    # the source still offers seamless, the destination nacks it
    restart_with_qemu_env(r.lab, GUEST, {"SPICE_DEBUG_ALLOW_MC": "1"})
    r.mark("guest_restarted_allow_mc")
    scenario_seamless(r, bw)


def scenario_lost_killed(r: Run, bw: int) -> None:
    r.connect()
    time.sleep(2)
    m = r.migrate(bw)
    if not r.events.wait_for(lambda _ev: r.client_on_dst(), 60):
        raise RuntimeError("client never reached the destination")
    r.mark("client_on_dst")
    time.sleep(1.0)
    r.client.kill()
    r.mark("client_killed")
    m.wait()


def scenario_lost_unreachable(r: Run, bw: int) -> None:
    r.connect()
    r.block_dst(True)
    time.sleep(2)
    m = r.migrate(bw)
    m.wait()


def scenario_failed_preconnect(r: Run, bw: int) -> None:
    r.connect()
    r.block_dst(True)
    time.sleep(2)
    m = r.migrate(bw)
    deadline = time.monotonic() + 60
    while "some channels failed to connect" not in r.client.log_text():
        if time.monotonic() > deadline or m.done:
            raise RuntimeError("the client's pre-connect did not fail")
        time.sleep(0.1)
    r.mark("preconnect_failed")
    r.block_dst(False)
    m.wait()


SCENARIOS: dict[str, tuple[Callable[[Run, int], None], str]] = {
    "seamless": (scenario_seamless, "seamless"),
    "switch-host": (scenario_switch_host, "switch-host"),
    "semi-seamless": (scenario_semi_seamless, "semi-seamless"),
    "lost-killed": (scenario_lost_killed, "lost"),
    "lost-unreachable": (scenario_lost_unreachable, "lost"),
    "failed-preconnect": (scenario_failed_preconnect, "switch-host"),
}


def record(name: str, out: Path, bandwidth: int, settle_s: float) -> dict[str, Any]:
    fn, expected = SCENARIOS[name]
    work = Path(tempfile.mkdtemp(prefix=f"spice-{name}-"))
    lab = Lab.up(load_topology(str(TOPOLOGY)))
    log.info("%s: lab %s", name, lab.id)
    r: Run | None = None
    try:
        g = start_guest(lab, GUEST)
        r = Run(lab, work)
        r.watcher.start()
        r.watcher.wait_started()
        fn(r, bandwidth)
        assert r.migration is not None
        finish_migration(lab, GUEST, r.migration, DST)
        r.mark("migration_end")
        time.sleep(settle_s)  # let a switch-host reconnect (or its failure) reach the log
        if r.client.running():
            screenshot(lab.hosts[CLIENT], lab.display(CLIENT), work / "after.png")
        r.mark("record_end")
        r.client.stop()
        r.watcher.stop()
        return _save(name, expected, r, g.accel, bandwidth, out)
    finally:
        if r is not None:
            r.events.close()
            r.client.stop()
            r.watcher.stop()
        lab.down()
        shutil.rmtree(work, ignore_errors=True)


def _save(
    name: str, expected: str, r: Run, accel: str, bandwidth: int, out: Path
) -> dict[str, Any]:
    m = r.migration
    assert m is not None
    t0 = r.marks["migration_start"]

    def rel(t: float | None) -> float | None:
        return None if t is None else round(t - t0, 3)

    text = r.client.log_text()
    c = classify(text, r.events.events())
    # from when the client showed the guest (or the migration started, if later) to the end
    seen = max(t0, r.marks.get("client_connected", t0))
    gap = r.watcher.longest_gap((seen, r.marks["record_end"]))
    # and around the switchover: 1 s before the source paused to 3 s after
    paused = [
        e.t
        for e in r.events.events(SRC, kind="lifecycle")
        if (e.phase, e.detail) == ("suspended", "migrated")
    ]
    sw = r.watcher.longest_gap((paused[0] - 1, paused[0] + 3)) if paused else None
    meta = {
        "scenario": name,
        "expected_outcome": expected,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(m.record.started)),
        "accel": accel,
        "bandwidth_mib_s": bandwidth,
        "client": {**r.where, "log_lines": text.count("\n")},
        "marks_s": {k: rel(v) for k, v in r.marks.items()},
        "client_connect_wall": r.client.connect_wall,
        "migration_started_wall": m.record.started,
        "migration": m.record.to_json(),
        "display": {
            "longest_gap_ms": None if gap is None else round(gap.ms, 1),
            "longest_gap_at_s": None if gap is None else [rel(gap.start), rel(gap.end)],
            "changes_hz": round(r.watcher.rate_hz(), 1),
            "switchover_gap_ms": None if sw is None else round(sw.ms, 1),
            "switchover_gap_at_s": None if sw is None else [rel(sw.start), rel(sw.end)],
        },
        "server_events": [{**e.to_json(), "t_s": rel(e.t)} for e in r.events.events()],
        "classified": c.to_json(),
    }
    out.mkdir(parents=True, exist_ok=True)
    with gzip.open(out / f"{name}.log.gz", "wt", encoding="utf-8") as f:
        f.write(text)
    (out / f"{name}.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def reclassify(out: Path, names: list[str]) -> int:
    """Refresh the `classified` field of saved scenarios with today's classifier."""
    for name in names:
        meta_path = out / f"{name}.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        c = classify(read_log(out / f"{name}.log.gz"), meta["server_events"])
        meta["classified"] = c.to_json()
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{name}: {c.outcome}, usbredir {c.usbredir} (expected {meta['expected_outcome']})")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help=f"of: {', '.join(SCENARIOS)}")
    p.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "spice")
    p.add_argument("--bandwidth", type=int, default=10, help="migration MiB/s (default 10)")
    p.add_argument("--settle", type=float, default=6.0, help="seconds to watch after the end")
    p.add_argument(
        "--reclassify",
        action="store_true",
        help="record nothing: classify the saved logs again and update their JSON",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    logging.basicConfig(
        level=logging.INFO if a.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    log.setLevel(logging.INFO)
    names = a.names or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"no scenario {', '.join(unknown)} (scenarios: {', '.join(SCENARIOS)})")
    if a.reclassify:
        return reclassify(a.out, names)
    bad = 0
    for name in names:
        meta = record(name, a.out, a.bandwidth, a.settle)
        got = meta["classified"]["outcome"]
        ok = got == meta["expected_outcome"]
        bad += not ok
        mig = meta["migration"]
        print(
            f"{name}: {got} (expected {meta['expected_outcome']}), usbredir "
            f"{meta['classified']['usbredir']}; migration {mig['result']} in "
            f"{mig['duration_s']} s; client connect at {meta['marks_s'].get('client_connect')} s; "
            f"longest display gap {meta['display']['longest_gap_ms']} ms"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
