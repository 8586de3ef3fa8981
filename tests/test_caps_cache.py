"""QEMU's capabilities are probed once per host and shared by every lab's libvirtd.

Real labs: after one lab's daemons probed QEMU, the next lab's daemons start from
the shared copy and libvirt accepts it (it does not probe again: the private file is
the seeded one, byte for byte and mtime for mtime). A stale shared copy (libvirt's
own validity fields changed) is not trusted: the daemon probes afresh and the
fresh probe replaces it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from testbed import errors
from testbed.lab.guests import start_guest
from testbed.lab.lab import Lab
from testbed.model.topology import load_topology
from testbed.virt import capscache
from testbed.virt.domain import DEFAULT_EMULATOR
from testbed.virt.qemu_build import patched_emulator

REPO = Path(__file__).resolve().parent.parent
TOPOLOGY = REPO / "topologies" / "local.yaml"
pytestmark = pytest.mark.lab


def _of(files: list[Path], emulator: str) -> list[Path]:
    """The probe files of one emulator binary (a scenario's patched build has its own)."""
    return [p for p in files if f"<emulator>{emulator}</emulator>" in p.read_text()]


def _private(lab: Lab, host: str, emulator: str = DEFAULT_EMULATOR) -> list[Path]:
    d = Path(str(lab.libvirtd(host).dir / "cache" / capscache.CAPS))
    return _of(sorted(d.glob("*.xml")), emulator)


def _shared(emulator: str = DEFAULT_EMULATOR) -> list[Path]:
    return _of(sorted(Path(str(capscache.SHARED)).glob("*.xml")), emulator)


def test_a_lab_starts_from_the_shared_probe(needs_root: None) -> None:
    Lab.up(load_topology(TOPOLOGY)).down()  # makes sure the shared probe exists
    shared = {p.name: p for p in _shared()}
    assert shared, "the first lab published no capabilities"
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        for host in lab.topology.hypervisors():
            (private,) = _private(lab, host)
            ref = shared[private.name]
            assert private.read_bytes() == ref.read_bytes(), host
            # libvirt rewrites the file when it probes: the seeded mtime survived
            assert private.stat().st_mtime_ns == ref.stat().st_mtime_ns, host
    finally:
        lab.down()


def test_a_stale_shared_probe_is_probed_again_and_replaced(needs_root: None) -> None:
    Lab.up(load_topology(TOPOLOGY)).down()
    (ref,) = _shared()
    text = ref.read_text()
    stale = re.sub(r"<selfctime>\d+</selfctime>", "<selfctime>1</selfctime>", text)
    assert stale != text, "libvirt's capabilities file has no selfctime: the check is blind"
    ref.write_text(stale)
    os.utime(ref, (1_000_000_000, 1_000_000_000))  # older than any fresh probe
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        for host in lab.topology.hypervisors():
            (private,) = _private(lab, host)
            assert "<selfctime>1</selfctime>" not in private.read_text(), host
    finally:
        lab.down()
    (after,) = _shared()
    assert "<selfctime>1</selfctime>" not in after.read_text()
    assert after.stat().st_mtime > 1_000_000_000


def test_a_scenarios_own_emulator_is_known_on_every_hypervisor_before_it_runs(
    needs_root: None,
) -> None:
    """start_guest with spice_server: patched (another binary than the hosts') loads its
    probe on both hypervisors at once, and shares it: the destination does not probe it
    while a migration waits, and the next lab starts from the shared copy."""
    try:
        emulator = str(patched_emulator("patched"))
    except errors.TestbedError as e:  # the build's own error names make setup
        pytest.skip(f"needs the patched spice-server build (make setup): {e}")
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        start_guest(lab, "vm", spice_server="patched")
        for host in lab.topology.hypervisors():
            assert len(_private(lab, host, emulator)) == 1, host  # the destination too
        (shared,) = _shared(emulator)
    finally:
        lab.down()
    lab = Lab.up(load_topology(TOPOLOGY))
    try:
        for host in lab.topology.hypervisors():
            (private,) = _private(lab, host, emulator)  # seeded at lab up
            assert private.read_bytes() == shared.read_bytes(), host
    finally:
        lab.down()
