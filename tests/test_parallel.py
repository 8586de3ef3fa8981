"""Many scenarios at once: `pytest playbooks/... -n 2` runs two local labs side by side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab


def test_two_workers_run_two_labs_at_once(needs_root: None, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-n",
            "2",
            "playbooks/seamless-baseline.yaml",
            "playbooks/bug-884631.yaml",
            "-k",
            "seamless-baseline or (late-client and fix-guard)",
            "--testbed-out",
            str(runs),
            f"--junitxml={tmp_path / 'junit.xml'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ),
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "2 passed" in p.stdout
    spans = []
    for d in sorted(runs.iterdir()):
        run = json.loads((d / "result.json").read_text())
        [s] = run["scenarios"]
        assert s["passed"], s["failures"]
        spans.append((run["started"], run["started"] + s["duration_s"], d.name))
    assert len(spans) == 2 and {n.rsplit("-", 1)[1] for *_t, n in spans} <= {"gw0", "gw1"}
    (a0, a1, _), (b0, b1, _) = spans
    assert min(a1, b1) - max(a0, b0) > 10, f"the two labs did not run at once: {spans}"
