"""`testbed report`: rebuild a run's report.html and junit.xml, or compare two runs."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from testbed.cli.common import friendly_errors, out
from testbed.errors import InputError
from testbed.model.outcome import Verdict
from testbed.report.compare import compare_runs
from testbed.report.load import Run, load_run, scenario_dir
from testbed.report.matrix import Matrix, outcome_matrix
from testbed.report.text import outcome_label
from testbed.report.write import Written, write_reports


def matrix_table(m: Matrix, title: str = "outcome matrix") -> Table:
    """The outcome matrix for a terminal: green passed, red failed."""
    t = Table(m.row_axis, title=title)
    for col in m.col_values:
        t.add_column(" ".join(f"{a}={v}" for a, v in zip(m.col_axes, col, strict=True)) or "")
    for r in m.row_values:
        cells = []
        for col in m.col_values:
            s = m.cell(r, col)
            if s is None:
                cells.append("[dim]not run[/]")
                continue
            exp = s.expected.outcome
            miss = "" if s.passed else f" (expected {exp})" if exp else f" ({s.verdict})"
            color = "green" if s.passed else "red"
            cells.append(f"[{color}]{outcome_label(s)}{miss}[/]")
        t.add_row(r, *cells)
    return t


def failed_lines(run: Run) -> list[str]:
    """One line per failed scenario: its name and where its output is."""
    return [
        f"failed scenario: {s.name} -> {scenario_dir(run, s)}"
        for s in run.scenarios
        if not s.passed
    ]


def print_written(w: Written) -> None:
    """What `testbed run` and `testbed report` say after writing a run's reports."""
    m = outcome_matrix(w.run.scenarios)
    if m is not None:
        out.print(matrix_table(m, f"{w.run.name}: outcome matrix"))
    for line in failed_lines(w.run):
        out.print(line, highlight=False)
    out.print(f"report: {w.html}\njunit: {w.junit}", highlight=False)


@click.command()
@click.argument("dirs", nargs=-1, metavar="DIR...")
@click.option(
    "--compare",
    nargs=2,
    default=None,
    metavar="OLD NEW",
    help="Show which scenarios changed outcome or verdict between two runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@friendly_errors
def report(dirs: tuple[str, ...], compare: tuple[str, str] | None, as_json: bool) -> None:
    """Rebuild DIR/report.html and DIR/junit.xml from DIR/result.json alone."""
    if compare:
        if dirs:
            raise InputError(
                "--compare takes two runs and no DIR", hint="testbed report --compare OLD NEW"
            )
        _compare(*compare, as_json=as_json)
        return
    if not dirs:
        raise InputError(
            "no run directory given", hint="testbed report DIR... or --compare OLD NEW"
        )
    runs = [load_run(d) for d in dirs]  # every input checked before anything is written
    written = [write_reports(r.dir) for r in runs]
    if as_json:
        out.print_json(json.dumps([_written_json(w) for w in written]))
        return
    for w in written:
        print_written(w)


def _written_json(w: Written) -> dict:
    return {
        "dir": str(w.run.dir),
        "junit": str(w.junit),
        "html": str(w.html),
        "scenarios": len(w.run.scenarios),
        "passed": sum(1 for s in w.run.scenarios if s.passed),
        "failed": [
            {"scenario": s.name, "dir": scenario_dir(w.run, s)}
            for s in w.run.scenarios
            if not s.passed
        ],
    }


def _compare(old_path: str, new_path: str, *, as_json: bool) -> None:
    old, new = load_run(old_path), load_run(new_path)
    rows = compare_runs(old, new)
    if as_json:
        out.print_json(json.dumps([r.to_json() for r in rows]))
        return
    t = Table(
        "scenario",
        "old outcome",
        "old verdict",
        "new outcome",
        "new verdict",
        "changed?",
        title=f"{Path(old_path)} -> {Path(new_path)}",
    )
    for r in rows:
        t.add_row(
            r.scenario,
            r.old_outcome or "[dim](absent)[/]",
            verdict_mark(r.old_verdict),
            r.new_outcome or "[dim](absent)[/]",
            verdict_mark(r.new_verdict),
            "[bold yellow]CHANGED[/]" if r.changed else "",
        )
    out.print(t)
    n = sum(1 for r in rows if r.changed)
    out.print(f"{n} of {len(rows)} scenario(s) changed")


VERDICT_MARKS: dict[Verdict, str] = {
    "PASS": "[green]PASS[/]",
    "FAIL": "[red]FAIL[/]",
    "ERROR": "[bold red]ERROR[/]",
}


def verdict_mark(v: Verdict | None) -> str:
    """A verdict as the terminal shows it, the same in `testbed run` and `testbed report`."""
    return "[dim]-[/]" if v is None else VERDICT_MARKS[v]
