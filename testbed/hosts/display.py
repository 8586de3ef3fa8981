"""An X server (Xvfb) for a client host, reachable only from inside that host.

Xvfb listens on no TCP port and no filesystem socket: only the abstract UNIX
socket, which is per network namespace, so nothing outside the host can reach
it. A cookie in an Xauthority file guards it even there. `-displayfd` lets Xvfb
pick a free display number, so two labs never collide.

Everything goes through the Host interface, so the same code serves a namespace
on this machine and a machine over SSH: Xvfb writes its display number to a file
on the host, xauth runs on the host, and the cookie travels on xauth's stdin
(never in an argv, where `ps` would show it).
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import PurePath

from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.base import Host, Process
from testbed.hosts.ledger import Ledger

SCREEN = "1280x800x24"
#: PATH for the X programs run on a host (this machine's PATH means nothing on another one)
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class XDisplay:
    number: int
    xauthority: PurePath  # on the host the display belongs to
    pid: int  # Xvfb's pid on that host; 0 for the host's own display (not testbed's)

    @property
    def name(self) -> str:
        return f":{self.number}"

    def env(self) -> dict[str, str]:
        return {"DISPLAY": self.name, "XAUTHORITY": str(self.xauthority)}


def start_xvfb(host: Host, state_dir: PurePath, ledger: Ledger, timeout_s: float = 15) -> XDisplay:
    """Start Xvfb on `host` (files in `state_dir`, a folder ON the host); wait until it serves."""
    xauth = state_dir / "Xauthority"
    number_file = state_dir / "xvfb.display"
    host.makedirs(state_dir)
    cookie = secrets.token_hex(16)
    # Xvfb reads every cookie in the -auth file at start, whatever display it names;
    # the client looks its cookie up by display number, added once the number is known.
    _xauth_add(host, xauth, 0, cookie)
    argv = [
        "Xvfb",
        "-displayfd",
        "3",
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
    ]
    # fd 3 is a file on the host: Xvfb writes the number there once it accepts clients
    proc = host.start(
        ["sh", "-c", 'f=$1; shift; exec "$@" 3>"$f"', "sh", str(number_file), *argv],
        log=state_dir / "xvfb.log",
    )
    proc.record(ledger, "xvfb")
    raw = _read_number(host, number_file, proc, timeout_s)
    if not raw:
        proc.stop()
        log_tail = host.read_text(state_dir / "xvfb.log").strip()[-300:]
        if proc.returncode == 127:  # sh: exec: Xvfb: not found
            raise CapabilityMissing(
                f"Xvfb is not installed on {host.name}", hint="make setup (installs xvfb)"
            )
        raise LabError(
            f"Xvfb on {host.name} did not start in {timeout_s} s "
            f"(see {state_dir / 'xvfb.log'} on {host.name}): {log_tail}"
        )
    number = int(raw)
    _xauth_add(host, xauth, number, cookie)
    _wait_x(host, number, xauth, timeout_s)
    return XDisplay(number=number, xauthority=xauth, pid=proc.pid)


def _read_number(host: Host, path: PurePath, proc: Process, timeout_s: float) -> str:
    """The display number once Xvfb wrote its whole line; empty if it did not in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = host.read_text(path)
        if text.endswith("\n") and text.strip().isdigit():
            return text.strip()
        if proc.poll() is not None:
            return ""
        time.sleep(0.05)
    return ""


def _xauth_add(host: Host, xauth: PurePath, number: int, cookie: str) -> None:
    host.run(
        ["xauth", "-q", "-f", str(xauth), "source", "-"],
        input=f"add :{number} . {cookie}\n",
        timeout=30,
    )


def x_env(display: XDisplay) -> dict[str, str]:
    """The whole environment of an X client of `display` on its host."""
    return {"PATH": HOST_PATH, **display.env()}


def existing_display(
    host: Host, name: str, xauthority: PurePath | None, timeout_s: float = 5
) -> XDisplay:
    """The host's own X display (`:N`), checked to accept clients; testbed never stops it."""
    number = int(name.lstrip(":"))
    xauth = xauthority or PurePath("/root/.Xauthority")
    _wait_x(host, number, xauth, timeout_s)
    return XDisplay(number=number, xauthority=xauth, pid=0)


def _wait_x(host: Host, number: int, xauth: PurePath, timeout_s: float) -> None:
    env = {"DISPLAY": f":{number}", "XAUTHORITY": str(xauth), "PATH": HOST_PATH}
    deadline = time.monotonic() + timeout_s
    while True:
        res = host.run(["xdpyinfo"], check=False, env=env, timeout=5)
        if res.returncode == 0:
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    raise LabError(
        f"X display :{number} on {host.name} does not accept clients: "
        f"{(res.stderr or res.stdout).strip()[-200:]}"
    )
