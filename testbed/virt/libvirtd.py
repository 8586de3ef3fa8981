"""A private libvirtd per hypervisor host, so two hosts share one machine.

Each daemon runs in its host's network namespace and in a private mount
namespace where the host's own directories are bind-mounted over libvirt's
state, cache, log and config paths. Each has its own host_uuid (libvirt
refuses to migrate "to the same host" otherwise). It listens only on its UNIX
socket, reachable by root; there is no TCP listener. Facts: LAB-NOTES.md.
"""

from __future__ import annotations

import logging
import shlex
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePath

import libvirt

from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.base import Host, Process
from testbed.hosts.ledger import Ledger
from testbed.virt import capscache
from testbed.virt.conn import open_conn

log = logging.getLogger(__name__)

# libvirt paths each host gets a private copy of (inside its mount namespace)
PRIVATE_DIRS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
    "etc-qemu": "/etc/libvirt/qemu",
}


@dataclass
class LibvirtdConfig:
    display_address: str | None
    migration_address: str | None
    host_uuid: str
    spice_tls_dir: PurePath | None = None  # ca-cert.pem, server-cert.pem, server-key.pem


def qemu_conf(cfg: LibvirtdConfig) -> str:
    lines = [
        'user = "root"',
        'group = "root"',
        'security_driver = "none"',
        "dynamic_ownership = 0",
        'stdio_handler = "file"',
        "namespaces = [ ]",
        "spice_tls = 1" if cfg.spice_tls_dir else "spice_tls = 0",
        "remote_display_port_min = 5900",
        "remote_display_port_max = 5999",
    ]
    if cfg.spice_tls_dir:
        lines.append(f'spice_tls_x509_cert_dir = "{cfg.spice_tls_dir}"')
    if cfg.display_address:
        lines.append(f'spice_listen = "{cfg.display_address}"')
        lines.append(f'vnc_listen = "{cfg.display_address}"')
    if cfg.migration_address:
        lines.append(f'migration_address = "{cfg.migration_address}"')
        lines.append(f'migration_host = "{cfg.migration_address}"')
    return "\n".join(lines) + "\n"


def libvirtd_conf(cfg: LibvirtdConfig) -> str:
    return "\n".join(
        [
            f'host_uuid = "{cfg.host_uuid}"',
            "listen_tls = 0",
            "listen_tcp = 0",
            'unix_sock_group = "root"',
            'unix_sock_rw_perms = "0700"',
            'unix_sock_ro_perms = "0700"',
            'auth_unix_rw = "none"',
            'auth_unix_ro = "none"',
            "log_level = 3",
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
            "admin_max_clients = 1",
            "",
        ]
    )


class Libvirtd:
    """One host's daemon. Its socket is `<host state>/run/libvirt-sock` on the host.

    The host says how to reach it (`Host.libvirt_uri`): that socket on this machine,
    or `qemu+ssh://` through `nc -U` there, with an ssh wrapper in `wrapper_dir` that
    checks host keys as the host's own connection does.
    """

    def __init__(self, host: Host, wrapper_dir: Path | None = None) -> None:
        self.host = host
        self.dir = host.state_dir
        self.wrapper_dir = wrapper_dir

    @property
    def socket(self) -> PurePath:
        return self.dir / "run" / "libvirt-sock"

    @property
    def uri(self) -> str:
        return self.host.libvirt_uri(self.socket, self.wrapper_dir)

    @property
    def log_file(self) -> PurePath:
        return self.dir / "log" / "libvirtd.log"

    def qemu_log(self, domain: str) -> PurePath:
        return self.dir / "log" / "qemu" / f"{domain}.log"

    def start(
        self,
        cfg: LibvirtdConfig,
        ledger: Ledger,
        timeout_s: float = 30,
        emulator: str | None = None,
    ) -> int:
        """Write the configuration, start the daemon, wait for its socket, have it know
        `emulator`'s capabilities (from the host's shared probe, or probed now and
        shared); return its pid."""
        h = self.host
        if not h.exists(PurePath("/usr/sbin/libvirtd")):
            raise CapabilityMissing(
                f"libvirtd is not installed on {h.name}",
                hint="make setup (installs libvirt-daemon-system)",
            )
        h.makedirs(*(self.dir / sub for sub in PRIVATE_DIRS), self.dir / "log" / "qemu", mode=0o700)
        h.write_text(self.dir / "qemu.conf", qemu_conf(cfg), mode=0o600)
        h.write_text(self.dir / "libvirtd.conf", libvirtd_conf(cfg), mode=0o600)
        seeded = capscache.seed(h, self.dir / "cache")
        q = shlex.quote
        binds = [f"mkdir -p {' '.join(PRIVATE_DIRS.values())}"]
        binds += [f"mount --bind {q(str(self.dir / s))} {t}" for s, t in PRIVATE_DIRS.items()]
        binds.append(f"mount --bind {q(str(self.dir / 'qemu.conf'))} /etc/libvirt/qemu.conf")
        conf, pidfile = q(str(self.dir / "libvirtd.conf")), q(str(self.dir / "libvirtd.pid"))
        script = " && ".join([*binds, f"exec libvirtd -f {conf} -p {pidfile}"])
        argv = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script]
        proc = h.start(argv, log=self.dir / "libvirtd.stdout")
        proc.record(ledger, name=f"libvirtd@{h.name}")
        self._wait_ready(proc, timeout_s)
        if emulator:
            self.know_capabilities(emulator, seeded)
        return proc.pid

    def know_capabilities(self, emulator: str, seeded: int | None = None) -> None:
        """Load (or probe, when the shared copy is missing or stale) the emulator's
        capabilities now, at lab up, not at the first guest start or while a migration
        waits for the destination; then share a fresh probe with the host's next labs.

        For another emulator than the host's (a scenario's patched build) the guest start
        calls it on every hypervisor at once: the running daemon loads a cache file
        lazily, on its first use of that binary, so files shared since it started count."""
        t0 = time.monotonic()
        if seeded is None:
            seeded = capscache.seed(self.host, self.dir / "cache")
        try:
            conn = self.connect()
            try:
                conn.getDomainCapabilities(emulator, "x86_64", None, "qemu", 0)
            finally:
                conn.close()
        except (libvirt.libvirtError, LabError) as e:  # the guest start reports it properly
            log.debug("capabilities of %s on %s: %s", emulator, self.host.name, e)
            return
        shared = capscache.publish(self.host, self.dir / "cache")
        log.debug(
            "capabilities of %s on %s: %.2f s (%d shared file(s) seeded, %d published)",
            emulator,
            self.host.name,
            time.monotonic() - t0,
            seeded,
            shared,
        )

    def _wait_ready(self, proc: Process, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LabError(f"libvirtd on {self.host.name} exited at start: {self._tail()}")
            if self.host.exists(self.socket):
                try:
                    conn = open_conn(self.uri)
                    conn.close()
                    return
                except libvirt.libvirtError as e:
                    last = str(e)
            time.sleep(0.1)
        raise LabError(f"libvirtd on {self.host.name} did not answer in {timeout_s} s: {last}")

    def _tail(self) -> str:
        for f in (self.dir / "libvirtd.stdout", self.log_file):
            lines = self.host.read_text(f).strip().splitlines()
            if lines:
                return " | ".join(lines[-3:])
        return "no log"

    def connect(self) -> libvirt.virConnect:
        try:
            return open_conn(self.uri)
        except libvirt.libvirtError as e:
            raise LabError(f"cannot connect to libvirtd on {self.host.name}: {e}") from None


def new_host_uuid() -> str:
    return str(uuid.uuid4())
