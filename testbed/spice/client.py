"""The real SPICE client: remote-viewer on the client host's X display, with its debug log.

remote-viewer runs on the client host (inside its network namespace for a local
host, so it reaches the guest only over the lab's display network) with
`SPICE_DEBUG=1 --debug`; its stdout and stderr go to one log file on that host,
which is followed there while it runs and copied to `out_dir` when it stops,
where the classifier reads it. Only the Host interface is used, so the client
host may be a namespace of this machine or a machine over SSH. The client can
be started at any moment (before, during or after a migration); the lab layer's
`guest_display` says where the guest's display is now.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path, PurePath

from testbed.errors import LabError
from testbed.hosts.base import Host, Process
from testbed.hosts.display import XDisplay, x_env
from testbed.hosts.ledger import Ledger
from testbed.spice.screen import Window, list_windows, viewer_window
from testbed.spice.tls import SECURE_CHANNELS, ClientTls, subject_for

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

    Reads only what was appended since the last call (from `host` when given, else
    from a file of this machine), so polling stays cheap while spice-gtk writes a
    line per decoded frame. With `keep`, the text read so far is kept (`text()`).
    """

    def __init__(self, path: PurePath, host: Host | None = None, *, keep: bool = False) -> None:
        self.path = path
        self.host = host
        self.keep = keep
        self.main = self.display = False
        self._offset = 0
        self._partial = b""
        self._data = bytearray()

    def _read(self) -> bytes:
        if self.host is not None:
            return self.host.read_bytes(self.path, self._offset)
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                return f.read()
        except OSError:
            return b""

    def update(self) -> LogState:
        self.feed(self._read())
        return self

    def feed(self, chunk: bytes) -> LogState:
        """Take in the next bytes of the log."""
        self._offset += len(chunk)
        if self.keep:
            self._data += chunk
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

    def text(self) -> str:
        """Everything read so far (with `keep`)."""
        return self._data.decode(errors="replace")

    def moved(self, path: PurePath, host: Host | None = None) -> None:
        """Go on reading the same log from a copy (e.g. this machine's); forget kept text."""
        self.path, self.host = path, host
        self.keep, self._data = False, bytearray()


class SpiceClient:
    """One remote-viewer process on the lab's client host.

    `connect` starts it; `stop` ends it (and it is in the ledger meanwhile, so
    `testbed down` ends it too). Each connect writes a new log file on the host
    (`host_log`); `stop` copies it to `log_path` in `out_dir`, on this machine.
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
        ticket: str | None = None,
        tls: ClientTls | None = None,
    ) -> None:
        self.host = host
        self.display = display
        self.ledger = ledger
        self.out_dir = out_dir
        self.name = name
        self.extra_args = extra_args
        self._ticket = ticket  # handed over in a 0600 connection file, never in argv or logs
        self._tls = tls
        self.uri: str | None = None
        self.log_path = out_dir / f"{name}.log"  # this machine's copy, complete after stop
        self.host_log: PurePath | None = None  # the log being written, on the host
        self.pid: int | None = None
        self.connect_t: float | None = None  # time.monotonic() when connect was called
        self.connect_wall: float | None = None  # time.time() at the same moment
        self.connected_t: float | None = None  # first time connected() saw it connected
        self.stop_t: float | None = None
        self._proc: Process | None = None
        self._n = 0
        self._tag = secrets.token_hex(4)  # two clients of one name on a host never share a log
        self._state = LogState(self.log_path)
        self._fetched = True  # log_path holds the whole log (nothing runs)

    def _env(self) -> dict[str, str]:
        home = self.host.state_dir / "home"
        self.host.makedirs(home, mode=0o700)
        return {
            **x_env(self.display),
            "HOME": str(home),
            "NO_AT_BRIDGE": "1",
            "GDK_BACKEND": "x11",
            "SPICE_DEBUG": "1",
        }

    def connect(self, uri: str) -> None:
        """Start remote-viewer on `uri` (spice://ADDR:PORT); returns at once."""
        if self.running():
            raise LabError(f"{self.name} is already running (pid {self.pid}); stop it first")
        self._n += 1
        suffix = "" if self._n == 1 else f"-{self._n}"
        self.log_path = self.out_dir / f"{self.name}{suffix}.log"
        self.host_log = self.host.state_dir / "clients" / f"{self.name}-{self._tag}{suffix}.log"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.connected_t = self.stop_t = None
        self._state = LogState(self.host_log, self.host, keep=True)
        env = self._env()
        self._fetched = False
        self.connect_t, self.connect_wall = time.monotonic(), time.time()
        target = self._connection_file(uri) if self._ticket or self._tls else uri
        self._proc = self.host.start(
            ["remote-viewer", "--debug", *self.extra_args, target], log=self.host_log, env=env
        )
        self.pid = self._proc.pid
        self.host.record_process(self.ledger, self._proc, "process", name=self.name)
        log.info(
            "%s (pid %s on %s) connecting to %s, log %s",
            self.name,
            self.pid,
            self.host.name,
            uri,
            self.host_log,
        )

    def _connection_file(self, uri: str) -> str:
        """A virt-viewer connection file (.vv, mode 0600) holding `uri` and the ticket;
        remote-viewer reads it and it stays in the host's state, out of any log."""
        m = re.fullmatch(r"spice://\[?([^\]/:?]+?)\]?(?::(\d+))?/?(?:\?tls-port=(\d+))?", uri)
        if not m or not (m.group(2) or m.group(3)):
            raise LabError(f"not a spice://ADDR:PORT or spice://ADDR?tls-port=PORT URI: {uri}")
        host, port, tls_port = m.groups()
        path = self.host.state_dir / "clients" / f"{self.name}-{self._tag}-{self._n}.vv"
        lines = ["[virt-viewer]", "type=spice", f"host={host}", "delete-this-file=0"]
        if port:
            lines.append(f"port={port}")
        if self._ticket:
            lines.append(f"password={self._ticket}")
        if self._tls:
            if not tls_port:
                raise LabError(f"a TLS display needs a tls-port in the URI: {uri}")
            ca = self._tls.ca_pem.strip().replace("\n", "\\n")
            lines += [
                f"tls-port={tls_port}",
                f"ca={ca}",
                f"host-subject={subject_for(host)}",
                f"secure-channels={SECURE_CHANNELS}",
            ]
        text = "\n".join(lines) + "\n"
        self.host.write_text(path, text, mode=0o600)
        return str(path)

    # -- state ------------------------------------------------------------------------
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_text(self) -> str:
        """The client's log so far: read on the host while it runs, the local copy after."""
        if not self._fetched:
            return self._state.update().text()
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
                self._fetch_log()
                raise LabError(
                    f"{self.name} exited ({self._proc.returncode}) before connecting; "
                    f"see {self.log_path}"
                )
            time.sleep(0.1)
        raise LabError(f"{self.name} did not connect to {self.uri} in {timeout_s:.0f} s")

    def _fetch_log(self) -> None:
        """Copy the host's log to `log_path` (once remote-viewer has ended, it is complete)."""
        if self.host_log is None:
            return
        self.host.get(self.host_log, self.log_path)
        if self._proc is None or self._proc.poll() is not None:
            self._fetched = True
            self._state.moved(self.log_path)
            self.host.run(["rm", "-f", str(self.host_log)], check=False)

    def stop(self) -> None:
        """End remote-viewer (SIGTERM, then SIGKILL), reap it, copy its log to `log_path`."""
        if self._proc is None:
            return
        proc = self._proc
        self.host.stop(proc, grace_s=3)
        self.stop_t = time.monotonic()
        if proc.poll() is None:
            raise LabError(f"{self.name} (pid {proc.pid} on {self.host.name}) is alive after stop")
        self._proc = None
        if not self._fetched:
            self._fetch_log()

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
