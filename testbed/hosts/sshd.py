"""A real sshd inside a network namespace: the lab's SSH path on one machine.

So the SSH host code runs against the same daemon a real hypervisor has,
without a second machine. The daemon listens on one address:port inside the
namespace only, accepts one generated client key and nothing else (no
password, no keyboard-interactive, no forwarding), and keeps every file (keys,
config, pid, log, known_hosts) in its state folder. It is started through the
namespace's LocalHost and recorded in the ledger like any lab process.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.ledger import Ledger, process_start_time
from testbed.hosts.local import LocalHost
from testbed.hosts.procs import stop_recorded

log = logging.getLogger(__name__)

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")  # sshd refuses to start without it; Debian's init makes it
_SAFE_PATH = re.compile(r"^[A-Za-z0-9_./+-]+$")  # sshd_config has no quoting we rely on


@dataclass
class Sshd:
    """One sshd in `netns`, listening on `address:port`, files in `state_dir`."""

    netns: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int
    state_dir: Path
    user: str = "root"
    #: `HOST:PORT` this sshd may forward to, as a jump host (ProxyJump); None: nothing
    permit_open: str | None = None
    pid: int | None = None
    start_time: int | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def client_key(self) -> Path:
        """The private key a client uses to log in (no passphrase: a lab key only)."""
        return self.state_dir / "client_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.state_dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def config(self) -> Path:
        return self.state_dir / "sshd_config"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "sshd.log"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "sshd.pid"

    def known_hosts_name(self) -> str:
        """How known_hosts names this daemon: `ADDR` on port 22, else `[ADDR]:PORT`."""
        return str(self.address) if self.port == 22 else f"[{self.address}]:{self.port}"

    def known_hosts_line(self) -> str:
        kind, b64 = self.host_key.with_suffix(".pub").read_text().split()[:2]
        return f"{self.known_hosts_name()} {kind} {b64}"

    def listen_address(self) -> str:
        a = str(self.address)
        return f"[{a}]:{self.port}" if self.address.version == 6 else f"{a}:{self.port}"

    def config_text(self) -> str:
        """Key authentication only, for `user` only, nothing forwarded (but `permit_open`, for a
        jump host), everything in state_dir."""
        return "\n".join(
            [
                "# written by testbed: a lab sshd, key authentication only",
                f"ListenAddress {self.listen_address()}",
                f"HostKey {self.host_key}",
                f"PidFile {self.pid_file}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                f"AllowUsers {self.user}",
                "AuthenticationMethods publickey",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "HostbasedAuthentication no",
                "PermitEmptyPasswords no",
                "PermitRootLogin prohibit-password",
                "UsePAM no",
                "StrictModes no",  # the state dir sits under /tmp or /run, not a home
                "PermitUserEnvironment no",
                *(
                    ["AllowTcpForwarding local", f"PermitOpen {self.permit_open}"]
                    if self.permit_open
                    else ["AllowTcpForwarding no"]
                ),
                "AllowStreamLocalForwarding no",
                "AllowAgentForwarding no",
                "X11Forwarding no",
                "PermitTunnel no",
                "PrintMotd no",
                "PrintLastLog no",
                "UseDNS no",
                "MaxAuthTries 3",
                "LoginGraceTime 20",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )

    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and process_start_time(self.pid) == self.start_time

    def stop(self, grace_s: float = 3.0) -> None:
        """Stop the listener (idempotent). Open sessions end when their clients disconnect."""
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(grace_s)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(5)
        elif self.pid is not None:
            stop_recorded(self.pid, self.start_time, grace_s)
        log.debug("sshd in %s stopped", self.netns)

    def log_tail(self, lines: int = 3) -> str:
        out: list[str] = []
        for f in (self.state_dir / "sshd.stdout", self.log_file):
            if f.exists():
                out += f.read_text(errors="replace").strip().splitlines()
        return " | ".join(out[-lines:]) or "no log"


def _keygen(path: Path, comment: str) -> None:
    """An ed25519 key pair at `path` (and `.pub`), unless one is there already."""
    if path.exists() and path.with_suffix(".pub").exists():
        return
    path.unlink(missing_ok=True)
    path.with_suffix(".pub").unlink(missing_ok=True)
    res = subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    if res.returncode != 0:
        raise LabError(f"ssh-keygen for {path} failed: {res.stderr.strip()[-200:]}")


def _listening(pid: int, address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
    """Whether `address:port` is in LISTEN in `pid`'s network namespace (read, no traffic)."""
    table = "tcp" if address.version == 4 else "tcp6"
    try:
        rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return False
    for row in rows:
        f = row.split()
        if len(f) < 4 or f[3] != "0A":
            continue
        hex_addr, hex_port = f[1].split(":")
        if int(hex_port, 16) != port:
            continue
        raw = bytes.fromhex(hex_addr)
        # /proc shows each 32-bit word in host (little-endian) order
        ip = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
        if ipaddress.ip_address(ip) == address:
            return True
    return False


def start_sshd(
    netns: str,
    address: str | ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
    state_dir: Path,
    ledger: Ledger,
    *,
    user: str = "root",
    timeout_s: float = 10.0,
    permit_open: str | None = None,
) -> Sshd:
    """Start sshd in `netns` on `address:port` and wait until it listens.

    Generates the host key and a client key pair (kept across restarts), writes
    authorized_keys, sshd_config and a known_hosts line, records the process.
    """
    if not SSHD.exists():
        raise CapabilityMissing(f"{SSHD} is not installed", hint="apt-get install openssh-server")
    state_dir = Path(state_dir).resolve()
    if not _SAFE_PATH.match(str(state_dir)):
        raise LabError(f"sshd state folder {state_dir}: use letters, digits and ./_+- only")
    sshd = Sshd(netns, ipaddress.ip_address(str(address)), int(port), state_dir, user, permit_open)
    state_dir.mkdir(parents=True, exist_ok=True)
    state_dir.chmod(0o700)
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    _keygen(sshd.host_key, f"testbed-sshd@{netns}")
    _keygen(sshd.client_key, f"testbed-client@{netns}")
    sshd.authorized_keys.write_text(sshd.client_key.with_suffix(".pub").read_text())
    sshd.config.write_text(sshd.config_text())
    sshd.known_hosts.write_text(sshd.known_hosts_line() + "\n")

    host = LocalHost(f"sshd@{netns}", netns, state_dir)
    argv = [str(SSHD), "-D", "-f", str(sshd.config), "-E", str(sshd.log_file)]
    with open(state_dir / "sshd.stdout", "ab") as out:
        proc = host.popen(argv, stdout=out, stderr=subprocess.STDOUT)
    sshd._proc, sshd.pid = proc, proc.pid
    sshd.start_time = process_start_time(proc.pid)
    ledger.record("process", pid=proc.pid, start_time=sshd.start_time, name=host.name, netns=netns)

    deadline = time.monotonic() + timeout_s
    while not _listening(proc.pid, sshd.address, sshd.port):
        if proc.poll() is not None:
            raise LabError(
                f"sshd in {netns} exited at start ({proc.returncode}): {sshd.log_tail()}"
            )
        if time.monotonic() > deadline:
            sshd.stop()
            raise LabError(
                f"sshd in {netns} did not listen on {sshd.listen_address()} in {timeout_s:g} s: "
                + sshd.log_tail()
            )
        time.sleep(0.02)
    log.info("sshd in %s listening on %s (pid %s)", netns, sshd.listen_address(), proc.pid)
    return sshd
