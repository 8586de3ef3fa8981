"""A local host: a network namespace on this machine (its mount namespace is per daemon)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from testbed.hosts.base import Host
from testbed.hosts.nsexec import ns_argv


class LocalHost(Host):
    """A host of the embedded lab: `netns` is its network namespace."""

    kind = "local"

    def __init__(self, name: str, netns: str, state_dir: Path) -> None:
        self.name = name
        self.netns = netns
        self.state_dir = state_dir

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*ns_argv(self.netns), *argv]

    def put(self, local: Path, remote: Path) -> None:
        if Path(local) != Path(remote):
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, remote)

    def get(self, remote: Path, local: Path) -> None:
        self.put(remote, local)

    def __repr__(self) -> str:
        return f"LocalHost({self.name!r}, netns={self.netns!r})"
