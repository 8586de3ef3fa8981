"""The guard's decisions, apart from its libvirt calls: observations in, actions out.

`GuardPolicy.step(obs)` gets what the guard saw at one moment (the client's
channels on source and destination from libvirt's graphics events, whether
the migration's transfer began, whether the event stream and the destination
are still there) and answers what to do: hold, release, send
`client_migrate_info`. Nothing here calls libvirt, so the same policy runs on a
live migration (testbed.spice.guard) and on server events recorded in a run
(tests/test_guard_policy.py). Every time is seconds since the migration began.

Fail-safe: an observation that carries a fault (an exception, a lost event
stream, a dead destination) releases a hold at once and settles the result as
`failed-released`; a hold still in place when the migration ends is `held`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from testbed.spice.events import ServerEvent, open_channels

SPICE_MIGRATE_TIMEOUT_S = 10.0  # spice-server's MIGRATE_TIMEOUT for the client's pre-connect

# guard results: what the guard did in the end
WATCHING = "watching"  # still running
NOT_NEEDED = "not-needed"  # never held: the client was on the destination in time, or absent
RELEASED = "released"  # held, then released once the client reached the destination
HELD = "held"  # held until the migration ended
GAVE_UP = "gave-up"  # held past give_up_s, then released
FAILED_RELEASED = "failed-released"  # a fault (error, lost events, dead destination): released


@dataclass(frozen=True)
class PolicyConfig:
    resend_after_s: float = SPICE_MIGRATE_TIMEOUT_S
    give_up_s: float = 90.0
    settle_s: float = 0.3  # channel counts must be stable this long to release


@dataclass(frozen=True)
class Observation:
    t: float  # seconds since the migration began
    transferring: bool  # the migration's job stats show bytes sent
    on_src: int  # the client's open channels on the source
    on_dst: int  # ... and on the destination
    client_first_src_t: float | None = None  # the client's first channel on the source
    client_rtt_s: float = 0.0  # the client's round trip to the destination
    dst_activity_t: float | None = None  # the client's last link event on the destination
    fault: str | None = None  # why the guard can no longer trust what it sees


@dataclass(frozen=True)
class Action:
    t: float
    kind: str  # transfer-started, hold, release, client_migrate_info
    why: str = ""
    on_src: int = 0
    on_dst: int = 0


@dataclass
class GuardPolicy:
    cfg: PolicyConfig = field(default_factory=PolicyConfig)
    result: str = WATCHING
    reason: str = ""
    held_s: float = 0.0
    transfer_started: float | None = None
    hold_since: float | None = None
    last_cmi: float | None = None
    stable_since: float | None = None

    @property
    def holding(self) -> bool:
        return self.hold_since is not None

    @property
    def settled(self) -> bool:
        """True once the guard has nothing more to do for this migration."""
        return self.result in (RELEASED, GAVE_UP, FAILED_RELEASED, HELD, NOT_NEEDED)

    def step(self, o: Observation) -> list[Action]:
        if self.settled:
            return []
        if o.fault:
            return self.fail(o.t, o.fault)
        out: list[Action] = []
        if self.transfer_started is None:
            if not o.transferring:
                return out
            # libvirt sent its own client_migrate_info just before the transfer began
            self.transfer_started = o.t
            out.append(Action(o.t, "transfer-started"))
        if self.hold_since is None:
            if o.on_src > 0 and o.on_dst < o.on_src:
                self.hold_since, self.stable_since = o.t, None
                out.append(Action(o.t, "hold", on_src=o.on_src, on_dst=o.on_dst))
                first = o.client_first_src_t
                if first is not None and first >= self.transfer_started:
                    out.append(self._cmi(o.t, "client connected after the migration began"))
            return out
        if o.on_dst >= max(o.on_src, 1):
            self.stable_since = o.t if self.stable_since is None else self.stable_since
            # the destination counts a channel once its link handshake is done, but the
            # client still has to tell the source it is ready (one more trip over its
            # link): wait two of the client's round trips, as the destination measured it
            if o.t - self.stable_since >= self.cfg.settle_s + 2 * o.client_rtt_s:
                why = (
                    f"client has {o.on_dst} channel(s) on the destination "
                    f"(its round trip there: {o.client_rtt_s * 1000:.0f} ms)"
                )
                out.append(self._release(o.t, why, RELEASED, o))
            return out
        self.stable_since = None
        if o.on_src == 0 and o.on_dst == 0:
            out.append(self._release(o.t, "the client left", RELEASED, o))
        elif o.t - self.hold_since > self.cfg.give_up_s:
            why = f"client not on the destination after {self.cfg.give_up_s:.0f} s"
            out.append(self._release(o.t, why, GAVE_UP, o))
        else:
            since = self.last_cmi if self.last_cmi is not None else self.hold_since
            # a client still linking its channels to the destination (a slow link, TLS)
            # is not timed out: a second MIGRATE_BEGIN while its first connect runs
            # breaks spice-gtk's migration session
            if o.dst_activity_t is not None:
                since = max(since, o.dst_activity_t)
            if o.t - since > self.cfg.resend_after_s:
                out.append(self._cmi(o.t, "spice-server's connect timeout lapsed"))
        return out

    def fail(self, t: float, reason: str) -> list[Action]:
        """A fault: release at once (if holding) and settle as failed-released."""
        if self.settled:
            return []
        out = [self._release(t, f"fail-safe: {reason}", FAILED_RELEASED)] if self.holding else []
        self.result, self.reason = FAILED_RELEASED, reason
        return out

    def migration_ended(self, t: float) -> list[Action]:
        """The migration is over: a hold still in place lasted until the end."""
        if self.holding:
            self.held_s += t - (self.hold_since or t)
            self.hold_since = None
            self.result, self.reason = HELD, "held until the migration ended"
            return [Action(t, "held-to-end", why=self.reason)]
        if self.result == WATCHING:
            self.result = NOT_NEEDED
        return []

    def _cmi(self, t: float, why: str) -> Action:
        self.last_cmi = t
        return Action(t, "client_migrate_info", why=why)

    def _release(self, t: float, why: str, result: str, o: Observation | None = None) -> Action:
        self.held_s += t - (self.hold_since or t)
        self.hold_since = None
        self.result, self.reason = result, why
        return Action(
            t, "release", why=why, on_src=o.on_src if o else 0, on_dst=o.on_dst if o else 0
        )


def client_rtt_s(dst_events: Iterable[ServerEvent], client_addr: str) -> float:
    """The client's round trip to the destination: the longest connect -> initialize
    of its channels there (the SPICE link handshake is one round trip)."""
    connects: dict[str, float] = {}
    rtt = 0.0
    for e in dst_events:
        if e.kind != "graphics" or not e.remote or e.remote[0] != client_addr:
            continue
        if e.phase == "connect":
            connects[e.remote[1]] = e.t
        elif e.phase == "initialize" and e.remote[1] in connects:
            rtt = max(rtt, e.t - connects[e.remote[1]])
    return rtt


def first_initialize(src_events: Iterable[ServerEvent], client_addr: str) -> float | None:
    for e in src_events:
        if e.kind == "graphics" and e.remote and e.remote[0] == client_addr:
            if e.phase == "initialize":
                return e.t
    return None


def observe(
    events: list[ServerEvent],
    *,
    src: str,
    dst: str,
    client_addr: str,
    now: float,
    origin: float,
    transferring: bool,
    fault: str | None = None,
) -> Observation:
    """The observation at monotonic time `now` from the server events seen up to then;
    `origin` is the migration's start (monotonic)."""
    seen = [e for e in events if e.t <= now]
    on_src = [e for e in seen if e.host == src]
    on_dst = [e for e in seen if e.host == dst]
    first = first_initialize(on_src, client_addr)
    mine = [e for e in on_dst if e.kind == "graphics" and e.remote and e.remote[0] == client_addr]
    return Observation(
        t=now - origin,
        transferring=transferring,
        on_src=open_channels(on_src, client_addr),
        on_dst=open_channels(on_dst, client_addr),
        client_first_src_t=None if first is None else first - origin,
        client_rtt_s=client_rtt_s(on_dst, client_addr),
        dst_activity_t=mine[-1].t - origin if mine else None,
        fault=fault,
    )
