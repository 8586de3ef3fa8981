"""Traffic-control netlink messages, built and decoded here and nowhere else.

Pure functions: a message is a pyroute2 `tcmsg` we build field by field, encode to bytes,
and decode back with the same classes, so what we install can be read back and compared
(and tested on a kernel that lacks netem). Sending is the caller's job (`tcsock.py`).

Three things pyroute2 0.9.7 does not do for us, done here instead:
- netem: its option map stops at TCA_NETEM_RATE and it has no delay distribution table;
  we also send TCA_NETEM_LATENCY64/JITTER64 (nanoseconds, exact) next to the legacy
  tick fields, and read the 64-bit ones back when the kernel reports them.
- u32: its selector decoder reads the keys 4 bytes too early; we pack and unpack
  `struct tc_u32_sel` ourselves.
- tbf: no 64-bit rate and no burst in bytes; both added (TCA_TBF_RATE64/BURST).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

from pyroute2.netlink import nla
from pyroute2.netlink.rtnl.tcmsg import sched_htb, sched_tbf, tcmsg

TC_H_ROOT = 0xFFFFFFFF
ETH_P_IP = 0x0800
U32_HTID = 0x800  # the root hash table u32 creates at a new prio
TC_U32_TERMINAL = 1
NETEM_DIST_SCALE = 8192  # kernel: table values are sigma * NETEM_DIST_SCALE
U32_MAX = 2**32 - 1


def _ns_per_tick() -> int:
    """Nanoseconds per psched tick (64 on every kernel since 2.6.31; read to be sure)."""
    try:
        with open("/proc/net/psched") as f:
            return int(f.read().split()[1], 16)
    except (OSError, IndexError, ValueError):
        return 64


NS_PER_TICK = _ns_per_tick()


def handle(major: int, minor: int = 0) -> int:
    return ((major & 0xFFFF) << 16) | (minor & 0xFFFF)


def split_handle(h: int) -> tuple[int, int]:
    return (h >> 16) & 0xFFFF, h & 0xFFFF


# -- probabilities and times in the kernel's scales -------------------------------------
def pct_to_u32(pct: float) -> int:
    """Percent -> netem's 32-bit probability (100% = 2**32-1), rounded like tc."""
    return min(U32_MAX, max(0, round(pct / 100.0 * U32_MAX)))


def u32_to_pct(value: int) -> float:
    """Inverse of pct_to_u32, rounded to 1e-7 % so a round trip gives the same float."""
    return round(value * 100.0 / U32_MAX, 7)


def ms_to_ticks(ms: float) -> int:
    return min(U32_MAX, round(ms * 1e6 / NS_PER_TICK))


def ticks_to_ms(ticks: int) -> float:
    return round(ticks * NS_PER_TICK / 1e6, 6)


def ms_to_ns(ms: float) -> int:
    return round(ms * 1e6)


def ns_to_ms(ns: int) -> float:
    return round(ns / 1e6, 6)


# -- message classes ---------------------------------------------------------------------
class NetemOptions(nla):
    """`struct tc_netem_qopt` followed by netem's attributes (linux/pkt_sched.h)."""

    nla_map = (
        ("TCA_NETEM_UNSPEC", "none"),
        ("TCA_NETEM_CORR", "netem_corr"),
        ("TCA_NETEM_DELAY_DIST", "cdata"),
        ("TCA_NETEM_REORDER", "netem_prob"),
        ("TCA_NETEM_CORRUPT", "netem_prob"),
        ("TCA_NETEM_LOSS", "cdata"),
        ("TCA_NETEM_RATE", "cdata"),
        ("TCA_NETEM_ECN", "uint32"),
        ("TCA_NETEM_RATE64", "uint64"),
        ("TCA_NETEM_PAD", "cdata"),
        ("TCA_NETEM_LATENCY64", "int64"),
        ("TCA_NETEM_JITTER64", "int64"),
        ("TCA_NETEM_SLOT", "cdata"),
        ("TCA_NETEM_SLOT_DIST", "cdata"),
        ("TCA_NETEM_PRNG_SEED", "uint64"),
    )
    fields = (
        ("latency", "I"),  # psched ticks
        ("limit", "I"),  # packets
        ("loss", "I"),  # 32-bit probability
        ("gap", "I"),
        ("duplicate", "I"),
        ("jitter", "I"),  # psched ticks
    )

    class netem_corr(nla):
        fields = (("delay_corr", "I"), ("loss_corr", "I"), ("dup_corr", "I"))

    class netem_prob(nla):
        fields = (("probability", "I"), ("correlation", "I"))


class U32Options(nla):
    nla_map = (
        ("TCA_U32_UNSPEC", "none"),
        ("TCA_U32_CLASSID", "uint32"),
        ("TCA_U32_HASH", "uint32"),
        ("TCA_U32_LINK", "uint32"),
        ("TCA_U32_DIVISOR", "uint32"),
        ("TCA_U32_SEL", "cdata"),
        ("TCA_U32_POLICE", "cdata"),
        ("TCA_U32_ACT", "cdata"),
        ("TCA_U32_INDEV", "asciiz"),
        ("TCA_U32_PCNT", "cdata"),
        ("TCA_U32_MARK", "cdata"),
        ("TCA_U32_FLAGS", "uint32"),
        ("TCA_U32_PAD", "cdata"),
    )


class TbfOptions(sched_tbf.options):
    """pyroute2's tbf options plus the 64-bit rate and the burst in bytes."""

    nla_map = (
        ("TCA_TBF_UNSPEC", "none"),
        ("TCA_TBF_PARMS", "tbf_parms"),
        ("TCA_TBF_RTAB", "cdata"),
        ("TCA_TBF_PTAB", "cdata"),
        ("TCA_TBF_RATE64", "uint64"),
        ("TCA_TBF_PRATE64", "uint64"),
        ("TCA_TBF_PAD", "cdata"),
        ("TCA_TBF_BURST", "uint32"),
        ("TCA_TBF_PBURST", "uint32"),
    )


class TcMsg(tcmsg):
    """A tcmsg whose netem, tbf and u32 options use the classes above; others pyroute2's."""

    @staticmethod
    def get_options(self, *argv, **kwarg):  # pyroute2's hook: (message, ...) -> nla class
        kind = self.get_attr("TCA_KIND")
        if kind == "netem":
            return NetemOptions
        if kind == "u32":
            return U32Options
        if kind == "tbf":
            return TbfOptions
        return tcmsg.get_options(self, *argv, **kwarg)


def encode(msg: TcMsg) -> bytes:
    msg.encode()
    return bytes(msg.data[: msg["header"]["length"]])


def decode(data: bytes) -> TcMsg:
    msg = TcMsg(data)
    msg.decode()
    return msg


def reparse(msg: tcmsg) -> TcMsg:
    """Decode a message pyroute2 received again with our classes (exact netem/u32 fields)."""
    start = getattr(msg, "offset", 0)
    return decode(bytes(msg.data[start : start + msg["header"]["length"]]))


def _base(index: int, hdl: int, parent: int, kind: str | None, info: int = 0) -> TcMsg:
    msg = TcMsg()
    msg["family"] = socket.AF_UNSPEC
    msg["index"] = index
    msg["handle"] = hdl
    msg["parent"] = parent
    msg["info"] = info
    msg["attrs"] = [["TCA_KIND", kind]] if kind else []
    return msg


# -- netem -------------------------------------------------------------------------------
@dataclass(frozen=True)
class NetemParams:
    """netem's knobs in profile units (ms, percent, packets) plus the distribution table."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    duplicate_pct: float = 0.0
    corrupt_pct: float = 0.0
    reorder_pct: float = 0.0
    limit: int = 1000
    dist_table: tuple[int, ...] = field(default=(), repr=False)


def netem_qdisc(index: int, hdl: int, parent: int, p: NetemParams) -> TcMsg:
    """RTM_NEWQDISC body for a netem qdisc (flags are the sender's business)."""
    msg = _base(index, hdl, parent, "netem")
    # reorder and corrupt always go, 0 too: the kernel's netem_change keeps the old value
    # of an absent attribute, so a change from corrupt 50 % to none would keep 50 %
    # (seen on Debian's 6.1 in the netem VM)
    attrs: list[list[object]] = [
        ["TCA_NETEM_REORDER", {"probability": pct_to_u32(p.reorder_pct), "correlation": 0}],
        ["TCA_NETEM_CORRUPT", {"probability": pct_to_u32(p.corrupt_pct), "correlation": 0}],
    ]
    if p.dist_table:
        attrs.append(["TCA_NETEM_DELAY_DIST", struct.pack(f"={len(p.dist_table)}h", *p.dist_table)])
    attrs.append(["TCA_NETEM_LATENCY64", ms_to_ns(p.delay_ms)])
    attrs.append(["TCA_NETEM_JITTER64", ms_to_ns(p.jitter_ms)])
    msg["attrs"].append(
        [
            "TCA_OPTIONS",
            {
                "latency": ms_to_ticks(p.delay_ms),
                "limit": p.limit,
                "loss": pct_to_u32(p.loss_pct),
                # tc: reordering needs gap >= 1, and gap 1 means "by probability only"
                "gap": 1 if p.reorder_pct else 0,
                "duplicate": pct_to_u32(p.duplicate_pct),
                "jitter": ms_to_ticks(p.jitter_ms),
                "attrs": attrs,
            },
        ]
    )
    return msg


def netem_params(msg: tcmsg) -> NetemParams:
    """What a netem qdisc message holds, in profile units (64-bit times win when present)."""
    opts = msg.get_attr("TCA_OPTIONS")
    latency64 = opts.get_attr("TCA_NETEM_LATENCY64")
    jitter64 = opts.get_attr("TCA_NETEM_JITTER64")
    reorder = opts.get_attr("TCA_NETEM_REORDER")
    corrupt = opts.get_attr("TCA_NETEM_CORRUPT")
    dist = opts.get_attr("TCA_NETEM_DELAY_DIST")
    return NetemParams(
        delay_ms=ns_to_ms(latency64) if latency64 is not None else ticks_to_ms(opts["latency"]),
        jitter_ms=ns_to_ms(jitter64) if jitter64 is not None else ticks_to_ms(opts["jitter"]),
        loss_pct=u32_to_pct(opts["loss"]),
        duplicate_pct=u32_to_pct(opts["duplicate"]),
        corrupt_pct=u32_to_pct(corrupt["probability"]) if corrupt else 0.0,
        reorder_pct=u32_to_pct(reorder["probability"]) if reorder else 0.0,
        limit=opts["limit"],
        dist_table=struct.unpack(f"={len(dist) // 2}h", dist) if dist else (),
    )


# -- htb ---------------------------------------------------------------------------------
def htb_qdisc(index: int, hdl: int, default_minor: int) -> TcMsg:
    msg = _base(index, hdl, TC_H_ROOT, "htb")
    msg["attrs"].append(["TCA_OPTIONS", sched_htb.get_parameters({"default": default_minor})])
    return msg


def htb_class(index: int, classid: int, parent: int, rate_bit: int, burst_bytes: int) -> TcMsg:
    """An htb class with rate = ceil (no borrowing): the class *is* the link's rate."""
    rate_bytes = rate_bit // 8
    quantum = min(max(rate_bytes // 10, 3000), 200_000)  # keeps the kernel's r2q warning away
    msg = _base(index, classid, parent, "htb")
    msg["attrs"].append(
        [
            "TCA_OPTIONS",
            sched_htb.get_class_parameters(
                {
                    "rate": rate_bytes,
                    "ceil": rate_bytes,
                    "burst": burst_bytes,
                    "cburst": burst_bytes,
                    "quantum": quantum,
                }
            ),
        ]
    )
    return msg


def htb_class_rate_bit(msg: tcmsg) -> int:
    opts = msg.get_attr("TCA_OPTIONS")
    rate64 = opts.get_attr("TCA_HTB_RATE64")
    parms = opts.get_attr("TCA_HTB_PARMS")
    return 8 * (rate64 if rate64 else parms["rate"])


def htb_default_minor(msg: tcmsg) -> int:
    return msg.get_attr("TCA_OPTIONS").get_attr("TCA_HTB_INIT")["defcls"]


# -- tbf: the rate, and the one qdisc that cuts GSO packets back into wire packets --------
def tbf_qdisc(
    index: int, hdl: int, parent: int, rate_bit: int, burst_bytes: int, limit: int
) -> TcMsg:
    """tbf at `rate_bit`; GSO packets longer than the burst are segmented (tbf_segment()).

    `limit` is handed to tbf's fifo child; with a pfifo child it is in packets.
    """
    rate = rate_bit // 8
    msg = _base(index, hdl, parent, "tbf")
    attrs: list[list[object]] = [
        [
            "TCA_TBF_PARMS",
            {
                "rate": min(rate, U32_MAX),
                "limit": limit,
                "buffer": min(U32_MAX, round(burst_bytes / rate * 1e9 / NS_PER_TICK)),
                "mtu": 0,
                "peak": 0,
            },
        ],
        ["TCA_TBF_BURST", burst_bytes],
    ]
    if rate > U32_MAX:
        attrs.append(["TCA_TBF_RATE64", rate])
    msg["attrs"].append(["TCA_OPTIONS", {"attrs": attrs}])
    return msg


def tbf_rate_bit(msg: tcmsg) -> int:
    opts = msg.get_attr("TCA_OPTIONS")
    rate64 = opts.get_attr("TCA_TBF_RATE64")
    return 8 * (rate64 if rate64 else opts.get_attr("TCA_TBF_PARMS")["rate"])


def tbf_burst_bytes(msg: tcmsg) -> int:
    """The burst, from the buffer time at the rate (the kernel dumps no TCA_TBF_BURST)."""
    parms = msg.get_attr("TCA_OPTIONS").get_attr("TCA_TBF_PARMS")
    return round(parms["buffer"] * NS_PER_TICK / 1e9 * tbf_rate_bit(msg) / 8)


# -- pfifo: a queue limit in packets that is ours, not txqueuelen -------------------------
def pfifo_qdisc(index: int, hdl: int, parent: int, limit: int) -> TcMsg:
    msg = _base(index, hdl, parent, "pfifo")
    msg["attrs"].append(["TCA_OPTIONS", {"limit": limit}])
    return msg


def pfifo_limit(msg: tcmsg) -> int:
    return msg.get_attr("TCA_OPTIONS")["limit"]


# -- any qdisc, by handle (for delete) -----------------------------------------------------
def qdisc_ref(index: int, hdl: int, parent: int) -> TcMsg:
    return _base(index, hdl, parent, None)


def class_ref(index: int, classid: int, parent: int) -> TcMsg:
    return _base(index, classid, parent, None)


# -- u32: match the IPv4 destination address, send to a class ----------------------------
def u32_handle(node: int) -> int:
    """Filter handle 800::<node> (u32's root table at this prio, our chosen node id)."""
    if not 1 <= node <= 0xFFF:
        raise ValueError(f"u32 node id {node:#x} outside 1..0xfff")
    return (U32_HTID << 20) | node


def _info(prio: int) -> int:
    return (prio << 16) | socket.htons(ETH_P_IP)


def pack_u32_sel(keys: list[tuple[int, int, int]]) -> bytes:
    """struct tc_u32_sel (terminal) with keys (mask, value, offset)."""
    out = struct.pack("=BBBx", TC_U32_TERMINAL, 0, len(keys))
    out += struct.pack(">H", 0) + struct.pack("=Hhh", 0, 0, 0) + struct.pack(">I", 0)
    for mask, value, off in keys:
        out += struct.pack(">II", mask, value) + struct.pack("=ii", off, 0)
    return out


def unpack_u32_sel(data: bytes) -> list[tuple[int, int, int]]:
    nkeys = data[2]
    keys = []
    for i in range(nkeys):
        base = 16 + 16 * i
        mask, value = struct.unpack_from(">II", data, base)
        (off,) = struct.unpack_from("=i", data, base + 8)
        keys.append((mask, value, off))
    return keys


IPV4_SRC_OFFSET, IPV4_DST_OFFSET = 12, 16


def u32_dst_filter(
    index: int, parent: int, prio: int, node: int, dst: str, classid: int, field: str = "dst"
) -> TcMsg:
    """`match ip dst DST/32 flowid CLASSID` (or `ip src` with field="src") with an
    explicit handle, so it can be deleted."""
    (value,) = struct.unpack(">I", socket.inet_aton(dst))
    offset = IPV4_SRC_OFFSET if field == "src" else IPV4_DST_OFFSET
    msg = _base(index, u32_handle(node), parent, "u32", _info(prio))
    msg["attrs"].append(
        [
            "TCA_OPTIONS",
            {
                "attrs": [
                    ["TCA_U32_CLASSID", classid],
                    ["TCA_U32_SEL", pack_u32_sel([(0xFFFFFFFF, value, offset)])],
                ]
            },
        ]
    )
    return msg


def u32_filter_ref(index: int, parent: int, prio: int, node: int) -> TcMsg:
    return _base(index, u32_handle(node), parent, "u32", _info(prio))


@dataclass(frozen=True)
class U32Match:
    handle: int
    prio: int
    classid: int
    dst: str | None  # None: a filter that is not a single "ip dst /32" match
    src: str | None = None  # ... or the address of a single "ip src /32" match


def u32_match(msg: tcmsg) -> U32Match | None:
    """The dst /32 -> class a u32 filter message holds (None for table/divisor entries)."""
    opts = msg.get_attr("TCA_OPTIONS")
    if opts is None or opts.get_attr("TCA_U32_SEL") is None:
        return None
    keys = unpack_u32_sel(opts.get_attr("TCA_U32_SEL"))
    dst = src = None
    if len(keys) == 1 and keys[0][0] == 0xFFFFFFFF and keys[0][2] == IPV4_DST_OFFSET:
        dst = socket.inet_ntoa(struct.pack(">I", keys[0][1]))
    if len(keys) == 1 and keys[0][0] == 0xFFFFFFFF and keys[0][2] == IPV4_SRC_OFFSET:
        src = socket.inet_ntoa(struct.pack(">I", keys[0][1]))
    return U32Match(
        handle=msg["handle"],
        prio=msg["info"] >> 16,
        classid=opts.get_attr("TCA_U32_CLASSID") or 0,
        dst=dst,
        src=src,
    )
