"""Delay distributions: iproute2's netem tables, shared by both engines.

netem draws a jittered delay as ``mu + sigma * table[random] / 8192`` from a table that
tc loads from iproute2's ``*.dist`` files; "uniform" needs no table. The kernel engine
sends the same table to netem and the userspace delay line samples it the same way, so
"normal" means the same shape whichever engine runs. The tables are read from the
machine's iproute2 (a package the lab installs anyway), not reinvented here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import cache
from pathlib import Path

from testbed.errors import CapabilityMissing
from testbed.model.profile import Distribution

NETEM_DIST_SCALE = 8192
TABLE_DIRS = (
    "/usr/lib/x86_64-linux-gnu/tc",
    "/usr/lib/aarch64-linux-gnu/tc",
    "/usr/lib64/tc",
    "/usr/lib/tc",
    "/usr/share/tc",
    "/lib/tc",
)
TABLED: tuple[Distribution, ...] = ("normal", "pareto", "paretonormal")


@cache
def table(name: str) -> tuple[int, ...]:
    """The netem table for a distribution ("uniform" -> empty: netem's built-in uniform)."""
    if name == "uniform":
        return ()
    if name not in TABLED:
        raise ValueError(f"unknown delay distribution {name!r}")
    for d in TABLE_DIRS:
        path = Path(d) / f"{name}.dist"
        if path.is_file():
            return _parse(path.read_text())
    raise CapabilityMissing(
        f"no {name}.dist table for the {name!r} jitter distribution "
        f"(looked in {', '.join(TABLE_DIRS)})",
        hint="install iproute2 (Debian: apt-get install iproute2)",
    )


def _parse(text: str) -> tuple[int, ...]:
    values: list[int] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0]
        values.extend(int(v) for v in line.split())
    return tuple(values)


def name_of(dist_table: tuple[int, ...]) -> Distribution | None:
    """Which distribution a table is (None if it is none of ours)."""
    if not dist_table:
        return "uniform"
    for name in TABLED:
        try:
            if table(name) == tuple(dist_table):
                return name
        except CapabilityMissing:
            continue
    return None


def sampler(name: str, mu_ms: float, sigma_ms: float, rng: random.Random) -> Callable[[], float]:
    """A function returning one delay in ms, the way netem's tabledist() draws it (>= 0)."""
    if sigma_ms == 0:
        return lambda: mu_ms
    if name == "uniform":
        return lambda: max(0.0, mu_ms + rng.uniform(-sigma_ms, sigma_ms))
    tab = table(name)
    scale = sigma_ms / NETEM_DIST_SCALE
    n = len(tab)
    return lambda: max(0.0, mu_ms + scale * tab[rng.randrange(n)])
