"""The kernel engine on a kernel with sch_netem: run inside the netem VM (`test_netem_vm.py`).

Not collected on this machine (the name has no `test_` prefix: its kernel has no netem);
`test_netem_vm.py` runs it in the VM with real packets on the VM's kernel. Three hosts
on one bridge (`ScratchNet`), a fresh KernelNetemEngine per test, and after each test
no qdisc of ours is left on any host.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from testbed.hosts.ledger import Ledger
from testbed.hosts.nsexec import ns_argv
from testbed.model.profile import LinkProfile
from testbed.net.probe import probe
from testbed.net.shaping.base import Direction, differences
from testbed.net.shaping.detect import netem_available
from testbed.net.shaping.egress import Egress, Tbf
from testbed.net.shaping.ingress import Ingress
from testbed.net.shaping.kernel import KernelNetemEngine
from testbed.net.shaping.scratch import ScratchNet

if os.geteuid() != 0 or not netem_available():  # only `test_netem_vm.py` runs this file
    pytest.fail("netem_inside.py runs inside the netem VM, as root", pytrace=False)


def P(**kw: object) -> LinkProfile:  # noqa: N802 - reads like a literal
    return LinkProfile.parse(kw)


@pytest.fixture(scope="module")
def net():
    with ScratchNet.create(prefix=f"tbin{os.getpid()}") as n:
        yield n


@pytest.fixture
def kernel(net: ScratchNet, tmp_path: Path):
    eng = KernelNetemEngine(Ledger(tmp_path / "ledger.jsonl"), tmp_path)
    try:
        yield eng
    finally:
        eng.close()
        for host in net.hosts.values():  # clear leaves nothing
            st = Egress(host.netns, host.ifname).read_state()
            assert not st.ours and st.root_kind in (None, "noqueue"), (host, st)
            assert not st.filters and not st.classes, (host, st)
        assert not eng.state_path.exists()


def rtts(net: ScratchNet, dst: str, count: int, interval: str = "0.02") -> list[float]:
    """Each reply's RTT in ms (ping's own lines), lost ones left out."""
    c, d = net.hosts["client"], net.hosts[dst]
    out = subprocess.run(
        [*ns_argv(c.netns), "ping", "-n", "-c", str(count), "-i", interval, "-W", "2", d.address],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]


EVERY_FIELD = [
    P(delay="30ms", jitter="5ms", distribution="normal", loss="1.5%", duplicate="2%",
      corrupt="0.5%", reorder="10%", rate="20mbit", limit=500),
    P(delay="10ms", jitter="2ms", distribution="pareto"),
    P(delay="10ms", jitter="3ms", distribution="paretonormal", limit=64),
    P(delay="1ms", jitter="1ms", distribution="uniform", loss="25%"),
    P(rate="3mbit", limit=100),
    P(rate="100mbit"),
    P(loss="0.001%"),
]  # fmt: skip


@pytest.mark.parametrize("profile", EVERY_FIELD, ids=lambda p: p.describe())
def test_read_back_equals_asked(kernel: KernelNetemEngine, net: ScratchNet, profile) -> None:
    cd = net.direction("client", "dst")
    kernel.apply({cd: profile})
    kernel.verify()
    held = kernel.read_back()
    assert set(held) == {cd}
    assert differences(profile, held[cd]) == []


def test_htb_per_peer_classes_with_u32_filters(kernel: KernelNetemEngine, net: ScratchNet) -> None:
    kernel.apply(
        {
            net.direction("client", "dst"): P(delay="60ms"),
            net.direction("client", "src"): P(delay="20ms", rate="5mbit"),
        }
    )
    st = Egress(net.hosts["client"].netns, net.hosts["client"].ifname).read_state()
    assert st.ours and st.root_kind == "htb"
    peers = st.peers()
    assert set(peers) == {net.hosts["dst"].address, net.hosts["src"].address}
    minors = {minor for minor, _ in peers.values()}
    assert len(minors) == 2 and minors <= set(st.classes)  # one htb class per peer
    assert isinstance(peers[net.hosts["src"].address][1], Tbf)
    to_dst, to_src = rtts(net, "dst", 10), rtts(net, "src", 10)
    assert len(to_dst) == 10 and 59 <= min(to_dst) and max(to_dst) < 90, to_dst
    assert len(to_src) == 10 and 19 <= min(to_src) and max(to_src) < 50, to_src


def test_reorder_sends_some_packets_at_once(kernel: KernelNetemEngine, net: ScratchNet) -> None:
    kernel.apply({net.direction("client", "dst"): P(delay="40ms", reorder="50%")})
    got = rtts(net, "dst", 60)
    fast, slow = [r for r in got if r < 20], [r for r in got if r >= 39]
    assert len(got) >= 55 and 10 <= len(fast) <= 50 and len(slow) >= 10, got


@pytest.mark.parametrize("dist", ["uniform", "normal", "pareto", "paretonormal"])
def test_jitter_distribution_spreads_the_delay(
    kernel: KernelNetemEngine, net: ScratchNet, dist: str
) -> None:
    kernel.apply(
        {net.direction("client", "dst"): P(delay="50ms", jitter="10ms", distribution=dist)}
    )
    kernel.verify()
    got = rtts(net, "dst", 50, "0.05")
    assert len(got) >= 48
    mean = sum(got) / len(got)
    assert 44 <= mean <= 62 and min(got) < 47 and max(got) > 53, (dist, got)


def test_queue_limit_drops_a_burst(kernel: KernelNetemEngine, net: ScratchNet) -> None:
    """80 UDP datagrams sent in one loop into a 1 s line: a 5-packet queue passes few.

    (Not pings: under TCG ping sends them slower than the line drains.)
    """
    cd = net.direction("client", "dst")
    kernel.apply({cd: P(delay="1s", limit=5)})
    small = udp_burst(net, "dst", 80)
    kernel.apply({cd: P(delay="1s", limit=1000)})
    big = udp_burst(net, "dst", 80)
    assert small <= 20 and big >= 76, (small, big)  # measured in the VM: 5 of 200, 116 of 200


RECEIVER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
s.bind((sys.argv[1], 9999)); s.settimeout(2.5); n = 0
print("ready", flush=True)
try:
    while True:
        s.recv(2048); n += 1
except TimeoutError:
    print(n)
"""
SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(int(sys.argv[2])):
    s.sendto(b"x" * 1000, (sys.argv[1], 9999))
"""


def udp_burst(net: ScratchNet, dst: str, n: int) -> int:
    """How many of `n` datagrams sent back to back from client reach `dst`."""
    c, d = net.hosts["client"], net.hosts[dst]
    rx = subprocess.Popen(
        [*ns_argv(d.netns), "python3", "-c", RECEIVER, d.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert rx.stdout is not None and rx.stdout.readline().strip() == "ready"
        subprocess.run([*ns_argv(c.netns), "python3", "-c", SENDER, d.address, str(n)], check=True)
        out, _ = rx.communicate(timeout=30)
    finally:
        rx.kill()
        rx.wait()
    return int(out.strip())


def test_tbf_rate_holds(kernel: KernelNetemEngine, net: ScratchNet) -> None:
    kernel.apply({net.direction("client", "dst"): P(rate="4mbit")})
    kernel.verify()
    r = probe(net.hosts["client"], net.hosts["dst"], pings=0, goodput_s=4, omit_s=1)
    assert r.goodput_mbit is not None and 3.2 <= r.goodput_mbit <= 4.2, r


def test_loss_and_duplicate_on_real_packets(kernel: KernelNetemEngine, net: ScratchNet) -> None:
    cd = net.direction("client", "dst")
    kernel.apply({cd: P(loss="20%")})
    r = probe(net.hosts["client"], net.hosts["dst"], pings=200, interval_s=0.005, goodput_s=0)
    assert r.loss_pct is not None and 10 <= r.loss_pct <= 32, r
    kernel.apply({cd: P(duplicate="30%")})
    r = probe(net.hosts["client"], net.hosts["dst"], pings=100, interval_s=0.005, goodput_s=0)
    assert 12 <= r.duplicates <= 50, r


def test_one_ended_shaping_on_the_receivers_ingress_with_ifb(
    kernel: KernelNetemEngine, net: ScratchNet
) -> None:
    """client -> dst shaped on dst alone (its ingress, through an ifb): the client's egress
    holds nothing of ours, the delay and the rate are what was asked, read-back equals
    asked, and clearing removes the ifb and the ingress qdisc."""
    c, d = net.hosts["client"], net.hosts["dst"]
    cd = net.direction("client", "dst")
    one = Direction(cd.network, cd.src, cd.dst, at="dst")
    kernel.apply({one: P(delay="60ms")})
    kernel.verify()
    assert set(kernel.read_back()) == {one}
    assert not Egress(c.netns, c.ifname).read_state().ours  # nothing on the sender
    ing = Ingress(d.netns, d.ifname)
    held = ing.read()
    assert set(held) == {c.address}, held
    got = rtts(net, "dst", 10)
    assert len(got) == 10 and 59 <= min(got) and max(got) < 90, got
    kernel.apply({one: P(rate="4mbit")})
    kernel.verify()
    r = probe(c, d, pings=0, goodput_s=4, omit_s=1)
    assert r.goodput_mbit is not None and 3.2 <= r.goodput_mbit <= 4.2, r
    kernel.apply({})
    assert ing.read() == {}
    out = subprocess.run(
        [*ns_argv(d.netns), "ip", "-o", "link", "show"], capture_output=True, text=True
    ).stdout
    assert ing.ifb not in out, out
    qd = subprocess.run(
        [*ns_argv(d.netns), "tc", "qdisc", "show", "dev", d.ifname],
        capture_output=True,
        text=True,
    ).stdout
    assert "ingress" not in qd, qd
