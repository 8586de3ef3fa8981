"""A secure display: every lab's SPICE has a ticket, and no secret reaches an artifact.

One scenario of bug 884631 (slow-dst/fix-guard, the shortest) runs on the embedded
lab; while it runs the test reads the lab's ticket and checks that QEMU runs with
ticketing on and that remote-viewer's command line does not hold the ticket.
After the run it greps every byte of the run directory (logs, client logs,
result.json, screenshots, gzip or not) for the ticket and for private keys.
(TLS as a topology option is not built yet: see the report.)
"""

from __future__ import annotations

import gzip
import stat
import threading
import time
from pathlib import Path

import pytest

from testbed.lab.ticket import TICKET_FILE, spice_ticket
from testbed.model.playbook import load_playbook
from testbed.model.topology import load_topology
from testbed.runner.result import ScenarioResult
from testbed.runner.scenario import ScenarioRun

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lab
SECRET_MARKERS = (b"PRIVATE KEY-----",)


def _files_holding(root: Path, needles: list[bytes]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if not p.is_file():
            continue
        data = p.read_bytes()
        if p.suffix == ".gz":
            data += gzip.decompress(data)
        hits += [f"{p}: {n[:6]!r}..." for n in needles if n in data]
    return hits


def test_ticket_is_used_and_never_written_out(needs_root: None, tmp_path: Path) -> None:
    pb = load_playbook(REPO / "playbooks" / "bug-884631.yaml")
    scenario = next(s for s in pb.scenarios() if s.name == "slow-dst/fix-guard")
    run = ScenarioRun(scenario, load_topology(REPO / "topologies" / "local.yaml"), tmp_path, print)
    box: dict[str, ScenarioResult] = {}
    t = threading.Thread(target=lambda: box.setdefault("r", run.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    ctx = run.ctx
    while ctx.session is None or ctx.session.client is None or ctx.session.client.pid is None:
        assert time.monotonic() < deadline and t.is_alive(), "the client never started"
        time.sleep(0.1)
    client, lab = ctx.session.client, ctx.lab
    assert lab is not None
    ticket_path = lab.dir / TICKET_FILE
    ticket = spice_ticket(lab.dir)
    assert len(ticket) >= 20
    assert stat.S_IMODE(ticket_path.stat().st_mode) == 0o600
    argv = Path(f"/proc/{client.pid}/cmdline").read_bytes()
    assert b"remote-viewer" in argv and ticket.encode() not in argv, argv
    t.join(300)
    assert not t.is_alive()
    result = box["r"]
    assert result.error is None, result.error
    assert result.passed, result.failures  # seamless with the ticket, as without
    qemu_logs = list((tmp_path).rglob("qemu/tb-*-vm.log"))
    assert qemu_logs, "QEMU logs were collected"
    for q in qemu_logs:
        text = q.read_text(errors="replace")
        assert "-spice " in text and "disable-ticketing" not in text, q
    leaks = _files_holding(tmp_path, [ticket.encode(), *SECRET_MARKERS])
    assert leaks == [], leaks
