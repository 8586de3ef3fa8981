"""Labs on SSH hosts (kind: ssh) against a real sshd: a bad connection leaves nothing.

The scratch sshd (tests/sshlab.py) plays a real hypervisor reached over SSH:
`testbed up` starts its libvirtd there and reaches it by qemu+ssh; a wrong key,
an unreachable address and a host-key mismatch each stop `up` with a clear
error before anything exists, here or there.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from leaks import Snapshot
from sshlab import PORT, SshLab, ssh_lab

from testbed.errors import LabError
from testbed.hosts.display import start_xvfb
from testbed.hosts.ledger import Ledger, process_start_time, same_process
from testbed.hosts.local import LocalHost
from testbed.hosts.procs import stop_recorded
from testbed.hosts.ssh import REMOTE_STATE
from testbed.lab.lab import Lab
from testbed.lab.state import list_labs
from testbed.lab.teardown import teardown
from testbed.model.topology import load_topology
from testbed.spice.screen import screenshot

pytestmark = pytest.mark.lab  # labs on a scratch sshd


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    with ssh_lab(tmp_path_factory.mktemp("sshlab"), tag=1) as lab:
        yield lab


def _topology(tmp: Path, lab: SshLab, **host: object) -> Path:
    fields = {
        "address": lab.address,
        "port": PORT,
        "key_file": str(lab.sshd.client_key),
        "known_hosts": str(lab.sshd.known_hosts),
        "python": sys.executable,
        "accel": "tcg",
        **host,
    }
    lines = "\n".join(f"    {k}: {v}" for k, v in fields.items())
    path = tmp / "topology.yaml"
    path.write_text(
        f"name: one-remote\nhosts:\n  hv1:\n    kind: ssh\n    roles: [hypervisor]\n{lines}\n"
    )
    return path


def _remote_labs() -> set[str]:
    return {p.name for p in Path(REMOTE_STATE).glob("lab-*")}


def test_up_on_an_ssh_host_runs_libvirtd_there_and_down_removes_it(
    lab: SshLab, tmp_path: Path, state_root: Path
) -> None:
    before, remote_before = Snapshot.take(state_root), _remote_labs()
    topo = load_topology(_topology(tmp_path, lab))
    up = Lab.up(topo)
    try:
        uri = up.libvirtd("hv1").uri
        assert uri.startswith(f"qemu+ssh://root@{lab.address}:{PORT}/system?")
        conn = up.conn("hv1")
        assert conn.getType() == "QEMU" and conn.listAllDomains() == []
        # the daemon runs in the SSH host's namespace, found there by its recorded pid
        (entry,) = up.ledger.of_kind("remote-process")
        ns = subprocess.run(
            ["ip", "netns", "identify", str(entry["pid"])], capture_output=True, text=True
        )
        assert ns.stdout.strip() == lab.netns
        assert _remote_labs() - remote_before == {f"lab-{up.id}-hv1"}
        # a second process finds the lab and reaches the host from lab.json alone
        again = Lab.open(up.id)
        assert again.conn("hv1").getHostname()
        again.close()
    finally:
        up.down()
    assert _remote_labs() == remote_before
    assert Snapshot.take(state_root).leaks_since(before) == {}
    assert teardown(up.record) == []


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("wrong key", "authentication failed"),
        ("unreachable", "cannot reach"),
        ("host key mismatch", "does not match known_hosts"),
    ],
)
def test_bad_connection_is_a_clear_error_and_leaves_nothing(
    lab: SshLab, tmp_path: Path, state_root: Path, case: str, expect: str
) -> None:
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    fields: dict[str, object] = {}
    if case == "wrong key":
        fields["key_file"] = str(other)
    elif case == "unreachable":
        fields["address"] = lab.absent
    else:
        kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
        kh = tmp_path / "known_hosts"
        kh.write_text(f"[{lab.address}]:{PORT} {kind} {b64}\n")
        fields["known_hosts"] = str(kh)
    topo = load_topology(_topology(tmp_path, lab, **fields))
    before, remote_before = Snapshot.take(state_root), _remote_labs()
    labs_before = {r.id for r in list_labs()}
    with pytest.raises(LabError) as err:
        Lab.up(topo)
    msg = str(err.value)
    assert "hv1" in msg and expect in msg, msg
    assert "PRIVATE KEY" not in msg and other.read_text() not in msg  # no secret shown
    assert {r.id for r in list_labs()} == labs_before
    assert _remote_labs() == remote_before
    assert Snapshot.take(state_root).leaks_since(before) == {}


def test_cli_up_names_the_host_and_exits_nonzero(lab: SshLab, tmp_path: Path) -> None:
    path = _topology(tmp_path, lab, address=lab.absent)
    res = subprocess.run(
        [sys.executable, "-m", "testbed.cli.main", "up", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0
    assert "hv1: cannot reach" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


def test_a_client_with_its_own_display_gets_no_xvfb_and_keeps_its_display(
    lab: SshLab, tmp_path: Path, state_root: Path
) -> None:
    """`x_display`: the client host's own X server (here an Xvfb the 'machine' already
    runs) is used as it is; testbed starts none and stops none."""
    own = Ledger(tmp_path / "own.jsonl")
    there = LocalHost("own-x", lab.netns, tmp_path / "own-x")
    x = start_xvfb(there, tmp_path / "own-x", own)
    try:
        path = tmp_path / "client.yaml"
        path.write_text(
            "name: own-display\nhosts:\n"
            + "".join(
                f"  {n}:\n    kind: ssh\n    roles: [{role}]\n    address: {lab.address}\n"
                f"    port: {PORT}\n    key_file: {lab.sshd.client_key}\n"
                f"    known_hosts: {lab.sshd.known_hosts}\n    python: {sys.executable}\n"
                f"    accel: tcg\n{extra}"
                for n, role, extra in [
                    ("hv1", "hypervisor", ""),
                    (
                        "cl1",
                        "client",
                        f"    x_display: ':{x.number}'\n    x_authority: {x.xauthority}\n",
                    ),
                ]
            )
        )
        up = Lab.up(load_topology(path))
        try:
            d = up.display("cl1")
            assert (d.number, d.pid) == (x.number, 0)
            assert not up.ledger.of_kind("xvfb")
            assert [e["name"] for e in up.ledger.of_kind("remote-process")] == ["libvirtd@hv1"]
            png = screenshot(up.hosts["cl1"], d, tmp_path / "own.png")
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            up.down()
        assert same_process(x.pid, process_start_time(x.pid))  # its own X server lives on
    finally:
        for e in own.entries():
            stop_recorded(int(e["pid"]), e.get("start_time"))


def test_killed_up_on_an_ssh_host_is_cleaned_by_down_all(
    lab: SshLab, tmp_path: Path, state_root: Path
) -> None:
    """SIGKILL `testbed up` once it has started libvirtd on the SSH host; `down --all`
    reaches the host from lab.json and leaves nothing there or here."""
    path = _topology(tmp_path, lab)
    before, remote_before = Snapshot.take(state_root), _remote_labs()
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed", "up", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        labs = [r for r in list_labs() if r.info.get("owner_pid") == proc.pid]
        if labs and labs[0].ledger.of_kind("remote-dir"):
            time.sleep(0.3)  # somewhere in sending helpers or starting libvirtd
            proc.send_signal(signal.SIGKILL)
            killed = labs[0].status != "up"
            break
        time.sleep(0.01)
    proc.wait(10)
    assert killed, "the lab came up before it could be killed"
    res = subprocess.run(
        [sys.executable, "-m", "testbed", "down", "--all"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert _remote_labs() == remote_before
    assert Snapshot.take(state_root).leaks_since(before) == {}
