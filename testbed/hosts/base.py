"""The Host interface: the only way layers above touch a machine of the lab."""

from __future__ import annotations

import subprocess
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from testbed.errors import LabError


class Host(ABC):
    """A machine of the lab: runs commands, starts processes, moves files."""

    name: str
    kind: str

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
            detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
            raise LabError(
                f"{self.name}: {' '.join(argv)} failed ({res.returncode}): " + " | ".join(detail)
            )
        return res

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
