"""An X server (Xvfb) for a client host, reachable only from inside its namespace.

Xvfb listens on no TCP port and no filesystem socket: only the abstract UNIX
socket, which is per network namespace, so nothing outside the host can reach
it. A cookie in an Xauthority file guards it even there. `-displayfd` lets Xvfb
pick a free display number, so two labs never collide.
"""

from __future__ import annotations

import os
import secrets
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.base import Host
from testbed.hosts.ledger import Ledger

SCREEN = "1280x800x24"


@dataclass(frozen=True)
class XDisplay:
    number: int
    xauthority: Path
    pid: int

    @property
    def name(self) -> str:
        return f":{self.number}"

    def env(self) -> dict[str, str]:
        return {"DISPLAY": self.name, "XAUTHORITY": str(self.xauthority)}


def start_xvfb(host: Host, state_dir: Path, ledger: Ledger, timeout_s: float = 15) -> XDisplay:
    if not Path("/usr/bin/Xvfb").exists():
        raise CapabilityMissing("Xvfb is not installed", hint="make setup (installs xvfb)")
    state_dir.mkdir(parents=True, exist_ok=True)
    xauth = state_dir / "Xauthority"
    cookie = secrets.token_hex(16)
    # Xvfb reads every cookie in the -auth file at start, whatever display it names;
    # the client looks its cookie up by display number, added once the number is known.
    _xauth_add(xauth, 0, cookie)
    rfd, wfd = os.pipe()
    log = open(state_dir / "xvfb.log", "ab")  # noqa: SIM115 - handed to the child
    try:
        proc = host.popen(
            [
                "Xvfb",
                "-displayfd",
                str(wfd),
                "-screen",
                "0",
                SCREEN,
                "-nolisten",
                "tcp",
                "-nolisten",
                "unix",
                "-auth",
                str(xauth),
                "-noreset",
            ],
            stdout=log,
            stderr=log,
            pass_fds=[wfd],
        )
    finally:
        os.close(wfd)
        log.close()
    ledger.record_process("xvfb", proc.pid, host=host.name, netns=getattr(host, "netns", None))
    try:
        raw = _read_line(rfd, timeout_s)
    finally:
        os.close(rfd)
    if not raw.strip():
        proc.kill()
        raise LabError(
            f"Xvfb on {host.name} did not start in {timeout_s} s (see {state_dir / 'xvfb.log'})"
        )
    number = int(raw.strip())
    _xauth_add(xauth, number, cookie)
    _wait_x(host, number, xauth, timeout_s)
    return XDisplay(number=number, xauthority=xauth, pid=proc.pid)


def _read_line(fd: int, timeout_s: float) -> bytes:
    """Read up to a newline: Xvfb dies if the pipe closes between its two writes."""
    raw = b""
    deadline = time.monotonic() + timeout_s
    while not raw.endswith(b"\n"):
        left = deadline - time.monotonic()
        ready, _, _ = select.select([fd], [], [], max(left, 0))
        if not ready:
            break
        chunk = os.read(fd, 32)
        if not chunk:
            break
        raw += chunk
    return raw


def _xauth_add(xauth: Path, number: int, cookie: str) -> None:
    subprocess.run(
        ["xauth", "-f", str(xauth), "add", f":{number}", ".", cookie],
        check=True,
        capture_output=True,
    )


def _wait_x(host: Host, number: int, xauth: Path, timeout_s: float) -> None:
    env = {"DISPLAY": f":{number}", "XAUTHORITY": str(xauth), "PATH": os.environ["PATH"]}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        res = host.run(["xdpyinfo"], check=False, env=env, timeout=5)
        if res.returncode == 0:
            return
        time.sleep(0.1)
    raise LabError(
        f"X display :{number} on {host.name} does not accept clients: "
        f"{(res.stderr or res.stdout).strip()[-200:]}"
    )
