"""The lab's shaped links: which directions are shaped how, by which engine.

Directions are named in the user's words (network, from, to); this module
turns them into Endpoints, keeps the whole wanted set, and hands it to the
shaping engine each time (engines replace the whole set idempotently and
read it back). The wanted set is saved in lab.json, so `testbed links` in
another process shows it.
"""

from __future__ import annotations

import logging
from typing import Any

from testbed.errors import CapabilityMissing, InputError
from testbed.lab.lab import Lab
from testbed.model.profile import LinkProfile
from testbed.net.shaping.base import Direction, Endpoint, ShapingEngine

log = logging.getLogger(__name__)


def make_engine(lab: Lab) -> ShapingEngine:
    """Hosts over SSH: each host's agent does its share there; else netlink from here."""
    if lab.over_ssh:
        from testbed.net.shaping.hosts import HostAgentsEngine

        return HostAgentsEngine(lab.hosts, lab.ledger, lab.dir / "shaping")
    from testbed.net.shaping.detect import select_engine

    return select_engine(lab.ledger, lab.dir / "shaping")


def engine_label(engine: ShapingEngine) -> str:
    """The engine that really shapes (through agents: which one, and where)."""
    chosen = getattr(engine, "chosen", None)
    return f"{chosen} (agents on the hosts)" if chosen else engine.name


class LabLinks:
    """Shaping for one lab; the engine is made on first use."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self._engine: ShapingEngine | None = None
        self.asked: dict[Direction, LinkProfile] = {}
        for entry in lab.record.info.get("links", []):
            d = self.direction(entry["network"], entry["src"], entry["dst"])
            self.asked[d] = LinkProfile.model_validate(entry["profile"])

    @property
    def engine(self) -> ShapingEngine:
        if self._engine is None:
            self._engine = make_engine(self.lab)
        return self._engine

    def endpoint(self, network: str, host: str) -> Endpoint:
        topo = self.lab.topology
        if network not in topo.networks:
            raise InputError(f"no network {network!r} (networks: {', '.join(topo.networks)})")
        if host not in topo.networks[network].members:
            raise InputError(
                f"host {host!r} is not on network {network!r} (members: "
                f"{', '.join(topo.networks[network].members)})"
            )
        a = self.lab.attachment(host, network)
        # over SSH an agent shapes inside the host, in its own (current) namespace: ""
        return Endpoint(
            host=host, netns=self.lab.hosts[host].netns, ifname=a.ifname, address=str(a.address.ip)
        )

    def shared_network(self, src: str, dst: str) -> str:
        """The one network both hosts are on (an error when none or several)."""
        shared = [
            n
            for n, net in self.lab.topology.networks.items()
            if src in net.members and dst in net.members
        ]
        if len(shared) != 1:
            raise InputError(
                f"{src} and {dst} share {len(shared)} networks "
                f"({', '.join(shared) or 'none'}); name one with --network"
            )
        return shared[0]

    def direction(self, network: str, src: str, dst: str) -> Direction:
        if src == dst:
            raise InputError(f"a link joins two different hosts (found {src} -> {dst})")
        return Direction(
            network,
            self.endpoint(network, src),
            self.endpoint(network, dst),
            self._placement(network, src, dst),
        )

    def _placement(self, network: str, src: str, dst: str) -> str:
        """Where src -> dst is shaped: "src" (its egress), unless a topology link of this
        pair says `shape_at: dst` (then on dst's ingress, one-ended)."""
        for link in self.lab.topology.links:
            if link.network == network and {link.src, link.dst} == {src, dst} and link.shape_at:
                return "src" if link.shape_at == src else "dst"
        return "src"

    def _directions(self, network: str, src: str, dst: str, both_ways: bool) -> list[Direction]:
        ds = [self.direction(network, src, dst)]
        if both_ways:
            ds.append(self.direction(network, dst, src))
        return ds

    def shape(
        self, network: str, src: str, dst: str, profile: LinkProfile, *, both_ways: bool = False
    ) -> None:
        for d in self._directions(network, src, dst, both_ways):
            self.asked[d] = profile
        self._apply()

    def clear(self, network: str, src: str, dst: str, *, both_ways: bool = False) -> None:
        removed = [self.asked.pop(d, None) for d in self._directions(network, src, dst, both_ways)]
        if any(removed) or self._engine is not None:
            self._apply()

    def apply_topology(self) -> None:
        """Shape what the topology itself asks: per-network profiles, then per-pair links."""
        topo = self.lab.topology
        for name, net in topo.networks.items():
            if net.profile is not None and not net.profile.is_empty():
                for a in net.members:
                    for b in net.members:
                        if a != b:
                            self.asked[self.direction(name, a, b)] = net.profile
        for link in topo.links:
            for d in self._directions(link.network, link.src, link.dst, link.both_ways):
                self.asked[d] = link.profile
        one_ended = [link for link in topo.links if link.shape_at]
        if one_ended and (engine := self.engine.engine_for(self.asked)) != "kernel-netem":
            link = one_ended[0]
            raise CapabilityMissing(
                f"link {link.src} -> {link.dst} on {link.network}: shape_at (one-ended "
                f"shaping) needs the kernel engine, and this lab shapes with "
                f"{engine} (its delay line runs on the receiver, its rate on "
                "the sender: both ends)",
                hint="hosts whose kernel has sch_netem and ifb (RHEL, Fedora and Debian "
                "kernels do; on this machine, the netem VM's: topologies/netem-vm.yaml)",
            )
        if self.asked:
            self._apply()

    def _apply(self) -> None:
        self.engine.apply(self.asked)
        self.engine.verify()
        self.lab.record.info["links"] = [
            {
                "network": d.network,
                "src": d.src.host,
                "dst": d.dst.host,
                "profile": p.model_dump(mode="json"),
            }
            for d, p in self.asked.items()
        ]
        self.lab.record.save()

    def rows(self) -> list[dict[str, Any]]:
        """Every shaped direction: asked, installed (read back) and the engine."""
        if not self.asked and self._engine is None:
            return []
        held = self.engine.read_back()
        out = []
        for d in sorted(set(self.asked) | set(held), key=str):
            asked, got = self.asked.get(d), held.get(d)
            out.append(
                {
                    "network": d.network,
                    "src": d.src.host,
                    "dst": d.dst.host,
                    "asked": asked.describe() if asked else "",
                    "installed": got.describe() if got else "",
                    "engine": engine_label(self.engine),
                }
            )
        return out

    def health(self) -> dict[str, Any]:
        return self.engine.health() if self._engine else {"ok": True}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
