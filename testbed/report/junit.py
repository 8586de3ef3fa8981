"""JUnit XML for CI: one testcase per scenario, ids stable across runs.

classname is the playbook's name and name the scenario's, so a CI server tracks
each scenario's history. A missed expectation is a <failure>, a scenario that could
not run to the end an <error>; both say expected vs got. Artifacts are attached as
Jenkins' `[[ATTACHMENT|path]]` lines in system-out and as properties.
"""

from __future__ import annotations

import socket
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from testbed.model.outcome import Verdict
from testbed.model.result import ScenarioResult
from testbed.report.load import Run, attachments, scenario_dir
from testbed.report.text import expected_text, failure_text, got_text


def junit_xml(run: Run) -> str:
    suite = ET.Element(
        "testsuite",
        name=run.name,
        hostname=socket.gethostname(),
        timestamp=_iso(run.result.started),
    )
    props = ET.SubElement(suite, "properties")
    for key, value in (("playbook", run.result.playbook), ("topology", run.result.topology)):
        ET.SubElement(props, "property", name=key, value=value)
    counts = {"tests": 0, "failures": 0, "errors": 0}
    total = 0.0
    for s in run.scenarios:
        counts["tests"] += 1
        total += s.duration_s or 0.0
        v = s.verdict
        if v == "FAIL":
            counts["failures"] += 1
        elif v == "ERROR":
            counts["errors"] += 1
        suite.append(_testcase(run, s, v))
    for key, n in counts.items():
        suite.set(key, str(n))
    suite.set("skipped", "0")
    suite.set("time", f"{total:.3f}")
    root = ET.Element("testsuites", name="testbed", time=f"{total:.3f}")
    for key, n in counts.items():
        root.set(key, str(n))
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode")


def _testcase(run: Run, s: ScenarioResult, v: Verdict) -> ET.Element:
    case = ET.Element(
        "testcase",
        classname=run.name,
        name=s.name,
        time=f"{s.duration_s or 0.0:.3f}",
    )
    props = ET.SubElement(case, "properties")
    for axis, value in s.params.items():
        ET.SubElement(props, "property", name=f"param.{axis}", value=str(value))
    ET.SubElement(props, "property", name="expected", value=expected_text(s))
    ET.SubElement(props, "property", name="got", value=got_text(s))
    attached = attachments(run, s)
    where = scenario_dir(run, s)
    for kind, path in attached:
        ET.SubElement(props, "property", name=f"attachment:{kind}", value=path)
    if v != "PASS":
        why = "; ".join(s.failures) or "not passed"
        tag = "error" if v == "ERROR" else "failure"
        el = ET.SubElement(case, tag, message=why, type="verdict" if tag == "failure" else "lab")
        el.text = failure_text(s, where)
    out = ET.SubElement(case, "system-out")
    lines = [f"output: {where}", f"expected: {expected_text(s)}", f"got: {got_text(s)}"]
    lines += [f"[[ATTACHMENT|{path}]]" for _, path in attached]
    out.text = "\n".join(lines) + "\n"
    return case


def _iso(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return ""
