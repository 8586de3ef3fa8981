"""What a run will do, decided once: `plan()` loads playbooks and topologies, selects
scenarios and checks them against their topology; `run_plan()` runs that plan.

The CLI (`testbed run`), the pytest plugin and bench/ all go through these two, so a
playbook is selected and checked in exactly one place. Everything a playbook names
(hosts, guests, networks) is checked before any lab is made, so a typo fails in a
second, not after a boot. `result.json` is rewritten after each scenario, so a run cut
short still leaves what it found.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from testbed.errors import InputError
from testbed.model.playbook import (
    ConnectClientStep,
    MigrateStep,
    Playbook,
    Scenario,
    ShapeStep,
    StartGuestStep,
    load_playbook,
)
from testbed.model.topology import Topology, load_topology
from testbed.runner.result import RunResult, ScenarioResult
from testbed.runner.scenario import ScenarioRun
from testbed.runner.select import select
from testbed.shipped import DEFAULT_TOPOLOGY, playbook_path
from testbed.virt.qemu_build import patched_emulator

Progress = Callable[[str], None]
ScenarioDone = Callable[[ScenarioResult], None]


@dataclass
class PlannedPlaybook:
    """One playbook, the topology it runs on and the scenarios chosen from it."""

    playbook: Playbook
    topology: Topology
    scenarios: list[Scenario]

    @property
    def name(self) -> str:
        return self.playbook.name

    def new_result(self, out_dir: Path) -> RunResult:
        return RunResult(
            playbook=self.playbook.source or self.playbook.name,
            topology=self.topology.source or self.topology.name,
            started=time.time(),
            out_dir=str(out_dir),
        )


@dataclass
class Plan:
    playbooks: list[PlannedPlaybook] = field(default_factory=list)


def plan(
    playbooks: Sequence[str | Path | Playbook],
    *,
    topology: str | Path | Topology | None = None,
    pattern: str | None = None,
) -> Plan:
    """Load each playbook (a path or a parsed Playbook) and its topology (`topology`
    overrides the playbook's own), select the scenarios matching `pattern`, and check
    them against the topology. Raises InputError before anything runs."""
    out = Plan()
    for p in playbooks:
        pb = p if isinstance(p, Playbook) else load_playbook(playbook_path(str(p)))
        if isinstance(topology, Topology):
            topo = topology
        else:
            topo = load_topology(topology or pb.topology or DEFAULT_TOPOLOGY)
        chosen = select(pb.scenarios(), pattern) if pattern else pb.scenarios()
        if not chosen:
            raise InputError(f"no scenario matches -k {pattern!r}", file=pb.source or pb.name)
        check_against(chosen, topo, pb.source or pb.name)
        out.playbooks.append(PlannedPlaybook(pb, topo, chosen))
    return out


def check_against(scenarios: list[Scenario], topo: Topology, playbook: str) -> None:
    """Every host, guest and network a step names must exist in the topology."""
    hyper, clients = topo.hypervisors(), topo.clients()

    def need(ok: bool, step_where: str, msg: str) -> None:
        if not ok:
            raise InputError(
                f"{msg} in topology {topo.source or topo.name}", file=step_where or playbook
            )

    for sc in scenarios:
        for st in sc.steps:
            where = st.where
            if isinstance(st, StartGuestStep | ConnectClientStep | MigrateStep):
                need(st.guest in topo.guests, where, f"no guest {st.guest!r}")
            if isinstance(st, MigrateStep):
                need(st.to in hyper, where, f"{st.to!r} is not a hypervisor")
            if isinstance(st, ConnectClientStep):
                need(st.client in clients, where, f"{st.client!r} is not a client host")
                need("display" in topo.networks, where, "no 'display' network")
            if isinstance(st, ShapeStep):
                need(st.network in topo.networks, where, f"no network {st.network!r}")
                members = topo.networks[st.network].members
                for h in (st.src, st.dst):
                    need(h in members, where, f"{h!r} is not on network {st.network!r}")


def check_builds(pp: PlannedPlaybook) -> None:
    """A scenario or host that asks for the patched spice-server (or QEMU) needs its build
    (make setup, make build-qemu-fix): an InputError before any lab comes up. Not at
    planning, so `--list` and collection work on a machine without it."""
    asked = {h.spice_server for h in pp.topology.hosts.values()} | {
        st.spice_server
        for sc in pp.scenarios
        for st in sc.steps
        if isinstance(st, StartGuestStep) and st.spice_server is not None
    }
    for choice in sorted(asked - {"stock"}):
        try:
            patched_emulator(choice)
        except InputError as e:
            raise InputError(
                f"spice_server: {choice}: {e.message}", file=pp.playbook.source, hint=e.hint
            ) from None


def default_out_dir(playbook: Playbook) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{playbook.name}"


def out_dir_for(pp: PlannedPlaybook, out_dir: str | Path | None, several: bool) -> Path:
    """OUT/<playbook> when several playbooks share --out, OUT itself for one, else
    runs/<timestamp>-<playbook>."""
    if out_dir is None:
        return default_out_dir(pp.playbook)
    return Path(out_dir) / pp.name if several else Path(out_dir)


def run_scenario(
    pp: PlannedPlaybook,
    scenario: Scenario,
    run: RunResult,
    out_dir: Path,
    progress: Progress | None = None,
) -> ScenarioResult:
    """Run one planned scenario on a fresh lab, add it to `run`, rewrite result.json."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if progress:
            progress(f"{scenario.name}: {msg}")

    result = ScenarioRun(scenario, pp.topology, out_dir, say).run()
    run.scenarios.append(result)
    run.ended = time.time()
    write_result(run, out_dir)
    return result


def run_planned(
    pp: PlannedPlaybook,
    out_dir: Path,
    *,
    progress: Progress | None = None,
    on_scenario: ScenarioDone | None = None,
) -> RunResult:
    """Every scenario of one planned playbook, in order, into `out_dir`."""
    check_builds(pp)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = pp.new_result(out_dir)
    for sc in pp.scenarios:
        result = run_scenario(pp, sc, run, out_dir, progress)
        if on_scenario:
            on_scenario(result)
    run.ended = time.time()
    write_result(run, out_dir)
    return run


def run_plan(
    the_plan: Plan,
    out_dir: str | Path | None = None,
    *,
    progress: Progress | None = None,
    on_scenario: ScenarioDone | None = None,
    on_run: Callable[[RunResult], None] | None = None,
) -> list[RunResult]:
    """Run every planned playbook; one RunResult (one result.json) per playbook,
    each handed to `on_run` as soon as its playbook is done."""
    several = len(the_plan.playbooks) > 1
    runs = []
    for pp in the_plan.playbooks:
        dest = out_dir_for(pp, out_dir, several)
        runs.append(run_planned(pp, dest, progress=progress, on_scenario=on_scenario))
        if on_run:
            on_run(runs[-1])
    return runs


def write_result(run: RunResult, out_dir: Path) -> Path:
    path = out_dir / "result.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run.to_json(), indent=2, default=str))
    tmp.replace(path)
    return path
