"""The Host interface: the only way layers above touch a machine of the lab."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import IO, Any, Protocol

from testbed.errors import LabError
from testbed.hosts.ledger import Ledger


class Process(Protocol):
    """A long-lived process on some host: subprocess.Popen locally, RemoteProcess over SSH."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Host(ABC):
    """A machine of the lab: runs commands, starts processes, moves files.

    Paths given to a host's methods are paths ON that host. Layers above use only
    these methods (never the local filesystem or local pids for a host's things),
    so the same code drives a namespace on this machine and a machine over SSH.
    """

    name: str
    kind: str
    state_dir: PurePath  # where this host keeps the lab's files, on the host

    @property
    def reached_as(self) -> str:
        """How testbed reaches this host, for reports (`netns NAME`, `ssh user@addr:port`)."""
        return self.name

    def module_argv(self, module: str, *args: str) -> list[str]:
        """The argv that runs `python -m module args` with testbed importable on this host."""
        return [sys.executable, "-m", module, *args]

    # -- processes ----------------------------------------------------------------------
    def start(
        self,
        argv: Sequence[str],
        *,
        log: PurePath | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start a long-lived process; stdout and stderr are appended to `log` on the host."""
        if log is None:
            return self.popen(argv, env=env)
        self.makedirs(log.parent)
        with open(log, "ab") as out:
            return self.popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    @abstractmethod
    def record_process(
        self, ledger: Ledger, proc: Process, kind: str = "process", **fields: Any
    ) -> None:
        """Write `proc` to the ledger so teardown can stop it (pid and start time, host)."""

    @abstractmethod
    def stop(self, proc: Process, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; returns once the process is gone."""

    # -- files on the host ----------------------------------------------------------------
    @abstractmethod
    def write_text(self, path: PurePath, text: str, mode: int = 0o644) -> None:
        """Write a file on the host (its folder is made)."""

    @abstractmethod
    def read_bytes(self, path: PurePath, offset: int = 0) -> bytes:
        """A file's bytes from `offset` on; empty when it does not exist."""

    @abstractmethod
    def exists(self, path: PurePath) -> bool:
        """Whether `path` exists on the host."""

    @abstractmethod
    def makedirs(self, path: PurePath, *more: PurePath, mode: int = 0o755) -> None:
        """Make folders (and their parents) on the host, in one go."""

    def read_text(self, path: PurePath) -> str:
        return self.read_bytes(path).decode("utf-8", errors="replace")

    def get_tree(self, remote: PurePath, local: Path) -> bool:
        """Copy a folder from the host into `local` (one tarball); False when it is not there."""
        if not self.exists(remote):
            return False
        tmp = PurePath(f"{remote}.tar.gz")
        self.run(["tar", "-czf", str(tmp), "-C", str(remote), "."], timeout=300)
        try:
            local.mkdir(parents=True, exist_ok=True)
            archive = local / ".transfer.tar.gz"
            self.get(Path(tmp), archive)
            with tarfile.open(archive) as tar:
                tar.extractall(local, filter="data")
            archive.unlink()
        finally:
            self.run(["rm", "-f", str(tmp)], check=False)
        return True

    @abstractmethod
    def argv(self, argv: Sequence[str]) -> list[str]:
        """The full argv that runs `argv` on this host (local: inside its namespace)."""

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        full = self.argv(argv)
        try:
            res = subprocess.run(
                full,
                capture_output=True,
                text=True,
                timeout=timeout,
                input=input,
                env=dict(env) if env is not None else None,
            )
        except FileNotFoundError as e:
            raise LabError(f"{self.name}: cannot run {argv[0]}: {e.strerror}") from None
        except subprocess.TimeoutExpired:
            raise LabError(f"{self.name}: {' '.join(argv)} did not finish in {timeout} s") from None
        if check and res.returncode != 0:
            raise self.failed(" ".join(argv), res)
        return res

    def failed(self, shown: str, res: subprocess.CompletedProcess[str]) -> LabError:
        """The error for a command that exited non-zero: host, command, code, last lines."""
        detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        return LabError(f"{self.name}: {shown} failed ({res.returncode}): " + " | ".join(detail))

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: IO[Any] | int | None = subprocess.DEVNULL,
        stderr: IO[Any] | int | None = subprocess.STDOUT,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> subprocess.Popen[bytes]:
        """Start a long-lived process in its own session (it outlives the CLI that started it)."""
        return subprocess.Popen(
            self.argv(argv),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            pass_fds=tuple(pass_fds),
        )

    @abstractmethod
    def put(self, local: Path, remote: Path) -> None:
        """Copy a file to the host."""

    @abstractmethod
    def get(self, remote: Path, local: Path) -> None:
        """Copy a file from the host."""
