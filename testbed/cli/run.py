"""`testbed run` and `testbed classify`: the playbook runner and the log classifier, as commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.live import Live
from rich.spinner import Spinner
from rich.table import Table

from testbed.cli.common import console, friendly_errors, out
from testbed.cli.report import verdict_mark
from testbed.errors import InputError
from testbed.report.text import guard_text
from testbed.runner.result import RunResult, ScenarioResult


def verdict_table(run: RunResult) -> Table:
    t = Table(
        "scenario",
        "expected",
        "outcome",
        "usbredir",
        "migration s",
        "frozen ms",
        "guard",
        "verdict",
        title=f"{Path(run.playbook).name} on {Path(run.topology).name}",
    )
    for s in run.scenarios:
        t.add_row(*scenario_row(s))
    return t


def scenario_row(s: ScenarioResult) -> list[str]:
    return [
        s.name,
        s.expected.outcome or "",
        str(s.outcome or "-"),
        str(s.client.usbredir or "-"),
        str(s.migration.duration_s or "-"),
        "-" if s.client.frozen_ms is None else f"{s.client.frozen_ms:g}",
        guard_text(s),
        verdict_mark(s.verdict),
    ]


@click.command()
@click.argument("playbooks", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--topology", "-t", default=None, help="Topology (default: the playbook's own).")
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Output directory (default runs/<timestamp>-<playbook>/).",
)
@click.option("-k", "pattern", default=None, help="Only scenarios matching (e.g. 'fix-on').")
@click.option("--list", "list_only", is_flag=True, help="Show the scenarios; run nothing.")
@friendly_errors
def run(
    playbooks: tuple[str, ...],
    topology: str | None,
    out_dir: str | None,
    pattern: str | None,
    list_only: bool,
) -> None:
    """Run PLAYBOOK(s); exit 0 exactly when every expectation holds."""
    from testbed.cli.report import print_written
    from testbed.model.playbook import scenario_rows
    from testbed.report.write import write_reports
    from testbed.runner.plan import plan, run_plan

    the_plan = plan(playbooks, topology=topology, pattern=pattern)
    if list_only:
        t = Table("playbook", "scenario", "parameters", "expected outcome")
        for pp in the_plan.playbooks:
            for r in scenario_rows(pp.scenarios):
                t.add_row(
                    pp.name,
                    r.name,
                    ", ".join(f"{k}={v}" for k, v in r.params.items()),
                    r.outcome or "",
                )
        out.print(t)
        return
    spinner = Spinner("dots", text="starting")

    def done(s: ScenarioResult) -> None:
        mark = verdict_mark(s.verdict)
        why = "" if s.passed else ": " + "; ".join(s.failures)
        console.print(f"{mark} {s.name} ({s.duration_s:.0f} s){why}", highlight=False)

    def playbook_done(result: RunResult) -> None:
        dest = Path(result.out_dir or ".")
        out.print(verdict_table(result))
        out.print(f"results: {dest / 'result.json'}")
        print_written(write_reports(dest))  # junit.xml and report.html beside result.json

    with Live(spinner, console=console, transient=True, refresh_per_second=8):
        runs = run_plan(
            the_plan,
            out_dir,
            progress=lambda msg: spinner.update(text=msg),
            on_scenario=done,
            on_run=playbook_done,
        )
    sys.exit(0 if all(r.passed for r in runs) else 1)


@click.command()
@click.argument("client_log", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the classification as JSON.")
@friendly_errors
def classify(client_log: str, as_json: bool) -> None:
    """Classify a remote-viewer debug log (SPICE_DEBUG=1 --debug) on its own."""
    from testbed.spice.classifier import classify

    c = classify(read_client_log(Path(client_log)))
    if as_json:
        out.print_json(json.dumps(c.to_json(), default=str))
        return
    out.print(f"outcome: [bold]{c.outcome}[/]  usbredir: [bold]{c.usbredir}[/]")
    out.print(c.reason)
    for e in c.evidence[:20]:
        out.print(f"  {e.line}: {e.text.strip()[:140]}  [dim]({e.means})[/]", highlight=False)


MAX_CLIENT_LOG_BYTES = 256 * 1024 * 1024
DEBUG_MARKERS = (b"GSpice-DEBUG:", b"virt-viewer-DEBUG:")


def read_client_log(path: Path, max_bytes: int = MAX_CLIENT_LOG_BYTES) -> str:
    """A remote-viewer debug log (plain or .gz) read bounded; a file over `max_bytes`
    or without one remote-viewer debug line is an input error."""
    import gzip

    try:
        with gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read: {e}", file=str(path)) from None
    if len(raw) > max_bytes:
        raise InputError(f"larger than {max_bytes:,} bytes: not one client log", file=str(path))
    if not any(m in raw for m in DEBUG_MARKERS):
        raise InputError(
            "not a remote-viewer debug log: no GSpice-DEBUG or virt-viewer-DEBUG line",
            file=str(path),
            hint="record one with SPICE_DEBUG=1 remote-viewer --debug URI 2> client.log",
        )
    return raw.decode("utf-8", errors="replace")
