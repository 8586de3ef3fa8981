"""report.html: one self-contained file a QE engineer opens from a CI archive.

No network needed: inline CSS, SVG drawn here, screenshots as data URIs (links when
too big), logs linked relative to the run directory so the archive stays browsable.
Sections: the outcome matrix (when the run swept parameters), a summary table, then
per scenario its verdict, expected vs got, timeline, screenshots and logs.
"""

from __future__ import annotations

import base64
import os
import re
from datetime import datetime
from html import escape
from pathlib import Path

from testbed.model.result import ClientSummary, GuestSummary, ScenarioResult
from testbed.report.load import Run, artifact_path, scenario_dir
from testbed.report.matrix import Matrix, outcome_matrix
from testbed.report.svg import timeline_svg
from testbed.report.text import (
    expected_text,
    failure_text,
    got_text,
    guard_text,
    outcome_label,
    spice_server_text,
)

MAX_EMBED_BYTES = 400_000  # a screenshot larger than this is linked, not embedded
SCREENSHOTS = ("screenshot_before", "screenshot_after")

CSS = """
body{font-family:sans-serif;margin:1.5em;color:#1a1a1a;background:#fff;max-width:1200px}
.v{padding:.1em .5em;border-radius:.3em;color:#fff;vertical-align:middle;white-space:nowrap}
h1 .v,h3 .v{font-size:.7em}
.v.PASS{background:#2e7d32}.v.FAIL{background:#c62828}.v.ERROR{background:#6d4c41}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.25em .5em}
th{background:#f3f3f3}
table.matrix td{text-align:center;min-width:7em}
table.matrix td.pass{background:#c8e6c9}table.matrix td.fail{background:#ffcdd2}
table.matrix td.none{background:#f5f5f5;color:#999}
table.matrix td a{color:inherit;text-decoration:none;display:block}
table.matrix small{display:block;color:#555}
section.scenario{border-top:2px solid #ddd;margin-top:1.5em}
pre.why{background:#fff3f3;border-left:4px solid #c62828;padding:.5em;white-space:pre-wrap}
.meta,.dim{color:#444}figure{display:inline-block;margin:.3em 1em .3em 0;max-width:100%}
figure img{max-width:420px;border:1px solid #ccc}figcaption{color:#333;font-size:.85em}
svg.timeline{max-width:100%;height:auto}
pre{font-size:.8em;overflow-x:auto;white-space:pre-wrap;word-break:break-all}
td{overflow-wrap:anywhere}
"""

JS = """
document.getElementById('failed-only').addEventListener('change', function (e) {
  document.querySelectorAll('section.scenario.PASS, tr.PASS').forEach(function (el) {
    el.style.display = e.target.checked ? 'none' : '';
  });
});
"""


def report_html(run: Run) -> str:
    scenarios = run.scenarios
    ids = _anchors(scenarios)
    passed = sum(1 for s in scenarios if s.passed)
    overall = "PASS" if scenarios and passed == len(scenarios) else "FAIL"
    title = f"testbed: {run.name}"
    body = [
        f'<h1>{escape(run.name)} <span class="v {overall}">{overall} '
        f"{passed}/{len(scenarios)}</span></h1>",
        f'<p class="meta">{_meta(run)}</p>',
        '<p><label><input type="checkbox" id="failed-only"> failed scenarios only</label></p>',
    ]
    matrix = outcome_matrix(scenarios)
    if matrix is not None:
        by_name = {s.name: a for s, a in zip(scenarios, ids, strict=True)}
        body += ["<h2>Outcome matrix</h2>", matrix_table(matrix, by_name)]
    body += ["<h2>Scenarios</h2>", _summary(scenarios, ids)]
    body += [_scenario(run, s, ids[i]) for i, s in enumerate(scenarios)]
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + f"\n<script>{JS}</script>\n</body></html>\n"
    )


def _anchors(scenarios: list[ScenarioResult]) -> list[str]:
    return [
        f"s{i}-{re.sub(r'[^A-Za-z0-9]+', '-', s.name).strip('-')}" for i, s in enumerate(scenarios)
    ]


def _meta(run: Run) -> str:
    d = run.result
    when = datetime.fromtimestamp(d.started).strftime("%Y-%m-%d %H:%M:%S")
    if d.ended is not None:
        when += f", took {d.ended - d.started:.0f} s"
    else:
        when += ", not finished (a run cut short)"
    return (
        f"playbook <code>{escape(d.playbook)}</code> on topology "
        f"<code>{escape(d.topology)}</code>; started {escape(when)}; "
        f"report built from result.json at {datetime.now():%Y-%m-%d %H:%M:%S}"
    )


def matrix_table(m: Matrix, anchors: dict[str, str] | None = None) -> str:
    """The matrix as a coloured table: green passed, red failed, the outcome in each cell.

    `anchors` maps scenario names to the ids of their sections, to link each cell.
    """
    anchors = anchors or {}
    rows = []
    levels = len(m.col_axes)
    for level, axis in enumerate(m.col_axes):
        cells = [f'<th rowspan="{levels}">{escape(m.row_axis)}</th>'] if level == 0 else []
        span = 1
        for j in range(level + 1, levels):
            span *= len(dict.fromkeys(c[j] for c in m.col_values))
        for i in range(0, len(m.col_values), span):
            label = f"{axis}={m.col_values[i][level]}"
            cells.append(f'<th colspan="{span}">{escape(label)}</th>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    if not m.col_axes:
        rows.append(f"<tr><th>{escape(m.row_axis)}</th><th>outcome</th></tr>")
    for r in m.row_values:
        cells = [f"<th>{escape(r)}</th>"]
        cells += [_matrix_cell(m.cell(r, col), anchors) for col in m.col_values]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    extra = ""
    if m.outside:
        names = ", ".join(escape(s.name) for s in m.outside)
        extra = f'<p class="dim">not in the matrix: {names}</p>'
    return '<table class="matrix">' + "".join(rows) + "</table>" + extra


def _matrix_cell(s: ScenarioResult | None, anchors: dict[str, str]) -> str:
    if s is None:
        return '<td class="none">not run</td>'
    cls = "pass" if s.passed else "fail"
    text = escape(outcome_label(s))
    exp = s.expected.outcome
    if not s.passed:
        text += f"<small>expected {escape(str(exp))}</small>" if exp else "<small>FAIL</small>"
    tip = escape(f"{s.name}: {s.verdict}; expected {expected_text(s)}; got {got_text(s)}")
    link = anchors.get(s.name)
    inner = f'<a href="#{link}">{text}</a>' if link else text
    return f'<td class="{cls}" title="{tip}">{inner}</td>'


def _summary(scenarios: list[ScenarioResult], ids: list[str]) -> str:
    head = (
        "<tr><th>scenario</th><th>expected</th><th>outcome</th><th>usbredir</th>"
        "<th>migration s</th><th>downtime ms</th><th>frozen ms</th><th>guest stall ms</th>"
        "<th>guard</th>"
        "<th>verdict</th></tr>"
    )
    rows = [head]
    for s, a in zip(scenarios, ids, strict=True):
        mig, client = s.migration, s.client
        v = s.verdict
        cells = [
            f'<a href="#{a}">{escape(s.name)}</a>',
            escape(s.expected.outcome or ""),
            escape(outcome_label(s)),
            escape(str(client.usbredir or "-")),
            escape(str(mig.duration_s or "-")),
            escape(str(mig.downtime_ms if mig.downtime_ms is not None else "-")),
            escape(_ms(client.frozen_ms)),
            escape(_ms(s.guest.switchover_stall_ms)),
            escape(guard_text(s)),
            f'<span class="v {v}">{v}</span>',
        ]
        rows.append(f'<tr class="{v}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _scenario(run: Run, s: ScenarioResult, anchor: str) -> str:
    v = s.verdict
    params = ", ".join(f"{k}={val}" for k, val in s.params.items())
    parts = [
        f'<section class="scenario {v}" id="{anchor}">',
        f'<h3>{escape(s.name)} <span class="v {v}">{v}</span></h3>',
    ]
    if params:
        parts.append(f'<p class="dim">{escape(params)}</p>')
    if v != "PASS":
        why = failure_text(s, scenario_dir(run, s))
        parts.append(f'<pre class="why">{escape(why)}</pre>')
    parts.append(_facts(s))
    parts.append(f"<figure>{timeline_svg(s)}</figure>")
    parts.append(_screenshots(run, s))
    parts.append(_artifact_links(run, s))
    evidence = s.evidence
    if evidence:
        lines = escape("\n".join(evidence))
        parts.append(
            f"<details><summary>client log evidence ({len(evidence)} lines)</summary>"
            f"<pre>{lines}</pre></details>"
        )
    if s.links:
        parts.append(_links_table(s.links))
    parts.append("</section>")
    return "\n".join(parts)


def _facts(s: ScenarioResult) -> str:
    mig, client, guard = s.migration, s.client, s.guard
    rows = [
        ("expected", expected_text(s)),
        ("got", got_text(s)),
        (
            "migration",
            f"{mig.result} in {mig.duration_s} s, downtime "
            f"{mig.downtime_ms} ms, {(mig.bytes or 0) / 2**20:.0f} MiB",
        ),
        ("client", _client_text(client)),
        ("guest", _guest_text(s.guest)),
        ("spice-server", spice_server_text(s)),
    ]
    if guard:
        acts = ", ".join(a.action for a in guard.actions)
        rows.append(
            (
                "guard",
                f"{guard.result}, held {guard.held_s} s, client_migrate_info "
                f"sent {guard.client_migrate_info_sent}x; {acts}",
            )
        )
    rows.append(("took", f"{s.duration_s} s"))
    return (
        '<table class="facts">'
        + "".join(f"<tr><th>{escape(k)}</th><td>{escape(str(v))}</td></tr>" for k, v in rows)
        + "</table>"
    )


def _client_text(client: ClientSummary) -> str:
    at, pct = client.connected_at_s, client.connected_at_progress
    if at is None:
        when = "connected: not recorded"
    elif at < 0:
        when = f"connected {-at:g} s before the migration started"
    else:
        when = f"connected {at:g} s after the migration started (at {pct} %)"
    lag = client.lag_ms
    lag_s = f"lag p50 {lag.p50} / p99 {lag.p99} / max {lag.max} ms" if lag else "lag not measured"
    return (
        f"{when}; frozen {_ms(client.frozen_ms)} ms around the switchover; "
        f"{lag_s}; longest display gap (guest or client) {_ms(client.unresponsive_ms)} ms"
    )


def _guest_text(guest: GuestSummary) -> str:
    return (
        f"stalled {_ms(guest.switchover_stall_ms)} ms at the switchover, longest "
        f"stall {_ms(guest.stall_ms)} ms"
    )


def _ms(v: object) -> str:
    return f"{v:g}" if isinstance(v, int | float) else "-"


def _screenshots(run: Run, s: ScenarioResult) -> str:
    figs = []
    arts = s.artifacts
    for kind in SCREENSHOTS:
        if kind not in arts:
            continue
        caption = kind.removeprefix("screenshot_") + " the switchover"
        p = artifact_path(run, s, str(arts[kind]))
        if p is None:
            figs.append(
                f"<figure><figcaption>{escape(caption)}: not available "
                f"({escape(str(arts[kind]))})</figcaption></figure>"
            )
        elif p.stat().st_size <= MAX_EMBED_BYTES:
            data = base64.b64encode(p.read_bytes()).decode()
            figs.append(
                f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{escape(caption)}</figcaption></figure>"
            )
        else:
            figs.append(
                f'<figure><a href="{escape(_rel(run, p))}">{escape(caption)} (screenshot)</a>'
                "</figure>"
            )
    return "<div>" + "".join(figs) + "</div>" if figs else ""


def _artifact_links(run: Run, s: ScenarioResult) -> str:
    items = []
    for kind, recorded in s.artifacts.items():
        if kind in SCREENSHOTS:
            continue
        p = artifact_path(run, s, str(recorded))
        label = kind.replace("_", " ")
        if p is None:
            items.append(f'<span class="dim">{escape(label)} (not here)</span>')
        else:
            items.append(f'<a href="{escape(_rel(run, p))}">{escape(label)}</a>')
    return '<p class="logs">logs: ' + " · ".join(items) + "</p>" if items else ""


def _links_table(links: list[dict[str, str]]) -> str:
    keys = list(dict.fromkeys(k for row in links for k in row))
    head = "<tr>" + "".join(f"<th>{escape(k)}</th>" for k in keys) + "</tr>"
    body = "".join(
        "<tr>" + "".join(f"<td>{escape(str(row.get(k, '')))}</td>" for k in keys) + "</tr>"
        for row in links
    )
    return f"<details><summary>links</summary><table>{head}{body}</table></details>"


def _rel(run: Run, p: Path) -> str:
    return Path(os.path.relpath(p.resolve(), run.dir)).as_posix()
