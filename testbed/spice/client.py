"""The real SPICE client: remote-viewer on the client host's X display, with its debug log.

remote-viewer runs inside the client's network namespace (so it reaches the
guest only over the lab's display network) with `SPICE_DEBUG=1 --debug`;
its stdout and stderr go to one log file, which the classifier reads. The
client can be started at any moment (before, during or after a migration);
the lab layer's `guest_display` says where the guest's display is now.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path

from testbed.errors import LabError
from testbed.hosts.base import Host
from testbed.hosts.display import XDisplay
from testbed.hosts.ledger import Ledger
from testbed.hosts.procs import alive, stop_pids
from testbed.spice.screen import Window, list_windows, viewer_window

log = logging.getLogger(__name__)

# virt-viewer's main-channel events, and spice-gtk's "display channel ready" (state 3)
MAIN_OPENED = "main channel: opened"
MAIN_GONE = (
    "main channel: closed",
    "main channel: failed to connect",
    "main channel: switching host",
)
DISPLAY_UP = re.compile(r"\bdisplay-\d+:\d+: channel up, state 3\b")


class LogState:
    """Follows a growing client log: is the main channel open and a display channel up now?

    Reads only what was appended since the last call, so polling stays cheap
    while spice-gtk writes a line per decoded frame.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.main = self.display = False
        self._offset = 0
        self._partial = b""

    def update(self) -> LogState:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except OSError:
            return self
        self._offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace")
            if MAIN_OPENED in line:
                self.main = True
            elif any(g in line for g in MAIN_GONE):
                self.main = self.display = False
            elif self.main and DISPLAY_UP.search(line):
                self.display = True
        return self


class SpiceClient:
    """One remote-viewer process on the lab's client host.

    `connect` starts it; `stop` ends it (and it is in the ledger meanwhile, so
    `testbed down` ends it too). Each connect writes a new log file.
    """

    def __init__(
        self,
        host: Host,
        display: XDisplay,
        ledger: Ledger,
        out_dir: Path,
        *,
        name: str = "remote-viewer",
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.host = host
        self.display = display
        self.ledger = ledger
        self.out_dir = out_dir
        self.name = name
        self.extra_args = extra_args
        self.uri: str | None = None
        self.log_path = out_dir / f"{name}.log"
        self.pid: int | None = None
        self.connect_t: float | None = None  # time.monotonic() when connect was called
        self.connect_wall: float | None = None  # time.time() at the same moment
        self.connected_t: float | None = None  # first time connected() saw it connected
        self.stop_t: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._n = 0
        self._state = LogState(self.log_path)

    def _env(self) -> dict[str, str]:
        home = self.host.state_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "NO_AT_BRIDGE": "1",
            "GDK_BACKEND": "x11",
            "SPICE_DEBUG": "1",
            **self.display.env(),
        }

    def connect(self, uri: str) -> None:
        """Start remote-viewer on `uri` (spice://ADDR:PORT); returns at once."""
        if self.running():
            raise LabError(f"{self.name} is already running (pid {self.pid}); stop it first")
        self._n += 1
        suffix = "" if self._n == 1 else f"-{self._n}"
        self.log_path = self.out_dir / f"{self.name}{suffix}.log"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.connected_t = self.stop_t = None
        self._state = LogState(self.log_path)
        out = open(self.log_path, "wb")  # noqa: SIM115 - handed to the child
        try:
            self.connect_t, self.connect_wall = time.monotonic(), time.time()
            self._proc = self.host.popen(
                ["remote-viewer", "--debug", *self.extra_args, uri],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._env(),
            )
        finally:
            out.close()
        self.pid = self._proc.pid
        self.ledger.record_process(
            "process", self.pid, name=self.name, netns=getattr(self.host, "netns", None)
        )
        log.info("%s (pid %s) connecting to %s, log %s", self.name, self.pid, uri, self.log_path)

    # -- state ------------------------------------------------------------------------
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def channels_up(self) -> set[str]:
        """Kinds of channel (main, display) the log shows up now."""
        st = self._state.update()
        return {k for k, up in (("main", st.main), ("display", st.display)) if up}

    def window(self) -> Window | None:
        return viewer_window(list_windows(self.host, self.display))

    def connected(self) -> bool:
        """The log shows main and display channels up now and the viewer's window is shown."""
        if not self.running() or self.channels_up() != {"main", "display"}:
            return False
        if self.window() is None:
            return False
        if self.connected_t is None:
            self.connected_t = time.monotonic()
        return True

    def wait_connected(self, timeout_s: float = 30) -> float:
        """Wait until connected; the seconds since connect was called."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.connected():
                assert self.connect_t is not None
                return (self.connected_t or time.monotonic()) - self.connect_t
            if self._proc is not None and self._proc.poll() is not None:
                raise LabError(
                    f"{self.name} exited ({self._proc.returncode}) before connecting; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)
        raise LabError(f"{self.name} did not connect to {self.uri} in {timeout_s:.0f} s")

    def stop(self) -> None:
        """End remote-viewer (SIGTERM, then SIGKILL) and reap it; no process is left."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            stop_pids([self._proc.pid], grace_s=3)
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5)
        self.stop_t = time.monotonic()
        if self.pid is not None and alive(self.pid):
            raise LabError(f"{self.name} (pid {self.pid}) is still alive after stop")
        self._proc = None

    def kill(self) -> None:
        """End remote-viewer abruptly (SIGKILL), as a crash or a killed client would."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self.stop()

    def __enter__(self) -> SpiceClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def timestamps(self) -> dict[str, float | None]:
        return {
            "connect_t": self.connect_t,
            "connect_wall": self.connect_wall,
            "connected_t": self.connected_t,
            "stop_t": self.stop_t,
        }
