"""An SSH host: a real machine of the lab, reached over one paramiko connection.

Same contract as a local host (run, popen, put, get), so nothing above this
layer knows which kind it has. Host keys are checked against a known_hosts
file and never added; only the configured key is offered (no agent, no
password). Long-lived processes are started detached (setsid) so they outlive
the SSH session, and are found again by pid and start time, like local ones.
Secrets (key contents, passphrases) never appear in messages or logs.
"""

from __future__ import annotations

import logging
import secrets
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import IO, Any

import paramiko

from testbed.errors import LabError
from testbed.hosts.base import Host, Process
from testbed.hosts.ledger import Ledger
from testbed.model.topology import HostSpec

log = logging.getLogger(__name__)

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
REMOTE_STATE = PurePosixPath("/var/tmp/testbed")
# The remote side of a stat line: field 3 (state) onwards, as `s=STATE T=START_TIME`.
_STAT = "sed 's/.*) //' /proc/{pid}/stat 2>/dev/null | cut -d' ' -f1,20"


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


def _stat_fields(text: str) -> tuple[str, int] | None:
    """(state, start time) from `cut -f1,20` of a stat line; None when the process is gone."""
    parts = text.split()
    if len(parts) != 2 or not parts[1].isdigit():
        return None
    return parts[0], int(parts[1])


class RemoteProcess:
    """A detached process on an SSH host, with the part of Popen's interface that fits.

    `pid` is the remote pid and `start_time` its start in the remote kernel's clock
    ticks, so a recycled pid is never signalled. The exit code comes from a small
    wrapper shell that waits for the process and writes it to a file; a code above
    128 reads as death by signal (-N), as in Popen.
    """

    def __init__(
        self,
        host: SshHost,
        argv: Sequence[str],
        pid: int,
        start_time: int,
        files: PurePosixPath,
    ) -> None:
        self.host = host
        self.args = list(argv)
        self.pid = pid
        self.start_time = start_time
        self.returncode: int | None = None
        self._files = files  # <files>.pid, <files>.rc
        self._signalled: int | None = None

    def __repr__(self) -> str:
        return f"RemoteProcess({self.host.name!r}, pid={self.pid}, args={self.args[:1]!r})"

    def ledger_fields(self) -> dict[str, Any]:
        return {"host": self.host.name, "pid": self.pid, "start_time": self.start_time}

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        q = shlex.quote
        rc_file = q(f"{self._files}.rc")
        script = f"{_STAT.format(pid=self.pid)}; echo; cat {rc_file} 2>/dev/null"
        res = self.host.run(["sh", "-c", script], check=False, timeout=30)
        stat, _, rc_text = res.stdout.partition("\n")
        now = _stat_fields(stat)
        if now is not None and now[0] != "Z" and now[1] == self.start_time:
            return None
        rc_text = rc_text.strip()
        if not rc_text:
            # the wrapper writes the code right after the process ends: give it a moment
            deadline = time.monotonic() + 2.0
            while not rc_text and time.monotonic() < deadline:
                time.sleep(0.05)
                rc_text = self.host.run(
                    ["cat", f"{self._files}.rc"], check=False, timeout=30
                ).stdout.strip()
        if rc_text.isdigit():
            rc = int(rc_text)
            self.returncode = -(rc - 128) if 128 < rc < 128 + 65 else rc
        else:
            log.warning("%s: exit status of pid %s is unknown", self.host.name, self.pid)
            self.returncode = -self._signalled if self._signalled else 255
        self.host.run(["rm", "-f", f"{self._files}.pid", f"{self._files}.rc"], check=False)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (rc := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.1)
        return rc

    def send_signal(self, sig: int) -> None:
        """Signal the process, unless its pid now belongs to another one."""
        if self.returncode is not None:
            return
        self._signalled = sig
        script = (
            f"set -- $({_STAT.format(pid=self.pid)}); "
            f'[ "$2" = {self.start_time} ] && kill -{int(sig)} {self.pid}; exit 0'
        )
        self.host.run(["sh", "-c", script], timeout=30)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class SshHost(Host):
    """A machine reached over SSH as `user@address:port` with one key.

    The connection opens on first use and is shared by every call (paramiko
    multiplexes channels); `close()` ends it. `state_dir` is a folder on the
    remote host where this host keeps pid and exit-code files of the processes
    it starts (the lab removes it at teardown).
    """

    kind = "ssh"

    def __init__(
        self,
        name: str,
        address: str,
        *,
        port: int = 22,
        user: str = "root",
        key_file: Path | None = None,
        known_hosts: Path | None = None,
        sudo: bool = False,
        interfaces: Mapping[str, str] | None = None,
        state_dir: PurePosixPath = REMOTE_STATE,
        connect_timeout: float = 10.0,
        python: str = "python3",
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.user = user
        self.key_file = Path(key_file) if key_file is not None else None
        self.known_hosts = (
            Path(known_hosts) if known_hosts is not None else Path("~/.ssh/known_hosts")
        ).expanduser()
        self.sudo = sudo and user != "root"
        self.interfaces = dict(interfaces or {})
        self.state_dir = PurePosixPath(state_dir)
        self.connect_timeout = connect_timeout
        self.python = python
        #: where testbed's own code is on the host (a bundle it was sent), for module_argv
        self.pythonpath: str | None = None
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self._state_ready = False

    @classmethod
    def from_spec(cls, name: str, spec: HostSpec, **kw: Any) -> SshHost:
        """An SshHost from a topology HostSpec of kind ssh (`kw`: state_dir, connect_timeout)."""
        if spec.kind != "ssh" or not spec.address:
            raise LabError(f"{name}: not an ssh host with an address")
        return cls(
            name,
            spec.address,
            port=spec.port,
            user=spec.user,
            key_file=spec.key_file,
            known_hosts=spec.known_hosts,
            sudo=spec.sudo,
            interfaces=spec.interfaces,
            python=spec.python,
            **kw,
        )

    def __repr__(self) -> str:
        return f"SshHost({self.name!r}, {self.target})"

    @property
    def reached_as(self) -> str:
        return f"ssh {self.target}"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    # -- command lines ------------------------------------------------------------------
    def command_line(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        """The shell line the remote login shell runs: quoted, with sudo and env as configured.

        `env`, as for a local host, is the whole environment of the command (env -i).
        """
        words = ["sudo", "-n", "--"] if self.sudo else []
        return shlex.join([*words, *_with_env(argv, env)])

    def key_path(self) -> Path:
        if self.key_file is not None:
            return self.key_file.expanduser()
        for name in DEFAULT_KEYS:
            p = Path("~/.ssh").expanduser() / name
            if p.exists():
                return p
        raise LabError(
            f"{self.name}: no key for {self.target}",
            hint=f"set key_file for host {self.name} in the topology",
        )

    def openssh_options(self) -> list[str]:
        """OpenSSH client options that check as this class does: no config, no agent,
        only the given key, host keys from known_hosts only and never added."""
        return [
            "-F", "/dev/null",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The OpenSSH client argv that runs `argv` there, with the same key and host-key checks."""
        return [
            "ssh",
            *self.openssh_options(),
            "-i", str(self.key_path()),
            "-p", str(self.port),
            "-l", self.user,
            "--",
            self.address,
            self.command_line(argv),
        ]  # fmt: skip

    # -- as a lab records it (lab.json), to reach the host again from any process ------
    def to_record(self) -> dict[str, Any]:
        """How to reach this host again: paths and addresses only, never a key's contents."""
        return {
            "address": self.address,
            "port": self.port,
            "user": self.user,
            "key_file": str(self.key_path()),
            "known_hosts": str(self.known_hosts),
            "sudo": self.sudo,
            "python": self.python,
            "pythonpath": self.pythonpath,
            "state_dir": str(self.state_dir),
        }

    @classmethod
    def from_record(cls, name: str, fields: Mapping[str, Any]) -> SshHost:
        host = cls(
            name,
            fields["address"],
            port=int(fields.get("port", 22)),
            user=fields.get("user", "root"),
            key_file=Path(fields["key_file"]),
            known_hosts=Path(fields["known_hosts"]),
            sudo=bool(fields.get("sudo", False)),
            state_dir=PurePosixPath(fields["state_dir"]),
            python=fields.get("python", "python3"),
        )
        host.pythonpath = fields.get("pythonpath")
        return host

    # -- the connection -----------------------------------------------------------------
    def _connect(self) -> paramiko.SSHClient:
        key_path = self.key_path()
        try:
            pkey = paramiko.PKey.from_path(key_path)
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
        if not self.known_hosts.exists():
            raise LabError(
                f"{self.name}: known_hosts {self.known_hosts} does not exist, so the host key of "
                f"{self.address} cannot be checked",
                hint=self._add_key_hint(),
            )
        client = paramiko.SSHClient()
        try:
            client.load_system_host_keys(str(self.known_hosts))  # read, never written back
        except (OSError, paramiko.SSHException) as e:
            raise LabError(
                f"{self.name}: cannot read known_hosts {self.known_hosts}: {e}"
            ) from None
        client.set_missing_host_key_policy(_RefuseUnknown())
        where = f"{self.address}:{self.port}"
        try:
            client.connect(
                self.address,
                port=self.port,
                username=self.user,
                pkey=pkey,
                allow_agent=False,
                look_for_keys=False,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
            )
        except paramiko.BadHostKeyException as e:
            client.close()
            raise LabError(
                f"{self.name}: host key of {self.address} does not match known_hosts "
                f"{self.known_hosts}: expected {fingerprint(e.expected_key)}, "
                f"got {fingerprint(e.key)}",
                hint="if the host was reinstalled, check the new key out of band and replace "
                f"its line ({self._known_name()}) in {self.known_hosts}; otherwise do not connect",
            ) from None
        except _UnknownHostKey as e:
            client.close()
            raise LabError(
                f"{self.name}: host key of {where} ({fingerprint(e.key)}) is not in known_hosts "
                f"{self.known_hosts}; refusing to connect",
                hint=self._add_key_hint(),
            ) from None
        except paramiko.AuthenticationException:
            client.close()
            raise LabError(
                f"{self.name}: authentication failed for {self.target} with key {key_path}",
                hint=f"add {key_path}.pub to ~{self.user}/.ssh/authorized_keys on {self.address}",
            ) from None
        except paramiko.ssh_exception.NoValidConnectionsError as e:
            client.close()
            reasons = {(err.strerror or str(err)).lower() for err in e.errors.values()}
            raise LabError(
                f"{self.name}: cannot reach {where}: {'; '.join(sorted(reasons))}",
                hint=f"is sshd running on {self.address} and listening on port {self.port}?",
            ) from None
        except TimeoutError:
            client.close()
            raise LabError(
                f"{self.name}: cannot reach {where}: connection timed out "
                f"after {self.connect_timeout:g} s",
                hint="check the address, the route to it and any firewall in between",
            ) from None
        except OSError as e:
            client.close()
            reason = (e.strerror or str(e)).lower()
            raise LabError(f"{self.name}: cannot reach {where}: {reason}") from None
        except paramiko.SSHException as e:
            client.close()
            raise LabError(f"{self.name}: SSH to {where} failed: {e}") from None
        t = client.get_transport()
        if t is not None and t.sock is not None and hasattr(t.sock, "setsockopt"):
            # small request/answer exchanges: without this each one waits for a delayed ACK
            t.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        log.debug("%s: connected to %s", self.name, self.target)
        return client

    def _known_name(self) -> str:
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"

    def _add_key_hint(self) -> str:
        return (
            "read the host's key fingerprint on the host itself (ssh-keygen -lf "
            "/etc/ssh/ssh_host_ed25519_key.pub), then add its public key as "
            f"'{self._known_name()} ssh-ed25519 AAAA...' to {self.known_hosts} "
            f"(ssh-keyscan -p {self.port} {self.address} prints it; compare the fingerprint)"
        )

    def _transport(self) -> paramiko.Transport:
        """The live transport, connecting (again) when there is none."""
        with self._lock:
            t = self._client.get_transport() if self._client is not None else None
            if t is None or not t.is_active():
                if self._client is not None:
                    log.info("%s: SSH connection lost, reconnecting", self.name)
                    self._client.close()
                    self._client = None
                self._client = self._connect()
                t = self._client.get_transport()
            assert t is not None
            return t

    def close(self) -> None:
        """End the SSH connection (detached processes keep running)."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def __enter__(self) -> SshHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -----------------------------------------------------------------------
    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        if not argv:
            raise LabError(f"{self.name}: empty command")
        shown = " ".join(argv)
        rc, out, err = self._raw(self.command_line(argv, env), shown, input, timeout)
        res = subprocess.CompletedProcess(list(argv), rc, out, err)
        if rc == 127 and check and "not found" in res.stderr:
            raise LabError(f"{self.name}: cannot run {argv[0]}: " + res.stderr.strip()[-200:])
        if check and rc != 0:
            raise self.failed(shown, res)
        return res

    def _raw(
        self, line: str, shown: str, input: str | None = None, timeout: float | None = 60
    ) -> tuple[int, str, str]:
        """Run a shell line as it is (no sudo, no env) on a session of its own."""
        rc, out, err = self._raw_bytes(line, shown, input, timeout)
        return rc, out.decode("utf-8", errors="replace"), err.decode("utf-8", errors="replace")

    def _raw_bytes(
        self, line: str, shown: str, input: str | None = None, timeout: float | None = 60
    ) -> tuple[int, bytes, bytes]:
        try:
            chan = self._transport().open_session(timeout=self.connect_timeout)
        except paramiko.SSHException as e:
            raise LabError(
                f"{self.name}: cannot open an SSH session on {self.target}: {e}"
            ) from None
        try:
            rc, out, err = _exchange(chan, line, input, timeout)
        except TimeoutError:
            raise LabError(f"{self.name}: {shown} did not finish in {timeout} s") from None
        except (paramiko.SSHException, OSError) as e:
            raise LabError(
                f"{self.name}: lost the SSH connection to {self.target} while running {shown}: {e}"
            ) from None
        finally:
            chan.close()
        return rc, out, err

    def _ensure_state_dir(self) -> None:
        if not self._state_ready:
            self.run(["mkdir", "-p", "-m", "0700", str(self.state_dir / "proc")])
            self._state_ready = True

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: IO[Any] | int | PurePath | str | None = subprocess.DEVNULL,
        stderr: IO[Any] | int | PurePath | str | None = subprocess.STDOUT,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> RemoteProcess:  # type: ignore[override]
        """Start a long-lived process there, detached (setsid) so it outlives this connection.

        `stdout`/`stderr` are DEVNULL or a path ON THE HOST (appended to); `stderr` may be
        STDOUT. A local file object cannot take a remote process's output, nor can a
        local file descriptor be passed: both are refused.
        """
        if pass_fds:
            raise LabError(f"{self.name}: cannot pass local file descriptors to a remote process")
        out = self._redirect(stdout, "stdout")
        err = "&1" if stderr == subprocess.STDOUT else self._redirect(stderr, "stderr")
        self._ensure_state_dir()
        files = self.state_dir / "proc" / secrets.token_hex(6)
        q = shlex.quote
        pid_file, rc_file = q(f"{files}.pid"), q(f"{files}.rc")
        # inner: report own pid and stat, then become the command (same pid, same start time)
        inner = f'cat /proc/$$/stat > {pid_file}.new && mv {pid_file}.new {pid_file} && exec "$@"'
        # wrapper: run inner in the foreground (signals as usual), keep its exit code
        wrapper = f'sh -c {q(inner)} sh "$@"; echo $? > {rc_file}'
        # the launch runs through run(), so under sudo when configured: no sudo in `cmd`
        cmd = _with_env(argv, env)
        launch = (
            f"cd / && setsid -f sh -c {q(wrapper)} sh {shlex.join(cmd)} "
            f"</dev/null >{out} 2>{err}; "
            f"i=0; while [ ! -s {pid_file} ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; "
            f"cat {pid_file}"
        )
        res = self.run(["sh", "-c", launch], check=False, timeout=30)
        stat = res.stdout.strip()
        try:
            pid = int(stat.split()[0])
            start_time = int(stat.rsplit(")", 1)[1].split()[19])
        except (IndexError, ValueError):
            detail = (res.stderr or "no pid file written").strip()[-300:]
            raise LabError(f"{self.name}: could not start {' '.join(argv)}: {detail}") from None
        proc = RemoteProcess(self, argv, pid, start_time, files)
        log.info("%s: started %s (remote pid %s)", self.name, argv[0], pid)
        return proc

    def _redirect(self, target: Any, which: str) -> str:
        if target is None or target == subprocess.DEVNULL:
            return "/dev/null"
        if isinstance(target, (PurePath, str)):
            return ">" + shlex.quote(str(target))  # `>>FILE`: append, as a log
        raise LabError(
            f"{self.name}: {which} of a remote process must be DEVNULL or a path on {self.name}, "
            f"not {type(target).__name__}"
        )

    def module_argv(self, module: str, *args: str) -> list[str]:
        pre = [] if self.pythonpath is None else ["env", f"PYTHONPATH={self.pythonpath}"]
        return [*pre, self.python, "-m", module, *args]

    def start(
        self,
        argv: Sequence[str],
        *,
        log: PurePath | None = None,
        env: Mapping[str, str] | None = None,
    ) -> RemoteProcess:
        if log is not None:
            self.makedirs(log.parent)
        out = subprocess.DEVNULL if log is None else PurePosixPath(log)
        return self.popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def record_process(
        self, ledger: Ledger, proc: Process, kind: str = "process", **fields: Any
    ) -> None:
        """Write `proc` to the ledger as a remote-process, so teardown can stop it by pid."""
        assert isinstance(proc, RemoteProcess)
        ledger.record("remote-process", **proc.ledger_fields(), role=kind, **fields)

    def stop(self, proc: Process, grace_s: float = 3.0) -> None:
        assert isinstance(proc, RemoteProcess)
        if proc.returncode is None:
            self.stop_process(proc.pid, proc.start_time, grace_s)
            proc.poll()

    # -- files on the host ----------------------------------------------------------------
    def write_text(self, path: PurePath, text: str, mode: int = 0o644) -> None:
        script = (
            'mkdir -p "$(dirname "$1")" && cat > "$1.new" && chmod "$2" "$1.new" '
            '&& mv -f "$1.new" "$1"'
        )
        self.run(["sh", "-c", script, "sh", str(path), f"{mode:o}"], input=text)

    def read_bytes(self, path: PurePath, offset: int = 0) -> bytes:
        line = self.command_line(
            [
                "sh",
                "-c",
                '[ -e "$1" ] || exit 0; exec tail -c "+$2" "$1"',
                "sh",
                str(path),
                str(int(offset) + 1),
            ]
        )
        rc, out, err = self._raw_bytes(line, f"read {path}")
        if rc != 0:
            raise LabError(
                f"{self.name}: cannot read {path}: {err.decode(errors='replace')[-200:]}"
            )
        return out

    def exists(self, path: PurePath) -> bool:
        return self.run(["test", "-e", str(path)], check=False).returncode == 0

    def makedirs(self, path: PurePath, *more: PurePath, mode: int = 0o755) -> None:
        self.run(["mkdir", "-p", "-m", f"{mode:o}", *(str(p) for p in (path, *more))])

    def stop_process(self, pid: int, start_time: int | None, grace_s: float = 3.0) -> bool:
        """SIGTERM, then SIGKILL after `grace_s`, a process recorded by pid and start time.

        One SSH round trip; a pid that now names another process is left alone. True when
        the recorded process is gone.
        """
        t = "" if start_time is None else str(int(start_time))
        ticks = max(1, int(grace_s / 0.05))
        script = f"""
p={int(pid)}; t={t}
up() {{ set -- $({_STAT.format(pid="$p")}); [ "$#" = 2 ] && [ "$1" != Z ] && \
{{ [ -z "$t" ] || [ "$2" = "$t" ]; }}; }}
up || exit 0
kill -TERM "$p" 2>/dev/null
i=0; while up && [ $i -lt {ticks} ]; do sleep 0.05; i=$((i+1)); done
up || exit 0
kill -KILL "$p" 2>/dev/null
i=0; while up && [ $i -lt 40 ]; do sleep 0.05; i=$((i+1)); done
up && exit 1
exit 0
"""
        res = self.run(["sh", "-c", script], check=False, timeout=grace_s + 30)
        if res.returncode != 0:
            log.warning("%s: pid %s survived SIGKILL: %s", self.name, pid, res.stderr.strip())
        return res.returncode == 0

    # -- files --------------------------------------------------------------------------
    def put(self, local: Path, remote: Path) -> None:
        """Copy a file there over SFTP, keeping its mode (through a temporary file with sudo)."""
        local, remote_s = Path(local), str(remote)
        mode = local.stat().st_mode & 0o7777
        self.run(["mkdir", "-p", str(PurePosixPath(remote_s).parent)])
        dest = remote_s if not self.sudo else self._user_tmp()
        try:
            with self._transport().open_sftp_client() as sftp:
                sftp.put(str(local), dest)
                sftp.chmod(dest, mode)
        except (OSError, paramiko.SSHException) as e:
            raise LabError(
                f"{self.name}: cannot copy {local} to {remote_s}: {_reason(e)}"
            ) from None
        if self.sudo:
            self.run(["sh", "-c", 'mv -f "$1" "$2" && chown 0:0 "$2"', "sh", dest, remote_s])

    def get(self, remote: Path, local: Path) -> None:
        """Copy a file from there over SFTP (with sudo, through a copy the user can read)."""
        local, remote_s = Path(local), str(remote)
        local.parent.mkdir(parents=True, exist_ok=True)
        src = remote_s
        if self.sudo:
            src = self._user_tmp()
            self.run(["install", "-m", "0600", "-o", self.user, remote_s, src])
        try:
            with self._transport().open_sftp_client() as sftp:
                sftp.get(src, str(local))
        except (OSError, paramiko.SSHException) as e:
            raise LabError(
                f"{self.name}: cannot copy {remote_s} to {local}: {_reason(e)}"
            ) from None
        finally:
            if self.sudo:
                self.run(["rm", "-f", src], check=False)

    def _user_tmp(self) -> str:
        """A temporary file owned by the login user (not root), for SFTP next to sudo."""
        rc, out, err = self._raw("mktemp", "mktemp")
        if rc != 0:
            raise LabError(f"{self.name}: mktemp failed ({rc}): {err.strip()[-200:]}")
        return out.strip()


def _with_env(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """`env` as for a local host: the whole environment of the command."""
    if env is None:
        return list(argv)
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


def _exchange(
    chan: paramiko.Channel, line: str, input: str | None, timeout: float | None
) -> tuple[int, bytes, bytes]:
    """Run `line` on a fresh channel; feed `input` while reading both outputs."""
    deadline = None if timeout is None else time.monotonic() + timeout
    chan.exec_command(line)
    feeder: threading.Thread | None = None
    if input is not None:
        data = input.encode()

        def feed() -> None:
            try:
                chan.sendall(data)
                chan.shutdown_write()
            except (OSError, paramiko.SSHException):
                pass  # the command exited without reading all of it

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    else:
        chan.shutdown_write()
    out, err = bytearray(), bytearray()
    while True:
        got = False
        while chan.recv_ready():
            out += chan.recv(65536)
            got = True
        while chan.recv_stderr_ready():
            err += chan.recv_stderr(65536)
            got = True
        done = chan.exit_status_ready() and (chan.eof_received or chan.closed)
        if done and not (chan.recv_ready() or chan.recv_stderr_ready()):
            break
        if chan.closed and not chan.exit_status_ready():
            raise paramiko.SSHException("the session closed without an exit status")
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError
        if not got:
            if chan.eof_received or chan.closed:
                chan.status_event.wait(0.05)  # stdout closed: the exit status is near
            else:
                select.select([chan], [], [], 0.02)  # wakes on stdout; stderr is polled
    if feeder is not None:
        feeder.join(timeout=1)
    return chan.recv_exit_status(), bytes(out), bytes(err)


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def stop_remote(host: SshHost, entry: Mapping[str, Any], grace_s: float = 3.0) -> bool:
    """Stop a `remote-process` ledger entry on its host (teardown's half of record_process)."""
    return host.stop_process(int(entry["pid"]), entry.get("start_time"), grace_s)
