"""pytest plugin: every scenario of every playbook is a test item (`pytest playbooks/`).

A thin edge over what `testbed run` uses: `runner.plan.plan()` loads, expands and
checks the file against its topology at collection, `runner.plan.run_scenario` runs
each item on a fresh lab (as `run_plan` does), and the report layer writes
result.json's junit.xml and report.html after each scenario, into one run directory
per playbook file.

Collected: .yaml files whose top-level keys are a playbook's (name, steps, ...), never
under tests/data (test fixtures, many broken on purpose). A normal `pytest` run reads
only tests/ (pyproject's testpaths), so it collects no playbook. Items are marked
`lab`; `-k` matches the scenario name and each "axis:value" (and "axis=value", as
`testbed run -k`; pytest's -k grammar cannot spell "=").
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from testbed.errors import TestbedError
from testbed.model.playbook import Playbook, Scenario

if TYPE_CHECKING:  # the runner (libvirt and all) loads only when a playbook is collected
    from testbed.runner.plan import PlannedPlaybook
    from testbed.runner.result import RunResult, ScenarioResult

log = logging.getLogger("testbed.pytest")
PLAYBOOK_KEYS = {f.alias or name for name, f in Playbook.model_fields.items() if name != "source"}
LAB_MARKER = "lab: needs root and brings up a real local lab (namespaces, libvirtd, QEMU)"
REPORTS = pytest.StashKey[list[Path]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("testbed", "testbed playbooks")
    group.addoption(
        "--testbed-topology",
        default=None,
        metavar="TOPOLOGY",
        help="run every playbook on this topology (default: each playbook's own)",
    )
    group.addoption(
        "--testbed-out",
        default=None,
        metavar="DIR",
        help="output root; each playbook file writes DIR/<timestamp>-<playbook>/ (default: runs)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", LAB_MARKER)
    config.stash[REPORTS] = []


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in (".yaml", ".yml") and looks_like_playbook(file_path):
        return PlaybookFile.from_parent(parent, path=file_path)
    return None


def looks_like_playbook(path: Path) -> bool:
    """A mapping with steps whose keys are all playbook keys; in a playbooks/ dir, any
    mapping with steps (so a misspelt key is an error there, not a silently skipped file)."""
    parts = path.resolve().parts
    if any(a == "tests" and b == "data" for a, b in itertools.pairwise(parts)):
        return False
    in_playbooks = path.parent.name == "playbooks"
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return in_playbooks  # there, the loader's error (with its line) is worth showing
    if not isinstance(data, dict) or "steps" not in data:
        return False
    return in_playbooks or set(map(str, data)) <= PLAYBOOK_KEYS


class ScenarioFailed(Exception):
    """A scenario ran and missed an expectation (or could not finish)."""

    def __init__(self, result: ScenarioResult) -> None:
        super().__init__(result.name)
        self.result = result


class PlaybookFile(pytest.File):
    """One playbook: its scenarios as items, and the run directory they share."""

    planned: PlannedPlaybook
    run_result: RunResult | None = None  # the scenarios run so far, as result.json holds them
    out_dir: Path | None = None

    def collect(self) -> Iterator[ScenarioItem]:
        from testbed.runner.plan import plan

        try:
            topo = self.config.getoption("testbed_topology")
            self.planned = plan([self.path], topology=topo).playbooks[0]
        except TestbedError as e:
            raise self.CollectError(str(e)) from None
        for sc in self.planned.scenarios:
            yield ScenarioItem.from_parent(self, name=sc.name, scenario=sc)

    def run_scenario(self, sc: Scenario) -> ScenarioResult:
        """Run one scenario as `testbed run` would, then rewrite result.json and reports."""
        from testbed.report.write import write_reports
        from testbed.runner.plan import default_out_dir, run_scenario

        if self.run_result is None or self.out_dir is None:
            root = self.config.getoption("testbed_out")
            default = default_out_dir(self.planned.playbook)
            worker = os.environ.get("PYTEST_XDIST_WORKER")  # -n N: one run dir per worker
            if worker:
                default = default.with_name(f"{default.name}-{worker}")
            self.out_dir = Path(root) / default.name if root else default
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.run_result = self.planned.new_result(self.out_dir)
            self.config.stash[REPORTS].append(self.out_dir)
        result = run_scenario(
            self.planned, sc, self.run_result, self.out_dir, lambda m: log.info("%s", m)
        )
        write_reports(self.out_dir)
        return result


class ScenarioItem(pytest.Item):
    """One scenario; running it brings up a lab, runs the steps and judges."""

    def __init__(self, *, scenario: Scenario, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.scenario = scenario
        self.add_marker(pytest.mark.lab)
        self.extra_keyword_matches.update(scenario.keywords())
        self.extra_keyword_matches.update(f"{a}:{v}" for a, v in scenario.params.items())

    def runtest(self) -> None:
        assert isinstance(self.parent, PlaybookFile)
        result = self.parent.run_scenario(self.scenario)
        self.user_properties += [
            ("output", str(result.out_dir)),
            ("outcome", str(result.outcome)),
            ("expected", str(result.expected.given())),
        ]
        if not result.passed:
            raise ScenarioFailed(result)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ScenarioFailed):
            from testbed.report.text import failure_text

            r = excinfo.value.result
            return f"scenario {r.name} failed\n" + failure_text(r)
        if isinstance(excinfo.value, TestbedError):
            return f"scenario {self.name}: {excinfo.value}"
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, f"scenario {self.name}"


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    for out_dir in config.stash.get(REPORTS, []):
        terminalreporter.write_line(f"testbed report: {out_dir / 'report.html'}")
