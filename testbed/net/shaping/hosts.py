"""Shaping a lab whose endpoints are on `Host`s: each host's share done by its own agent.

The engine of the lab process does no netlink itself. For every host a direction
touches it sends that host's view of the wanted set to the host's agent
(`testbed.net.agent`, run with `host.run(host.module_argv(...))`: over SSH on an SSH
host, through `nsenter` into the namespace of a local one). In that view the host's
own endpoints are in CURRENT (its namespace) and the other's netns is "@NAME" (another
host's): each agent does its part (kernel engine: all on the sender; userspace: the
rate on the sender, the delay line on the receiver). read_back, verify and health
merge the agents' answers back into the lab's Directions.

One engine for the whole lab, chosen from what every host's agent detects: the kernel
engine when every host has netem, else the userspace engine (two engines would split
a link differently). The interface that carries an SSH host's address (the lab's
control connection) is never shaped: `check()` refuses it before anything changes,
and the agent refuses it again on the host.

Endpoint.netns: CURRENT ("") or the host's own `netns` (empty for a host reached
inside its own namespace, over SSH).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path, PurePath
from typing import Any

from testbed.errors import CapabilityMissing, InputError, LabError
from testbed.hosts.base import Host
from testbed.hosts.ledger import Ledger
from testbed.model.profile import LinkProfile
from testbed.net import agent
from testbed.net.shaping.base import CURRENT, Direction, Endpoint, ShapingEngine

log = logging.getLogger(__name__)

KERNEL, USERSPACE = "kernel-netem", "userspace-nfqueue"
AGENT_TIMEOUT_S = 120


def elsewhere(host: str) -> str:
    """The netns an agent is given for an endpoint on another host."""
    return f"@{host}"


class HostAgentsEngine(ShapingEngine):
    """Shapes directions between endpoints on `hosts` (host name -> Host) via their agents."""

    name = "host-agents"
    fail_mode = None  # the chosen engine's, in health()

    def __init__(
        self,
        hosts: Mapping[str, Host],
        ledger: Ledger,
        state_dir: Path | None = None,
        *,
        engine: str = "auto",
        agent_dir: str = "shaping-agent",
    ) -> None:
        super().__init__(ledger, state_dir)
        if engine not in ("auto", KERNEL, USERSPACE):
            raise InputError(f"unknown shaping engine {engine!r}")
        self.hosts = dict(hosts)
        self.requested = engine
        self.agent_dir = agent_dir
        self.chosen: str | None = None  # the lab's engine, once a direction was shaped
        self._detected: dict[str, dict[str, Any]] = {}  # host -> its agent's detect answer
        self._touched: set[str] = set()  # hosts whose agent may hold something
        self._prepared: set[str] = set()
        self._load()

    # -- state -----------------------------------------------------------------------------
    def _engine_state(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "detected": self._detected,
            "touched": sorted(self._touched),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.chosen = state.get("chosen")
        self._detected = dict(state.get("detected", {}))
        self._touched = set(state.get("touched", []))

    # -- hosts and their agents --------------------------------------------------------------
    @staticmethod
    def _place(ep: Endpoint) -> Any:
        return (ep.host, ep.netns)

    def _host(self, name: str) -> Host:
        try:
            return self.hosts[name]
        except KeyError:
            raise InputError(
                f"no host {name!r} in this lab (hosts: {', '.join(sorted(self.hosts))})"
            ) from None

    def agent_state(self, name: str) -> PurePath:
        """The agent's folder on host `name` (its engine state and ledger)."""
        return self._host(name).state_dir / self.agent_dir

    def call_each(
        self, names: Iterable[str], req: Callable[[str], dict[str, Any]]
    ) -> dict[str, dict[str, Any] | LabError]:
        """`req(name)` to each host's agent at once (each agent is a process there, and under
        TCG or over a slow link one costs seconds); answers or errors by host."""

        def one(name: str) -> dict[str, Any] | LabError:
            try:
                return self.call(name, req(name))
            except LabError as e:
                return e

        names = list(names)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
            return dict(zip(names, pool.map(one, names), strict=True))

    @staticmethod
    def answers(results: Mapping[str, dict[str, Any] | LabError]) -> dict[str, dict[str, Any]]:
        """Every host's answer; the first host's error (in name order) raised as it was."""
        for name in sorted(results):
            if isinstance(r := results[name], LabError):
                raise r
        return {n: r for n, r in results.items() if not isinstance(r, LabError)}

    def call(self, name: str, req: dict[str, Any]) -> dict[str, Any]:
        """One request to host `name`'s agent; its answer, or LabError naming the host."""
        host = self._host(name)
        if name not in self._prepared:
            host.prepare()
            self._prepared.add(name)
        req = {"protect": host.control_addresses, **req}
        argv = host.module_argv("testbed.net.agent", "--state", str(self.agent_state(name)))
        res = host.run(argv, input=json.dumps(req), check=False, timeout=AGENT_TIMEOUT_S)
        lines = res.stdout.strip().splitlines()
        try:
            resp = json.loads(lines[-1])
        except (IndexError, ValueError):
            detail = (res.stderr or res.stdout).strip()[-500:] or "no output"
            raise LabError(
                f"{name}: the shaping agent gave no answer (exit {res.returncode}): {detail}",
                hint="is testbed's Python (pyroute2, pydantic) importable by the host's python?",
            ) from None
        if not resp.get("ok"):
            cls = CapabilityMissing if resp.get("kind") == "CapabilityMissing" else LabError
            raise cls(f"{name}: {resp.get('error')}", hint=resp.get("hint"))
        return resp

    def detect(self, name: str) -> dict[str, Any]:
        """What host `name` can do (netem, userspace needs, protected interfaces); kept."""
        if name not in self._detected:
            resp = self.call(name, {"op": "detect"})
            self._detected[name] = {
                k: resp[k] for k in ("netem", "userspace_missing", "protected", "engine")
            }
        return self._detected[name]

    # -- checks --------------------------------------------------------------------------------
    def _check_endpoint(self, d: Direction, ep: Endpoint) -> None:
        host = self._host(ep.host)
        if host.netns:
            where = f"its namespace {host.netns!r} (or CURRENT, '')"
        else:
            where = "CURRENT ('', the host's own namespace)"
        if ep.netns not in (CURRENT, host.netns):
            raise InputError(
                f"{d}: {ep.host}'s endpoint names netns {ep.netns!r}; expected {where}"
            )

    def check(self, profile: LinkProfile, direction: Direction | None = None) -> None:
        """Refuse unknown hosts, wrong namespaces and an SSH host's control interface."""
        if direction is None:
            return
        if direction.src.host == direction.dst.host:
            raise InputError(f"{direction}: source and destination are the same host")
        for ep in (direction.src, direction.dst):
            self._check_endpoint(direction, ep)
            control = self.hosts[ep.host].control_addresses
            if not control:
                continue
            protected = self.detect(ep.host)["protected"]
            if ep.ifname in protected or ep.address in control:
                raise LabError(
                    f"{ep.host}: refusing to shape {direction}: interface {ep.ifname} carries "
                    f"the lab's SSH connection to {', '.join(control)}, and shaping it could "
                    "cut the lab's control of the host",
                    hint="shape a network the lab does not use to reach the host over SSH",
                )

    def engine_for(self, wanted: Mapping[Direction, LinkProfile]) -> str:
        return self._choose(wanted)

    def _choose(self, wanted: Mapping[Direction, LinkProfile]) -> str:
        """The lab's engine: the one chosen before, else netem if every host has it."""
        senders = {d.shaper.host for d in wanted}  # the kernel engine's qdiscs are there
        receivers = {d.dst.host for d, p in wanted.items() if p.needs_delay_line()}
        new = sorted((senders | receivers) - set(self._detected))
        self.answers(self.call_each(new, lambda h: {"op": "detect"}))  # at once, then kept
        caps = {h: self.detect(h) for h in senders | receivers}
        choice = self.chosen or self.requested
        if choice == "auto":
            choice = KERNEL if all(c["netem"] for c in caps.values()) else USERSPACE
        if choice == KERNEL:
            lacking = sorted(h for h in senders if not caps[h]["netem"])
            if lacking:
                raise CapabilityMissing(
                    f"{', '.join(lacking)}: no netem qdisc (sch_netem) in the kernel, and this "
                    "lab shapes with the kernel engine",
                    hint="close the lab's links and shape again: the userspace engine is chosen",
                )
        else:
            for h in sorted(receivers):
                if caps[h]["userspace_missing"]:
                    raise CapabilityMissing(
                        f"{h}: the userspace shaping engine needs: "
                        + "; ".join(caps[h]["userspace_missing"]),
                        hint=f"install them on {h}, or run it on a kernel with sch_netem",
                    )
        return choice

    # -- the contract ------------------------------------------------------------------------
    def view(self, d: Direction, name: str) -> Direction:
        """`d` as host `name`'s agent sees it: its endpoint here, the other elsewhere."""

        def ep(e: Endpoint) -> Endpoint:
            return replace(e, netns=CURRENT if e.host == name else elsewhere(e.host))

        return replace(d, src=ep(d.src), dst=ep(d.dst))  # `at` too: one-ended shaping

    def _apply(self, wanted: dict[Direction, LinkProfile]) -> None:
        if wanted:
            self.chosen = self._choose(wanted)
        per_host: dict[str, dict[Direction, LinkProfile]] = {h: {} for h in self._touched}
        for d, p in wanted.items():
            for h in (d.src.host, d.dst.host):
                per_host.setdefault(h, {})[self.view(d, h)] = p
        for h in sorted(per_host):
            if h not in self.hosts:
                log.warning("host %s is no longer in the lab: its links stay as they are", h)
            elif h not in self._touched:
                self.ledger.record("shaping-agent", host=h, state=str(self.agent_state(h)))
                self._touched.add(h)
        req = {"op": "apply", "engine": self.chosen or "auto"}
        self.answers(
            self.call_each(
                sorted(h for h in per_host if h in self.hosts),
                lambda h: {**req, "shapes": agent.shapes_to_json(per_host[h])},
            )
        )

    def _hosts_in_use(self, *, ledger: bool = False) -> list[str]:
        """Hosts whose agent may hold something (with `ledger`: any the lab ever used)."""
        names = set(self._touched)
        if ledger:  # the state file may be lost or stale after a crash; the ledger is not
            names |= {e["host"] for e in self.ledger.of_kind("shaping-agent")}
        return sorted(h for h in names if h in self.hosts)

    def read_back(self) -> dict[Direction, LinkProfile]:
        views = {(h, self.view(d, h)): d for d in self._known for h in (d.src.host, d.dst.host)}
        parts: dict[Direction, dict[str, Any]] = {}
        held = self.answers(self.call_each(self._hosts_in_use(), lambda h: {"op": "read_back"}))
        for h in sorted(held):
            for seen, fields in agent.held_from_json(held[h]["held"]):
                d = views.get((h, seen), seen)  # unknown: as the host's agent names it
                parts.setdefault(d, {}).update(fields)
        return {d: LinkProfile.model_construct(**f) for d, f in parts.items()}

    def verify(self) -> None:
        """Each host's own part first (named by host), then the links as a whole."""
        results = self.call_each(self._hosts_in_use(), lambda h: {"op": "verify"})
        problems = [r.message for _, r in sorted(results.items()) if isinstance(r, LabError)]
        if problems:
            raise LabError(
                "the hosts do not hold the link profiles asked:\n  " + "\n  ".join(problems),
                hint="look at health(); a dead helper or a foreign qdisc explains most",
            )
        super().verify()

    def health(self) -> dict[str, Any]:
        answers = self.answers(self.call_each(self._hosts_in_use(), lambda h: {"op": "health"}))
        per_host = {h: answers[h]["health"] for h in sorted(answers)}
        fail_mode = next((x["fail_mode"] for x in per_host.values() if x.get("engine")), None)
        hx = per_host.items()
        lines = [{"host": h, **ln} for h, x in hx for ln in x.get("delay_lines", [])]
        return {
            "engine": self.name,
            "engines": sorted({x["engine"] for x in per_host.values() if x.get("engine")}),
            "ok": all(x["ok"] for x in per_host.values()),
            "fail_mode": fail_mode,
            "hosts": per_host,
            "delay_lines": lines,
            "unshaped": sorted({u for x in per_host.values() for u in x.get("unshaped", [])}),
            "interfaces": [f"{h}:{i}" for h, x in hx for i in x.get("interfaces", [])],
        }

    def close(self) -> None:
        """Every host's agent removes its part; one unreachable host does not stop the rest."""
        results = self.call_each(self._hosts_in_use(ledger=True), lambda h: {"op": "close"})
        problems = [r.message for _, r in sorted(results.items()) if isinstance(r, LabError)]
        self._touched -= {h for h, r in results.items() if not isinstance(r, LabError)}
        if problems:
            self._save()  # the hosts still holding something stay known
            raise LabError("could not remove every shaped link:\n  " + "\n  ".join(problems))
        self._touched.clear()
        self.chosen = None
        self._known.clear()
        self._forget()
