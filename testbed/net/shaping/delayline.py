"""The NFQUEUE delay line: one process per receiving namespace, one queue per direction.

Run inside the namespace that *receives* the shaped traffic::

    nsenter --net=/run/netns/NS -- python -m testbed.net.shaping.delayline --control SOCK

iptables sends each shaped direction's packets (`raw PREROUTING -i IF -s SRC`) to its
own queue number; this process holds each packet for its delay, then gives the ACCEPT
verdict. Held here, after the packet has left the sender, the sender's TCP stack does
not see the packet as still queued (in the sender's OUTPUT chain TCP Small Queues
throttled a flow through 100 ms to 0.4 Mbit/s; see LAB-NOTES).

GSO: when a queue only delays (no loss, duplicate or corrupt), it asks the kernel for
whole GSO super-packets (NFQA_CFG_F_GSO) instead of one message per wire packet, which
takes one TCP flow from about 0.5 to several Gbit/s here; the others get wire packets,
so their probabilities are per packet, as on a wire.

Per packet, in netem's order: loss (drop), corrupt (flip one bit after the IP header),
duplicate (a copy is re-sent to the local stack through a raw socket), reorder (this
packet skips the delay), then delay + jitter drawn like netem's tabledist(). Held
packets sit in one heap ordered by release time; with no jitter a queue stays FIFO even
when its delay is lowered. A queue never holds more than its `limit` (tail drop).

One process per namespace, not per direction: the process count grows with hosts, not
host pairs, and a namespace's whole set changes in one control message. One queue per
direction keeps each direction's parameters and counters apart.

Control: a UNIX stream socket (path given by the engine, in the lab state dir) taking
one JSON object per line: ``{"op": "set", "queues": {"29696": {...}}}`` replaces the
whole queue set (new queues are bound, changed ones take the new parameters for the
next packet, packets already held keep their release time, removed ones release what
they hold and unbind); ``{"op": "get"}`` returns parameters, held counts and counters.
So a profile change never restarts the process and a TCP flow through it survives.

Failure mode: **fail-open**. The rules carry `--queue-bypass`, so when this process is
gone (killed, crashed) the kernel accepts packets for its queues unshaped; the packets
it held at that moment are lost (the kernel drops them with the queue). Chosen because
a dead helper that black-holed the link would look like a network partition to the
system under test; the engine's `health()` reports the dead line and which directions
are now unshaped, so a run can be marked invalid instead of silently misjudged.
SIGTERM releases every held packet, unbinds and exits 0.
"""

from __future__ import annotations

import argparse
import ctypes
import heapq
import itertools
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

log = logging.getLogger("testbed.net.shaping.delayline")

KERNEL_QUEUE_MAX = 1 << 20  # packets the kernel keeps per queue awaiting our verdict (> limits)
# linux/netfilter/nfnetlink_queue.h: a queue config message that sets one flag
NFNL_SUBSYS_QUEUE, NFQNL_MSG_CONFIG = 3, 2
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQA_CFG_F_GSO = 1 << 2
NLM_F_REQUEST = 1
SOCK_RCVBUF = 16 << 20
IDLE_WAKEUP_S = 1.0
PR_SET_TIMERSLACK = 29


@dataclass(frozen=True)
class LineParams:
    """One direction's delay-line parameters (profile units)."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: str = "uniform"
    loss_pct: float = 0.0
    duplicate_pct: float = 0.0
    corrupt_pct: float = 0.0
    reorder_pct: float = 0.0
    limit: int = 1000

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LineParams:
        known = {f.name: f.type for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)}")
        p = cls(**data)
        for name in (
            "delay_ms",
            "jitter_ms",
            "loss_pct",
            "duplicate_pct",
            "corrupt_pct",
            "reorder_pct",
        ):
            if not isinstance(getattr(p, name), int | float) or getattr(p, name) < 0:
                raise ValueError(f"{name} must be a number >= 0")
        if not isinstance(p.limit, int) or p.limit < 1:
            raise ValueError("limit must be an integer >= 1")
        return p

    @property
    def needs_payload(self) -> bool:
        return bool(self.duplicate_pct or self.corrupt_pct)

    @property
    def whole_gso_ok(self) -> bool:
        """True when a GSO super-packet may be treated as one (delay, jitter, reorder only).

        Loss, duplicate and corrupt are per wire packet, so for them the kernel must
        segment first; delaying a 64 kB GSO packet as one is the same as delaying each
        of its segments by the same amount, and 40x cheaper here.
        """
        return not (self.loss_pct or self.needs_payload)


class Queue:
    """One NFQUEUE number: its binding, parameters, sampler and counters."""

    def __init__(self, line: DelayLine, num: int, params: LineParams) -> None:
        self.line, self.num = line, num
        self.held = 0
        self.last_release = 0.0
        self.stats = dict.fromkeys(
            ("received", "released", "lost", "overlimit", "corrupted", "duplicated", "reordered"),
            0,
        )
        self.params = params
        self.sample: Callable[[], float] = self._sampler(params)
        self.nfq: Any = None
        self._bind()

    def _sampler(self, p: LineParams) -> Callable[[], float]:
        from testbed.net.shaping import distributions

        return distributions.sampler(p.distribution, p.delay_ms, p.jitter_ms, self.line.rng)

    def _bind(self) -> None:
        import warnings

        from netfilterqueue import COPY_META, COPY_PACKET, NetfilterQueue

        self.nfq = NetfilterQueue()
        mode = COPY_PACKET if self.params.needs_payload else COPY_META
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rcvbuf capped: not fatal
            self.nfq.bind(
                self.num, self.line.on_packet_for(self), max_len=KERNEL_QUEUE_MAX,
                mode=mode, range=0xFFFF, sock_len=SOCK_RCVBUF,
            )  # fmt: skip
        self.fd = self.nfq.get_fd()
        os.set_blocking(self.fd, False)
        self._set_gso(self.params.whole_gso_ok)

    def _set_gso(self, on: bool) -> None:
        """NFQA_CFG_F_GSO on our own queue socket (netfilterqueue 1.1 has no call for it).

        Sent without NLM_F_ACK: no answer comes back on success, and the kernel only
        takes it from the socket that bound the queue, which this is.
        """
        flag = NFQA_CFG_F_GSO if on else 0
        body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(self.num))
        body += struct.pack("=HH", 8, NFQA_CFG_MASK) + struct.pack(">I", NFQA_CFG_F_GSO)
        body += struct.pack("=HH", 8, NFQA_CFG_FLAGS) + struct.pack(">I", flag)
        msg_type = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG
        header = struct.pack("=IHHII", 16 + len(body), msg_type, NLM_F_REQUEST, 0, 0)
        try:
            os.write(self.fd, header + body)
        except OSError as e:
            log.warning("queue %d: could not set GSO flag: %s", self.num, e)
        self.gso = on

    def set_params(self, params: LineParams) -> None:
        rebind = params.needs_payload != self.params.needs_payload
        self.params = params
        self.sample = self._sampler(params)
        if rebind:  # the copy mode is fixed at bind time
            self.line.release(self)
            self.nfq.unbind()
            self._bind()
        elif params.whole_gso_ok != self.gso:
            self._set_gso(params.whole_gso_ok)

    def close(self) -> None:
        self.line.release(self)
        self.nfq.unbind()

    def status(self) -> dict[str, Any]:
        return {
            "params": asdict(self.params),
            "held": self.held,
            "gso": self.gso,
            "stats": dict(self.stats),
        }


class DelayLine:
    def __init__(self, control_path: str, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.queues: dict[int, Queue] = {}
        self.heap: list[tuple[float, int, Any, Queue, bytes | None]] = []
        self.seq = itertools.count()
        self.raw: socket.socket | None = None
        self.stop = False
        self.control_path = control_path
        if os.path.exists(control_path):
            os.unlink(control_path)
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.ctl.bind(control_path)
        self.ctl.listen(8)
        self.wake_r, wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.stop = True

    # -- packets -------------------------------------------------------------------------
    def on_packet_for(self, q: Queue) -> Callable[[Any], None]:
        rnd = self.rng.random
        heap, seq, push, now = self.heap, self.seq, heapq.heappush, time.monotonic

        release_due = self.release_due

        def on_packet(pkt: Any) -> None:
            t_now = now()
            if heap and heap[0][0] <= t_now:
                release_due()  # inside a long batch too, so `held` is what is in the delay
            p, st = q.params, q.stats
            st["received"] += 1
            if p.loss_pct and rnd() * 100 < p.loss_pct:
                pkt.drop()
                st["lost"] += 1
                return
            dup = None
            if p.needs_payload:
                payload = pkt.get_payload()
                if p.corrupt_pct and rnd() * 100 < p.corrupt_pct:
                    payload = self._corrupt(payload)
                    pkt.set_payload(payload)
                    st["corrupted"] += 1
                if p.duplicate_pct and rnd() * 100 < p.duplicate_pct:
                    dup = payload
                    st["duplicated"] += 1
            if p.reorder_pct and rnd() * 100 < p.reorder_pct:
                delay = 0.0
                st["reordered"] += 1
            else:
                delay = q.sample()
            if delay <= 0:
                pkt.accept()
                st["released"] += 1
                if dup is not None:
                    self._inject(dup)
                return
            if q.held >= p.limit:
                pkt.drop()
                st["overlimit"] += 1
                return
            t = t_now + delay / 1000.0
            if not p.jitter_ms:  # constant delay: keep FIFO order even after a decrease
                if t < q.last_release:
                    t = q.last_release
                q.last_release = t
            push(heap, (t, next(seq), pkt, q, dup))
            q.held += 1

        return on_packet

    def release_due(self) -> None:
        heap, pop = self.heap, heapq.heappop
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _t, _s, pkt, q, dup = pop(heap)
            q.held -= 1
            q.stats["released"] += 1
            pkt.accept()
            if dup is not None:
                self._inject(dup)

    def release(self, q: Queue) -> None:
        """Accept everything `q` holds now (before it unbinds or changes copy mode)."""
        keep = []
        for item in self.heap:
            if item[3] is q:
                item[2].accept()
                q.stats["released"] += 1
                if item[4] is not None:
                    self._inject(item[4])
            else:
                keep.append(item)
        heapq.heapify(keep)
        self.heap[:] = keep
        q.held = 0
        q.last_release = 0.0

    def _corrupt(self, payload: bytes) -> bytes:
        """Flip one random bit after the IP header, where a checksum will notice it."""
        data = bytearray(payload)
        ihl = (data[0] & 0x0F) * 4 if data else 0
        start = ihl if len(data) > ihl else 0
        pos = self.rng.randrange(start, len(data))
        data[pos] ^= 1 << self.rng.randrange(8)
        return bytes(data)

    def _inject(self, payload: bytes) -> None:
        """Hand a copy to the local stack: a raw IP send to our own address, via lo."""
        try:
            if self.raw is None:
                self.raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            self.raw.sendto(payload, (socket.inet_ntoa(payload[16:20]), 0))
        except OSError as e:
            log.warning("duplicate not sent: %s", e)

    # -- control -------------------------------------------------------------------------
    def handle(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "get":
            return {
                "ok": True,
                "pid": os.getpid(),
                "queues": {str(n): q.status() for n, q in sorted(self.queues.items())},
            }
        if op == "set":
            wanted = {int(k): LineParams.from_dict(v) for k, v in req["queues"].items()}
            for num in [n for n in self.queues if n not in wanted]:
                self.queues.pop(num).close()
            for num, params in wanted.items():
                if num in self.queues:
                    if self.queues[num].params != params:
                        self.queues[num].set_params(params)
                else:
                    self.queues[num] = Queue(self, num, params)
            log.info("queues now %s", {n: asdict(q.params) for n, q in self.queues.items()})
            return self.handle({"op": "get"})
        return {"ok": False, "error": f"unknown op {op!r}"}

    def _serve_control(self) -> None:
        conn, _ = self.ctl.accept()
        with conn:
            conn.settimeout(2.0)
            buf = b""
            try:
                while not buf.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                try:
                    resp = self.handle(json.loads(buf))
                except (ValueError, KeyError, TypeError, OSError) as e:
                    resp = {"ok": False, "error": f"{type(e).__name__}: {e}"}
                conn.sendall(json.dumps(resp).encode() + b"\n")
            except OSError as e:
                log.warning("control connection: %s", e)

    # -- main loop -----------------------------------------------------------------------
    def run(self) -> None:
        _precise_timers()
        while not self.stop:
            by_fd = {q.fd: q for q in self.queues.values()}
            timeout = IDLE_WAKEUP_S
            if self.heap:
                timeout = min(max(self.heap[0][0] - time.monotonic(), 0.0), IDLE_WAKEUP_S)
            ready, _, _ = select.select([self.ctl, self.wake_r, *by_fd], [], [], timeout)
            for r in ready:
                if r is self.ctl:
                    self._serve_control()
                elif r == self.wake_r:
                    os.read(self.wake_r, 512)
                elif r in by_fd:
                    by_fd[r].nfq.run(block=False)
            self.release_due()
        self.shutdown()

    def shutdown(self) -> None:
        for q in list(self.queues.values()):
            q.close()
        self.queues.clear()
        self.ctl.close()
        if os.path.exists(self.control_path):
            os.unlink(self.control_path)


def _precise_timers() -> None:
    """1 us timer slack instead of 50 us, so release times are kept to the microsecond."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.net.shaping.delayline")
    ap.add_argument("--control", required=True, help="UNIX socket path for the engine")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s delayline[%(process)d] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    DelayLine(args.control, args.seed).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
