"""The Host interface: the only way layers above touch a machine of the lab.

`Host` and `Process` are protocols. Each capability a caller needs is a method
here (stage a file, the libvirt URI, the addresses that carry the lab's control
connection, preparing the host, running a helper module), so no caller asks
which kind of host it has. The implementations are `hosts.local.LocalHost` (a
namespace on this machine) and `hosts.ssh.SshHost`; `hosts.factory` makes them.
"""

from __future__ import annotations

import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import IO, Any, Protocol

from testbed.errors import LabError
from testbed.hosts.ledger import Ledger

#: where a started process's stdout/stderr go: DEVNULL, STDOUT (stderr only), a path ON the
#: host (appended to), or (a local host only) an open file
Output = IO[Any] | int | PurePath | None


class Process(Protocol):
    """A long-lived process on some host; it records itself in a ledger and stops itself."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def record(self, ledger: Ledger, kind: str = "process", **fields: Any) -> None:
        """Write this process to the ledger so teardown can stop it (pid, start time, host)."""
        ...

    def stop(self, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; returns once it has exited and been reaped."""
        ...


class Host(Protocol):
    """A machine of the lab: runs commands, starts processes, moves files.

    Paths given to a host's methods are paths ON that host. Layers above use only
    these methods (never the local filesystem or local pids for a host's things),
    so the same code drives a namespace on this machine and a machine over SSH.
    """

    name: str
    state_dir: PurePath  # where this host keeps the lab's files, on the host
    #: the namespace the host's commands run in, as this machine names it; "" when the host
    #: is reached inside its own current namespace (over SSH)
    netns: str

    @property
    def reached_as(self) -> str:
        """How testbed reaches this host, for reports (`netns NAME`, `ssh user@addr:port`)."""
        ...

    @property
    def control_addresses(self) -> list[str]:
        """Addresses that carry the lab's control connection to the host: never shaped."""
        ...

    # -- setting up ------------------------------------------------------------------------
    def prepare(self) -> None:
        """Make the host ready to run testbed's helper modules (idempotent)."""
        ...

    def to_record(self) -> dict[str, Any]:
        """What lab.json keeps to reach this host again from another process."""
        ...

    def module_argv(self, module: str, *args: str) -> list[str]:
        """The argv that runs `python -m module args` with testbed importable on this host."""
        ...

    def which(self, program: str) -> str | None:
        """Where `program` (a name or a path) is on the host; None when it is not there."""
        ...

    def stage(self, local: Path) -> PurePath:
        """A file of this machine where the host can read it (a copy, sent once, if need be)."""
        ...

    def libvirt_uri(self, socket: PurePath, wrapper_dir: Path | None) -> str:
        """The URI that reaches a libvirtd listening on `socket` on the host."""
        ...

    def close(self) -> None:
        """Drop any connection to the host (its processes keep running)."""
        ...

    # -- processes ----------------------------------------------------------------------
    def argv(self, argv: Sequence[str]) -> list[str]:
        """The full argv that runs `argv` on this host from this machine."""
        ...

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]: ...

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: Output = subprocess.DEVNULL,
        stderr: Output = subprocess.STDOUT,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> Process:
        """Start a long-lived process in its own session (it outlives the CLI that started it)."""
        ...

    def start(
        self,
        argv: Sequence[str],
        *,
        log: PurePath | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start a long-lived process; stdout and stderr are appended to `log` on the host."""
        ...

    def stop_pid(self, pid: int, start_time: int | None, grace_s: float = 3.0) -> bool:
        """Stop a process recorded by pid and start time (one another process wrote down);
        a pid that now names another process is left alone. True when it is gone."""
        ...

    def record_process(
        self, ledger: Ledger, proc: Process, kind: str = "process", **fields: Any
    ) -> None:
        """Kept for callers not yet moved: `proc.record(ledger, kind, **fields)`."""
        proc.record(ledger, kind, **fields)

    def stop(self, proc: Process, grace_s: float = 3.0) -> None:
        """Kept for callers not yet moved: `proc.stop(grace_s)`."""
        proc.stop(grace_s)

    # -- files on the host ----------------------------------------------------------------
    def write_text(self, path: PurePath, text: str, mode: int = 0o644) -> None:
        """Write a file on the host (its folder is made)."""
        ...

    def read_bytes(self, path: PurePath, offset: int = 0) -> bytes:
        """A file's bytes from `offset` on; empty when it does not exist."""
        ...

    def read_text(self, path: PurePath) -> str:
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def exists(self, path: PurePath) -> bool:
        """Whether `path` exists on the host."""
        ...

    def makedirs(self, path: PurePath, *more: PurePath, mode: int = 0o755) -> None:
        """Make folders (and their parents) on the host, in one go."""
        ...

    def get_tree(self, remote: PurePath, local: Path) -> bool:
        """Copy a folder from the host into `local`; False when it is not there."""
        ...

    def put(self, local: Path, remote: PurePath) -> None:
        """Copy a file to the host."""
        ...

    def get(self, remote: PurePath, local: Path) -> None:
        """Copy a file from the host."""
        ...

    def failed(self, shown: str, res: subprocess.CompletedProcess[str]) -> LabError:
        """The error for a command that exited non-zero: host, command, code, last lines."""
        return failed(self.name, shown, res)


def failed(name: str, shown: str, res: subprocess.CompletedProcess[str]) -> LabError:
    detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
    return LabError(f"{name}: {shown} failed ({res.returncode}): " + " | ".join(detail))


def get_tree_by_tarball(host: Host, remote: PurePath, local: Path) -> bool:
    """Copy a folder from `host` as one tarball (for hosts whose files are not this machine's)."""
    if not host.exists(remote):
        return False
    tmp = PurePath(f"{remote}.tar.gz")
    host.run(["tar", "-czf", str(tmp), "-C", str(remote), "."], timeout=300)
    try:
        local.mkdir(parents=True, exist_ok=True)
        archive = local / ".transfer.tar.gz"
        host.get(Path(tmp), archive)
        with tarfile.open(archive) as tar:
            tar.extractall(local, filter="data")
        archive.unlink()
    finally:
        host.run(["rm", "-f", str(tmp)], check=False)
    return True
