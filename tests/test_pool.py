"""The host pool: disjoint leases across processes, waiting, and expiry after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testbed.errors import LabError
from testbed.lab.pool import HostPool

HOSTS = {
    "hv1": ["hypervisor"],
    "hv2": ["hypervisor"],
    "hv3": ["hypervisor"],
    "hv4": ["hypervisor"],
    "cl1": ["client"],
    "cl2": ["client"],
}
NEED = {"hypervisor": 2, "client": 1}


def test_two_leases_are_disjoint_and_a_third_waits(tmp_path: Path) -> None:
    pool = HostPool(HOSTS, tmp_path)
    a = pool.lease(NEED, "gw0")
    b = pool.lease(NEED, "gw1")
    assert len(a.names) == len(b.names) == 3
    assert not set(a.names) & set(b.names)
    with pytest.raises(LabError, match="no free hosts"):
        pool.lease(NEED, "gw2", timeout_s=0.3, poll_s=0.05)
    a.release()
    c = pool.lease(NEED, "gw2", timeout_s=1)
    assert set(c.names) == set(a.names)
    assert pool.holders() == {**{h: "gw1" for h in b.names}, **{h: "gw2" for h in c.names}}


def test_more_than_the_pool_has_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LabError, match="2 host\\(s\\) with role client, 3 asked"):
        HostPool(HOSTS, tmp_path).lease({"client": 3}, "gw0")


CHILD = """
import sys, time
from pathlib import Path
from testbed.lab.pool import HostPool
pool = HostPool({hosts!r}, Path(sys.argv[1]), ttl_s=1.5)
lease = pool.lease({need!r}, "crasher")
print(" ".join(lease.names), flush=True)
while True:
    time.sleep(0.3)
    lease.renew()
"""


def test_a_crashed_workers_lease_expires(tmp_path: Path) -> None:
    code = CHILD.format(
        hosts={"hv1": ["hypervisor"], "hv2": ["hypervisor"]}, need={"hypervisor": 2}
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().split() == ["hv1", "hv2"]
        pool = HostPool({"hv1": ["hypervisor"], "hv2": ["hypervisor"]}, tmp_path, ttl_s=1.5)
        time.sleep(2.0)  # longer than the ttl: the renewals keep the lease alive
        with pytest.raises(LabError, match="no free hosts"):
            pool.lease({"hypervisor": 1}, "gw1", timeout_s=0.2, poll_s=0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(5)
        t0 = time.monotonic()
        lease = pool.lease({"hypervisor": 2}, "gw1", timeout_s=5, poll_s=0.05)
        assert lease.names == ["hv1", "hv2"]
        assert time.monotonic() - t0 <= 1.6  # back once the dead worker's lease ran out
    finally:
        child.kill()
        child.wait(5)
