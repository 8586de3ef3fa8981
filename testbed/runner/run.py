"""Running a playbook: check it against the topology, then each selected scenario in turn.

Everything a playbook names (hosts, guests, networks) is checked against the
topology before any lab is made, so a typo fails in a second, not after a
boot. `result.json` is rewritten after each scenario, so a run cut short
still leaves what it found.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
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
)
from testbed.model.topology import Topology
from testbed.runner.result import RunResult, ScenarioResult
from testbed.runner.scenario import ScenarioRun
from testbed.runner.select import select

Progress = Callable[[str], None]
ScenarioDone = Callable[[ScenarioResult], None]


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


def default_out_dir(playbook: Playbook) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{playbook.name}"


def run_playbook(
    playbook: Playbook,
    topology: Topology,
    out_dir: Path,
    *,
    pattern: str | None = None,
    progress: Progress | None = None,
    on_scenario: ScenarioDone | None = None,
) -> RunResult:
    scenarios = select(playbook.scenarios(), pattern) if pattern else playbook.scenarios()
    if not scenarios:
        raise InputError(f"no scenario matches -k {pattern!r}", file=playbook.source)
    check_against(scenarios, topology, playbook.source or playbook.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = RunResult(
        playbook=playbook.source or playbook.name,
        topology=topology.source or topology.name,
        started=time.time(),
        out_dir=str(out_dir),
    )
    for sc in scenarios:
        say = (lambda msg, n=sc.name: progress(f"{n}: {msg}")) if progress else (lambda m: None)
        result = ScenarioRun(sc, topology, out_dir, say).run()
        run.scenarios.append(result)
        write_result(run, out_dir)
        if on_scenario:
            on_scenario(result)
    run.ended = time.time()
    write_result(run, out_dir)
    return run


def write_result(run: RunResult, out_dir: Path) -> Path:
    path = out_dir / "result.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(run.to_json(), indent=2, default=str))
    tmp.replace(path)
    return path
