"""The kernel engine's netlink messages.

This kernel has no sch_netem, so the netem requests are checked by encoding them to the
bytes the kernel would get and reading those bytes back twice: with our own decoder, and
with a small independent parser of the kernel ABI (struct tc_netem_qopt, attribute
numbers from linux/pkt_sched.h). The htb + u32 half runs for real in a scratch namespace.
"""

from __future__ import annotations

import os
import socket
import statistics
import struct

import pytest
from pyroute2 import IPRoute, netns

from testbed.errors import CapabilityMissing
from testbed.model.profile import LIMIT_FLOOR, LinkProfile
from testbed.net.shaping import distributions
from testbed.net.shaping import netlink as nl
from testbed.net.shaping.base import differences
from testbed.net.shaping.detect import netem_available
from testbed.net.shaping.egress import ROOT_MAJOR, UNSHAPED_RATE_BIT, Egress, Pfifo, Tbf
from testbed.net.shaping.kernel import from_leaf, to_leaf

U32_MAX = 2**32 - 1
# linux/pkt_sched.h
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_NETEM_DELAY_DIST, TCA_NETEM_REORDER, TCA_NETEM_CORRUPT = 2, 3, 4
TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64 = 10, 11


def attrs(data: bytes) -> dict[int, bytes]:
    """A minimal netlink attribute walker (type -> payload), independent of pyroute2."""
    out, off = {}, 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        out[kind & 0x3FFF] = data[off + 4 : off + length]
        off += (length + 3) & ~3
    return out


def tc_attrs(msg_bytes: bytes) -> dict[int, bytes]:
    return attrs(msg_bytes[16 + 20 :])  # nlmsghdr + struct tcmsg


NETEM = nl.NetemParams(
    delay_ms=100, jitter_ms=10, loss_pct=5, duplicate_pct=1, corrupt_pct=0.1, reorder_pct=25,
    limit=1250, dist_table=(0, 1, -1, 8192, -8192, 32767, -32768),
)  # fmt: skip


def test_netem_request_bytes_match_the_kernel_abi() -> None:
    data = nl.encode(nl.netem_qdisc(7, nl.handle(0x10), nl.handle(ROOT_MAJOR, 0x10), NETEM))
    index, hdl, parent = struct.unpack_from("=iII", data, 16 + 4)
    assert (index, hdl, parent) == (7, 0x100000, 0x74620010)
    top = tc_attrs(data)
    assert top[TCA_KIND] == b"netem\0"
    opts = top[TCA_OPTIONS]
    latency, limit, loss, gap, duplicate, jitter = struct.unpack_from("=6I", opts)
    assert latency == 100_000_000 // 64  # psched ticks of 64 ns
    assert jitter == 10_000_000 // 64
    assert limit == 1250
    assert loss == round(0.05 * U32_MAX)
    assert duplicate == round(0.01 * U32_MAX)
    assert gap == 1  # tc sets gap 1 with reorder: "by probability only"
    nested = attrs(opts[24:])  # netem's attributes follow the 24-byte qopt
    assert struct.unpack("=q", nested[TCA_NETEM_LATENCY64]) == (100_000_000,)
    assert struct.unpack("=q", nested[TCA_NETEM_JITTER64]) == (10_000_000,)
    assert struct.unpack("=II", nested[TCA_NETEM_REORDER]) == (round(0.25 * U32_MAX), 0)
    assert struct.unpack("=II", nested[TCA_NETEM_CORRUPT]) == (round(0.001 * U32_MAX), 0)
    dist = nested[TCA_NETEM_DELAY_DIST]
    assert struct.unpack(f"={len(dist) // 2}h", dist) == NETEM.dist_table


def test_netem_round_trip_is_exact() -> None:
    msg = nl.netem_qdisc(3, nl.handle(0x11), nl.handle(ROOT_MAJOR, 0x11), NETEM)
    assert nl.netem_params(nl.decode(nl.encode(msg))) == NETEM


def test_netem_without_64bit_times_reads_the_tick_fields() -> None:
    """Older kernels dump only the 32-bit tick fields; they must convert the same way."""
    msg = nl.netem_qdisc(3, nl.handle(0x11), nl.handle(ROOT_MAJOR, 0x11), NETEM)
    opts = msg.get_attr("TCA_OPTIONS")
    opts["attrs"] = [a for a in opts["attrs"] if not a[0].endswith("64")]
    back = nl.netem_params(nl.decode(nl.encode(msg)))
    assert (back.delay_ms, back.jitter_ms) == (100.0, 10.0)


def test_minimal_netem_clears_reorder_and_corrupt() -> None:
    """A change must say reorder 0 and corrupt 0: netem keeps an absent attribute's value."""
    data = nl.encode(nl.netem_qdisc(1, nl.handle(1), nl.TC_H_ROOT, nl.NetemParams(delay_ms=1)))
    nested = attrs(tc_attrs(data)[TCA_OPTIONS][24:])
    want = {TCA_NETEM_LATENCY64, TCA_NETEM_JITTER64, TCA_NETEM_REORDER, TCA_NETEM_CORRUPT}
    assert set(nested) == want
    assert nested[TCA_NETEM_REORDER] == nested[TCA_NETEM_CORRUPT] == bytes(8)


@pytest.mark.parametrize("pct", [0, 0.0001, 0.1, 0.5, 1, 5, 12.5, 33.3333, 99.9, 100])
def test_probability_scale(pct: float) -> None:
    assert nl.u32_to_pct(nl.pct_to_u32(pct)) == pytest.approx(pct, abs=1e-7)
    assert nl.pct_to_u32(0) == 0 and nl.pct_to_u32(100) == U32_MAX


def test_u32_selector_matches_ip_destination() -> None:
    msg = nl.u32_dst_filter(5, nl.handle(ROOT_MAJOR), 1, 0x12, "198.18.1.3", 0x74620012)
    data = nl.encode(msg)
    _, hdl, parent, info = struct.unpack_from("=iIII", data, 16 + 4)
    assert hdl == 0x80000012 and parent == 0x74620000
    assert info == (1 << 16) | socket.htons(0x0800)
    sel = attrs(tc_attrs(data)[TCA_OPTIONS])[5]  # TCA_U32_SEL
    assert sel[0] == 1 and sel[2] == 1  # terminal, one key
    mask, value = struct.unpack_from(">II", sel, 16)
    (off,) = struct.unpack_from("=i", sel, 24)
    assert (mask, value, off) == (0xFFFFFFFF, 0xC6120103, 16)
    assert nl.u32_match(nl.decode(data)) == nl.U32Match(0x80000012, 1, 0x74620012, "198.18.1.3")


@pytest.mark.parametrize("rate", [8_000, 10**7, 10**9, 34 * 10**9, UNSHAPED_RATE_BIT])
def test_htb_class_rate_round_trip(rate: int) -> None:
    msg = nl.htb_class(2, nl.handle(ROOT_MAJOR, 0x10), nl.handle(ROOT_MAJOR), rate, 3000)
    back = nl.decode(nl.encode(msg))
    assert nl.htb_class_rate_bit(back) == rate
    parms = back.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_PARMS")
    assert parms["rate"] == min(rate // 8, U32_MAX)  # above 4 GB/s the RATE64 attribute says it


PROFILES = [
    LinkProfile(delay_ms=100),
    LinkProfile(delay_ms=100, jitter_ms=10),
    LinkProfile(delay_ms=20, jitter_ms=5, jitter_distribution="normal", loss_pct=0.5),
    LinkProfile(delay_ms=250.5, jitter_ms=1, jitter_distribution="paretonormal"),
    LinkProfile(loss_pct=5, duplicate_pct=1, corrupt_pct=0.1),
    LinkProfile(delay_ms=10, reorder_pct=25, rate_bit=10**7, limit=77),
    LinkProfile(rate_bit=2_500_000),
    LinkProfile(delay_ms=0.001, loss_pct=100),
]


def _through_bytes(netem: nl.NetemParams) -> nl.NetemParams:
    msg = nl.netem_qdisc(1, nl.handle(0x10), nl.handle(ROOT_MAJOR, 0x10), netem)
    return nl.netem_params(nl.decode(nl.encode(msg)))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p.to_spec())
def test_read_back_conversion(profile: LinkProfile) -> None:
    """profile -> kernel objects -> bytes -> decoded objects -> profile: no difference."""
    leaf = to_leaf(profile)
    if isinstance(leaf, nl.NetemParams):
        leaf = _through_bytes(leaf)
    elif isinstance(leaf.child, nl.NetemParams):
        msg = nl.tbf_qdisc(1, nl.handle(0x1010), nl.handle(ROOT_MAJOR, 0x10), leaf.rate_bit,
                           6000, 1)  # fmt: skip
        leaf = Tbf(nl.tbf_rate_bit(nl.decode(nl.encode(msg))), _through_bytes(leaf.child))
    held = from_leaf(leaf)
    assert differences(profile, held) == []
    assert held.limit == profile.effective_limit()


def test_rate_goes_to_a_tbf_above_the_netem() -> None:
    leaf = to_leaf(LinkProfile(delay_ms=10, rate_bit=10**7))
    assert isinstance(leaf, Tbf) and leaf.rate_bit == 10**7
    assert isinstance(leaf.child, nl.NetemParams) and leaf.child.delay_ms == 10
    assert to_leaf(LinkProfile(rate_bit=10**6)) == Tbf(10**6, Pfifo(LIMIT_FLOOR))
    assert isinstance(to_leaf(LinkProfile(loss_pct=1)), nl.NetemParams)


@pytest.mark.parametrize("rate", [8_000, 10**6, 10**8, 40 * 10**9])
def test_tbf_round_trip(rate: int) -> None:
    msg = nl.tbf_qdisc(2, nl.handle(0x1010), nl.handle(ROOT_MAJOR, 0x10), rate, 12_500, 64)
    back = nl.decode(nl.encode(msg))
    assert nl.tbf_rate_bit(back) == rate
    assert nl.tbf_burst_bytes(back) == pytest.approx(12_500, rel=0.01)
    assert back.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")["limit"] == 64


def test_distribution_tables_come_from_iproute2() -> None:
    normal = distributions.table("normal")
    assert len(normal) == 4096  # values are sigma x 8192: mean 0, standard deviation 8192
    assert abs(statistics.mean(normal)) < 0.01 * 8192
    assert statistics.pstdev(normal) == pytest.approx(8192, rel=0.01)
    assert distributions.name_of(normal) == "normal"
    assert distributions.name_of(()) == "uniform"
    assert distributions.name_of((1, 2, 3)) is None


def test_differences_are_named() -> None:
    asked = LinkProfile(delay_ms=100, rate_bit=10**7)
    held = LinkProfile(delay_ms=90, rate_bit=10**7, limit=asked.effective_limit())
    assert differences(asked, held) == ["delay_ms: asked 100.0, holds 90.0"]
    assert differences(asked, None) == [f"asked {asked.describe()}, holds nothing"]
    assert differences(None, held)[0].startswith("not asked, but holds delay 90ms")


# -- the htb + u32 half, for real ------------------------------------------------------
@pytest.fixture
def veth():
    name = f"tbnl{os.getpid()}"
    netns.create(name)
    try:
        with IPRoute(netns=name, flags=0) as ipr:
            ipr.link("add", ifname="eth0", kind="veth", peer="eth1")
            for ifname in ("eth0", "eth1"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        yield Egress(name, "eth0")
    finally:
        netns.remove(name)


def test_htb_u32_tbf_apply_read_back_change_and_clear(veth: Egress) -> None:
    wanted = {
        "198.18.1.2": Tbf(10**7, Pfifo(100)),
        "198.18.1.3": Tbf(512_000, Pfifo(64)),
        "198.18.1.4": Tbf(10**9, Pfifo(64)),
    }
    veth.apply(wanted)
    assert veth.read() == wanted
    before = veth.read_state()
    assert before.ours and before.default_minor == 0xFFFF
    assert set(before.classes.values()) == {UNSHAPED_RATE_BIT}  # htb only classifies

    veth.apply(wanted)  # idempotent: nothing is re-made
    assert veth.read_state() == before

    changed = {**wanted, "198.18.1.2": Tbf(2 * 10**7, Pfifo(200))}
    del changed["198.18.1.4"]
    changed["198.18.1.9"] = Tbf(10**6, Pfifo(64))
    veth.apply(changed)
    after = veth.read_state()
    assert veth.read() == changed
    node = {m.dst: n for n, m in before.filters.items()}
    node_after = {m.dst: n for n, m in after.filters.items()}
    assert node_after["198.18.1.2"] == node["198.18.1.2"]  # changed in place, same class
    assert after.leaves[node["198.18.1.2"]].handle == before.leaves[node["198.18.1.2"]].handle
    assert "198.18.1.4" not in node_after

    veth.clear()
    st = veth.read_state()
    assert not st.ours and st.root_kind in (None, "noqueue")


def test_a_foreign_root_qdisc_is_replaced(veth: Egress) -> None:
    with IPRoute(netns=veth.netns, flags=0) as ipr:
        ipr.tc("add", "pfifo", ipr.link_lookup(ifname="eth0")[0], handle="9:", limit=5)
    veth.apply({"198.18.1.2": Tbf(10**7, Pfifo(64))})
    assert veth.read() == {"198.18.1.2": Tbf(10**7, Pfifo(64))}


def test_netem_on_a_kernel_without_it_is_a_clear_capability_error(veth: Egress) -> None:
    if netem_available():
        pytest.skip("this kernel has sch_netem")
    for profile in (LinkProfile(delay_ms=10), LinkProfile(delay_ms=10, rate_bit=10**6)):
        with pytest.raises(CapabilityMissing, match="no netem qdisc") as e:
            veth.apply({"198.18.1.2": to_leaf(profile)})
        assert "userspace engine" in str(e.value)
