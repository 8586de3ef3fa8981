"""The outcome classifier on real remote-viewer logs recorded in the lab (tests/data/spice).

The logs were made by tools/record_spice_logs.py (see tests/data/spice/README.md);
next to each is the JSON the recorder wrote, with the server-side events of the
same run. Truncated and garbled variants are cut from the same real logs.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Any

import pytest

from testbed.spice.classifier import (
    Classification,
    classify,
    classify_file,
    read_log,
    server_view,
)

DATA = Path(__file__).parent / "data" / "spice"

# scenario -> (outcome, usbredir, hypervisors' verdict)
EXPECTED = {
    "seamless": ("seamless", "migrated", "pre-connected"),
    "semi-seamless": ("semi-seamless", "migrated", "pre-connected"),
    "switch-host": ("switch-host", "reconnected", "reconnected-after-switchover"),
    "failed-preconnect": ("switch-host", "reconnected", "reconnected-after-switchover"),
    "lost-unreachable": ("lost", "lost", "not-on-destination"),
    "lost-killed": ("lost", "lost", "pre-connected"),
}
# the log line each outcome hinges on
DECIDING = {
    "seamless": "migration (seamless): connections all ok",
    "semi-seamless": "migration (semi-seamless): connections all ok",
    "switch-host": "migration message: migrate-switch-host",
    "failed-preconnect": "migrate failed: some channels failed to connect",
    "lost-unreachable": "main channel: failed to connect",
    "lost-killed": "migration message: migrate-begin-seamless",
}


def _log(name: str) -> str:
    return read_log(DATA / f"{name}.log.gz")


def _meta(name: str) -> dict[str, Any]:
    return json.loads((DATA / f"{name}.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recorded_logs(name: str) -> None:
    outcome, usb, _ = EXPECTED[name]
    c = classify_file(DATA / f"{name}.log.gz")
    assert (c.outcome, c.usbredir) == (outcome, usb), c.reason
    assert c.migrations == 1
    assert c.complete is (name != "lost-killed")
    assert _meta(name)["expected_outcome"] == outcome  # what the recorder meant to make


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_evidence_points_at_real_lines(name: str) -> None:
    lines = _log(name).splitlines()
    c = classify_file(DATA / f"{name}.log.gz")
    assert c.evidence
    for e in c.evidence:
        assert lines[e.line - 1].strip().startswith(e.text[:200]), e
        assert e.source.startswith(("spice-gtk src/", "virt-viewer src/"))
    assert any(DECIDING[name] in e.text for e in c.evidence), [e.text for e in c.evidence]
    lines_in_order = [e.line for e in c.evidence]
    assert lines_in_order == sorted(lines_in_order)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_server_events_agree_with_the_log(name: str) -> None:
    outcome, usb, verdict = EXPECTED[name]
    events = _meta(name)["server_events"]
    c = classify(_log(name), events)
    assert (c.outcome, c.usbredir) == (outcome, usb)
    assert c.server is not None
    assert (c.server.source, c.server.destination, c.server.client) == (
        "src",
        "dst",
        "198.18.1.1",
    )
    assert c.server.verdict == verdict
    assert "disagree" not in c.reason


def test_server_view_without_a_migration() -> None:
    only_src = [e for e in _meta("seamless")["server_events"] if e["host"] == "src"]
    only_src = [e for e in only_src if e["kind"] == "graphics"]
    v = server_view(only_src)
    assert v.verdict == "no-migration" and v.client == "198.18.1.1"
    assert server_view([]).verdict == "no-migration"


def test_json_has_what_the_cli_needs() -> None:
    for name in EXPECTED:
        j = classify(_log(name), _meta(name)["server_events"]).to_json()
        assert {"outcome", "usbredir", "reason", "evidence", "complete"} <= set(j)
        assert json.loads(json.dumps(j)) == j


def test_times_follow_the_log_clock() -> None:
    c = classify_file(DATA / "seamless.log.gz")
    assert set(c.times) == {"connected", "migration_begin", "switched"}
    assert c.times["connected"] < c.times["migration_begin"] < c.times["switched"]
    s = classify_file(DATA / "switch-host.log.gz")
    assert "switch_host" in s.times


def test_plain_and_gzip_files(tmp_path: Path) -> None:
    plain = tmp_path / "client.log"
    plain.write_text(_log("switch-host"))
    assert classify_file(plain).outcome == "switch-host"
    assert classify_file(str(DATA / "switch-host.log.gz")).outcome == "switch-host"


# ---- truncated and garbled input: a clear answer, never an exception ----------------------


def _cut_after(text: str, needle: str, extra: int = 0) -> str:
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if needle in ln)
    return "\n".join(lines[: i + 1 + extra])


def test_seamless_cut_before_the_switchover_is_lost_and_incomplete() -> None:
    c = classify(_cut_after(_log("seamless"), "migration (seamless): connections all ok"))
    assert (c.outcome, c.complete) == ("lost", False)
    assert "log ends" in c.reason


def test_switch_host_cut_before_the_reconnection_is_lost_and_incomplete() -> None:
    c = classify(_cut_after(_log("switch-host"), "main channel: switching host"))
    assert (c.outcome, c.complete) == ("lost", False)
    assert c.usbredir == "lost"


def test_failed_preconnect_cut_before_the_fallback() -> None:
    c = classify(_cut_after(_log("failed-preconnect"), "some channels failed to connect"))
    assert (c.outcome, c.complete) == ("lost", False)
    assert "pre-connect failed" in c.reason


def test_log_cut_before_any_display() -> None:
    c = classify("\n".join(_log("seamless").splitlines()[:20]))
    assert (c.outcome, c.usbredir, c.complete) == ("lost", "none", False)


def test_log_before_any_migration() -> None:
    c = classify(_cut_after(_log("seamless"), "cursor-4:0: channel up", extra=50))
    assert (c.outcome, c.usbredir, c.migrations) == ("no-migration", "kept", 0)


@pytest.mark.parametrize(
    "text",
    ["", "\n\n", "hello world\n", "\x00\x01\x02 garbage \xff", "migrate-switch-host\n" * 3],
)
def test_not_a_client_log(text: str) -> None:
    c = classify(text)
    assert (c.outcome, c.usbredir) == ("unknown", "none")
    assert c.evidence == []


def test_binary_file(tmp_path: Path) -> None:
    p = tmp_path / "junk.log.gz"
    with gzip.open(p, "wb") as f:
        f.write(bytes(range(256)) * 100)
    assert classify_file(p).outcome == "unknown"


@pytest.mark.parametrize("name", ["seamless", "switch-host"])
def test_garbled_lines_do_not_change_the_verdict(name: str) -> None:
    """Flip bytes in 2% of the lines (never the deciding ones): same outcome, no crash."""
    rnd = random.Random(884631)
    keep = {e.line for e in classify_file(DATA / f"{name}.log.gz").evidence}
    out = []
    for n, ln in enumerate(_log(name).splitlines(), 1):
        if n not in keep and ln and rnd.random() < 0.02:
            i = rnd.randrange(len(ln))
            ln = ln[:i] + chr(rnd.randrange(1, 0x3000)) + ln[i + 1 :]
        out.append(ln)
    c = classify("\n".join(out))
    assert isinstance(c, Classification)
    assert c.outcome == EXPECTED[name][0]


def test_interleaved_random_bytes_still_classify() -> None:
    rnd = random.Random(1)
    lines = _log("switch-host").splitlines()
    noise = ["".join(chr(rnd.randrange(32, 0x2FF)) for _ in range(80)) for _ in range(500)]
    for junk in noise:
        lines.insert(rnd.randrange(len(lines)), junk)
    assert classify("\n".join(lines)).outcome == "switch-host"
