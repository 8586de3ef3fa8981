"""The userspace engine: rate in the kernel, everything else in an NFQUEUE delay line.

For kernels without sch_netem. Per direction src -> dst:
- rate: a tbf under an htb class on src's egress (the kernel engine's stack,
  `egress.py`, with a pfifo holding the queue limit instead of netem);
- delay, jitter (uniform/normal/pareto/paretonormal), loss, duplicate, corrupt,
  reorder: an iptables rule in dst's namespace (`raw PREROUTING -i IF -s SRC ->
  NFQUEUE --queue-bypass`) feeding the delay line process of that namespace
  (`delayline.py`). Nothing in the profile is unsupported; duplicates are re-sent to
  the receiver's own stack through a raw socket rather than cloned in the kernel.

Profile changes go to the running process over its control socket (no restart): a
TCP flow through the link survives them. Fail-open: if a delay line dies, its queues
are bypassed and the directions it served pass unshaped (rate still applies);
`health()` says which. `apply()` restarts a dead line. Processes are started with
nsenter into the receiving namespace (none for CURRENT, the engine's own namespace)
in a session of their own, so they outlive the process that started them, and are
recorded in the lab's ledger.

As a host's agent (`here_only`), the rate is done where src is and the delay line
where dst is: each host's agent does its own half of a direction.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import testbed
from testbed.errors import CapabilityMissing, LabError
from testbed.hosts.ledger import Ledger, process_start_time, same_process
from testbed.model.profile import LinkProfile
from testbed.net.shaping import distributions, iptables
from testbed.net.shaping.base import (
    CURRENT,
    Direction,
    ShapingEngine,
    enter_argv,
    netns_exists,
    stray_direction,
)
from testbed.net.shaping.egress import Egress, Leaf, Pfifo, Tbf, clear_all

log = logging.getLogger(__name__)

QUEUE_BASE = 0x7400  # NFQUEUE numbers are per namespace; ours start here
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 3.0
MAX_UNIX_PATH = 100
#: the profile fields the delay line holds (the rate is the sender's tbf)
_LINE_FIELDS = (
    "delay_ms",
    "jitter_ms",
    "jitter_distribution",
    "loss_pct",
    "duplicate_pct",
    "corrupt_pct",
    "reorder_pct",
)


def _where(ns: str) -> str:
    return ns if ns != CURRENT else "this host"


def line_params(p: LinkProfile) -> dict[str, Any]:
    """A profile's delay-line half, as the process's control protocol takes it."""
    return {
        "delay_ms": p.delay_ms,
        "jitter_ms": p.jitter_ms,
        "distribution": p.jitter_distribution,
        "loss_pct": p.loss_pct,
        "duplicate_pct": p.duplicate_pct,
        "corrupt_pct": p.corrupt_pct,
        "reorder_pct": p.reorder_pct,
        "limit": p.effective_limit(),
    }


@dataclass
class DelayLineProcess:
    """One running delay line: the process, its control socket and its log."""

    netns: str
    control: Path
    log_path: Path
    pid: int
    start_time: int | None
    proc: subprocess.Popen[bytes] | None = None

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return same_process(self.pid, self.start_time) and not _zombie(self.pid)

    def request(self, req: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(str(self.control))
                s.sendall(json.dumps(req).encode() + b"\n")
                buf = b""
                while not buf.endswith(b"\n"):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
        except OSError as e:
            raise LabError(
                f"delay line in {_where(self.netns)} (pid {self.pid}) did not answer: {e}"
            ) from None
        resp = json.loads(buf or b"{}")
        if not resp.get("ok"):
            where = _where(self.netns)
            raise LabError(f"delay line in {where}: {resp.get('error', 'no answer')}")
        return resp

    def log_tail(self, n: int = 1500) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""


def _zombie(pid: int) -> bool:
    """Dead but not yet reaped (its parent is another engine object of this process)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


class UserspaceEngine(ShapingEngine):
    """htb for rate on the sender, an NFQUEUE delay line in the receiver for the rest."""

    name = "userspace-nfqueue"
    fail_mode = "open"

    def __init__(
        self,
        ledger: Ledger,
        state_dir: Path | None = None,
        *,
        python: str = sys.executable,
        here_only: bool = False,
    ) -> None:
        super().__init__(ledger, state_dir, here_only=here_only)
        self.python = python
        self._egress: dict[tuple[str, str], Egress] = {}
        self._lines: dict[str, DelayLineProcess] = {}
        self._line_netns: set[str] = set()
        self._load()

    def _engine_state(self) -> dict[str, Any]:
        return {
            "egress": [[ns, ifname] for ns, ifname in self._egress],
            "line_netns": sorted(self._line_netns),
            "lines": {
                ns: {
                    "pid": ln.pid,
                    "start_time": ln.start_time,
                    "control": str(ln.control),
                    "log": str(ln.log_path),
                }
                for ns, ln in self._lines.items()
            },
        }

    def _restore(self, state: dict[str, Any]) -> None:
        for ns, ifname in state.get("egress", []):
            self._egress[(ns, ifname)] = Egress(ns, ifname)
        self._line_netns = set(state.get("line_netns", []))
        for ns, ln in state.get("lines", {}).items():
            self._lines[ns] = DelayLineProcess(
                ns, Path(ln["control"]), Path(ln["log"]), ln["pid"], ln["start_time"]
            )

    def check(self, profile: LinkProfile, direction: Direction | None = None) -> None:
        if direction is not None and direction.at == "dst" and profile.rate_bit is not None:
            # the delay line already runs on the receiver; the rate is the sender's tbf
            raise CapabilityMissing(
                f"{direction}: the userspace engine shapes a rate on the sender only; "
                "one-ended shaping of a rate needs the kernel engine (an ifb on the receiver)",
                hint="delay, jitter and loss need no rate: the userspace delay line runs on "
                "the receiver already",
            )
        if profile.jitter_ms:
            distributions.table(profile.jitter_distribution)  # CapabilityMissing if absent

    def share(self, direction: Direction, profile: LinkProfile) -> LinkProfile | None:
        """The rate where src is, the delay line where dst is (both when both are here)."""
        fields: dict[str, Any] = {}
        if profile.rate_bit is not None and self._here(direction.src):
            fields.update(rate_bit=profile.rate_bit, limit=profile.effective_limit())
        if profile.needs_delay_line() and self._here(direction.dst):
            fields.update(
                {k: getattr(profile, k) for k in _LINE_FIELDS}, limit=profile.effective_limit()
            )
        return LinkProfile.model_construct(**fields) if fields else None

    # -- apply -----------------------------------------------------------------------------
    def _apply(self, wanted: dict[Direction, LinkProfile]) -> None:
        per_if: dict[tuple[str, str], dict[str, Leaf]] = {k: {} for k in self._egress}
        per_ns: dict[str, dict[tuple[str, str], dict[str, Any]]] = {
            ns: {} for ns in self._line_netns
        }
        for d, p in wanted.items():
            if p.rate_bit is not None and self._here(d.src):
                per_if.setdefault((d.src.netns, d.src.ifname), {})[d.dst.address] = Tbf(
                    p.rate_bit, Pfifo(p.effective_limit())
                )
            if p.needs_delay_line() and self._here(d.dst):
                per_ns.setdefault(d.dst.netns, {})[(d.dst.ifname, d.src.address)] = line_params(p)
        # Delay lines first: a new direction's queue is bound before its rule exists.
        for ns, queues in per_ns.items():
            self._apply_line(ns, queues)
        for (ns, ifname), peers in per_if.items():
            if (ns, ifname) not in self._egress:
                self._egress[(ns, ifname)] = Egress(ns, ifname)
            self._egress[(ns, ifname)].apply(peers)

    def _apply_line(self, ns: str, wanted: dict[tuple[str, str], dict[str, Any]]) -> None:
        exists = netns_exists(ns)
        rules = {(r.ifname, r.src): r for r in iptables.list_rules(ns)} if exists else {}
        if not wanted:
            if exists:
                iptables.remove_chain(ns)
            self._stop_line(ns)
            self._line_netns.discard(ns)
            return
        self._line_netns.add(ns)
        line = self._ensure_line(ns)
        used = {r.queue for r in rules.values()}
        free = (q for q in range(QUEUE_BASE, QUEUE_BASE + 0x8000) if q not in used)
        queue_of = {key: rules[key].queue if key in rules else next(free) for key in wanted}
        removing = [r for key, r in rules.items() if key not in wanted]
        final = {str(queue_of[key]): params for key, params in wanted.items()}

        # 1. the process serves every queue a rule may still point at
        held = line.request({"op": "get"})["queues"]
        first = dict(final)
        for r in removing:
            if str(r.queue) in held:
                first[str(r.queue)] = held[str(r.queue)]["params"]
        line.request({"op": "set", "queues": first})
        # 2. rules for new directions, then away with old ones, then the final set
        for key in wanted:
            if key not in rules:
                iptables.add_rule(ns, iptables.QueueRule(key[0], key[1], queue_of[key]))
        for r in removing:
            iptables.delete_rule(ns, r)
        if first != final:
            line.request({"op": "set", "queues": final})

    # -- delay line processes ----------------------------------------------------------------
    def _control_path(self, ns: str) -> Path:
        path = self.state_dir / f"delayline-{ns or 'here'}.sock"
        if len(str(path)) > MAX_UNIX_PATH:  # AF_UNIX paths are limited to 108 bytes
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
            path = Path(tempfile.gettempdir()) / f"tb-dl-{digest}.sock"
        return path

    def _ensure_line(self, ns: str) -> DelayLineProcess:
        line = self._lines.get(ns)
        if line is not None and line.alive():
            return line
        if line is not None:
            log.warning("delay line in %s (pid %d) died; restarting it", ns, line.pid)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        control = self._control_path(ns)
        log_path = self.state_dir / f"delayline-{ns or 'here'}.log"
        argv = [*enter_argv(ns), self.python, "-m", "testbed.net.shaping.delayline"]
        argv += ["--control", str(control)]
        env = dict(os.environ)
        root = str(Path(testbed.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=logf,
                env=env, start_new_session=True,
            )  # fmt: skip
        self.ledger.record_process("process", proc.pid, name="delayline", netns=ns)  # "": here
        line = DelayLineProcess(ns, control, log_path, proc.pid, process_start_time(proc.pid), proc)
        self._lines[ns] = line
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not line.alive():
                raise LabError(
                    f"delay line in {_where(ns)} exited at start ({proc.poll()}):\n"
                    + line.log_tail()
                )
            try:
                line.request({"op": "ping"}, timeout=1.0)
                break
            except LabError:
                if time.monotonic() > deadline:
                    self._stop_line(ns)
                    raise LabError(
                        f"delay line in {_where(ns)} did not answer in {START_TIMEOUT_S:g}s"
                    ) from None
                time.sleep(0.02)
        log.info("delay line in %s started (pid %d)", ns, line.pid)
        return line

    def _stop_line(self, ns: str) -> None:
        line = self._lines.pop(ns, None)
        if line is None:
            return
        if line.alive():
            os.kill(line.pid, signal.SIGTERM)  # releases held packets, unbinds, exits
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while line.alive() and time.monotonic() < deadline:
                time.sleep(0.02)
            if line.alive():
                log.warning("delay line in %s ignored SIGTERM; killing it", ns)
                os.kill(line.pid, signal.SIGKILL)
                if line.proc is not None:
                    line.proc.wait()
        elif line.proc is not None:
            line.proc.poll()
        if line.control.exists():
            line.control.unlink()

    # -- read back, health, close ------------------------------------------------------------
    def read_back(self) -> dict[Direction, LinkProfile]:
        by_egress = {(d.src.netns, d.src.ifname, d.dst.address): d for d in self._known}
        by_ingress = {(d.dst.netns, d.dst.ifname, d.src.address): d for d in self._known}
        parts: dict[Direction, dict[str, Any]] = {}
        for (ns, ifname), eg in self._egress.items():
            for dst, leaf in eg.read().items():
                d = by_egress.get((ns, ifname, dst)) or stray_direction(ns, ifname, None, dst)
                if not isinstance(leaf, Tbf) or not isinstance(leaf.child, Pfifo):
                    raise LabError(
                        f"{eg!r}: the class for {dst} holds a qdisc testbed did not make"
                    )
                parts.setdefault(d, {}).update(rate_bit=leaf.rate_bit, limit=leaf.child.limit)
        for ns in sorted(self._line_netns):
            line = self._lines.get(ns)
            queues = line.request({"op": "get"})["queues"] if line and line.alive() else {}
            for r in iptables.list_rules(ns):
                d = by_ingress.get((ns, r.ifname, r.src)) or stray_direction(
                    ns, r.ifname, r.src, None
                )
                q = queues.get(str(r.queue))
                if q is None:
                    continue  # no process on this queue: bypassed, so not shaped
                lp = q["params"]
                parts.setdefault(d, {}).update(
                    delay_ms=lp["delay_ms"],
                    jitter_ms=lp["jitter_ms"],
                    jitter_distribution=lp["distribution"],
                    loss_pct=lp["loss_pct"],
                    duplicate_pct=lp["duplicate_pct"],
                    corrupt_pct=lp["corrupt_pct"],
                    reorder_pct=lp["reorder_pct"],
                    limit=lp["limit"],
                )
        return {d: LinkProfile.model_construct(**f) for d, f in parts.items()}

    def health(self) -> dict[str, Any]:
        lines = []
        for ns, line in sorted(self._lines.items()):
            entry: dict[str, Any] = {"netns": ns, "pid": line.pid, "alive": line.alive()}
            if entry["alive"]:
                try:
                    entry["queues"] = line.request({"op": "get"}, timeout=2.0)["queues"]
                except LabError as e:
                    entry.update(alive=False, error=str(e))
            lines.append(entry)
        dead = {e["netns"] for e in lines if not e["alive"]}
        dead |= {ns for ns in self._line_netns if ns not in self._lines}
        unshaped = sorted(
            str(d) for d, p in self._asked.items() if p.needs_delay_line() and d.dst.netns in dead
        )
        return {
            "engine": self.name,
            "ok": not dead,
            "fail_mode": self.fail_mode,
            "delay_lines": lines,
            "unshaped": unshaped,  # fail-open: these pass without delay/loss now
            "interfaces": [f"{ns}:{ifn}" for ns, ifn in self._egress],
        }

    def close(self) -> None:
        for ns in sorted(self._line_netns):
            if netns_exists(ns):
                try:
                    iptables.remove_chain(ns)
                except LabError as e:
                    log.warning("could not remove rules in %s: %s", ns, e)
        for ns in list(self._lines):
            self._stop_line(ns)
        self._line_netns.clear()
        clear_all(self._egress)
        self._forget()
