"""The report layer on recorded runs (tests/data/report: result.json of real runs of this
project, the nightly one with its timelines trimmed): timeline SVG, outcome matrix, JUnit,
HTML, `testbed report` and `--compare`. No lab; the CLI runs as a subprocess."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from testbed.errors import InputError
from testbed.model.playbook import load_playbook, parse_playbook
from testbed.model.result import SCHEMA_VERSION, parse_result
from testbed.report.compare import compare_runs
from testbed.report.html import matrix_table, report_html
from testbed.report.junit import junit_xml
from testbed.report.load import Run, load_run
from testbed.report.matrix import outcome_matrix
from testbed.report.svg import timeline_svg
from testbed.runner.result import ClientSummary, MigrationSummary, ScenarioResult
from testbed.runner.verdict import judge

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "report"
TESTBED = str(REPO / ".venv" / "bin" / "testbed")
SVG = "{http://www.w3.org/2000/svg}"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((DATA / name).read_text())


def scenarios(data: dict[str, Any]) -> list[ScenarioResult]:
    """The scenarios of a recorded result, typed as the report layer reads them."""
    return parse_result(data, "recorded").scenarios


def run_dir(tmp_path: Path, data: dict[str, Any], name: str = "run") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "result.json").write_text(json.dumps(data))
    return d


class Page(HTMLParser):
    """What a test needs from report.html: timelines, sections, matrix cells, images, links."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.timelines = 0
        self.sections: list[str] = []
        self.cells: list[tuple[str, str]] = []  # (class, title) of matrix cells
        self.images: list[str] = []
        self.links: list[str] = []
        self.scripts_from: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "svg" and "timeline" in a.get("class", "").split():
            self.timelines += 1
        elif tag == "section":
            self.sections.append(a.get("id", ""))
        elif tag == "td" and a.get("class") in ("pass", "fail", "none"):
            self.cells.append((a["class"], a.get("title", "")))
        elif tag == "img":
            self.images.append(a.get("src", ""))
        elif tag == "a":
            self.links.append(a.get("href", ""))
        elif tag in ("script", "link") and (a.get("src") or a.get("href")):
            self.scripts_from.append(a.get("src") or a.get("href", ""))


# -- timeline -----------------------------------------------------------------------------


def test_timeline_draws_progress_guard_switchover_and_outcome() -> None:
    s = scenarios(recorded("late-client.json"))[1]  # late-client/fix-on
    svg = ET.fromstring(timeline_svg(s))
    progress = svg.find(f"{SVG}polyline[@class='progress']")
    assert progress is not None
    n = sum(1 for e in s.timeline if e["kind"] == "migration.progress")
    assert len(progress.get("points", "").split()) == n + 2  # + start at 0 %, end at 100 %
    holds = svg.findall(f"{SVG}rect[@class='hold']")
    assert len(holds) == 1 and "client has 5 channel(s) on dst" in holds[0].findtext(f"{SVG}title")
    assert svg.find(f"{SVG}line[@class='switchover']") is not None
    tips = [t.text or "" for t in svg.iter(f"{SVG}title")]
    assert any("guard.client_migrate_info" in t for t in tips)
    assert any("client.connect" in t and "progress=30.1" in t for t in tips)
    texts = [t.text for t in svg.iter(f"{SVG}text")]
    assert "seamless" in texts and "connect @30.1 %" in texts


def test_timeline_of_a_scenario_that_never_migrated() -> None:
    s = ScenarioResult(name="x", timeline=[{"t": 0.5, "kind": "error", "message": "boom"}])
    svg = ET.fromstring(timeline_svg(s))
    assert "no migration" in [t.text for t in svg.iter(f"{SVG}text")]
    assert any("boom" in (t.text or "") for t in svg.iter(f"{SVG}title"))


# -- the outcome matrix ---------------------------------------------------------------------


def test_nightly_matrix_has_every_cell_explicit_scenarios_too() -> None:
    run = recorded("nightly-matrix.json")
    m = outcome_matrix(scenarios(run))
    assert m is not None and m.outside == []
    assert (m.row_axis, m.row_values) == ("connect", ["before", "at20%", "at50%", "at80%"])
    assert m.col_axes == ["rtt", "fix"]
    assert m.col_values[:2] == [("0ms", "off"), ("0ms", "on")]  # written order, not seen order
    assert len(m.col_values) == 6 and len(m.cells) == 24
    explicit = m.cell("before", ("1000ms", "off"))
    assert explicit is not None and explicit.name == "before/rtt-1000ms/fix-off"


def test_matrix_of_the_playbook_matches_its_expansion() -> None:
    pb = load_playbook(REPO / "playbooks" / "nightly-matrix.yaml")
    m = outcome_matrix([ScenarioResult(name=s.name, params=s.params) for s in pb.scenarios()])
    assert m is not None
    assert m.row_values == pb.axes()["connect"]
    assert [c[0] for c in m.col_values[:: len(pb.axes()["fix"])]] == pb.axes()["rtt"]
    assert list(dict.fromkeys(c[1] for c in m.col_values)) == pb.axes()["fix"]


def test_matrix_table_colours_cells_by_verdict() -> None:
    run = copy.deepcopy(recorded("late-client.json"))
    run["scenarios"][0].update(passed=False, failures=["outcome: expected lost, got switch-host"])
    run["scenarios"][0]["expected"]["outcome"] = "lost"
    m = outcome_matrix(scenarios(run))
    assert m is not None
    page = Page(matrix_table(m))
    assert [c for c, _ in page.cells] == ["fail", "pass"]
    assert "expected outcome=lost" in page.cells[0][1]
    assert "expected lost" in matrix_table(m)


def test_no_matrix_without_params() -> None:
    assert outcome_matrix(scenarios(recorded("baseline.json"))) is None


# -- JUnit ----------------------------------------------------------------------------------


def rejudged(data: dict[str, Any], playbook_text: str) -> dict[str, Any]:
    """The recorded run judged against another expectation, by the runner's own judge."""
    out = copy.deepcopy(data)
    s = out["scenarios"][0]
    scenario = parse_playbook(playbook_text).scenarios()[0]
    r = ScenarioResult(
        name=s["name"],
        params=s["params"],
        expected=scenario.expect.model_dump(exclude_none=True) if scenario.expect else {},
        outcome=s["outcome"],
        migration=MigrationSummary(**s["migration"]),
        client=ClientSummary(**s["client"]),
    )
    judge(r, scenario)
    s.update(expected=r.expected.model_dump(mode="json"), passed=r.passed, failures=r.failures)
    return out


WRONG = """
name: seamless-baseline
steps:
  - start_guest: {guest: vm}
  - connect_client: {client: client, guest: vm}
  - migrate: {guest: vm, to: dst}
  - expect: {outcome: switch-host, usbredir: migrated}
"""


def test_junit_failure_says_expected_vs_outcome(tmp_path: Path) -> None:
    data = rejudged(recorded("baseline.json"), WRONG)
    root = ET.fromstring(junit_xml(load_run(run_dir(tmp_path, data))))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("1", "1", "0")
    case = root.find("testsuite/testcase")
    assert case is not None
    assert (case.get("classname"), case.get("name")) == ("seamless-baseline", "seamless-baseline")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message") == "outcome: expected switch-host, got seamless"
    assert "expected: outcome=switch-host, usbredir=migrated" in (failure.text or "")
    assert "got: outcome=seamless, usbredir=migrated" in (failure.text or "")
    out = case.findtext("system-out") or ""
    assert "[[ATTACHMENT|" in out and "remote-viewer.log" in out
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["expected"].startswith("outcome=switch-host")
    assert any(k.startswith("attachment:") for k in props)


def test_junit_ids_are_playbook_and_scenario(tmp_path: Path) -> None:
    root = ET.fromstring(junit_xml(load_run(run_dir(tmp_path, recorded("nightly-matrix.json")))))
    cases = root.findall("testsuite/testcase")
    assert len(cases) == 24 and {c.get("classname") for c in cases} == {"nightly-matrix"}
    assert "at50%/rtt-200ms/fix-on" in {c.get("name") for c in cases}
    props = {p.get("name"): p.get("value") for p in cases[0].iter("property")}
    assert props["param.connect"] == "before"


# -- HTML -----------------------------------------------------------------------------------


def test_html_has_a_timeline_per_scenario_and_the_matrix(tmp_path: Path) -> None:
    run = load_run(run_dir(tmp_path, recorded("nightly-matrix.json")))
    page = Page(report_html(run))
    assert page.timelines == len(run.scenarios) == 24
    assert len(page.sections) == 24 and len(set(page.sections)) == 24
    assert len(page.cells) == 24
    assert {f"#{s}" for s in page.sections} <= set(page.links)
    assert page.scripts_from == []  # nothing loaded from anywhere: self-contained


def test_html_of_a_moved_run_embeds_screenshots_and_links_logs(tmp_path: Path) -> None:
    """Artifacts recorded under another directory are found where the run is now."""
    text = (DATA / "late-client.json").read_text().replace("/tmp/run-late/", "/gone/run-late/")
    data = json.loads(text)
    d = run_dir(tmp_path, data)
    scen = d / "late-client_fix-on"
    (scen / "logs").mkdir(parents=True)
    (scen / "screen-after.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (scen / "remote-viewer.log").write_text("log")
    page = Page(report_html(load_run(d)))
    assert [i for i in page.images if i.startswith("data:image/png;base64,")] == [
        "data:image/png;base64,iVBORw0KGgpub3QgcmVhbGx5"
    ]
    assert "late-client_fix-on/remote-viewer.log" in page.links
    assert not any(link.startswith("/") for link in page.links)


# -- loading, the CLI -------------------------------------------------------------------------


def run_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TESTBED, *map(str, args)], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_report_rebuilds_from_result_json_alone(tmp_path: Path) -> None:
    d = run_dir(tmp_path, recorded("nightly-matrix.json"))
    p = run_cli("report", d)
    assert p.returncode == 0, p.stderr
    assert "outcome matrix" in p.stdout and "report.html" in p.stdout
    assert Page((d / "report.html").read_text()).timelines == 24
    assert ET.parse(d / "junit.xml").getroot().get("tests") == "24"


def test_report_names_failed_scenarios(tmp_path: Path) -> None:
    d = run_dir(tmp_path, rejudged(recorded("baseline.json"), WRONG))
    p = run_cli("report", "--json", d)
    assert p.returncode == 0, p.stderr
    [w] = json.loads(p.stdout)
    assert w["failed"] == [
        {"scenario": "seamless-baseline", "dir": "/tmp/run-base/seamless-baseline"}
    ]
    assert "failed scenario: seamless-baseline -> " in run_cli("report", d).stdout


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "nowhere", "does not exist"),
        (lambda d: d, "is not a run directory: it has no result.json"),
        (lambda d: (d / "result.json").write_text("{nope") and d, "not JSON"),
        (lambda d: (d / "result.json").write_text("[1]") and d, "is not a testbed result"),
        (
            lambda d: (d / "result.json").write_text('{"scenarios": []}') and d,
            "result.json: result schema_version none (an unversioned result of an older testbed)",
        ),
        (
            lambda d: (
                (d / "result.json").write_text('{"schema_version": 9, "scenarios": []}') and d
            ),
            f"result.json: result schema_version 9; this testbed reads version {SCHEMA_VERSION}",
        ),
    ],
)
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path: Path, make: Any, message: str) -> None:
    p = run_cli("report", make(tmp_path))
    assert p.returncode == 2
    said = " ".join(p.stderr.split())  # rich wraps long lines
    assert message in said and "Traceback" not in said
    with pytest.raises(InputError, match=re.escape(message)):
        load_run(make(tmp_path))


def test_compare_shows_the_changed_scenario(tmp_path: Path) -> None:
    old = recorded("late-client.json")
    new = copy.deepcopy(old)
    new["scenarios"][1].update(outcome="switch-host", passed=False)
    old_dir, new_dir = run_dir(tmp_path, old, "old"), run_dir(tmp_path, new, "new")
    rows = compare_runs(
        Run(parse_result(old, "old"), old_dir), Run(parse_result(new, "new"), new_dir)
    )
    assert [(r.scenario, r.changed) for r in rows] == [
        ("late-client/fix-off", False),
        ("late-client/fix-on", True),
    ]
    p = run_cli("report", "--compare", old_dir, new_dir / "result.json", "--json")
    assert p.returncode == 0, p.stderr
    changed = [r for r in json.loads(p.stdout) if r["changed"]]
    assert changed == [
        {
            "scenario": "late-client/fix-on",
            "old_outcome": "seamless",
            "old_verdict": "PASS",
            "new_outcome": "switch-host",
            "new_verdict": "FAIL",
            "changed": True,
        }
    ]
    table = run_cli("report", "--compare", old_dir, new_dir)
    assert table.returncode == 0 and "CHANGED" in table.stdout and "1 of 2" in table.stdout


def test_result_json_round_trips_and_its_schema_is_published(tmp_path: Path) -> None:
    """What the runner writes is what the report reads; `testbed schema result` describes it."""
    data = recorded("late-client.json")
    again = parse_result(parse_result(data, "a").to_json(), "b")
    assert again == parse_result(data, "a") and again.schema_version == SCHEMA_VERSION
    p = run_cli("schema", "result")
    assert p.returncode == 0, p.stderr
    schema = json.loads(p.stdout)
    assert schema["properties"]["schema_version"]["default"] == SCHEMA_VERSION
    guard = schema["$defs"]["GuardReport"]["properties"]
    assert {"result", "held_s", "client_migrate_info_sent", "actions"} <= set(guard)
    outcome = schema["$defs"]["ScenarioResult"]["properties"]["outcome"]["anyOf"][0]["enum"]
    assert "switch-host" in outcome and "unknown" in outcome


def test_an_aborted_scenario_is_error_in_the_cli_table_as_in_the_report() -> None:
    from testbed.cli.run import scenario_row
    from testbed.report.junit import junit_xml

    s = ScenarioResult(name="x", error="lab up failed", failures=["error: lab up failed"])
    assert s.verdict == "ERROR"
    assert "ERROR" in scenario_row(s)[-1]
    run = Run(
        parse_result(
            {
                "schema_version": SCHEMA_VERSION,
                "playbook": "p.yaml",
                "topology": "t.yaml",
                "started": 0.0,
                "scenarios": [s.to_json()],
            },
            "r",
        ),
        Path("."),
    )
    assert ET.fromstring(junit_xml(run)).find(".//testcase/error") is not None
