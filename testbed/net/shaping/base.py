"""The contract every shaping engine keeps, and the words the lab uses to call it.

An engine shapes *directions*: traffic from one host to another on one network. The lab
hands the whole wanted set to `apply()` each time (absent = unshaped), can ask what the
system really holds (`read_back()`, `verify()`), whether the engine's processes live
(`health()`), and removes everything with `close()`.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from testbed.errors import InputError, LabError
from testbed.hosts.ledger import Ledger
from testbed.hosts.nsexec import netns_path, ns_argv
from testbed.model.profile import LinkProfile

log = logging.getLogger(__name__)

#: Endpoint.netns of an endpoint in the namespace the engine's own process runs in (a host's
#: agent, on that host); any other value names a namespace of this machine.
CURRENT = ""


def netns_exists(netns: str) -> bool:
    """The current namespace always exists; a named one while /run/netns holds it."""
    return netns == CURRENT or os.path.exists(netns_path(netns))


def enter_argv(netns: str) -> list[str]:
    """The argv prefix that runs a program in `netns` (none for the current namespace)."""
    return ns_argv(netns) if netns != CURRENT else []


@dataclass(frozen=True)
class Endpoint:
    """One host's presence on one network."""

    host: str  # topology host name, e.g. "client"
    netns: str  # e.g. "tb-a3f9-client"; CURRENT ("") = the engine process's own namespace
    ifname: str  # e.g. "display"
    address: str  # e.g. "198.18.1.3" (no prefix)

    def __str__(self) -> str:
        return f"{self.host}({self.address})"


@dataclass(frozen=True)
class Direction:
    """Traffic from src to dst on one network."""

    network: str
    src: Endpoint
    dst: Endpoint
    # where it is shaped: on the sender's egress ("src", the default), or on the
    # receiver's ingress through an ifb device ("dst": one-ended shaping, for a lab
    # that controls only one end of a link; the kernel engine only)
    at: str = "src"

    def __str__(self) -> str:
        where = "" if self.at == "src" else f" (shaped at {self.dst.host}'s ingress)"
        return f"{self.network}: {self.src} -> {self.dst}{where}"

    @property
    def shaper(self) -> Endpoint:
        """The endpoint whose host shapes this direction."""
        return self.dst if self.at == "dst" else self.src


def direction_from_dict(data: dict[str, Any]) -> Direction:
    return Direction(
        data["network"],
        Endpoint(**data["src"]),
        Endpoint(**data["dst"]),
        data.get("at", "src"),
    )


def stray_direction(netns: str, ifname: str, src: str | None, dst: str | None) -> Direction:
    """A Direction for something found on the system that no known direction explains."""
    return Direction(
        network="?",
        src=Endpoint(
            "?", netns if src is None else "?", ifname if src is None else "?", src or "?"
        ),
        dst=Endpoint(
            "?", netns if dst is None else "?", ifname if dst is None else "?", dst or "?"
        ),
    )


def differences(asked: LinkProfile | None, held: LinkProfile | None) -> list[str]:
    """Human-readable field differences between what was asked and what is held.

    Tolerances are the kernel's resolution: 1 us for times, 1e-6 % for probabilities
    (a 32-bit scale), 8 bit/s for rates (htb keeps bytes per second). `asked` is
    compared with its limit resolved, since that is what an engine installs.
    """
    if asked is None or asked.is_empty():
        return (
            [] if held is None or held.is_empty() else [f"not asked, but holds {held.describe()}"]
        )
    if held is None:
        return [f"asked {asked.describe()}, holds nothing"]
    a, h = asked.resolved(), held
    out = []
    for name in ("delay_ms", "jitter_ms"):
        if not math.isclose(getattr(a, name), getattr(h, name), abs_tol=1e-3):
            out.append(f"{name}: asked {getattr(a, name)}, holds {getattr(h, name)}")
    for name in ("loss_pct", "duplicate_pct", "corrupt_pct", "reorder_pct"):
        if not math.isclose(getattr(a, name), getattr(h, name), abs_tol=1e-6):
            out.append(f"{name}: asked {getattr(a, name)}, holds {getattr(h, name)}")
    if (a.rate_bit is None) != (h.rate_bit is None) or (
        a.rate_bit is not None and h.rate_bit is not None and abs(a.rate_bit - h.rate_bit) >= 8
    ):
        out.append(f"rate_bit: asked {a.rate_bit}, holds {h.rate_bit}")
    if a.jitter_ms and a.jitter_distribution != h.jitter_distribution:
        out.append(
            f"jitter_distribution: asked {a.jitter_distribution}, holds {h.jitter_distribution}"
        )
    if a.limit != h.limit:
        out.append(f"limit: asked {a.limit}, holds {h.limit}")
    return out


class ShapingEngine(ABC):
    """Shapes directions between lab hosts. Peers: the kernel engine, the userspace engine.

    Engines record every process they start in the lab's ledger, so `testbed down`
    can remove them even after a crash; qdiscs and iptables rules live in the lab's
    namespaces and go away with them.

    `here_only`: the engine runs as one host's agent (`testbed.net.agent`) and does only
    the parts of each direction whose endpoint is in its current namespace (netns
    CURRENT); the other endpoint is on another host, whose own agent does its part.
    `share()` says which part that is, and `verify()` compares only it.
    """

    name: ClassVar[str]
    #: "open" (a dead helper leaves traffic unshaped), "closed", or None (no helpers)
    fail_mode: ClassVar[str | None] = None

    def __init__(
        self, ledger: Ledger, state_dir: Path | None = None, *, here_only: bool = False
    ) -> None:
        self.ledger = ledger
        self.state_dir = Path(state_dir) if state_dir is not None else ledger.path.parent
        self.here_only = here_only
        self._asked: dict[Direction, LinkProfile] = {}
        self._known: set[Direction] = set()

    def engine_for(self, wanted: Mapping[Direction, LinkProfile]) -> str:
        """The engine that would shape `wanted` (one that delegates, e.g. to hosts'
        agents, says which of the real ones it would pick)."""
        return self.name

    # -- state that outlives this process (another `testbed` command may continue) -------
    @property
    def state_path(self) -> Path:
        return self.state_dir / f"shaping-{self.name}.json"

    def _engine_state(self) -> dict[str, Any]:
        """What a subclass needs to continue in another process (interfaces, pids)."""
        return {}

    def _restore(self, state: dict[str, Any]) -> None:
        """Take back `_engine_state()` saved by an earlier engine object on this lab."""
        return None

    def _load(self) -> None:
        """Called by subclasses at the end of __init__: continue where a previous run left."""
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise LabError(f"unreadable shaping state {self.state_path}: {e}") from None
        self._known = {direction_from_dict(d) for d in state.get("known", [])}
        self._asked = {
            direction_from_dict(a["direction"]): LinkProfile.model_validate(a["profile"])
            for a in state.get("asked", [])
        }
        self._restore(state)

    def _save(self) -> None:
        state = {
            "engine": self.name,
            "known": [asdict(d) for d in sorted(self._known, key=str)],
            "asked": [
                {"direction": asdict(d), "profile": p.model_dump(mode="json")}
                for d, p in self._asked.items()
            ],
            **self._engine_state(),
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1, sort_keys=True))
        os.replace(tmp, self.state_path)

    def _forget(self) -> None:
        self._asked = {}
        self.state_path.unlink(missing_ok=True)

    # -- the contract ------------------------------------------------------------------
    def apply(self, shapes: Mapping[Direction, LinkProfile]) -> None:
        """Make the shaped set exactly `shapes`; directions absent become unshaped.

        Idempotent: applying the same mapping twice changes nothing on the system.
        A change to a direction that is already shaped is made in place.
        """
        wanted = self._validate(shapes)
        for direction, profile in wanted.items():
            self.check(profile, direction)
        self._known.update(wanted)
        try:
            self._apply(wanted)
        finally:
            self._save()  # what was made so far is known to close(), even after a failure
        self._asked = wanted
        self._save()
        log.info("%s: %d direction(s) shaped", self.name, len(wanted))

    @abstractmethod
    def _apply(self, wanted: dict[Direction, LinkProfile]) -> None: ...

    def check(self, profile: LinkProfile, direction: Direction | None = None) -> None:
        """Raise `InputError`/`CapabilityMissing` if this engine cannot do `profile`."""
        return None

    @abstractmethod
    def read_back(self) -> dict[Direction, LinkProfile]:
        """What the system holds now, converted back to profile units (shaped ones only)."""

    def _here(self, ep: Endpoint) -> bool:
        """Whether this engine does `ep`'s side of a direction (always, unless here_only)."""
        return not self.here_only or ep.netns == CURRENT

    def share(self, direction: Direction, profile: LinkProfile) -> LinkProfile | None:
        """The part of `profile` this engine holds (here_only: the part on this host)."""
        return profile

    def verify(self) -> None:
        """Raise `LabError` listing every direction whose read-back differs from the ask."""
        held = self.read_back()
        asked = dict(self._asked)
        if self.here_only:
            asked = {d: s for d, p in asked.items() if (s := self.share(d, p)) is not None}
        problems = []
        for d in sorted(set(asked) | set(held), key=str):
            for diff in differences(asked.get(d), held.get(d)):
                problems.append(f"{d}: {diff}")
        if problems:
            raise LabError(
                f"{self.name}: the system does not hold the link profiles asked:\n  "
                + "\n  ".join(problems),
                hint="look at health(); a dead helper or a foreign qdisc explains most",
            )

    @abstractmethod
    def health(self) -> dict[str, Any]:
        """{"engine", "ok", "fail_mode", ...}: whether everything the engine runs is alive."""

    @abstractmethod
    def close(self) -> None:
        """Remove every qdisc, rule and process this engine made. Safe to call twice."""

    @property
    def asked(self) -> dict[Direction, LinkProfile]:
        return dict(self._asked)

    def __enter__(self) -> ShapingEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------
    @staticmethod
    def _place(ep: Endpoint) -> Any:
        """What tells two endpoints' places apart (a namespace; a host and its namespace
        where the endpoints are on several machines)."""
        return ep.netns

    @classmethod
    def _validate(cls, shapes: Mapping[Direction, LinkProfile]) -> dict[Direction, LinkProfile]:
        wanted: dict[Direction, LinkProfile] = {}
        egress: dict[tuple[Any, str, str], Direction] = {}
        ingress: dict[tuple[Any, str, str], Direction] = {}
        for d, profile in shapes.items():
            if not isinstance(d, Direction) or not isinstance(profile, LinkProfile):
                raise InputError(f"expected Direction -> LinkProfile, found {d!r} -> {profile!r}")
            for ep in (d.src, d.dst):
                try:
                    ipaddress.IPv4Address(ep.address)
                except ValueError:
                    raise InputError(
                        f"{d}: {ep.host} address {ep.address!r} is not an IPv4 address"
                    ) from None
            if cls._place(d.src) == cls._place(d.dst):
                raise InputError(f"{d}: source and destination are in the same namespace")
            if profile.is_empty():
                continue
            for key, seen in (
                ((cls._place(d.src), d.src.ifname, d.dst.address), egress),
                ((cls._place(d.dst), d.dst.ifname, d.src.address), ingress),
            ):
                if key in seen and seen[key] != d:
                    raise InputError(f"{d} and {seen[key]} are the same traffic")
                seen[key] = d
            wanted[d] = profile
        return wanted
