"""Writing a run's reports next to its result.json: junit.xml and report.html.

`testbed run` calls this after each playbook, the pytest plugin after each scenario,
`testbed report` on demand; all three read the run back from result.json, so the
files are the same whichever wrote them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from testbed.report.html import report_html
from testbed.report.junit import junit_xml
from testbed.report.load import Run, load_run

JUNIT = "junit.xml"
HTML = "report.html"


@dataclass
class Written:
    run: Run
    junit: Path
    html: Path


def write_reports(run_dir: str | Path) -> Written:
    """(Re)build DIR/junit.xml and DIR/report.html from DIR/result.json alone."""
    run = load_run(run_dir)
    junit = _replace(run.dir / JUNIT, junit_xml(run))
    html = _replace(run.dir / HTML, report_html(run))
    return Written(run, junit, html)


def _replace(path: Path, text: str) -> Path:
    """Write whole or not at all: a reader never sees half a report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    return path
