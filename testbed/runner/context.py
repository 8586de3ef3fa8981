"""What the step handlers of one scenario work over: its lab, links, server events,
client session, migration watch, timeline and result."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from testbed.lab.lab import Lab
from testbed.lab.links import LabLinks
from testbed.lab.spice import GuestDisplay
from testbed.model.playbook import ConnectClientStep, Scenario
from testbed.model.topology import Topology
from testbed.runner.result import ScenarioResult
from testbed.runner.session import ClientSession
from testbed.runner.timeline import Timeline
from testbed.runner.watch import MigrationWatch
from testbed.spice.events import GraphicsEventLog
from testbed.spice.heartbeat import SerialWatcher

Progress = Callable[[str], None]


@dataclass
class Context:
    scenario: Scenario
    topology: Topology
    dir: Path
    say: Progress
    timeline: Timeline
    result: ScenarioResult
    lab: Lab | None = None
    links: LabLinks | None = None
    events: GraphicsEventLog | None = None
    session: ClientSession | None = None
    watch: MigrationWatch | None = None
    pending: list[ConnectClientStep] = field(default_factory=list)  # late connect triggers
    heartbeats: list[SerialWatcher] = field(default_factory=list)  # the guest's, per hypervisor
    # where the guest's display was when its migration started: a late client connects
    # there (the source's port holds until the switchover) without asking libvirt mid-job,
    # where over qemu+ssh a domain query can wait seconds behind the migration
    display_at_start: GuestDisplay | None = None

    def need_lab(self) -> Lab:
        assert self.lab, "the lab is up before any step runs"
        return self.lab

    def client_session(self) -> ClientSession:
        if self.session is None:
            self.session = ClientSession(self.need_lab(), self.dir, self.timeline, self.result)
        return self.session

    def scenario_client(self) -> str | None:
        for step in self.scenario.steps:
            if isinstance(step, ConnectClientStep):
                return step.client
        return None

    def raise_trigger_error(self) -> None:
        if self.watch and self.watch.error:
            err, self.watch.error = self.watch.error, None
            raise err
