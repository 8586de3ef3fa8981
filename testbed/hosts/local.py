"""A local host: a network namespace on this machine (its mount namespace is per daemon)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path, PurePath
from typing import Any

from testbed.hosts.base import Host, Process
from testbed.hosts.ledger import Ledger
from testbed.hosts.nsexec import ns_argv
from testbed.hosts.procs import stop_pids


class LocalHost(Host):
    """A host of the embedded lab: `netns` is its network namespace; files are this machine's."""

    kind = "local"

    def __init__(self, name: str, netns: str, state_dir: Path) -> None:
        self.name = name
        self.netns = netns
        self.state_dir = Path(state_dir)

    @property
    def reached_as(self) -> str:
        return f"netns {self.netns}"

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*ns_argv(self.netns), *argv]

    def record_process(
        self, ledger: Ledger, proc: Process, kind: str = "process", **fields: Any
    ) -> None:
        fields.setdefault("host", self.name)
        ledger.record_process(kind, proc.pid, netns=self.netns, **fields)

    def stop(self, proc: Process, grace_s: float = 3.0) -> None:
        if proc.poll() is None:
            stop_pids([proc.pid], grace_s=grace_s)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def write_text(self, path: PurePath, text: str, mode: int = 0o644) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        os.chmod(p, mode)

    def read_bytes(self, path: PurePath, offset: int = 0) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read()
        except OSError:
            return b""

    def exists(self, path: PurePath) -> bool:
        return Path(path).exists()

    def makedirs(self, path: PurePath, *more: PurePath, mode: int = 0o755) -> None:
        for p in (path, *more):
            Path(p).mkdir(parents=True, exist_ok=True, mode=mode)

    def get_tree(self, remote: PurePath, local: Path) -> bool:
        if not Path(remote).is_dir():
            return False
        shutil.copytree(remote, local, dirs_exist_ok=True)
        return True

    def put(self, local: Path, remote: Path) -> None:
        if Path(local) != Path(remote):
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, remote)

    def get(self, remote: Path, local: Path) -> None:
        self.put(remote, local)

    def __repr__(self) -> str:
        return f"LocalHost({self.name!r}, netns={self.netns!r})"
