"""Opening the fabric Connection of an SshHost: keys, host keys, jump hosts, clear errors.

Host keys come from the topology's known_hosts only and are never added (fabric's
default adds them); only the configured key is offered. Each failure names the
host, what failed and what to do; secrets never appear in messages.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import fabric
import paramiko

from testbed.errors import LabError

if TYPE_CHECKING:
    from testbed.hosts.ssh import SshHost

log = logging.getLogger(__name__)
USER_SSH_CONFIG = Path("~/.ssh/config")


def fingerprint(key: paramiko.PKey) -> str:
    """How OpenSSH shows a key: `ssh-ed25519 SHA256:...` (what a user compares by eye)."""
    return f"{key.get_name()} {key.fingerprint}"


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse a host whose key is not in known_hosts, keeping the key for the message."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey):
        raise _UnknownHostKey(hostname, key)


class _UnknownHostKey(Exception):
    def __init__(self, hostname: str, key: paramiko.PKey) -> None:
        super().__init__(hostname)
        self.hostname, self.key = hostname, key


def ssh_config_for(alias: str, path: Path | None = None) -> paramiko.SSHConfigDict:
    """What the user's ssh config (default ~/.ssh/config) says about `alias`."""
    p = (path or USER_SSH_CONFIG).expanduser()
    cfg = paramiko.SSHConfig.from_path(str(p)) if p.is_file() else paramiko.SSHConfig()
    return cfg.lookup(alias)


def load_key(self: SshHost) -> paramiko.PKey:
    key_path = self.key_path()
    try:
        return paramiko.PKey.from_path(key_path)
    except FileNotFoundError:
        raise LabError(f"{self.name}: key file {key_path} does not exist") from None
    except (paramiko.PasswordRequiredException, TypeError):  # cryptography: TypeError
        raise LabError(
            f"{self.name}: key file {key_path} is protected by a passphrase",
            hint="give the lab a key of its own without a passphrase, readable only by you",
        ) from None
    except (paramiko.SSHException, OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else type(e).__name__
        raise LabError(f"{self.name}: cannot read key file {key_path}: {reason}") from None


def strict_client(self: SshHost) -> paramiko.SSHClient:
    """A paramiko client that knows only the topology's known_hosts, and refuses others."""
    if not self.known_hosts.exists():
        raise LabError(
            f"{self.name}: known_hosts {self.known_hosts} does not exist, so the host key of "
            f"{self.address} cannot be checked",
            hint=add_key_hint(self),
        )
    client = paramiko.SSHClient()
    try:
        client.load_system_host_keys(str(self.known_hosts))  # read, never written back
    except (OSError, paramiko.SSHException) as e:
        raise LabError(f"{self.name}: cannot read known_hosts {self.known_hosts}: {e}") from None
    client.set_missing_host_key_policy(_RefuseUnknown())
    return client


def connect(self: SshHost) -> fabric.Connection:
    """Open a fabric Connection to `self` (through its jump host), strict on host keys;
    every failure is a LabError that names the host and what to do."""
    pkey = load_key(self)
    client = strict_client(self)
    jump: fabric.Connection | bool = False
    if self.gateway is not None:
        jump = self.gateway.connection()  # its own errors, named by its own name
    conn = fabric.Connection(
        self.address,
        user=self.user,
        port=self.port,
        # resolved already: fabric must not read ssh config again (nor its ProxyJump)
        config=fabric.Config(ssh_config=paramiko.SSHConfig()),
        gateway=jump,
        connect_timeout=max(1, round(self.connect_timeout)),
        connect_kwargs={
            "pkey": pkey,
            "allow_agent": False,
            "look_for_keys": False,
            "banner_timeout": self.connect_timeout,
            "auth_timeout": self.connect_timeout,
        },
    )
    conn.client = client  # fabric's own adds unknown keys: ours refuses them
    where = f"{self.address}:{self.port}"
    try:
        conn.open()
    except paramiko.BadHostKeyException as e:
        conn.close()
        raise LabError(
            f"{self.name}: host key of {self.address} does not match known_hosts "
            f"{self.known_hosts}: expected {fingerprint(e.expected_key)}, "
            f"got {fingerprint(e.key)}",
            hint="if the host was reinstalled, check the new key out of band and replace "
            f"its line ({known_name(self)}) in {self.known_hosts}; otherwise do not connect",
        ) from None
    except _UnknownHostKey as e:
        conn.close()
        raise LabError(
            f"{self.name}: host key of {where} ({fingerprint(e.key)}) is not in known_hosts "
            f"{self.known_hosts}; refusing to connect",
            hint=add_key_hint(self),
        ) from None
    except paramiko.AuthenticationException:
        conn.close()
        raise LabError(
            f"{self.name}: authentication failed for {self.target} with key {self.key_path()}",
            hint=f"add {self.key_path()}.pub to ~{self.user}/.ssh/authorized_keys on "
            f"{self.address}",
        ) from None
    except paramiko.ssh_exception.NoValidConnectionsError as e:
        conn.close()
        reasons = {
            ((err.strerror if isinstance(err, OSError) else None) or str(err)).lower()
            for err in e.errors.values()
        }
        raise LabError(
            f"{self.name}: cannot reach {where}: {'; '.join(sorted(reasons))}",
            hint=f"is sshd running on {self.address} and listening on port {self.port}?",
        ) from None
    except TimeoutError:
        conn.close()
        raise LabError(
            f"{self.name}: cannot reach {where}: connection timed out "
            f"after {self.connect_timeout:g} s",
            hint="check the address, the route to it and any firewall in between",
        ) from None
    except paramiko.ChannelException as e:  # the jump host could not open the tunnel
        conn.close()
        via = self.gateway.name if self.gateway is not None else "the jump host"
        raise LabError(
            f"{self.name}: {via} cannot reach {where}: {e.text or e.code}",
            hint=f"is sshd running on {self.address} and reachable from {via}?",
        ) from None
    except OSError as e:
        conn.close()
        reason = (e.strerror or str(e)).lower()
        raise LabError(f"{self.name}: cannot reach {where}: {reason}") from None
    except paramiko.SSHException as e:
        conn.close()
        raise LabError(f"{self.name}: SSH to {where} failed: {e}") from None
    t = conn.transport
    if t is not None and t.sock is not None and hasattr(t.sock, "setsockopt"):
        # small request/answer exchanges: without this each one waits for a delayed ACK
        t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    log.debug("%s: connected to %s", self.name, self.target)
    return conn


def known_name(self: SshHost) -> str:
    return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


def add_key_hint(self: SshHost) -> str:
    return (
        "read the host's key fingerprint on the host itself (ssh-keygen -lf "
        "/etc/ssh/ssh_host_ed25519_key.pub), then add its public key as "
        f"'{known_name(self)} ssh-ed25519 AAAA...' to {self.known_hosts} "
        f"(ssh-keyscan -p {self.port} {self.address} prints it; compare the fingerprint)"
    )
