"""Shaping through each host's own agent (`HostAgentsEngine`): real namespaces, real sshd.

Local part: two scratch namespaces on one bridge, each driven as a `LocalHost` (the
agent runs inside the namespace through nsenter). SSH part: the sshd of `ssh_lab` in
its scratch namespace is the SSH host "hv1"; a second veth joins that namespace to
another scratch namespace ("peer", a LocalHost), and the link peer -> hv1 is shaped on
it: the rate on peer, the delay line on hv1, started there by its agent over SSH.
Every test checks after close that no qdisc, iptables rule or delay line is left.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns
from sshlab import SshLab, ssh_lab

from testbed.errors import LabError
from testbed.hosts.ledger import Ledger
from testbed.hosts.local import LocalHost
from testbed.hosts.procs import pids_in_netns, stop_netns_processes
from testbed.model.profile import LinkProfile
from testbed.net import agent
from testbed.net.probe import probe
from testbed.net.shaping import iptables
from testbed.net.shaping.base import Direction, Endpoint
from testbed.net.shaping.egress import Egress
from testbed.net.shaping.hosts import HostAgentsEngine
from testbed.net.shaping.scratch import ScratchNet

pytestmark = [
    pytest.mark.lab,  # namespaces and the scratch sshd
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]


def P(**kw: object) -> LinkProfile:  # noqa: N802 - reads like a literal in the tests
    return LinkProfile.parse(kw)


def delay_lines(ns: str) -> list[int]:
    out = []
    for pid in pids_in_netns(ns):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"testbed.net.shaping.delayline" in cmd and state != "Z":
            out.append(pid)
    return out


def assert_clean(places: list[tuple[str, str]], eng: HostAgentsEngine) -> None:
    """(netns, ifname) places hold no qdisc, rule or delay line of ours; no state left."""
    for ns, ifname in places:
        st = Egress(ns, ifname).read_state()
        assert not st.ours and st.root_kind in (None, "noqueue"), (ns, ifname, st)
        assert not iptables.chain_exists(ns), ns
        assert delay_lines(ns) == [], ns
    assert not eng.state_path.exists()


def rtt(src: Endpoint, dst: Endpoint, pings: int = 20) -> float:
    r = probe(src, dst, pings=pings, goodput_s=0)
    assert r.rtt_ms is not None, r
    return r.rtt_ms["avg"]


# -- local hosts ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net() -> Iterator[ScratchNet]:
    with ScratchNet.create(
        prefix=f"tbag{os.getpid()}", names=("client", "dst"), subnet="198.18.249.0/24"
    ) as n:
        yield n


@pytest.fixture(scope="module")
def base_rtt(net: ScratchNet) -> float:
    return rtt(net.hosts["client"], net.hosts["dst"])


def local_hosts(net: ScratchNet, tmp: Path) -> dict[str, LocalHost]:
    return {name: LocalHost(name, ep.netns, tmp / name) for name, ep in net.hosts.items()}


@pytest.fixture
def local(net: ScratchNet, tmp_path: Path) -> Iterator[HostAgentsEngine]:
    eng = HostAgentsEngine(
        local_hosts(net, tmp_path), Ledger(tmp_path / "ledger.jsonl"), tmp_path / "shaping"
    )
    try:
        yield eng
    finally:
        eng.close()
        assert_clean([(h.netns, h.ifname) for h in net.hosts.values()], eng)


def test_delay_100ms_through_the_agents(local: HostAgentsEngine, net: ScratchNet) -> None:
    cd = net.direction("client", "dst")
    local.apply({cd: P(delay="100ms")})
    local.verify()
    shaped = rtt(net.hosts["client"], net.hosts["dst"])
    print(f"\nlocal hosts: 100ms asked, RTT {shaped:.2f} ms")
    assert 95 <= shaped <= 130
    assert local.read_back()[cd].delay_ms == 100
    health = local.health()
    assert health["ok"] and health["engines"] == ["userspace-nfqueue"]
    (line,) = health["delay_lines"]  # on the receiver, started by its agent, which has exited
    assert line["host"] == "dst" and delay_lines(net.hosts["dst"].netns) == [line["pid"]]
    ledger = Ledger(Path(local.agent_state("dst")) / "ledger.jsonl")
    assert [(e["pid"], e["name"]) for e in ledger.of_kind("process")] == [
        (line["pid"], "delayline")
    ]
    assert [e["host"] for e in local.ledger.of_kind("shaping-agent")] == ["client", "dst"]


def test_rate_10mbit_through_the_agents(local: HostAgentsEngine, net: ScratchNet) -> None:
    local.apply({net.direction("client", "dst"): P(rate="10mbit")})
    local.verify()
    assert Egress(net.hosts["client"].netns, "lan").read_state().ours  # on the sender
    r = probe(net.hosts["client"], net.hosts["dst"], pings=0, goodput_s=3)
    print(f"\nlocal hosts: 10mbit asked, {r.goodput_mbit:.2f} Mbit/s measured")
    assert 7 <= r.goodput_mbit <= 10.5  # type: ignore[operator]


def test_clear_restores_the_base(local: HostAgentsEngine, net: ScratchNet, base_rtt: float) -> None:
    cd = net.direction("client", "dst")
    local.apply({cd: P(delay="100ms", loss="1%", rate="10mbit")})
    local.verify()
    assert rtt(net.hosts["client"], net.hosts["dst"], pings=5) >= 95
    local.apply({})
    assert local.read_back() == {}
    local.verify()
    cleared = rtt(net.hosts["client"], net.hosts["dst"])
    print(f"\nlocal hosts: base RTT {base_rtt:.2f} ms, after clear {cleared:.2f} ms")
    assert cleared < base_rtt + 2
    assert local.health()["delay_lines"] == []


def test_close_after_the_caller_crashed(net: ScratchNet, tmp_path: Path) -> None:
    """The caller's engine object and its state are gone; the ledger and the agents remain."""
    hosts = local_hosts(net, tmp_path)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    first = HostAgentsEngine(hosts, ledger, tmp_path / "shaping")
    first.apply({net.direction("client", "dst"): P(delay="50ms", rate="20mbit")})
    (pid,) = delay_lines(net.hosts["dst"].netns)
    first.state_path.unlink()  # as if the caller died before it could save anything
    del first
    later = HostAgentsEngine(hosts, ledger, tmp_path / "shaping")
    later.close()
    assert_clean([(h.netns, h.ifname) for h in net.hosts.values()], later)
    assert not Path(f"/proc/{pid}").exists() or pid not in delay_lines(net.hosts["dst"].netns)


def test_agent_errors_are_json_without_traceback(tmp_path: Path) -> None:
    resp, code = agent.answer('{"op": "fly"}', tmp_path)
    assert code == 1 and resp["ok"] is False and "unknown op 'fly'" in resp["error"]
    resp, code = agent.answer("not json", tmp_path)
    assert code == 1 and "not JSON" in resp["error"] and "Traceback" not in json.dumps(resp)
    shapes = [{"direction": {"network": "x"}, "profile": {}}]
    resp, _ = agent.answer(json.dumps({"op": "apply", "shapes": shapes}), tmp_path)
    assert resp["ok"] is False and "malformed shapes" in resp["error"]


def test_agent_error_names_the_host(local: HostAgentsEngine, net: ScratchNet) -> None:
    c = net.hosts["client"]
    bad = Direction("lan", Endpoint("client", c.netns, "nosuchif", c.address), net.hosts["dst"])
    with pytest.raises(LabError, match=r"^client: no interface 'nosuchif' in this host's"):
        local.apply({bad: P(rate="10mbit")})


# -- an SSH host ------------------------------------------------------------------------
@dataclass
class SshPair:
    lab: SshLab
    peer_ns: str
    hv1: Endpoint  # the SSH host on its second interface ("lan"), not its ssh one
    peer: Endpoint
    hosts: dict


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshPair]:
    tmp = tmp_path_factory.mktemp("agent-ssh")
    with ssh_lab(tmp, tag=2) as lab:
        peer_ns = f"tbag{os.getpid()}-peer"
        netns.create(peer_ns)
        try:
            with IPRoute(netns=lab.netns) as ipr:
                ipr.link(
                    "add", ifname="lan", kind="veth", peer={"ifname": "lan", "net_ns_fd": peer_ns}
                )
                idx = ipr.link_lookup(ifname="lan")[0]
                ipr.addr("add", index=idx, address="198.18.248.1", prefixlen=24)
                ipr.link("set", index=idx, state="up")
            with IPRoute(netns=peer_ns) as ipr:
                for name, addr in (("lo", None), ("lan", "198.18.248.2")):
                    idx = ipr.link_lookup(ifname=name)[0]
                    if addr:
                        ipr.addr("add", index=idx, address=addr, prefixlen=24)
                    ipr.link("set", index=idx, state="up")
            hosts = {
                # NetfilterQueue is compiled: only the venv's python has it on this machine
                "hv1": lab.host(python=sys.executable),
                "peer": LocalHost("peer", peer_ns, tmp / "peer"),
            }
            yield SshPair(
                lab,
                peer_ns,
                Endpoint("hv1", "", "lan", "198.18.248.1"),
                Endpoint("peer", peer_ns, "lan", "198.18.248.2"),
                hosts,
            )
            hosts["hv1"].close()
        finally:
            stop_netns_processes(peer_ns)
            netns.remove(peer_ns)


def pair_clean(pair: SshPair, eng: HostAgentsEngine) -> None:
    assert_clean([(pair.lab.netns, "lan"), (pair.lab.netns, "eth0"), (pair.peer_ns, "lan")], eng)


@pytest.fixture
def remote(pair: SshPair, tmp_path: Path) -> Iterator[HostAgentsEngine]:
    eng = HostAgentsEngine(pair.hosts, Ledger(tmp_path / "ledger.jsonl"), tmp_path / "shaping")
    try:
        yield eng
    finally:
        eng.close()
        pair_clean(pair, eng)


def test_delay_on_an_ssh_host_as_receiver(remote: HostAgentsEngine, pair: SshPair) -> None:
    base = rtt(pair.peer, pair.hv1, pings=10)
    d = Direction("lan", pair.peer, pair.hv1)
    t0 = time.monotonic()
    remote.apply({d: P(delay="100ms", rate="50mbit")})
    applied_s = time.monotonic() - t0
    remote.verify()
    shaped = rtt(pair.peer, pair.hv1)
    assert 95 <= shaped <= 130, (base, shaped)
    held = remote.read_back()[d]
    assert (held.delay_ms, held.rate_bit) == (100, 50_000_000)
    # the delay line runs on hv1 (sshd's namespace), the rate on peer's egress
    (line,) = remote.health()["delay_lines"]
    assert line["host"] == "hv1" and delay_lines(pair.lab.netns) == [line["pid"]]
    assert iptables.chain_exists(pair.lab.netns)
    assert Egress(pair.peer_ns, "lan").read_state().ours
    assert not Egress(pair.lab.netns, "lan").read_state().ours
    print(f"\nssh receiver: base {base:.2f} ms, shaped {shaped:.2f} ms, apply {applied_s:.1f} s")


def test_the_ssh_interface_is_refused(remote: HostAgentsEngine, pair: SshPair) -> None:
    ctl = Endpoint("hv1", "", "eth0", pair.lab.address)
    d = Direction("ctl", pair.peer, ctl)
    with pytest.raises(LabError, match=r"^hv1: refusing to shape .*eth0 carries the lab's SSH"):
        remote.apply({d: P(delay="100ms")})
    # the agent refuses on its own too, whatever its caller says (another address on eth0)
    view = remote.view(Direction("ctl", ctl, replace_address(pair.peer, "198.18.248.9")), "hv1")
    req = {"op": "apply", "shapes": agent.shapes_to_json({view: P(rate="1mbit")})}
    with pytest.raises(LabError, match=r"^hv1: refusing to shape .*eth0.*SSH connection"):
        remote.call("hv1", req)
    pair_clean(pair, remote)  # nothing was touched anywhere
    assert pair.hosts["hv1"].run(["true"]).returncode == 0


def replace_address(ep: Endpoint, address: str) -> Endpoint:
    return Endpoint(ep.host, ep.netns, ep.ifname, address)
