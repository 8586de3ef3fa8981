"""The kernel engine: everything in the sender's egress qdiscs, through pyroute2.

Per direction src -> dst, on src's interface: a u32 filter on dst's address picks an
htb class (`egress.py`); under it a tbf with the rate (which also cuts GSO packets into
wire packets) and under that a netem with delay, jitter (and its distribution table),
loss, duplicate, corrupt, reorder and the queue limit. Without a rate the netem is the
class's leaf; without anything for netem the tbf holds a pfifo with the limit. No processes, so
nothing can die: `health()` only reports the interfaces it holds.

The product's main path on real lab hosts. Kernels without sch_netem (this CI machine,
WSL2) get `CapabilityMissing` on the first netem leaf; `detect.select_engine()` checks
first and picks the userspace engine there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.ledger import Ledger
from testbed.model.profile import LinkProfile
from testbed.net.shaping import distributions
from testbed.net.shaping import netlink as nl
from testbed.net.shaping.base import Direction, ShapingEngine, stray_direction
from testbed.net.shaping.egress import Egress, Leaf, Pfifo, Tbf, clear_all
from testbed.net.shaping.ingress import Ingress
from testbed.net.shaping.netem_probe import netem_available

log = logging.getLogger(__name__)


def to_leaf(profile: LinkProfile) -> Leaf:
    """A profile as the egress stack holds it: tbf for the rate, netem for the rest."""
    limit = profile.effective_limit()
    netem = None
    if profile.needs_delay_line():
        netem = nl.NetemParams(
            delay_ms=profile.delay_ms,
            jitter_ms=profile.jitter_ms,
            loss_pct=profile.loss_pct,
            duplicate_pct=profile.duplicate_pct,
            corrupt_pct=profile.corrupt_pct,
            reorder_pct=profile.reorder_pct,
            limit=limit,
            dist_table=distributions.table(profile.jitter_distribution)
            if profile.jitter_ms
            else (),
        )
    if profile.rate_bit is None:
        assert netem is not None, "an empty profile has no leaf"
        return netem
    return Tbf(profile.rate_bit, netem or Pfifo(limit))


def from_leaf(leaf: Leaf) -> LinkProfile:
    """Read-back: the held qdiscs in profile units (limit always explicit)."""
    rate = leaf.rate_bit if isinstance(leaf, Tbf) else None
    held = leaf.child if isinstance(leaf, Tbf) else leaf
    if isinstance(held, Pfifo):  # as held, unvalidated: a foreign value must still show
        return LinkProfile.model_construct(rate_bit=rate, limit=held.limit)
    dist = distributions.name_of(held.dist_table) if held.jitter_ms else "uniform"
    if dist is None:
        raise LabError("a netem qdisc holds a delay distribution table testbed did not send")
    return LinkProfile.model_construct(
        delay_ms=held.delay_ms,
        jitter_ms=held.jitter_ms,
        jitter_distribution=dist,
        loss_pct=held.loss_pct,
        duplicate_pct=held.duplicate_pct,
        corrupt_pct=held.corrupt_pct,
        reorder_pct=held.reorder_pct,
        rate_bit=rate,
        limit=held.limit,
    )


class KernelNetemEngine(ShapingEngine):
    """htb + netem on each sender's egress interface."""

    name = "kernel-netem"
    fail_mode = None

    def __init__(
        self, ledger: Ledger, state_dir: Path | None = None, *, here_only: bool = False
    ) -> None:
        super().__init__(ledger, state_dir, here_only=here_only)
        self._egress: dict[tuple[str, str], Egress] = {}
        self._ingress: dict[tuple[str, str], Ingress] = {}  # one-ended: shaped on arrival
        self._load()

    def _engine_state(self) -> dict[str, Any]:
        return {
            "egress": [
                {
                    "netns": eg.netns,
                    "ifname": eg.ifname,
                    "tables": {str(m): distributions.name_of(t) for m, t in eg.sent_tables.items()},
                }
                for eg in self._egress.values()
            ],
            "ingress": [
                {
                    "netns": ing.netns,
                    "ifname": ing.ifname,
                    "tables": {
                        str(m): distributions.name_of(t)
                        for m, t in ing.egress.sent_tables.items()
                    },
                }
                for ing in self._ingress.values()
            ],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        for e in state.get("egress", []):
            eg = self._egress_for(e["netns"], e["ifname"])
            for minor, name in e.get("tables", {}).items():
                if name is not None:
                    eg.sent_tables[int(minor)] = distributions.table(name)
        for e in state.get("ingress", []):
            ing = self._ingress_for(e["netns"], e["ifname"])
            for minor, name in e.get("tables", {}).items():
                if name is not None:
                    ing.egress.sent_tables[int(minor)] = distributions.table(name)

    def check(self, profile: LinkProfile, direction: Direction | None = None) -> None:
        """Refuse before touching anything: netem missing, or a distribution table."""
        if profile.needs_delay_line():
            if not netem_available():
                raise CapabilityMissing(
                    f"{direction or 'this link'}: {profile.describe()} needs netem, and this "
                    "kernel has no sch_netem",
                    hint="use the userspace engine (select_engine('auto') picks it)",
                )
        if profile.jitter_ms:
            distributions.table(profile.jitter_distribution)

    def share(self, direction: Direction, profile: LinkProfile) -> LinkProfile | None:
        """Everything is on one host, the sender (or the receiver, for a direction shaped
        at its ingress): the whole profile there, nothing elsewhere."""
        return profile if self._here(direction.shaper) else None

    def _ingress_for(self, netns: str, ifname: str) -> Ingress:
        key = (netns, ifname)
        if key not in self._ingress:
            self._ingress[key] = Ingress(netns, ifname)
        return self._ingress[key]

    def _egress_for(self, netns: str, ifname: str) -> Egress:
        key = (netns, ifname)
        if key not in self._egress:
            self._egress[key] = Egress(netns, ifname)
        return self._egress[key]

    def _apply(self, wanted: dict[Direction, LinkProfile]) -> None:
        per_if: dict[tuple[str, str], dict[str, Leaf]] = {k: {} for k in self._egress}
        per_in: dict[tuple[str, str], dict[str, Leaf]] = {k: {} for k in self._ingress}
        for d, profile in wanted.items():
            if not self._here(d.shaper):
                continue  # as an agent: the shaping host's own agent shapes it
            if d.at == "dst":  # on arrival: the receiver's ifb, classes by source address
                self._ingress_for(d.dst.netns, d.dst.ifname)
                per_in.setdefault((d.dst.netns, d.dst.ifname), {})[d.src.address] = (
                    to_leaf(profile)
                )
                continue
            self._egress_for(d.src.netns, d.src.ifname)
            per_if.setdefault((d.src.netns, d.src.ifname), {})[d.dst.address] = to_leaf(profile)
        for key, peers in per_if.items():
            self._egress[key].apply(peers)
        for key, peers in per_in.items():
            self._ingress[key].apply(peers)

    def read_back(self) -> dict[Direction, LinkProfile]:
        by_key = {(d.src.netns, d.src.ifname, d.dst.address): d for d in self._known}
        held: dict[Direction, LinkProfile] = {}
        for (netns, ifname), eg in self._egress.items():
            for dst, leaf in eg.read().items():
                d = by_key.get((netns, ifname, dst)) or stray_direction(netns, ifname, None, dst)
                if leaf is None:
                    raise LabError(
                        f"{eg!r}: the class for {dst} holds a qdisc testbed did not make"
                    )
                held[d] = from_leaf(leaf)
        by_in = {
            (d.dst.netns, d.dst.ifname, d.src.address): d for d in self._known if d.at == "dst"
        }
        for (netns, ifname), ing in self._ingress.items():
            for src, leaf in ing.read().items():
                d = by_in.get((netns, ifname, src)) or stray_direction(netns, ifname, src, None)
                if leaf is None:
                    raise LabError(f"{ing!r}: the class for {src} holds a foreign qdisc")
                held[d] = from_leaf(leaf)
        return held

    def health(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "ok": True,
            "fail_mode": self.fail_mode,
            "interfaces": [f"{ns}:{ifn}" for ns, ifn in self._egress]
            + [f"{ns}:{ifn} (ingress)" for ns, ifn in self._ingress],
            "processes": [],
        }

    def close(self) -> None:
        clear_all(self._egress)
        for ing in self._ingress.values():
            try:
                ing.clear()
            except LabError as e:
                log.warning("clearing %r: %s", ing, e)
        self._forget()
