"""The SPICE client side on a host reached over SSH: Xvfb, screen, sampler, remote-viewer.

A real sshd in a scratch namespace (tests/sshlab.py); everything below goes through
an SshHost, so only the Host interface carries it. About 15 s.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sshlab import ssh_lab

from testbed.hosts.display import start_xvfb, x_env
from testbed.hosts.procs import pids_in_netns
from testbed.hosts.ssh import stop_remote
from testbed.spice.client import SpiceClient
from testbed.spice.screen import DisplayWatcher, clock_offset, list_windows, screenshot

pytestmark = pytest.mark.lab  # a scratch sshd, Xvfb and remote-viewer

# repaints the root window in a new colour 20 times a second
PAINTER = """
import time
from Xlib import display
d = display.Display()
root = d.screen().root
i = 0
while True:
    i += 1
    root.change_attributes(background_pixel=(i * 0x1F3D5B) & 0xFFFFFF)
    root.clear_area(0, 0, 0, 0)
    d.sync()
    time.sleep(0.05)
"""
WATCHED = ("Xvfb", "remote-viewer", "testbed.spice.screen", "Xlib import display")


def _ours(netns: str) -> dict[int, str]:
    """Processes in the scratch namespace that this test started (sshd and sessions aside)."""
    out = {}
    for pid in pids_in_netns(netns):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(w in cmd for w in WATCHED):
            out[pid] = cmd[:120]
    return out


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    return w, h


@pytest.mark.timeout(120)
def test_xvfb_screen_watcher_and_client_over_ssh(tmp_path: Path) -> None:
    for tool in ("Xvfb", "xauth", "xdpyinfo", "remote-viewer"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (make setup)")
    with ssh_lab(tmp_path, 1) as lab, lab.host(python=sys.executable) as h:
        h.prepare()
        state = h.state_dir
        x = start_xvfb(h, state / "x", lab.ledger)
        (xvfb,) = [e for e in lab.ledger.of_kind("remote-process") if e["role"] == "xvfb"]
        assert xvfb["pid"] == x.pid and xvfb["host"] == "hv1"

        # the display answers on the host, with the cookie only, and nowhere else
        info = h.run(["xdpyinfo"], env=x_env(x)).stdout
        assert "1280x800 pixels" in info
        no_cookie = {**x_env(x), "XAUTHORITY": "/dev/null"}
        assert h.run(["xdpyinfo"], env=no_cookie, check=False).returncode != 0
        assert h.run(["stat", "-c", "%a", str(x.xauthority)]).stdout.strip() == "600"
        here = subprocess.run(
            ["xdpyinfo"], env={**os.environ, **x.env()}, capture_output=True, timeout=10
        )
        assert here.returncode != 0, "the display is reachable from the root namespace"
        assert not Path(f"/tmp/.X11-unix/X{x.number}").exists()  # no filesystem socket
        assert f":{6000 + x.number:04X} " not in h.run(["cat", "/proc/net/tcp"]).stdout

        # namespaces of one machine share CLOCK_MONOTONIC: the measured offset is ~0
        offset = clock_offset(h)
        print(f"clock offset over SSH: {offset * 1e3:+.2f} ms")
        assert abs(offset) < 0.005

        shot = screenshot(h, x, tmp_path / "shot.png")
        assert _png_size(shot) == (1280, 800)
        assert list_windows(h, x) == []  # nothing mapped yet: a bare root window

        painter = h.start([h.python, "-c", PAINTER], log=state / "painter.log", env=x_env(x))
        painter.record(lab.ledger, name="painter")
        watcher = DisplayWatcher(h, x, tmp_path / "changes.txt", ledger=lab.ledger)
        watcher.start()
        watcher.wait_started()
        time.sleep(0.5)
        t0 = time.monotonic()
        time.sleep(2.5)
        t1 = time.monotonic()
        rate = watcher.rate_hz((t0, t1))
        gap = watcher.longest_gap_ms((t0, t1))
        first, n, last = watcher.samples()
        assert first is not None and last is not None
        sample_hz = n / (last - first)
        print(
            f"watcher over SSH: {rate:.1f} changes/s (painter 20/s), {sample_hz:.0f} samples/s, "
            f"longest gap {gap} ms, offset {watcher.clock_offset * 1e3:+.2f} ms"
        )
        assert 12 < rate <= 21
        assert gap is not None and gap < 300
        assert sample_hz > 50
        # its times are ours: the last change was a moment ago, not in another clock's past
        assert time.monotonic() - 0.5 < watcher.changes()[-1] <= time.monotonic()
        painter.stop()

        # remote-viewer to an address nobody listens on: it starts, logs, and ends on stop
        client = SpiceClient(h, x, lab.ledger, tmp_path / "client")
        client.connect(f"spice://{lab.address}:5999")
        deadline = time.monotonic() + 15
        while "failed to connect" not in client.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.running()
        assert "failed to connect" in client.log_text()
        assert client.channels_up() == set()
        host_log, pid = client.host_log, client.pid
        assert host_log is not None and host_log.is_relative_to(state)
        client.stop()
        assert not client.running()
        assert h.run(["test", "-e", f"/proc/{pid}"], check=False).returncode == 1
        text = client.log_path.read_text()
        assert client.log_path.parent == tmp_path / "client"
        assert "failed to connect" in text and client.log_text() == text
        assert not h.exists(host_log)
        assert h.exists(state / "home")  # remote-viewer's HOME is the host's state folder

        watcher.stop()
        local = (tmp_path / "changes.txt").read_text().splitlines()
        assert local[0].startswith("O ") and any(ln.startswith("C ") for ln in local)

        # Xvfb ends as teardown ends it: from the ledger, over a fresh connection
        assert stop_remote(h, xvfb.fields, grace_s=2)
        assert _ours(lab.netns) == {}
        assert not Path(f"/tmp/.X{x.number}-lock").exists()
        # what the screen and client helpers wrote on the host is gone (their copies are here)
        leftovers = h.run(["find", str(state / "screen"), str(state / "clients"), "-type", "f"])
        assert leftovers.stdout == ""
        outside = h.run(["find", "/tmp", "-maxdepth", "1", "-newer", str(x.xauthority)]).stdout
        assert f".X{x.number}" not in outside
