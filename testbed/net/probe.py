"""Probes: measure what a link really does (RTT, loss, TCP goodput) between two endpoints.

RTT and loss come from iputils `ping` run in the source's namespace; goodput from one
iperf3 TCP flow, server in the destination's namespace bound to its address (one-off,
`-1`, killed afterwards), client in the source's. Parsing is pure and tested on
recorded output; running them is the only part that touches the system.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import select
import subprocess
import time
from dataclasses import asdict, dataclass

from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.base import Host
from testbed.hosts.nsexec import ns_argv
from testbed.net.shaping.base import Endpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PingStats:
    transmitted: int
    received: int
    duplicates: int
    rtt_min_ms: float | None
    rtt_avg_ms: float | None
    rtt_max_ms: float | None

    @property
    def loss_pct(self) -> float:
        if self.transmitted == 0:
            return 0.0
        return 100.0 * (self.transmitted - self.received) / self.transmitted


@dataclass(frozen=True)
class ProbeResult:
    src: str
    dst: str
    rtt_ms: dict[str, float] | None  # {"min", "avg", "max"}; None when nothing came back
    loss_pct: float | None
    goodput_mbit: float | None
    pings: int
    duplicates: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


_SUMMARY = re.compile(
    r"(?P<tx>\d+) packets transmitted, (?P<rx>\d+) (?:packets )?received"
    r"(?:, \+(?P<dup>\d+) duplicates)?"
)
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev)? = ([\d.]+)/([\d.]+)/([\d.]+)")


def parse_ping(output: str) -> PingStats:
    """Parse iputils ping's summary ("N packets transmitted, M received, ...", "rtt ...")."""
    m = _SUMMARY.search(output)
    if not m:
        raise LabError(f"ping printed no summary:\n{output[-500:]}")
    rtt = _RTT.search(output)
    mn, avg, mx = (float(x) for x in rtt.groups()) if rtt else (None, None, None)
    return PingStats(
        transmitted=int(m["tx"]),
        received=int(m["rx"]),
        duplicates=int(m["dup"] or 0),
        rtt_min_ms=mn,
        rtt_avg_ms=avg,
        rtt_max_ms=mx,
    )


def parse_iperf3(output: str) -> float:
    """Goodput in Mbit/s from iperf3 -J (the receiver's count: bytes that arrived)."""
    try:
        doc = json.loads(output)
    except json.JSONDecodeError:
        raise LabError(f"iperf3 printed no JSON:\n{output[-500:]}") from None
    if doc.get("error"):
        raise LabError(f"iperf3: {doc['error']}")
    return doc["end"]["sum_received"]["bits_per_second"] / 1e6


def ping(
    src: Endpoint,
    dst: Endpoint,
    count: int = 50,
    interval_s: float = 0.02,
    *,
    src_host: Host | None = None,
) -> PingStats:
    """Ping dst from src's namespace, or from `src_host` itself (root may use intervals
    below 0.2 s)."""
    wait_s = 3
    argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval_s)]
    argv += ["-W", str(wait_s), "-I", src.address, dst.address]
    timeout = count * interval_s + wait_s + 10
    try:
        if src_host is not None:
            out = src_host.run(argv, check=False, timeout=timeout)
        else:
            out = subprocess.run(
                [*ns_argv(src.netns), *argv], capture_output=True, text=True, timeout=timeout
            )
    except FileNotFoundError:
        raise CapabilityMissing(
            "ping is not installed", hint="apt-get install iputils-ping"
        ) from None
    if out.returncode not in (0, 1):  # 1: some replies missing, still a measurement
        raise LabError(f"ping {src} -> {dst} failed ({out.returncode}): {out.stderr.strip()}")
    return parse_ping(out.stdout)


def goodput_on_hosts(
    src: Endpoint,
    dst: Endpoint,
    src_host: Host,
    dst_host: Host,
    seconds: float = 3.0,
    omit_s: float = 0.0,
) -> float:
    """One TCP flow between two hosts, each command run on its own host (e.g. over SSH)."""
    port = random.randint(20000, 40000)
    log = dst_host.state_dir / f"iperf3-{port}.log"
    srv = dst_host.start(
        ["iperf3", "-s", "-1", "--forceflush", "-B", dst.address, "-p", str(port)], log=log
    )
    try:
        deadline = time.monotonic() + 10
        while "listening" not in dst_host.read_text(log).lower():
            if srv.poll() is not None or time.monotonic() > deadline:
                raise LabError(
                    f"iperf3 server on {dst_host.name} did not start: "
                    + dst_host.read_text(log).strip()[-300:]
                )
            time.sleep(0.05)
        client = ["iperf3", "-J", "-c", dst.address, "-p", str(port), "-B", src.address]
        client += ["-t", f"{seconds:g}"] + (["-O", f"{omit_s:g}"] if omit_s else [])
        out = src_host.run(client, check=False, timeout=seconds + omit_s + 30)
        return parse_iperf3(out.stdout)
    finally:
        dst_host.stop(srv)
        dst_host.run(["rm", "-f", str(log)], check=False)


def goodput(
    src: Endpoint, dst: Endpoint, seconds: float = 3.0, omit_s: float = 0.0, port: int | None = None
) -> float:
    """One TCP flow src -> dst for `seconds` (after `omit_s` of slow start); Mbit/s."""
    port = port or random.randint(20000, 40000)
    server = [*ns_argv(dst.netns), "iperf3", "-s", "-1", "--forceflush"]
    server += ["-B", dst.address, "-p", str(port)]
    try:
        srv = subprocess.Popen(server, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except FileNotFoundError:
        raise CapabilityMissing("iperf3 is not installed", hint="apt-get install iperf3") from None
    try:
        _wait_listening(srv)
        client = [*ns_argv(src.netns), "iperf3", "-J", "-c", dst.address, "-p", str(port)]
        client += ["-B", src.address, "-t", f"{seconds:g}"]
        if omit_s:
            client += ["-O", f"{omit_s:g}"]
        out = subprocess.run(client, capture_output=True, text=True, timeout=seconds + omit_s + 30)
        return parse_iperf3(out.stdout)
    finally:
        if srv.poll() is None:
            srv.kill()
        srv.wait()


def _wait_listening(srv: subprocess.Popen[str], timeout: float = 5.0) -> None:
    """iperf3 prints "Server listening on PORT" once its socket is bound."""
    assert srv.stdout is not None
    deadline = time.monotonic() + timeout
    seen = ""
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([srv.stdout], [], [], left)
        if not ready:
            break
        chunk = os.read(srv.stdout.fileno(), 4096).decode(errors="replace")
        if not chunk:
            break
        seen += chunk
        if "listening" in seen.lower():
            return
    raise LabError(f"iperf3 server did not start (exit {srv.poll()}): {seen.strip()[-300:]}")


def probe(
    src: Endpoint,
    dst: Endpoint,
    *,
    pings: int = 50,
    interval_s: float = 0.02,
    goodput_s: float = 3.0,
    omit_s: float = 0.0,
    hosts: tuple[Host, Host] | None = None,
) -> ProbeResult:
    """RTT (min/avg/max) and loss from `pings` pings, then goodput from one TCP flow.

    `pings=0` or `goodput_s=0` skips that half. The pings run first, on an idle link,
    so the RTT is the link's and not a queue's. `hosts` (src's, dst's): run the tools
    on those hosts (an SSH lab) instead of in the endpoints' namespaces here.
    """
    src_host = hosts[0] if hosts else None
    stats = ping(src, dst, pings, interval_s, src_host=src_host) if pings else None
    rate = None
    if goodput_s:
        rate = (
            goodput_on_hosts(src, dst, hosts[0], hosts[1], goodput_s, omit_s)
            if hosts
            else goodput(src, dst, goodput_s, omit_s)
        )
    rtt = None
    if stats is not None and stats.rtt_avg_ms is not None:
        # parse_ping sets min, avg and max together
        assert stats.rtt_min_ms is not None and stats.rtt_max_ms is not None
        rtt = {"min": stats.rtt_min_ms, "avg": stats.rtt_avg_ms, "max": stats.rtt_max_ms}
    return ProbeResult(
        src=str(src),
        dst=str(dst),
        rtt_ms=rtt,
        loss_pct=stats.loss_pct if stats else None,
        goodput_mbit=rate,
        pings=stats.transmitted if stats else 0,
        duplicates=stats.duplicates if stats else 0,
    )
