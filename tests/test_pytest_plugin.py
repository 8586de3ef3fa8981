"""The pytest plugin: playbooks as test items. Collection is checked without a lab; the
baseline playbook runs for real through `pytest playbooks/seamless-baseline.yaml` (a
subprocess, as CI would call it), and its run directory's reports are checked, rebuilt
from result.json alone, and a scenario that misses its expectation is reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_report import Page

from testbed.model.playbook import load_playbook

REPO = Path(__file__).resolve().parent.parent
PYTEST = str(REPO / ".venv" / "bin" / "pytest")
TESTBED = str(REPO / ".venv" / "bin" / "testbed")


def pytest_run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PYTEST, "-p", "no:cacheprovider", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )


def collected(p: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in p.stdout.splitlines() if "::" in line]


# -- collection (no lab) ------------------------------------------------------------------


def test_collects_every_scenario_of_every_playbook() -> None:
    p = pytest_run("--collect-only", "-q", "playbooks/")
    assert p.returncode == 0, p.stdout + p.stderr
    want = [
        f"playbooks/{f.name}::{s.name}"
        for f in sorted((REPO / "playbooks").glob("*.yaml"))
        for s in load_playbook(f).scenarios()
    ]
    assert sorted(collected(p)) == sorted(want)


def test_k_selects_by_axis_value_and_by_name() -> None:
    nightly = "playbooks/nightly-matrix.yaml"
    p = pytest_run("--collect-only", "-q", nightly, "-k", "fix:on and connect:at20")
    assert collected(p) == [f"{nightly}::at20%/rtt-{r}/fix-on" for r in ("0ms", "200ms", "1000ms")]
    p = pytest_run("--collect-only", "-q", nightly, "-k", "at80 and fix-on")  # by name
    assert collected(p) == [f"{nightly}::at80%/rtt-{r}/fix-on" for r in ("0ms", "200ms", "1000ms")]
    p = pytest_run("--collect-only", "-q", "playbooks/", "-m", "not lab")
    assert collected(p) == []  # every scenario needs a lab, and says so


def test_the_normal_test_run_collects_no_playbook_and_no_fixture() -> None:
    p = pytest_run("--collect-only", "-q")
    assert p.returncode == 0, p.stdout + p.stderr
    assert not [n for n in collected(p) if ".yaml::" in n]
    p = pytest_run("--collect-only", "-q", "tests/data", "topologies")
    assert collected(p) == [] and "error" not in p.stdout.lower()


def test_a_broken_playbook_is_a_collection_error_naming_its_line(tmp_path: Path) -> None:
    (tmp_path / "playbooks").mkdir()
    bad = tmp_path / "playbooks" / "typo.yaml"
    bad.write_text("name: typo\nsteps:\n  - start_guest: {guest: vm, fil: 8MiB}\n")
    p = pytest_run("--collect-only", "-q", bad)
    assert p.returncode != 0
    assert "typo.yaml:3: steps[0].start_guest.fil: unknown field 'fil'" in p.stdout


# -- a real run (lab) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab makes network namespaces and runs libvirtd")
    tmp = tmp_path_factory.mktemp("plugin")
    junit = tmp / "pytest-junit.xml"
    p = pytest_run(
        "playbooks/seamless-baseline.yaml",
        f"--junitxml={junit}",
        "--testbed-out",
        tmp / "runs",
        timeout=600,
    )
    [run_dir] = (tmp / "runs").iterdir()
    return {"proc": p, "junit": junit, "dir": run_dir, "tmp": tmp}


@pytest.mark.lab
def test_plugin_runs_the_baseline_and_writes_junit(baseline: dict) -> None:
    p = baseline["proc"]
    assert p.returncode == 0, p.stdout[-3000:]
    root = ET.parse(baseline["junit"]).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("1", "0", "0")
    [case] = suite.iter("testcase")
    assert case.get("name") == "seamless-baseline"
    props = {q.get("name"): q.get("value") for q in case.iter("property")}
    assert props["outcome"] == "seamless" and Path(props["output"]).is_dir()
    assert f"testbed report: {baseline['dir'] / 'report.html'}" in p.stdout


@pytest.mark.lab
def test_the_run_directory_holds_result_junit_and_html(baseline: dict) -> None:
    d: Path = baseline["dir"]
    result = json.loads((d / "result.json").read_text())
    assert [s["name"] for s in result["scenarios"]] == ["seamless-baseline"]
    case = ET.parse(d / "junit.xml").getroot().find("testsuite/testcase")
    assert case is not None
    assert (case.get("classname"), case.get("name")) == ("seamless-baseline", "seamless-baseline")
    attached = [
        line.removeprefix("[[ATTACHMENT|").removesuffix("]]")
        for line in (case.findtext("system-out") or "").splitlines()
        if line.startswith("[[ATTACHMENT|")
    ]
    assert attached and all(Path(a).is_file() for a in attached)
    page = Page((d / "report.html").read_text())
    assert page.timelines == 1 and page.scripts_from == []
    assert len([i for i in page.images if i.startswith("data:image/png;base64,")]) == 2
    logs = [a for a in page.links if not a.startswith("#")]
    assert logs and all((d / a).exists() for a in logs)


@pytest.mark.lab
def test_report_rebuilds_a_real_run_from_result_json_alone(baseline: dict, tmp_path: Path) -> None:
    shutil.copy(baseline["dir"] / "result.json", tmp_path / "result.json")
    p = subprocess.run(
        [TESTBED, "report", str(tmp_path)], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 0, p.stderr
    page = Page((tmp_path / "report.html").read_text())
    assert page.timelines == 1 and len(page.sections) == 1
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert (root.get("tests"), root.get("failures")) == ("1", "0")


@pytest.mark.lab
def test_a_missed_expectation_names_its_directory_expected_and_got(
    needs_root: None, tmp_path: Path
) -> None:
    """A playbook that expects an outcome with no client: a lab comes up, nothing else."""
    (tmp_path / "playbooks").mkdir()
    pb = tmp_path / "playbooks" / "expects-too-much.yaml"
    pb.write_text("name: expects-too-much\nsteps:\n  - up: {}\n  - expect: {outcome: seamless}\n")
    p = pytest_run(pb, "--testbed-out", tmp_path / "runs", timeout=300)
    assert p.returncode == 1, p.stdout[-3000:]
    [run_dir] = (tmp_path / "runs").iterdir()
    assert "scenario expects-too-much failed" in p.stdout
    assert "outcome: expected seamless, got None" in p.stdout
    assert f"output: {run_dir / 'expects-too-much'}" in p.stdout
    failure = ET.parse(run_dir / "junit.xml").getroot().find("testsuite/testcase/failure")
    assert failure is not None and "expected seamless, got None" in failure.get("message", "")
