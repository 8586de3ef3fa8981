"""A local host: a network namespace on this machine (its mount namespace is per daemon)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath
from typing import IO, Any

from testbed.errors import LabError
from testbed.hosts.base import Host, Output, failed
from testbed.hosts.ledger import Ledger
from testbed.hosts.nsexec import ns_argv
from testbed.hosts.procs import stop_pids, stop_recorded


class LocalProcess(subprocess.Popen[bytes]):
    """A process started in a namespace of this machine: a Popen that records and stops itself."""

    def __init__(self, host: str, netns: str, argv: list[str], **kw: Any) -> None:
        super().__init__(argv, **kw)
        self.host, self.netns = host, netns

    def record(self, ledger: Ledger, kind: str = "process", **fields: Any) -> None:
        fields.setdefault("host", self.host)
        ledger.record_process(kind, self.pid, netns=self.netns, **fields)

    def stop(self, grace_s: float = 3.0) -> None:
        if self.poll() is None:
            stop_pids([self.pid], grace_s=grace_s)  # our child: reaped there
        try:
            self.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            self.wait(timeout=5)


class LocalHost(Host):
    """A host of the embedded lab: `netns` is its network namespace; files are this machine's."""

    def __init__(self, name: str, netns: str, state_dir: Path) -> None:
        self.name = name
        self.netns = netns
        self.state_dir = Path(state_dir)

    def __repr__(self) -> str:
        return f"LocalHost({self.name!r}, netns={self.netns!r})"

    @property
    def reached_as(self) -> str:
        return f"netns {self.netns}"

    @property
    def control_addresses(self) -> list[str]:
        return []  # driven through nsenter: no network carries the lab's control

    # -- setting up -----------------------------------------------------------------------
    def prepare(self) -> None:
        pass  # testbed runs here already

    def to_record(self) -> dict[str, Any]:
        return {"netns": self.netns}

    def module_argv(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def which(self, program: str) -> str | None:
        return shutil.which(program)

    def stage(self, local: Path) -> PurePath:
        return local  # this machine's files

    def libvirt_uri(self, socket: PurePath, wrapper_dir: Path | None) -> str:
        return f"qemu+unix:///system?socket={socket}"

    def close(self) -> None:
        pass

    # -- processes ------------------------------------------------------------------------
    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*ns_argv(self.netns), *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float | None = 60,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        try:
            res = subprocess.run(
                self.argv(argv),
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
            raise failed(self.name, " ".join(argv), res)
        return res

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdout: Output = subprocess.DEVNULL,
        stderr: Output = subprocess.STDOUT,
        env: Mapping[str, str] | None = None,
        pass_fds: Sequence[int] = (),
    ) -> LocalProcess:
        opened: list[IO[Any]] = []

        def out(target: Output) -> IO[Any] | int | None:
            if isinstance(target, PurePath):
                self.makedirs(target.parent)
                opened.append(open(target, "ab"))
                return opened[-1]
            return target

        try:
            return LocalProcess(
                self.name,
                self.netns,
                self.argv(argv),
                stdin=subprocess.DEVNULL,
                stdout=out(stdout),
                stderr=out(stderr),
                env=dict(env) if env is not None else None,
                start_new_session=True,
                pass_fds=tuple(pass_fds),
            )
        finally:
            for f in opened:
                f.close()

    def start(
        self,
        argv: Sequence[str],
        *,
        log: PurePath | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LocalProcess:
        out = subprocess.DEVNULL if log is None else log
        return self.popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)

    def stop_pid(self, pid: int, start_time: int | None, grace_s: float = 3.0) -> bool:
        return stop_recorded(pid, start_time, grace_s)

    # -- files ----------------------------------------------------------------------------
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

    def put(self, local: Path, remote: PurePath) -> None:
        if Path(local) != Path(remote):
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(local, remote)

    def get(self, remote: PurePath, local: Path) -> None:
        self.put(Path(remote), local)
