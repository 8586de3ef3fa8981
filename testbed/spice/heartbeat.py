"""When the guest emitted each frame: its serial heartbeat, timestamped on arrival.

The guest prints `HB <seq> <guest_ms>` on its serial port as it draws frame
`seq`; QEMU appends it to the serial log file on the hypervisor host where the
guest runs (the destination writes its own file after a migration). A child on
each hypervisor host (`python -m testbed.spice.heartbeat tail LOG OUT`) polls
that file every few ms and writes `H <host_monotonic> <seq> <guest_ms>` for each
heartbeat line it sees; the parent turns host times into ours with the same
clock offset as the screen sampler. `freeze.emission_times` then turns these
arrival times into emission times.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path, PurePath

from testbed.errors import TestbedError
from testbed.hosts.base import Host, Process
from testbed.hosts.ledger import Ledger
from testbed.spice.screen import clock_offset

log = logging.getLogger(__name__)
MODULE = "testbed.spice.heartbeat"
POLL_S = 0.007  # not a divisor of the 40 ms tick, so the read phase walks over it

Arrival = tuple[float, int, int]  # (our monotonic time it was read, seq, guest ms)


class SerialWatcher:
    """Tails the guest's serial log on one host; `arrivals()` in our monotonic clock."""

    def __init__(self, host: Host, serial: PurePath, *, ledger: Ledger | None = None) -> None:
        self.host, self.serial, self.ledger = host, serial, ledger
        self.out = host.state_dir / "heartbeat" / f"{serial.stem}-arrivals.txt"
        self.offset = 0.0
        self._proc: Process | None = None
        self._arrivals: list[Arrival] = []

    def start(self) -> None:
        self.offset = clock_offset(self.host)
        self.host.makedirs(self.out.parent)
        self.host.write_text(self.out, "")
        self._proc = self.host.start(
            self.host.module_argv(MODULE, "tail", str(self.serial), str(self.out)),
            log=self.out.with_suffix(".err"),
        )
        if self.ledger is not None:
            self.host.record_process(self.ledger, self._proc, "process", name="serial-watcher")

    def arrivals(self) -> list[Arrival]:
        """What the child saw so far (all of it, once stopped)."""
        if self._proc is not None:
            try:
                self._arrivals = parse(self.host.read_bytes(self.out, 0).decode(), self.offset)
            except TestbedError as e:  # the host went unreachable: keep what was read
                log.info("heartbeats on %s: %s", self.host.name, e)
        return list(self._arrivals)

    def stop(self) -> list[Arrival]:
        """End the child and keep what it saw."""
        if self._proc is not None:
            try:
                self.host.stop(self._proc, grace_s=2)
                self.arrivals()
            finally:
                self._proc = None
                self.host.run(
                    ["rm", "-f", str(self.out), str(self.out.with_suffix(".err"))], check=False
                )
        return list(self._arrivals)


def parse(text: str, offset: float = 0.0) -> list[Arrival]:
    """`H t seq ms` lines (host clock) as arrivals in our clock (`offset`: host minus ours)."""
    out = []
    for line in text.splitlines():
        p = line.split()
        if len(p) == 4 and p[0] == "H":
            try:
                out.append((float(p[1]) - offset, int(p[2]), int(p[3])))
            except ValueError:
                continue
    return out


def write(path: Path, arrivals: list[Arrival]) -> None:
    """Arrivals as `H t seq ms` lines, our clock (the scenario's heartbeat.txt)."""
    path.write_text("".join(f"H {t:.6f} {s} {ms}\n" for t, s, ms in arrivals))


# ---- child side (runs on the hypervisor host) -----------------------------------


def _tail(log: Path, out: Path) -> None:
    f = open(out, "a", buffering=1)  # noqa: SIM115 - line-buffered for the parent to read
    pos, partial = 0, b""
    while True:
        try:
            with open(log, "rb") as src:
                src.seek(pos)
                chunk = src.read()
        except FileNotFoundError:  # the destination's log appears with the migration
            chunk = b""
        t = time.monotonic()
        if chunk:
            pos += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            for raw in lines:
                p = raw.split()
                if len(p) == 3 and p[0] == b"HB" and p[1].isdigit() and p[2].isdigit():
                    f.write(f"H {t:.6f} {int(p[1])} {int(p[2])}\n")
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tail", help="timestamp the heartbeat lines appended to a serial log")
    t.add_argument("log", type=Path)
    t.add_argument("out", type=Path)
    a = p.parse_args(argv)
    try:
        _tail(a.log, a.out)
    except KeyboardInterrupt:
        pass
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
