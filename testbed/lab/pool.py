"""A host pool: workers lease disjoint sets of hosts, and a crashed worker's lease expires.

The inventory lists more hosts than one scenario needs; each pytest-xdist worker (or any
process) leases the hosts its scenario needs and releases them after. A lease is one file
per host in a shared lease directory, written under an exclusive lock; it carries an
expiry, renewed while the holder works, so hosts held by a worker that died come back
by themselves once the lease runs out. Nothing here knows what a host is beyond its name
and roles.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import LabError
from testbed.model.hostspec import HostSpec
from testbed.model.inventory import Inventory, load_inventory
from testbed.model.topology import Topology

log = logging.getLogger(__name__)

# Machine-wide, like lab id claims: two state roots leasing the same real hosts must see
# each other's leases. What stays here is a lock file per inventory, no lab state.
POOL_LEASES = Path("/run/testbed-pool")


@dataclass
class Lease:
    pool: HostPool
    owner: str
    hosts: dict[str, list[str]]  # role -> host names
    expires: float

    @property
    def names(self) -> list[str]:
        return sorted({h for hs in self.hosts.values() for h in hs})

    def renew(self) -> None:
        self.expires = self.pool._write(self.names, self.owner)

    def release(self) -> None:
        self.pool._release(self.names, self.owner)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


class HostPool:
    """Hosts by name with their roles; leases live in `lease_dir` (shared by the workers)."""

    def __init__(self, hosts: Mapping[str, list[str]], lease_dir: Path, ttl_s: float = 900):
        self.hosts = {name: list(roles) for name, roles in hosts.items()}
        self.dir = Path(lease_dir)
        self.ttl_s = ttl_s
        self.dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.dir / ".lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _holder(self, host: str, now: float) -> str | None:
        """Who holds `host` now (None: free, or its lease ran out)."""
        try:
            entry = json.loads((self.dir / f"{host}.lease").read_text())
        except (OSError, ValueError):
            return None
        return str(entry["owner"]) if float(entry.get("expires", 0)) > now else None

    def holders(self) -> dict[str, str]:
        now = time.time()
        return {h: o for h in self.hosts if (o := self._holder(h, now)) is not None}

    def _write(self, names: list[str], owner: str) -> float:
        expires = time.time() + self.ttl_s
        with self._locked():
            for h in names:
                if self._holder(h, time.time()) not in (None, owner):
                    raise LabError(
                        f"lease of {h} by {owner} was lost (it expired and was "
                        "taken); renew more often than the lease lasts"
                    )
                self._put(h, owner, expires)
        return expires

    def _put(self, host: str, owner: str, expires: float) -> None:
        """Write one lease file atomically (callers hold the lock)."""
        tmp = self.dir / f".{host}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"owner": owner, "pid": os.getpid(), "expires": expires}))
        tmp.replace(self.dir / f"{host}.lease")

    def _release(self, names: list[str], owner: str) -> None:
        with self._locked():
            for h in names:
                if self._holder(h, time.time()) == owner:
                    (self.dir / f"{h}.lease").unlink(missing_ok=True)

    def _pick(self, need: Mapping[str, int], now: float) -> dict[str, list[str]] | None:
        free = [h for h in sorted(self.hosts) if self._holder(h, now) is None]
        chosen: dict[str, list[str]] = {}
        taken: set[str] = set()
        for role, count in need.items():
            fits = [h for h in free if role in self.hosts[h] and h not in taken][:count]
            if len(fits) < count:
                return None
            chosen[role] = fits
            taken.update(fits)
        return chosen

    def lease(
        self, need: Mapping[str, int], owner: str, *, timeout_s: float = 600, poll_s: float = 0.5
    ) -> Lease:
        """Lease `need` (role -> how many hosts), disjoint from every live lease; wait for it."""
        for role, count in need.items():
            have = sum(role in roles for roles in self.hosts.values())
            if count > have:
                raise LabError(f"the pool has {have} host(s) with role {role}, {count} asked")
        deadline = time.monotonic() + timeout_s
        while True:
            with self._locked():
                chosen = self._pick(need, time.time())
                if chosen is not None:
                    names = sorted({h for hs in chosen.values() for h in hs})
                    expires = time.time() + self.ttl_s
                    for h in names:
                        self._put(h, owner, expires)
                    return Lease(self, owner, chosen, expires)
            if time.monotonic() > deadline:
                raise LabError(
                    f"no free hosts for {dict(need)} after {timeout_s:.0f} s "
                    f"(held: {self.holders()})"
                )
            time.sleep(poll_s)


# -- topologies whose hosts come from a pool ------------------------------------------------
def pooled_hosts(topology: Topology) -> dict[str, str]:
    """Topology host -> the inventory group it is leased from (`from_pool`)."""
    return {n: h.from_pool for n, h in topology.hosts.items() if h.from_pool is not None}


def pool_of(topology: Topology, ttl_s: float = 900) -> tuple[HostPool, Inventory]:
    """The inventory's hosts as a pool (a host's roles: its groups), leases machine-wide."""
    assert topology.inventory is not None
    inv = load_inventory(topology.inventory)
    key = hashlib.sha256(str(Path(inv.file).resolve()).encode()).hexdigest()[:12]
    hosts = {h: inv.groups_of(h) for h in inv.hosts}
    return HostPool(hosts, POOL_LEASES / key, ttl_s=ttl_s), inv


def bind(topology: Topology, inv: Inventory, lease: Lease) -> tuple[Topology, dict[str, str]]:
    """`topology` with each pooled host replaced by a leased inventory host's fields, and
    which inventory host each pooled host became."""
    left = {group: list(names) for group, names in lease.hosts.items()}
    hosts = dict(topology.hosts)
    chosen: dict[str, str] = {}
    for name, group in pooled_hosts(topology).items():
        real = left[group].pop(0)
        chosen[name] = real
        spec = topology.hosts[name]
        data = {**inv.host(real), **spec.model_dump(exclude_unset=True)}
        data.update(kind="ssh", from_pool=None)
        bound = HostSpec.model_validate(data)
        for net_name, net in topology.networks.items():
            if name not in net.members:
                continue
            if net_name not in bound.interfaces or net_name not in bound.addresses:
                raise LabError(
                    f"pool host {real} (for {name}) has no interface or address on network "
                    f"{net_name}: give it interfaces.{net_name} and addresses.{net_name} "
                    f"in {inv.file}"
                )
            if bound.addresses[net_name] not in net.subnet:
                raise LabError(
                    f"pool host {real} (for {name}): {bound.addresses[net_name]} is not in "
                    f"{net_name}'s subnet {net.subnet}"
                )
        hosts[name] = bound
    return topology.model_copy(update={"hosts": hosts}), chosen


def default_owner() -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    return f"{socket.gethostname()}:{os.getpid()}:{worker}"


@contextmanager
def leased(
    topology: Topology, *, owner: str | None = None, timeout_s: float = 1800
) -> Iterator[tuple[Topology, dict[str, str]]]:
    """The topology with its pooled hosts bound to leased ones (renewed while in use).

    Yields the bound topology and topology host -> leased inventory host. A topology
    without pooled hosts comes back as it is.
    """
    wanted = pooled_hosts(topology)
    if not wanted:
        yield topology, {}
        return
    pool, inv = pool_of(topology)
    lease = pool.lease(Counter(wanted.values()), owner or default_owner(), timeout_s=timeout_s)
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(pool.ttl_s / 3):
            try:
                lease.renew()
            except LabError as e:
                log.warning("%s", e)
                return

    keeper = threading.Thread(target=renew, name="pool-lease", daemon=True)
    keeper.start()
    try:
        yield bind(topology, inv, lease)
    finally:
        stop.set()
        keeper.join(timeout=5)
        lease.release()
