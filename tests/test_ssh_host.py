"""SSH hosts against a real sshd in a scratch namespace; the ssh fields of a topology.

The root namespace plays the operator (as in the ssh-local design): a veth joins
it to the namespace, where sshd listens with key authentication only. No mocks:
every error below is what paramiko and sshd really do.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from sshlab import PORT, SshLab, ssh_lab

from testbed.errors import InputError, LabError
from testbed.hosts.procs import pids_in_netns
from testbed.hosts.ssh import SshHost, stop_remote
from testbed.model.topology import load_topology

pytestmark = pytest.mark.lab  # a scratch sshd in a namespace

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshLab]:
    with ssh_lab(tmp_path_factory.mktemp("ssh")) as lab:
        yield lab


# -- commands ---------------------------------------------------------------------------
def test_run_returns_stdout_stderr_and_exit_code(lab: SshLab) -> None:
    with lab.host() as h:
        res = h.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
        assert (res.returncode, res.stdout, res.stderr) == (3, "out\n", "err\n")
        assert h.run(["echo", "it's a  'quoted' $HOME"]).stdout == "it's a  'quoted' $HOME\n"
        # runs in the namespace sshd lives in: its eth0 carries the address we dialled
        assert lab.address in h.run(["ip", "-4", "-o", "addr", "show", "eth0"]).stdout


def test_failing_command_names_host_and_command(lab: SshLab) -> None:
    with lab.host() as h:
        with pytest.raises(LabError) as ei:
            h.run(["ls", "/no/such/dir"])
        msg = str(ei.value)
        assert msg.startswith("hv1: ls /no/such/dir failed (2)"), msg
        assert "No such file" in msg
        with pytest.raises(LabError, match=r"^hv1: cannot run no-such-tool"):
            h.run(["no-such-tool", "--flag"])
        with pytest.raises(LabError, match=r"hv1: sleep 5 did not finish in 0.5 s"):
            h.run(["sleep", "5"], timeout=0.5)


def test_env_is_the_whole_environment_and_stdin_is_fed(lab: SshLab) -> None:
    with lab.host() as h:
        res = h.run(["env"], env={"GREETING": "a b 'c'", "PATH": "/usr/bin:/bin"})
        assert sorted(res.stdout.splitlines()) == ["GREETING=a b 'c'", "PATH=/usr/bin:/bin"]
        big = "line\n" * 200_000  # 1 MB: more than the SSH window, fed while output is read
        assert h.run(["wc", "-l"], input=big).stdout.strip() == "200000"
        assert h.run(["cat"], input="héllo\n").stdout == "héllo\n"


def test_openssh_argv_runs_with_the_same_key_and_host_key_check(lab: SshLab) -> None:
    h = lab.host()
    res = subprocess.run(h.argv(["echo", "a  b"]), capture_output=True, text=True, timeout=30)
    assert (res.returncode, res.stdout) == (0, "a  b\n"), res.stderr
    assert "StrictHostKeyChecking=yes" in h.argv(["true"])


# -- long-lived processes ---------------------------------------------------------------
def test_popen_outlives_the_session_and_is_stopped_by_pid(lab: SshLab) -> None:
    h = lab.host()
    proc = h.popen(["sleep", "300"])
    proc.record(lab.ledger, name="sleeper")
    stat = h.run(["cat", f"/proc/{proc.pid}/stat"]).stdout
    fields = stat.rsplit(")", 1)[1].split()
    assert "(sleep)" in stat and int(fields[19]) == proc.start_time
    assert int(fields[3]) == int(fields[1]), "detached: its parent leads its own session"
    h.close()  # the SSH session ends; the process does not
    assert pids_in_netns(lab.netns).count(proc.pid) == 1
    assert proc.poll() is None  # reconnects on use

    # teardown's view: only the ledger entry and a fresh connection
    (entry,) = [e for e in lab.ledger.of_kind("remote-process") if e["pid"] == proc.pid]
    assert entry.fields == {
        "host": "hv1",
        "pid": proc.pid,
        "start_time": proc.start_time,
        "name": "sleeper",
        "role": "process",
    }
    with lab.host() as later:
        assert stop_remote(later, entry.fields, grace_s=2)
        assert later.run(["test", "-e", f"/proc/{proc.pid}"], check=False).returncode == 1
        # a recorded pid whose start time differs is somebody else's: left alone
        other = later.popen(["sleep", "300"])
        assert later.stop_process(other.pid, other.start_time + 1)
        assert other.poll() is None
        other.kill()
        assert other.wait(5) == -9
    assert proc.wait(5) == -15


def test_popen_output_to_a_remote_log_and_exit_code(lab: SshLab) -> None:
    log = lab.tmp / "remote-logs" / "job.log"
    with lab.host() as h:
        h.run(["mkdir", "-p", str(log.parent)])
        proc = h.popen(
            ["sh", "-c", 'echo "out $X"; echo err >&2; exit 3'],
            stdout=PurePosixPath(log),
            env={"X": "1"},
        )
        assert proc.wait(10) == 3
        assert h.run(["cat", str(log)]).stdout.splitlines() == ["out 1", "err"]
        stopped = h.popen(["sleep", "300"])
        stopped.terminate()
        assert stopped.wait(5) == -15
        with pytest.raises(LabError, match="must be DEVNULL or a path on hv1"):
            with open(lab.tmp / "local.log", "wb") as f:
                h.popen(["true"], stdout=f)
        with pytest.raises(LabError, match="local file descriptors"):
            h.popen(["true"], pass_fds=[0])
        # nothing left behind by finished processes
        assert h.run(["ls", "-A", str(lab.tmp / "remote" / "proc")]).stdout == ""


# -- files ------------------------------------------------------------------------------
def test_put_and_get_round_trip(lab: SshLab) -> None:
    src = lab.tmp / "blob.bin"
    data = os.urandom(300_000)
    src.write_bytes(data)
    src.chmod(0o640)
    remote = lab.tmp / "remote-files" / "deep" / "blob.bin"
    back = lab.tmp / "back" / "blob.bin"
    with lab.host() as h:
        h.put(src, remote)
        assert h.run(["stat", "-c", "%a", str(remote)]).stdout.strip() == "640"
        h.get(remote, back)
        with pytest.raises(LabError, match=r"hv1: cannot copy /no/such/file to .*no such file"):
            h.get(Path("/no/such/file"), lab.tmp / "x")
    assert back.read_bytes() == data


# -- connection errors ------------------------------------------------------------------
def test_wrong_key_is_refused_clearly_without_showing_the_key(
    lab: SshLab, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = lab.tmp / "wrong_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    secret = "".join(wrong.read_text().splitlines()[1:-1])
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LabError) as ei:
        lab.host(key_file=wrong).run(["true"])
    msg = str(ei.value)
    assert f"authentication failed for root@{lab.address}:{PORT} with key {wrong}" in msg
    assert "authorized_keys" in msg  # what to do
    assert secret not in msg and secret not in caplog.text


def test_missing_or_encrypted_key_is_named_before_connecting(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    h = SshHost("hv1", "192.0.2.1", key_file=tmp_path / "nokey", known_hosts=kh)
    with pytest.raises(LabError, match=f"hv1: key file {tmp_path}/nokey does not exist"):
        h.run(["true"])
    locked = tmp_path / "locked_ed25519"
    phrase = "correct horse battery staple"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", phrase, "-f", str(locked)], check=True
    )
    with pytest.raises(LabError) as ei:
        SshHost("hv1", "192.0.2.1", key_file=locked, known_hosts=kh).run(["true"])
    assert f"key file {locked} is protected by a passphrase" in str(ei.value)
    assert phrase not in str(ei.value)


def test_unreachable_port_and_address(lab: SshLab) -> None:
    with pytest.raises(LabError) as ei:
        lab.host(port=PORT + 1).run(["true"])
    assert f"cannot reach {lab.address}:{PORT + 1}: connection refused" in str(ei.value)
    t0 = time.monotonic()
    with pytest.raises(LabError) as ei:
        lab.host(address=lab.absent, connect_timeout=1.0).run(["true"])
    assert f"cannot reach {lab.absent}:{PORT}: connection timed out after 1 s" in str(ei.value)
    assert time.monotonic() - t0 < 5


def test_host_key_mismatch_is_refused_with_both_fingerprints(lab: SshLab) -> None:
    other = lab.tmp / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = lab.tmp / "known_hosts_other"
    kind, b64 = other.with_suffix(".pub").read_text().split()[:2]
    kh.write_text(f"[{lab.address}]:{PORT} {kind} {b64}\n")

    def fp(pub: Path) -> str:
        return subprocess.run(
            ["ssh-keygen", "-lf", str(pub)], capture_output=True, text=True, check=True
        ).stdout.split()[1]

    with pytest.raises(LabError) as ei:
        lab.host(known_hosts=kh).run(["true"])
    msg = str(ei.value)
    real = fp(lab.sshd.host_key.with_suffix(".pub"))
    assert f"host key of {lab.address} does not match known_hosts {kh}" in msg
    assert f"expected ssh-ed25519 {fp(other.with_suffix('.pub'))}, got ssh-ed25519 {real}" in msg


def test_unknown_host_is_refused_and_never_added(lab: SshLab) -> None:
    kh = lab.tmp / "known_hosts_empty"
    kh.write_text("# nobody yet\n")
    with pytest.raises(LabError) as ei:
        lab.host(known_hosts=kh).run(["true"])
    msg = str(ei.value)
    assert f"host key of {lab.address}:{PORT} (ssh-ed25519 SHA256:" in msg
    assert f"is not in known_hosts {kh}; refusing to connect" in msg
    assert "ssh-keyscan" in msg and "ssh-keygen -lf" in msg  # how to add it, safely
    assert kh.read_text() == "# nobody yet\n"
    with pytest.raises(LabError, match="known_hosts .* does not exist"):
        lab.host(known_hosts=lab.tmp / "missing").run(["true"])


# -- pure parts: command lines and the topology ------------------------------------------
def test_command_line_quotes_and_uses_sudo_only_for_other_users() -> None:
    qe = SshHost("c", "192.0.2.21", user="qe", sudo=True)
    assert qe.command_line(["ls", "a b"], env={"X": "1"}) == "sudo -n -- env -i X=1 ls 'a b'"
    root = SshHost("c", "192.0.2.21", sudo=True)
    assert root.command_line(["ls", "$HOME"]) == "ls '$HOME'"


def test_lab_example_topology_loads() -> None:
    t = load_topology(REPO / "topologies" / "lab-example.yaml")
    assert {n: h.kind for n, h in t.hosts.items()} == {"hv1": "ssh", "hv2": "ssh", "client": "ssh"}
    assert t.hypervisors() == ["hv1", "hv2"] and t.clients() == ["client"]
    client = t.hosts["client"]
    assert (client.user, client.port, client.sudo) == ("qe", 2222, True)
    assert client.interfaces == {"display": "enp3s0"}
    assert t.hosts["hv1"].key_file == Path("~/.ssh/testbed_lab_ed25519").expanduser()
    host = SshHost.from_spec("client", client)
    assert host.target == "qe@192.0.2.21:2222" and host.sudo


SSH_TOPO = """\
name: t
hosts:
  src:
    kind: ssh
    roles: [hypervisor]
    address: 192.0.2.1
    key_file: keys/lab
    interfaces: {display: eth1}
  client: {roles: [client]}
networks:
  display:
    subnet: 198.18.1.0/24
    members: [client, src]
"""


def test_ssh_host_paths_are_read_from_the_topology_folder(tmp_path: Path) -> None:
    p = tmp_path / "topo.yaml"
    p.write_text(SSH_TOPO)
    t = load_topology(p)
    assert t.hosts["src"].key_file == tmp_path / "keys" / "lab"
    assert t.hosts["src"].port == 22 and t.hosts["src"].user == "root"


@pytest.mark.parametrize(
    ("old", "new", "line", "field", "words"),
    [
        (
            "  client: {roles: [client]}",
            "  client: {roles: [client], user: qe}",
            9,
            "hosts.client.user",
            "only for hosts of kind ssh",
        ),
        ("    address: 192.0.2.1\n", "", 3, "hosts.src", "needs address"),
        (
            "interfaces: {display: eth1}",
            "interfaces: {display: eth1, storage: eth2}",
            8,
            "hosts.src.interfaces.storage",
            "no network 'storage'",
        ),
        ("interfaces: {display: eth1}", "interfaces: {}", 3, "hosts.src", "which interface"),
        (
            "interfaces: {display: eth1}",
            "interfaces: {display: a-name-far-too-long}",
            8,
            "hosts.src.interfaces",
            "not an interface name",
        ),
        ("address: 192.0.2.1", "address: root@192.0.2.1", 6, "hosts.src.address", "pattern"),
        ("kind: ssh\n", "kind: ssh\n    port: 0\n", 5, "hosts.src.port", "greater than"),
    ],
)
def test_bad_ssh_hosts_name_line_and_field(
    tmp_path: Path, old: str, new: str, line: int, field: str, words: str
) -> None:
    assert old in SSH_TOPO
    p = tmp_path / "topo.yaml"
    p.write_text(textwrap.dedent(SSH_TOPO.replace(old, new)))
    with pytest.raises(InputError) as ei:
        load_topology(p)
    e = ei.value
    assert (e.line, e.field) == (line, field), str(e)
    assert words in str(e)


# -- inventory --------------------------------------------------------------------------
INVENTORY = """\
all:
  vars:
    user: root
    key_file: keys/lab_ed25519
    known_hosts: keys/known_hosts
    ansible_python_interpreter: /usr/bin/python3
  children:
    hypervisors:
      vars:
        interfaces: {migration: eno2}
      hosts:
        hv1.example:
          ansible_host: 192.0.2.11
          interfaces: {display: eno1}
        hv2.example:
          ansible_host: 192.0.2.12
          ansible_port: 2200
    clients:
      hosts:
        desk:
          ansible_host: 192.0.2.21
          ansible_user: qe
          ansible_become: true
"""

INV_TOPO = """\
name: t
inventory: inv/hosts.yaml
hosts:
  src: {from_inventory: hv1.example, roles: [hypervisor]}
  dst: {from_inventory: hv2.example, roles: [hypervisor], port: 22, interfaces: {display: em1}}
  client: {from_inventory: desk, roles: [client], interfaces: {display: eth0}}
networks:
  display:
    subnet: 198.18.1.0/24
    members: [client, src, dst]
  migration:
    subnet: 198.18.2.0/24
    members: [src, dst]
"""


def _inv_files(tmp_path: Path, inventory: str = INVENTORY, topo: str = INV_TOPO) -> Path:
    (tmp_path / "inv").mkdir(exist_ok=True)
    (tmp_path / "inv" / "hosts.yaml").write_text(inventory)
    (tmp_path / "topo.yaml").write_text(topo)
    return tmp_path / "topo.yaml"


def test_hosts_from_an_inventory_merge_as_in_ansible(tmp_path: Path) -> None:
    t = load_topology(_inv_files(tmp_path))
    src, dst, client = (t.hosts[n] for n in ("src", "dst", "client"))
    assert (src.kind, src.address, src.port, src.user) == ("ssh", "192.0.2.11", 22, "root")
    assert src.interfaces == {"migration": "eno2", "display": "eno1"}  # group + host
    assert src.key_file == tmp_path / "inv" / "keys" / "lab_ed25519"  # from the inventory's folder
    assert dst.port == 22, "the topology's own field wins over the inventory"
    assert dst.interfaces == {"migration": "eno2", "display": "em1"}
    assert (client.user, client.sudo, client.address) == ("qe", True, "192.0.2.21")


@pytest.mark.parametrize(
    ("inventory", "topo", "where", "words"),
    [
        (
            INVENTORY.replace("ansible_port: 2200", "ansible_port: lots"),
            INV_TOPO,
            ("hosts.yaml:17", "port"),
            "valid integer",
        ),
        (
            INVENTORY.replace("user: root", "colour: red"),
            INV_TOPO,
            ("hosts.yaml:3", "all.vars.colour"),
            "unknown variable 'colour'",
        ),
        (
            INVENTORY.replace("  children:", "  childs:"),
            INV_TOPO,
            ("hosts.yaml:7", "all.childs"),
            "a group has only hosts, vars, children",
        ),
        (
            INVENTORY,
            INV_TOPO.replace("from_inventory: desk", "from_inventory: laptop"),
            ("topo.yaml:6", "hosts.client.from_inventory"),
            "no host 'laptop' in inventory",
        ),
        (
            INVENTORY,
            INV_TOPO.replace("inventory: inv/hosts.yaml\n", ""),
            ("topo.yaml:3", "hosts.src.from_inventory"),
            "needs an inventory: PATH",
        ),
        (
            INVENTORY,
            INV_TOPO.replace("inv/hosts.yaml", "inv/nothing.yaml"),
            ("topo.yaml:2", "inventory"),
            "no such inventory file",
        ),
    ],
)
def test_inventory_errors_point_at_their_file_and_line(
    tmp_path: Path, inventory: str, topo: str, where: tuple[str, str], words: str
) -> None:
    with pytest.raises(InputError) as ei:
        load_topology(_inv_files(tmp_path, inventory, topo))
    msg = str(ei.value)
    assert where[0] in msg and where[1] in (ei.value.field or ""), msg
    assert words in msg


# -- doctor over SSH ----------------------------------------------------------------------
def test_doctor_checks_every_host_of_a_topology_over_ssh(lab: SshLab) -> None:
    ssh = (
        f"kind: ssh, address: {lab.address}, key_file: {lab.sshd.client_key}, "
        f"known_hosts: {lab.sshd.known_hosts}, interfaces: {{display: eth0}}"
    )
    topo = lab.tmp / "doctor.yaml"
    topo.write_text(
        "name: doctor\n"
        "hosts:\n"
        f"  hv1: {{roles: [hypervisor], port: {PORT}, {ssh}}}\n"
        f"  cl: {{roles: [client], port: {PORT}, {ssh}}}\n"
        f"  hv2: {{roles: [hypervisor], port: {PORT + 1}, {ssh}}}\n"
        "networks:\n"
        "  display: {subnet: 198.18.1.0/24, members: [hv1, cl, hv2]}\n"
    )
    res = subprocess.run(
        [sys.executable, "-m", "testbed", "doctor", "--topology", str(topo), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1, res.stderr  # hv2 cannot be reached
    checks = json.loads(res.stdout)["checks"]
    by = {(c["host"], c["name"]): c for c in checks}
    assert by[("hv1", "QEMU")]["ok"] and by[("hv1", "libvirtd")]["ok"]
    assert by[("cl", "remote-viewer")]["ok"] and ("cl", "QEMU") not in by  # by role
    assert by[("hv1", "python3")]["ok"] and by[("hv1", "netcat (nc -U)")]["ok"]
    refused = by[("hv2", "connect")]
    assert not refused["ok"] and "connection refused" in refused["detail"]
    secret = lab.sshd.client_key.read_text().splitlines()[1]
    assert secret not in res.stdout and secret not in res.stderr
