"""Link shaping against this kernel: real namespaces, real packets, no mocks.

Three hosts (client, src, dst) on one bridge in namespaces of their own (`ScratchNet`),
made once for the module and removed after. Each test gets a fresh engine (the one
`select_engine()` picks here; the kernel engine too where the kernel has netem, and
inside the netem VM, `test_netem_vm.py`, where it has not) and
checks after `close()` that no qdisc, iptables rule or engine process is left.
The numbers are the issue's: 100 ms -> 95-130 ms RTT, 10 mbit -> 7-10.5 Mbit/s,
5 % loss -> 2-9 % over 400 probes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from testbed.errors import LabError
from testbed.hosts.ledger import Ledger
from testbed.hosts.nsexec import ns_argv
from testbed.model.profile import LinkProfile
from testbed.net.probe import parse_iperf3, parse_ping, probe
from testbed.net.shaping import iptables
from testbed.net.shaping.base import ShapingEngine
from testbed.net.shaping.detect import netem_available, select_engine
from testbed.net.shaping.egress import Egress
from testbed.net.shaping.kernel import KernelNetemEngine
from testbed.net.shaping.scratch import ScratchNet
from testbed.net.shaping.userspace import UserspaceEngine

pytestmark = pytest.mark.lab  # namespaces and a bridge (ScratchNet)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")
ENGINES = {"userspace-nfqueue": UserspaceEngine, "kernel-netem": KernelNetemEngine}


def P(**kw: object) -> LinkProfile:  # noqa: N802 - reads like a literal in the tests
    return LinkProfile.parse(kw)


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def net():
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    with ScratchNet.create(prefix=f"tbsh{os.getpid()}") as n:
        yield n


@pytest.fixture(scope="module")
def base_rtt(net: ScratchNet) -> dict[str, float]:
    out = {}
    for host in ("src", "dst"):
        r = probe(net.hosts["client"], net.hosts[host], pings=20, goodput_s=0)
        out[host] = r.rtt_ms["avg"]  # type: ignore[index]
    return out


def engines_here() -> list[str]:
    """Both engines where the kernel has netem; on one without it (this CI machine) the
    kernel-netem variants run inside the netem VM instead (`test_netem_vm.py`)."""
    if os.geteuid() == 0 and not netem_available():
        return ["userspace-nfqueue"]
    return list(ENGINES)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "engine" in metafunc.fixturenames:
        metafunc.parametrize("engine", engines_here(), indirect=True)


@pytest.fixture
def engine(request: pytest.FixtureRequest, net: ScratchNet, tmp_path: Path):
    eng: ShapingEngine = ENGINES[request.param](Ledger(tmp_path / "ledger.jsonl"), tmp_path)
    try:
        yield eng
    finally:
        pids = [line["pid"] for line in eng.health().get("delay_lines", [])]
        eng.close()
        assert_clean(net, pids, eng)


@pytest.fixture
def userspace(net: ScratchNet, tmp_path: Path):
    eng = UserspaceEngine(Ledger(tmp_path / "ledger.jsonl"), tmp_path)
    try:
        yield eng
    finally:
        pids = [line["pid"] for line in eng.health()["delay_lines"]]
        eng.close()
        assert_clean(net, pids, eng)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_clean(net: ScratchNet, pids: list[int], eng: ShapingEngine) -> None:
    """Nothing the engine made is left: qdiscs, iptables chain, processes, state file."""
    for host in net.hosts.values():
        st = Egress(host.netns, host.ifname).read_state()
        assert not st.ours and st.root_kind in (None, "noqueue"), (host, st)
        assert not iptables.chain_exists(host.netns), host
    assert not [pid for pid in pids if _alive(pid)]
    assert not eng.state_path.exists()


def rtt(net: ScratchNet, dst: str, pings: int = 20) -> float:
    r = probe(net.hosts["client"], net.hosts[dst], pings=pings, goodput_s=0)
    assert r.rtt_ms is not None, r
    return r.rtt_ms["avg"]


# -- the numbers ---------------------------------------------------------------
@needs_root
def test_engine_choice_follows_the_kernel(tmp_path: Path) -> None:
    eng = select_engine(Ledger(tmp_path / "ledger.jsonl"), tmp_path)
    expected = KernelNetemEngine if netem_available() else UserspaceEngine
    assert isinstance(eng, expected)


def test_delay_100ms_one_direction(engine: ShapingEngine, net: ScratchNet) -> None:
    engine.apply({net.direction("client", "dst"): P(delay="100ms")})
    engine.verify()
    assert 95 <= rtt(net, "dst") <= 130


def test_rate_10mbit(engine: ShapingEngine, net: ScratchNet) -> None:
    engine.apply({net.direction("client", "dst"): P(rate="10mbit")})
    engine.verify()
    r = probe(net.hosts["client"], net.hosts["dst"], pings=0, goodput_s=3)
    assert 7 <= r.goodput_mbit <= 10.5  # type: ignore[operator]


def test_loss_5pct(engine: ShapingEngine, net: ScratchNet) -> None:
    engine.apply({net.direction("client", "dst"): P(loss="5%")})
    engine.verify()
    r = probe(net.hosts["client"], net.hosts["dst"], pings=400, interval_s=0.005, goodput_s=0)
    assert 2 <= r.loss_pct <= 9  # type: ignore[operator]


def test_per_peer_shaping(engine: ShapingEngine, net: ScratchNet, base_rtt: dict) -> None:
    engine.apply({net.direction("client", "dst"): P(delay="100ms")})
    assert 95 <= rtt(net, "dst") <= 130
    assert rtt(net, "src") < base_rtt["src"] + 2  # the other peer on the same interface


def test_clearing_restores_the_base(engine: ShapingEngine, net: ScratchNet, base_rtt: dict) -> None:
    cd = net.direction("client", "dst")
    engine.apply({cd: P(delay="100ms", loss="1%", rate="10mbit")})
    assert rtt(net, "dst") >= 95
    engine.apply({})
    assert engine.read_back() == {}
    engine.verify()
    assert rtt(net, "dst") < base_rtt["dst"] + 2


def test_profile_change_keeps_a_tcp_flow_alive(engine: ShapingEngine, net: ScratchNet) -> None:
    c, d = net.hosts["client"], net.hosts["dst"]
    cd = net.direction("client", "dst")
    engine.apply({cd: P(delay="20ms")})
    port = str(5200 + os.getpid() % 1000)
    srv = subprocess.Popen(
        [*ns_argv(d.netns), "iperf3", "-s", "-1", "-B", d.address, "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        cli = subprocess.Popen(
            [*ns_argv(c.netns), "iperf3", "-J", "-c", d.address, "-p", port, "-t", "6"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for step in (
            P(delay="80ms"),
            P(delay="10ms", rate="50mbit"),
            P(delay="30ms", jitter="5ms", loss="1%", rate="20mbit"),
            P(delay="5ms", duplicate="1%"),
            None,
        ):
            time.sleep(1.0)
            engine.apply({cd: step} if step else {})
        out, _ = cli.communicate(timeout=30)
    finally:
        srv.kill()
        srv.wait()
    assert cli.returncode == 0, out[-500:]
    doc = json.loads(out)
    assert "error" not in doc
    per_second = [iv["sum"]["bytes"] for iv in doc["intervals"]]
    assert len(per_second) >= 6 and all(b > 0 for b in per_second), per_second


def test_apply_is_idempotent_and_changes_in_place(engine: ShapingEngine, net: ScratchNet) -> None:
    shapes = {
        net.direction("client", "dst"): P(delay="10ms", rate="10mbit"),
        net.direction("dst", "client"): P(delay="10ms"),
        net.direction("client", "src"): P(rate="5mbit"),
    }

    def snapshot() -> tuple:
        qdiscs = [Egress(h.netns, h.ifname).read_state() for h in net.hosts.values()]
        rules = [iptables.list_rules(h.netns) for h in net.hosts.values()]
        pids = [line["pid"] for line in engine.health().get("delay_lines", [])]
        return qdiscs, rules, pids

    engine.apply(shapes)
    first = snapshot()
    engine.apply(shapes)
    assert snapshot() == first
    changed = {**shapes, net.direction("client", "dst"): P(delay="40ms", rate="20mbit")}
    engine.apply(changed)
    engine.verify()
    qdiscs, rules, pids = snapshot()
    assert rules == first[1] and pids == first[2]  # same queues, same processes
    client = next(i for i, h in enumerate(net.hosts) if h == "client")
    assert set(qdiscs[client].filters) == set(first[0][client].filters)  # same classes


def test_duplicate_corrupt_and_jitter(engine: ShapingEngine, net: ScratchNet) -> None:
    c, d = net.hosts["client"], net.hosts["dst"]
    cd = net.direction("client", "dst")
    engine.apply({cd: P(delay="5ms", duplicate="50%")})
    assert probe(c, d, pings=40, goodput_s=0).duplicates >= 5
    engine.apply({cd: P(delay="5ms", corrupt="50%")})  # a flipped bit fails the ICMP checksum
    assert 25 <= probe(c, d, pings=40, goodput_s=0).loss_pct <= 75  # type: ignore[operator]
    engine.apply({cd: P(delay="50ms", jitter="10ms", distribution="normal")})
    engine.verify()
    r = probe(c, d, pings=60, goodput_s=0).rtt_ms
    assert r is not None and 44 <= r["avg"] <= 58 and r["min"] < 46 and r["max"] > 54, r


# -- the userspace engine's own promises -------------------------------------------------
def test_killed_delay_line_fails_open(
    userspace: UserspaceEngine, net: ScratchNet, base_rtt: dict
) -> None:
    cd = net.direction("client", "dst")
    userspace.apply({cd: P(delay="100ms", rate="10mbit")})
    assert rtt(net, "dst", pings=5) >= 95
    health = userspace.health()
    assert health["ok"] and health["fail_mode"] == "open"
    (line,) = health["delay_lines"]
    os.kill(line["pid"], signal.SIGKILL)
    time.sleep(0.2)

    health = userspace.health()
    assert not health["ok"]
    assert health["delay_lines"][0]["alive"] is False
    assert health["unshaped"] == [str(cd)]
    assert rtt(net, "dst") < base_rtt["dst"] + 2  # fail-open: packets pass, undelayed
    with pytest.raises(LabError, match="delay_ms|holds"):
        userspace.verify()  # the kernel still holds the rate; the delay is gone

    userspace.apply({cd: P(delay="100ms", rate="10mbit")})  # apply restarts the line
    assert userspace.health()["ok"]
    userspace.verify()
    assert rtt(net, "dst", pings=5) >= 95


def test_delay_lines_are_recorded_in_the_ledger(
    userspace: UserspaceEngine, net: ScratchNet
) -> None:
    userspace.apply({net.direction("client", "dst"): P(delay="1ms")})
    (line,) = userspace.health()["delay_lines"]
    recorded = userspace.ledger.of_kind("process")
    assert [(e["pid"], e["name"], e["netns"]) for e in recorded] == [
        (line["pid"], "delayline", net.hosts["dst"].netns)
    ]
    assert recorded[0]["start_time"] is not None


def test_another_engine_object_continues(userspace: UserspaceEngine, net: ScratchNet) -> None:
    """A later `testbed` command builds a new engine on the same state dir and carries on."""
    cd, dc = net.direction("client", "dst"), net.direction("dst", "client")
    userspace.apply({cd: P(delay="20ms", rate="10mbit")})
    (line,) = userspace.health()["delay_lines"]
    other = UserspaceEngine(userspace.ledger, userspace.state_dir)
    assert other.read_back() == userspace.read_back()
    other.verify()
    other.apply({cd: P(delay="30ms"), dc: P(loss="1%")})
    other.verify()
    assert line["pid"] in [x["pid"] for x in other.health()["delay_lines"]]  # no second line
    pids = [x["pid"] for x in other.health()["delay_lines"]]
    other.close()
    assert_clean(net, pids, other)


def test_close_leaves_nothing(userspace: UserspaceEngine, net: ScratchNet) -> None:
    shapes = {
        net.direction(a, b): P(delay="5ms", loss="1%", rate="50mbit")
        for a in net.hosts
        for b in net.hosts
        if a != b
    }
    userspace.apply(shapes)
    userspace.verify()
    assert len(userspace.health()["delay_lines"]) == 3
    pids = [x["pid"] for x in userspace.health()["delay_lines"]]
    userspace.close()
    assert_clean(net, pids, userspace)
    userspace.close()  # twice is fine


# -- probe parsing, on recorded output ----------------------------------------------------
PING_DUPS = """\
PING 198.18.250.3 (198.18.250.3) 56(84) bytes of data.
64 bytes from 198.18.250.3: icmp_seq=1 ttl=64 time=10.6 ms
64 bytes from 198.18.250.3: icmp_seq=4 ttl=64 time=10.4 ms
64 bytes from 198.18.250.3: icmp_seq=4 ttl=64 time=10.6 ms (DUP!)

--- 198.18.250.3 ping statistics ---
10 packets transmitted, 10 received, +5 duplicates, 0% packet loss, time 180ms
rtt min/avg/max/mdev = 10.360/10.472/10.794/0.109 ms
"""
PING_LOSS = """\
PING 198.18.250.3 (198.18.250.3) 56(84) bytes of data.
64 bytes from 198.18.250.3: icmp_seq=2 ttl=64 time=1.69 ms

--- 198.18.250.3 ping statistics ---
10 packets transmitted, 6 received, 40% packet loss, time 193ms
rtt min/avg/max/mdev = 1.252/1.369/1.692/0.151 ms
"""
PING_ALL_LOST = """\
PING 198.18.250.3 (198.18.250.3) 56(84) bytes of data.

--- 198.18.250.3 ping statistics ---
10 packets transmitted, 0 received, 100% packet loss, time 215ms

"""
IPERF3 = (
    '{"start": {"connecting_to": {"host": "198.18.250.3", "port": 5301}}, "end": {"sum_sent":'
    ' {"seconds": 1.000657, "bytes": 1743257600, "bits_per_second": 13936904253.905186,'
    ' "retransmits": 1514}, "sum_received": {"seconds": 1.000721, "bytes": 1743257600,'
    ' "bits_per_second": 13936012934.6741}}}'
)
IPERF3_REFUSED = '{"start": {}, "intervals": [], "end": {}, "error": "unable to connect to server: Connection refused"}'  # noqa: E501


def test_parse_ping() -> None:
    s = parse_ping(PING_DUPS)
    assert (s.transmitted, s.received, s.duplicates, s.loss_pct) == (10, 10, 5, 0.0)
    assert (s.rtt_min_ms, s.rtt_avg_ms, s.rtt_max_ms) == (10.36, 10.472, 10.794)
    s = parse_ping(PING_LOSS)
    assert (s.received, s.loss_pct, s.rtt_avg_ms) == (6, 40.0, 1.369)
    s = parse_ping(PING_ALL_LOST)
    assert (s.received, s.loss_pct, s.rtt_avg_ms) == (0, 100.0, None)
    with pytest.raises(LabError, match="no summary"):
        parse_ping("ping: connect: Network is unreachable\n")


def test_parse_iperf3() -> None:
    assert parse_iperf3(IPERF3) == pytest.approx(13936.0129, abs=1e-3)
    with pytest.raises(LabError, match="Connection refused"):
        parse_iperf3(IPERF3_REFUSED)
    with pytest.raises(LabError, match="no JSON"):
        parse_iperf3("iperf3: error")
