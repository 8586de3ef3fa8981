"""An SSH host: a real machine of the lab, reached over one fabric Connection.

Same contract as a local host, so nothing above this layer knows which kind it
has. fabric gives the connection (with the user's ~/.ssh/config: Host aliases,
User, Port, IdentityFile, ProxyJump), jump hosts (`gateway`) and the SFTP
transfers. Our own rule on host keys stays: a key is checked against the
topology's known_hosts file and never added, for the host and for every jump
host; only the configured key is offered (no agent, no password). Commands run
in one persistent session per host without a shell per command
(`hosts.sshexec`), or through fabric's Runner where the host has no Python.
Long-lived processes are started detached (setsid) so they outlive the
connection, and are found again by pid and start time, like local ones. Secrets
(key contents, passphrases) never appear in messages or logs.
"""

from __future__ import annotations

import hashlib
import io
import logging
import secrets
import shlex
import subprocess
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import fabric
import invoke
import paramiko

from testbed.errors import LabError
from testbed.hosts.base import Host, Output, failed, get_tree_by_tarball
from testbed.hosts.bundle import ensure_bundle
from testbed.hosts.sshconnect import connect, ssh_config_for
from testbed.hosts.sshexec import CommandTimeout, ExecSession, SessionLost
from testbed.hosts.sshproc import RemoteProcess, stop_script

log = logging.getLogger(__name__)

DEFAULT_KEYS = ("id_ed25519", "id_ecdsa", "id_rsa")
REMOTE_STATE = PurePosixPath("/var/tmp/testbed")


class SshHost(Host):
    """A machine reached over SSH as `user@address:port` with one key.

    `address` may be a Host alias of the user's ssh config; what the topology leaves
    unset (user, port, key, a jump host) comes from there, else root, 22, ~/.ssh/id_*.
    `gateway` is the SshHost to jump through (ProxyJump). The connection opens on
    first use and is shared by every call; `close()` ends it. `state_dir` is a folder
    on the host for pid and exit-code files of the processes it starts.
    """

    def __init__(
        self,
        name: str,
        address: str,
        *,
        port: int | None = None,
        user: str | None = None,
        key_file: Path | None = None,
        known_hosts: Path | None = None,
        sudo: bool = False,
        interfaces: Mapping[str, str] | None = None,
        state_dir: PurePosixPath = REMOTE_STATE,
        connect_timeout: float = 10.0,
        python: str = "python3",
        gateway: SshHost | None = None,
        ssh_config: Path | None = None,
        follow_proxyjump: bool = True,
    ) -> None:
        cfg = ssh_config_for(address, ssh_config)
        self.name = name
        self.alias = address
        self.address = str(cfg.get("hostname", address))
        self.port = port or int(cfg.get("port", "22"))
        self.user = str(user or cfg.get("user", "root"))
        if key_file is None and cfg.get("identityfile"):
            key_file = Path(cfg["identityfile"][0])
        self.key_file = Path(key_file) if key_file is not None else None
        self.known_hosts = (
            Path(known_hosts) if known_hosts is not None else Path("~/.ssh/known_hosts")
        ).expanduser()
        self.sudo = sudo and self.user != "root"
        self.interfaces = dict(interfaces or {})
        self.state_dir = PurePosixPath(state_dir)
        self.netns = ""  # commands run in the host's own namespace
        self.connect_timeout = connect_timeout
        self.python = python
        self.gateway = gateway
        jump = cfg.get("proxyjump", "none")
        if gateway is None and follow_proxyjump and jump.lower() != "none":
            self.gateway = self._jump_hosts(jump, ssh_config)
        #: where testbed's own code is on the host (a bundle it was sent), for module_argv
        self.pythonpath: str | None = None
        self._conn: fabric.Connection | None = None
        self._session: ExecSession | None = None
        self._no_server = False
        self._lock = threading.RLock()
        self._state_ready = False

    def _jump_hosts(self, proxyjump: str, ssh_config: Path | None) -> SshHost:
        """ProxyJump `[user@]host[:port],...` from ssh config: the chain, same key checks."""
        gw: SshHost | None = None
        for i, hop in enumerate(proxyjump.split(",")):
            user, _, rest = hop.rpartition("@")
            addr, _, port = rest.partition(":")
            gw = SshHost(
                f"{self.name}-jump{i}",
                addr,
                port=int(port) if port else None,
                user=user or None,
                known_hosts=self.known_hosts,
                connect_timeout=self.connect_timeout,
                gateway=gw,
                ssh_config=ssh_config,
                follow_proxyjump=False,  # the chain is this line's, as OpenSSH reads it
            )
        assert gw is not None
        return gw

    @classmethod
    def from_spec(cls, name: str, spec: Any, **kw: Any) -> SshHost:
        """An SshHost from a topology HostSpec of kind ssh (`kw`: state_dir, connect_timeout,
        gateway). Fields the topology leaves unset come from the user's ssh config."""
        if spec.kind != "ssh" or not spec.address:
            raise LabError(f"{name}: not an ssh host with an address")
        given = spec.model_fields_set
        return cls(
            name,
            spec.address,
            port=spec.port if "port" in given else None,
            user=spec.user if "user" in given else None,
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
        via = f" via {self.gateway.target}" if self.gateway is not None else ""
        return f"ssh {self.target}{via}"

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    @property
    def control_addresses(self) -> list[str]:
        return [self.address]

    # -- setting up -----------------------------------------------------------------------
    def prepare(self) -> None:
        """Send testbed's helper modules (once per version) and put them on PYTHONPATH."""
        if self.pythonpath is None:
            self.pythonpath = str(ensure_bundle(self))

    def module_argv(self, module: str, *args: str) -> list[str]:
        pre = [] if self.pythonpath is None else ["env", f"PYTHONPATH={self.pythonpath}"]
        return [*pre, self.python, "-m", module, *args]

    def which(self, program: str) -> str | None:
        res = self.run(["sh", "-c", 'command -v "$1"', "sh", program], check=False)
        return res.stdout.strip() or None if res.returncode == 0 else None

    def stage(self, local: Path) -> PurePath:
        """A copy in the host's state folder, sent once per lab (same name and size: there)."""
        there = self.state_dir / "images" / local.name
        size = self.run(["sh", "-c", 'stat -c %s "$1" 2>/dev/null || echo -1', "sh", str(there)])
        if size.stdout.strip() != str(local.stat().st_size):
            self.put(local, Path(there))
        return there

    def libvirt_uri(self, socket: PurePath, wrapper_dir: Path | None) -> str:
        """`qemu+ssh://` to a daemon's own socket, through `nc -U` on the host (no TCP
        listener), with an ssh wrapper in `wrapper_dir` that checks as this class does."""
        if wrapper_dir is None:
            raise LabError(f"{self.name}: no folder for the ssh wrapper libvirt needs")
        if self.sudo:
            raise LabError(
                f"{self.name}: libvirt over SSH needs a login that can reach libvirtd's socket; "
                "use user root (with a key of the lab's own)"
            )
        params = {
            "socket": str(socket),
            "keyfile": str(self.key_path()),
            "command": str(self._ssh_wrapper(wrapper_dir)),
            "no_tty": "1",
            "proxy": "netcat",
        }
        addr = f"[{self.address}]" if ":" in self.address else self.address
        query = urllib.parse.urlencode(params, safe="/")
        return f"qemu+ssh://{self.user}@{addr}:{self.port}/system?{query}"

    def _ssh_wrapper(self, folder: Path) -> Path:
        """An executable that runs OpenSSH as this class does: this key only, strict known_hosts."""
        body = f'#!/bin/sh\nexec ssh {shlex.join(self.openssh_options())} "$@"\n'
        path = folder / f"ssh-{hashlib.sha256(body.encode()).hexdigest()[:10]}"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".new")
            tmp.write_text(body)
            tmp.chmod(0o700)
            tmp.rename(path)
        return path

    # -- command lines ------------------------------------------------------------------
    def command_line(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
        """The shell line for `argv`: quoted, with sudo and env as configured.

        `env`, as for a local host, is the whole environment of the command (env -i).
        """
        return shlex.join(self._full_argv(argv, env))

    def _full_argv(self, argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
        words = ["sudo", "-n", "--"] if self.sudo else []
        return [*words, *_with_env(argv, env)]

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
        only the given key, host keys from known_hosts only and never added; a jump
        host through a ProxyCommand that checks the same way."""
        opts = [
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
        if self.gateway is not None:
            jump = ["ssh", *self.gateway._login_argv(), "-W", "%h:%p", self.gateway.address]
            opts += ["-o", f"ProxyCommand={shlex.join(jump)}"]
        return opts

    def _login_argv(self) -> list[str]:
        return [
            *self.openssh_options(),
            "-i", str(self.key_path()),
            "-p", str(self.port),
            "-l", self.user,
        ]  # fmt: skip

    def argv(self, argv: Sequence[str]) -> list[str]:
        """The OpenSSH client argv that runs `argv` there, with the same key and host-key checks."""
        return ["ssh", *self._login_argv(), "--", self.address, self.command_line(argv)]

    # -- as a lab records it (lab.json), to reach the host again from any process ------
    def to_record(self) -> dict[str, Any]:
        """How to reach this host again: paths and addresses only, never a key's contents."""
        rec: dict[str, Any] = {
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
        if self.gateway is not None:
            rec["gateway"] = {"name": self.gateway.name, **self.gateway.to_record()}
        return {"ssh": rec}

    @classmethod
    def from_record(cls, name: str, fields: Mapping[str, Any]) -> SshHost:
        gw = fields.get("gateway")
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
            gateway=cls.from_record(gw["name"], gw) if gw else None,
            ssh_config=Path("/dev/null"),  # recorded as resolved
        )
        host.pythonpath = fields.get("pythonpath")
        return host

    # -- the connection -----------------------------------------------------------------
    def connection(self) -> fabric.Connection:
        """The live fabric Connection, connecting (again) when there is none."""
        with self._lock:
            c = self._conn
            if c is None or c.transport is None or not c.transport.is_active():
                if c is not None:
                    log.info("%s: SSH connection lost, reconnecting", self.name)
                    self._drop()
                self._conn = connect(self)
            return self._conn

    def _exec_session(self) -> ExecSession | None:
        """The host's one command session (started on first use); None without a server."""
        conn = self.connection()
        with self._lock:
            if self._session is not None and self._session.alive:
                return self._session
            if self._no_server:
                return None
            try:
                self._session = ExecSession(conn.transport, self.python, self.connect_timeout + 20)
            except (SessionLost, paramiko.SSHException) as e:
                log.info("%s: no command server (%s); one exec per command", self.name, e)
                self._no_server = True
                return None
            return self._session

    def _drop(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        """End the SSH connection (detached processes keep running)."""
        with self._lock:
            self._drop()
        if self.gateway is not None:
            self.gateway.close()

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
        data = None if input is None else input.encode()
        rc, out, err = self._exec(self._full_argv(argv, env), shown, data, timeout)
        res = subprocess.CompletedProcess(
            list(argv), rc, out.decode(errors="replace"), err.decode(errors="replace")
        )
        if rc == 127 and check and "not found" in res.stderr:
            raise LabError(f"{self.name}: cannot run {argv[0]}: " + res.stderr.strip()[-200:])
        if check and rc != 0:
            raise failed(self.name, shown, res)
        return res

    def _exec(
        self, argv: Sequence[str], shown: str, data: bytes | None, timeout: float | None
    ) -> tuple[int, bytes, bytes]:
        """Run `argv` as it is (sudo and env already in it): bytes out."""
        for attempt in (1, 2):
            try:
                session = self._exec_session()
                if session is None:
                    return self._exec_runner(argv, data, timeout)
                return session.call(argv, data, timeout)
            except (CommandTimeout, invoke.CommandTimedOut):
                raise LabError(f"{self.name}: {shown} did not finish in {timeout} s") from None
            except SessionLost as e:
                if attempt == 2 or (self._conn and self._conn.is_connected):
                    raise LabError(
                        f"{self.name}: lost the SSH connection to {self.target} while running "
                        f"{shown}: {e}"
                    ) from None
                log.info("%s: SSH connection lost, reconnecting", self.name)
            except (paramiko.SSHException, OSError) as e:
                raise LabError(
                    f"{self.name}: lost the SSH connection to {self.target} while running "
                    f"{shown}: {e}"
                ) from None
        raise AssertionError("unreachable")

    def _exec_runner(
        self, argv: Sequence[str], data: bytes | None, timeout: float | None
    ) -> tuple[int, bytes, bytes]:
        """fabric's Runner: one exec (through the login shell) per command."""
        latin = "latin-1"  # bytes through invoke's text streams unchanged
        res = self.connection().run(
            shlex.join(argv),
            hide=True,
            warn=True,
            pty=False,
            in_stream=io.StringIO((data or b"").decode(latin)),
            encoding=latin,
            timeout=timeout,
        )
        return res.exited, res.stdout.encode(latin), res.stderr.encode(latin)

    def _ensure_state_dir(self) -> None:
        if not self._state_ready:
            self.run(["mkdir", "-p", "-m", "0700", str(self.state_dir / "proc")])
            self._state_ready = True

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: Output = subprocess.DEVNULL,
        stderr: Output = subprocess.STDOUT,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> RemoteProcess:
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

    def stop_pid(self, pid: int, start_time: int | None, grace_s: float = 3.0) -> bool:
        return self.stop_process(pid, start_time, grace_s)

    # -- files on the host ----------------------------------------------------------------
    def write_text(self, path: PurePath, text: str, mode: int = 0o644) -> None:
        script = (
            'mkdir -p "$(dirname "$1")" && cat > "$1.new" && chmod "$2" "$1.new" '
            '&& mv -f "$1.new" "$1"'
        )
        self.run(["sh", "-c", script, "sh", str(path), f"{mode:o}"], input=text)

    def read_bytes(self, path: PurePath, offset: int = 0) -> bytes:
        script = '[ -e "$1" ] || exit 0; exec tail -c "+$2" "$1"'
        argv = self._full_argv(["sh", "-c", script, "sh", str(path), str(int(offset) + 1)], None)
        rc, out, err = self._exec(argv, f"read {path}", None, 60)
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

        One round trip; a pid that now names another process is left alone. True when
        the recorded process is gone.
        """
        res = self.run(
            ["sh", "-c", stop_script(pid, start_time, grace_s)], check=False, timeout=grace_s + 30
        )
        if res.returncode != 0:
            log.warning("%s: pid %s survived SIGKILL: %s", self.name, pid, res.stderr.strip())
        return res.returncode == 0

    # -- files --------------------------------------------------------------------------
    def put(self, local: Path, remote: PurePath) -> None:
        """Copy a file there (fabric's Transfer: SFTP, keeping its mode; with sudo through
        a temporary file of the login user)."""
        local, remote_s = Path(local), str(remote)
        self.run(["mkdir", "-p", str(PurePosixPath(remote_s).parent)])
        dest = remote_s if not self.sudo else self._user_tmp()
        try:
            fabric.transfer.Transfer(self.connection()).put(str(local), dest, preserve_mode=True)
        except (OSError, paramiko.SSHException) as e:
            raise LabError(
                f"{self.name}: cannot copy {local} to {remote_s}: {_reason(e)}"
            ) from None
        if self.sudo:
            self.run(["sh", "-c", 'mv -f "$1" "$2" && chown 0:0 "$2"', "sh", dest, remote_s])

    def get(self, remote: PurePath, local: Path) -> None:
        """Copy a file from there (with sudo, through a copy the user can read)."""
        local, remote_s = Path(local), str(remote)
        local.parent.mkdir(parents=True, exist_ok=True)
        src = remote_s
        if self.sudo:
            src = self._user_tmp()
            self.run(["install", "-m", "0600", "-o", self.user, remote_s, src])
        try:
            fabric.transfer.Transfer(self.connection()).get(src, str(local), preserve_mode=False)
        except (OSError, paramiko.SSHException) as e:
            raise LabError(
                f"{self.name}: cannot copy {remote_s} to {local}: {_reason(e)}"
            ) from None
        finally:
            if self.sudo:
                self.run(["rm", "-f", src], check=False)

    def _user_tmp(self) -> str:
        """A temporary file owned by the login user (not root), for SFTP next to sudo."""
        rc, out, err = self._exec(["mktemp"], "mktemp", None, 60)
        if rc != 0:
            raise LabError(f"{self.name}: mktemp failed ({rc}): {err.decode()[-200:]}")
        return out.decode().strip()

    def get_tree(self, remote: PurePath, local: Path) -> bool:
        return get_tree_by_tarball(self, remote, local)


def _with_env(argv: Sequence[str], env: Mapping[str, str] | None) -> list[str]:
    """`env` as for a local host: the whole environment of the command."""
    if env is None:
        return list(argv)
    return ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]


def _reason(e: Exception) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def stop_remote(host: SshHost, entry: Mapping[str, Any], grace_s: float = 3.0) -> bool:
    """Stop a `remote-process` ledger entry on its host (teardown's half of proc.record)."""
    return host.stop_process(int(entry["pid"]), entry.get("start_time"), grace_s)
