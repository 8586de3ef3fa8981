"""The real SPICE client on a real lab: remote-viewer connects, the screen is sampled, all ends.

The lab test (about 15 s): guest `vm` on src, remote-viewer on
the client host's Xvfb, a screenshot, the display watcher, then teardown, after
which no process that lived in the lab's namespaces may be left.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from testbed.errors import LabError
from testbed.hosts.ledger import process_start_time, same_process
from testbed.hosts.procs import pids_in_netns
from testbed.lab.guests import start_guest
from testbed.lab.lab import Lab
from testbed.lab.spice import guest_display, spice_client
from testbed.model.topology import load_topology
from testbed.spice.classifier import classify, read_log
from testbed.spice.client import LogState
from testbed.spice.screen import DisplayWatcher, longest_gap, screenshot

TOPOLOGY = Path(__file__).resolve().parent.parent / "topologies" / "local.yaml"
IDLE_S = 4.0


DATA = Path(__file__).parent / "data" / "spice"


@pytest.mark.parametrize(
    "name, down_at, final",
    [
        ("switch-host", "main channel: switching host", True),
        ("lost-unreachable", "main channel: switching host", False),
        ("seamless", None, True),
    ],
)
def test_log_state_follows_a_growing_log(
    tmp_path: Path, name: str, down_at: str | None, final: bool
) -> None:
    """Fed a recorded log in pieces (cut mid-line too), the state tracks the main channel."""
    text = read_log(DATA / f"{name}.log.gz").encode()
    log = tmp_path / "client.log"
    log.write_bytes(b"")
    st = LogState(log)
    seen_up = seen_down_after_up = False
    step = 4099  # not a line boundary
    with open(log, "ab") as f:
        for i in range(0, len(text), step):
            f.write(text[i : i + step])
            f.flush()
            st.update()
            up = st.main and st.display
            seen_down_after_up |= seen_up and not up
            seen_up |= up
    assert seen_up
    assert seen_down_after_up is (down_at is not None)
    assert (st.main and st.display) is final


def test_longest_gap_is_clipped_to_the_window_and_to_sampling() -> None:
    changes = [10.0 + 0.04 * i for i in range(50)] + [13.0, 13.04]  # frozen 11.96 -> 13.0
    sampling = (9.0, 500, 14.0)
    g = longest_gap(changes, (10.0, 14.0), sampling)
    assert g is not None and (round(g.start, 2), round(g.end, 2)) == (11.96, 13.0)
    # a window reaching past the sampling is cut to it: 13.04 -> 14.0, not to 20.0
    g2 = longest_gap(changes, (12.5, 20.0), sampling)
    assert g2 is not None and round(g2.ms) == 960
    assert longest_gap(changes, (15.0, 16.0), sampling) is None
    assert longest_gap([], None, (None, 0, None)) is None


def _needs() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, libvirtd)")
    for tool in ("remote-viewer", "Xvfb", "libvirtd"):
        if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists():
            pytest.skip(f"{tool} is not installed (make setup)")


def _png_size_and_colours(path: Path) -> tuple[int, int, int]:
    """Width, height and distinct colours of an 8-bit RGB PNG, read by the PNG spec alone.

    Checks the signature and every chunk's CRC; a row filter other than None (0) fails the
    test, since testbed writes unfiltered rows. No imaging library needed.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        assert zlib.crc32(kind + body) & 0xFFFFFFFF == crc, f"bad CRC in {kind!r}"
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + n
    w, h, depth, colour_type = struct.unpack(">IIBB", header[:10])
    assert (depth, colour_type) == (8, 2), "expected 8-bit RGB"
    raw = zlib.decompress(idat)
    stride = 1 + 3 * w
    assert len(raw) == stride * h
    colours: set[bytes] = set()
    for y in range(h):
        row = raw[y * stride : (y + 1) * stride]
        assert row[0] == 0, f"row {y} uses filter {row[0]}"
        colours.update(row[i : i + 3] for i in range(1, stride, 3))
    return w, h, len(colours)


def _lab_processes(lab: Lab) -> dict[int, tuple[int | None, str]]:
    """Every process living in one of the lab's namespaces: pid -> (start time, command)."""
    out: dict[int, tuple[int | None, str]] = {}
    for ns in [lab.bridge_netns, *(lab.netns_of(h) for h in lab.topology.hosts)]:
        for pid in pids_in_netns(ns):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            out[pid] = (process_start_time(pid), cmd.strip())
    return out


@pytest.mark.lab
@pytest.mark.timeout(180)
def test_client_connects_sees_the_guest_and_leaves_nothing(tmp_path: Path) -> None:
    _needs()
    lab = Lab.up(load_topology(str(TOPOLOGY)))
    procs: dict[int, tuple[int | None, str]] = {}
    try:
        with pytest.raises(LabError, match="not running"):
            guest_display(lab, "vm")
        start_guest(lab, "vm", fill_mib=8)
        where = guest_display(lab, "vm")
        assert (where.host, where.address) == ("src", lab.address("src", "display"))
        assert where.uri == f"spice://{where.address}:{where.port}"

        client = spice_client(lab, tmp_path)
        watcher = DisplayWatcher(
            lab.hosts["client"], lab.display("client"), tmp_path / "display.txt", ledger=lab.ledger
        )
        client.connect(guest_display(lab, "vm").uri)
        assert client.connect_t is not None and client.connect_wall is not None
        took = client.wait_connected(30)
        assert 0 < took < 30
        assert client.connected()
        win = client.window()
        assert win is not None and win.width > 300 and win.height > 200

        watcher.start()
        watcher.wait_started()
        t0 = time.monotonic()
        time.sleep(IDLE_S)
        t1 = time.monotonic()
        shot = screenshot(lab.hosts["client"], lab.display("client"), tmp_path / "screen.png")

        # the guest repaints in a new colour at 25 Hz: the sampled square changes that often
        gap = watcher.longest_gap_ms((t0, t1))
        rate = watcher.rate_hz((t0, t1))
        print(f"connected in {took:.2f} s; idle: {rate:.1f} changes/s, longest gap {gap} ms")
        assert gap is not None and gap < 500
        assert rate > 10

        assert shot.stat().st_size > 2000
        w, h, colours = _png_size_and_colours(shot)
        assert (w, h) == (1280, 800)
        assert colours > 3  # black root, the viewer's chrome, the guest's colour

        procs = _lab_processes(lab)
        assert client.pid in procs and watcher.pid in procs
        assert any("qemu-system" in c for _, c in procs.values())

        watcher.stop()
        assert abs(watcher.clock_offset) < 0.005  # a namespace shares this machine's clock
        client.stop()
        assert not client.running()
        # the log was followed on the host and is now a file here, where callers read it
        assert client.log_path.parent == tmp_path and client.log_path.stat().st_size > 0
        assert client.host_log is not None and not lab.hosts["client"].exists(client.host_log)
        assert client.pid is not None and not same_process(client.pid, procs[client.pid][0])
        c = classify(client.log_text())
        assert (c.outcome, c.usbredir) == ("no-migration", "kept"), c.reason
    finally:
        procs.update(_lab_processes(lab))
        lab.down()

    left = {pid: cmd for pid, (st, cmd) in procs.items() if same_process(pid, st)}
    assert not left, f"processes of lab {lab.id} left: {left}"
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"tb-{lab.id}-" not in names
    assert not lab.dir.exists()
