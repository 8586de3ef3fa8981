"""report.html in a real browser: Debian's chromium, headless, as a person would see it.

The report is built from a real run's result.json (tests/data/report/frozen-run.json,
bug-884631 on the local lab, with the heartbeat's client lag). Chromium loads a copy
with a measuring script appended and dumps the DOM the script annotated (every
scenario's timeline SVG and lag plot with their size, anything reaching past 1280 px,
the page's height), logs console messages to stderr and every network request to a
net log; then it screenshots the report itself at 1280 px wide. The PNG is kept as
the test's artifact (`report-browser.png` in the test's tmp dir, printed).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from testbed.report.write import write_reports

DATA = Path(__file__).parent / "data" / "report" / "frozen-run.json"
WIDTH = 1280
CHROMIUM = shutil.which("chromium")

MEASURE = """
<script>
(function () {
  var W = %d, out = {scenarios: [], clipped: [], height: 0};
  document.querySelectorAll('section.scenario').forEach(function (sec) {
    var svg = sec.querySelector('svg.timeline'), lag = sec.querySelector('svg.timeline g.lag-plot');
    var box = function (el) { if (!el) return null; var r = el.getBoundingClientRect();
      return [r.width, r.height]; };
    out.scenarios.push({id: sec.id, timeline: box(svg), lag: box(lag),
                        lagLine: !!(lag && lag.querySelector('polyline.lag'))});
  });
  document.querySelectorAll('body *').forEach(function (el) {
    var r = el.getBoundingClientRect();
    if (r.width > 0 && r.right > W + 0.5 && el.closest('details:not([open])') === null)
      out.clipped.push(el.tagName + ' ' + (el.className.baseVal || el.className) + ' ' +
                       Math.round(r.right));
  });
  out.height = Math.ceil(document.documentElement.scrollHeight);
  out.scrollWidth = document.documentElement.scrollWidth;
  var pre = document.createElement('pre'); pre.id = 'browser-check';
  pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
})();
</script>
"""


def _chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        # the browser's own traffic (time, dictionaries, updates) is not the page's:
        # switched off, and nothing may leave this machine whatever asks
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-features=SpellCheck,Translate,OptimizationHints,NetworkTimeServiceQuerying",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def _page_requests(net_log: Path) -> list[str]:
    """URLs the page asked for (not the browser's own traffic), other than file: and data:."""
    text = net_log.read_text()
    try:
        log = json.loads(text)
    except json.JSONDecodeError:  # cut short while chromium exits: close it as it would
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for ev in log.get("events", []):
        p = ev.get("params") or {}
        url = p.get("url")
        if ev.get("type") != start or not isinstance(url, str):
            continue
        if p.get("initiator") == "not an origin":  # the browser's own (updates, accounts)
            continue
        if not url.startswith(("file:", "data:")):
            urls.append(url)
    return urls


def _load(tmp_path: Path, page: Path, tag: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    net_log = tmp_path / f"net-log-{tag}.json"
    res = _chromium(
        f"--window-size={WIDTH},900",
        "--enable-logging=stderr",
        "--v=0",
        f"--log-net-log={net_log}",
        f"--user-data-dir={tmp_path / f'profile-{tag}'}",
        "--virtual-time-budget=3000",
        "--dump-dom",
        page.as_uri(),
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return res, net_log


needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (tools/apt-packages.txt)"
)


@needs_chromium
@pytest.mark.timeout(120)
def test_the_checks_see_a_request_and_a_console_error(tmp_path: Path) -> None:
    """The two checks can fail: a page that fetches and throws is caught by both."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!doctype html><img src="http://198.18.0.1/x.png">'
        "<script>console.error('boom'); undefinedThing();</script>"
    )
    res, net_log = _load(tmp_path, page, "bad")
    assert any("CONSOLE" in ln and "boom" in ln for ln in res.stderr.splitlines())
    assert _page_requests(net_log) == ["http://198.18.0.1/x.png"]


@needs_chromium
@pytest.mark.timeout(300)
def test_report_renders_in_chromium(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    shutil.copy(DATA, run_dir / "result.json")
    html = write_reports(run_dir).html
    n_scenarios = len(json.loads(DATA.read_text())["scenarios"])

    probe = run_dir / "report-probe.html"
    probe.write_text(html.read_text().replace("</body>", MEASURE % WIDTH + "</body>"))
    res, net_log = _load(tmp_path, probe, "report")
    m = re.search(r'<pre id="browser-check">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the measuring script did not run: {res.stderr[-2000:]}"
    check = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))

    console = [ln for ln in res.stderr.splitlines() if "CONSOLE" in ln]
    assert not console, f"console messages: {console}"
    assert _page_requests(net_log) == []
    assert len(check["scenarios"]) == n_scenarios
    for sc in check["scenarios"]:
        assert sc["timeline"] and min(sc["timeline"]) > 50, sc
        assert sc["lag"] and min(sc["lag"]) > 50, sc
        assert sc["lagLine"], f"{sc['id']}: no lag line drawn"
    assert check["scrollWidth"] <= WIDTH, check["clipped"][:10]
    assert not check["clipped"], check["clipped"][:10]

    png = tmp_path / "report-browser.png"
    res = _chromium(
        f"--window-size={WIDTH},{check['height']}",
        f"--user-data-dir={tmp_path / 'profile2'}",
        f"--screenshot={png}",
        html.as_uri(),
    )
    assert res.returncode == 0 and png.stat().st_size > 10_000, res.stderr[-2000:]
    print(f"screenshot: {png}")
