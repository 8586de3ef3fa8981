"""The outcome matrix: the swept parameters as rows and columns, one scenario per cell.

Rows are the first axis, columns every combination of the others, read from each
scenario's `params` in the order the playbook wrote them. An explicit scenario has
no params (the playbook model gives it none), so a playbook that writes a matrix
cell out by hand (to expect something else there) names it as the matrix would:
its name's segments ("before/rtt-0ms/fix-off") are matched to the axes the matrix
scenarios' names show, and it takes its place in the table.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

from testbed.model.result import ScenarioResult

SEPARATORS = ("/", "-")

Params = dict[str, str]


@dataclass
class Matrix:
    row_axis: str
    row_values: list[str]
    col_axes: list[str]
    col_values: list[tuple[str, ...]]  # one tuple of col_axes values per column
    cells: dict[tuple[str, tuple[str, ...]], ScenarioResult] = field(default_factory=dict)
    outside: list[ScenarioResult] = field(default_factory=list)  # scenarios with no cell

    def cell(self, row: str, col: tuple[str, ...]) -> ScenarioResult | None:
        return self.cells.get((row, col))


def scenario_params(scenarios: list[ScenarioResult]) -> list[Params]:
    """Each scenario's params; for one without, what its name says (or {})."""
    known = [(s.name, dict(s.params)) for s in scenarios]
    named = [(n, p) for n, p in known if p]
    return [p if p else _from_name(n, named) for n, p in known]


def _from_name(name: str, named: list[tuple[str, Params]]) -> Params:
    axes = list(dict.fromkeys(a for _, p in named for a in p))
    for sep in SEPARATORS:
        parts = name.split(sep)
        peers = [(n.split(sep), p) for n, p in named if len(n.split(sep)) == len(parts)]
        found: Params = {}
        for i, axis in _positions(peers, axes, len(parts)):
            pairs = [(segs[i], p[axis]) for segs, p in peers]
            value = next((v for seg, v in pairs if seg == parts[i]), None)
            found_value = value if value is not None else _by_pattern(parts[i], pairs)
            if found_value is not None:
                found[axis] = found_value
        if axes and set(found) == set(axes):
            return {a: found[a] for a in axes}
    return {}


def _by_pattern(segment: str, pairs: list[tuple[str, str]]) -> str | None:
    """A value no matrix scenario took ("at80%" when the matrix excluded it), read from a
    segment that wraps it the way the others wrap theirs ("rtt-{rtt}": prefix "rtt-")."""
    shapes = set()
    for seg, value in pairs:
        at = seg.find(value)
        if at < 0:
            return None
        shapes.add((seg[:at], seg[at + len(value) :]))
    if len(shapes) != 1:
        return None
    prefix, suffix = shapes.pop()
    inner = segment[len(prefix) : len(segment) - len(suffix)]
    ok = segment.startswith(prefix) and segment.endswith(suffix) and inner
    return inner if ok else None


def _positions(
    peers: list[tuple[list[str], Params]], axes: list[str], n: int
) -> Iterable[tuple[int, str]]:
    """(segment position, axis) where segment and axis value determine each other."""
    for i in range(n):
        fits = [a for a in axes if peers and _bijective((segs[i], p.get(a)) for segs, p in peers)]
        if len(fits) == 1:
            yield i, fits[0]


def _bijective(pairs: Iterable[tuple[str, str | None]]) -> bool:
    fwd: dict[str, str | None] = {}
    back: dict[str | None, str] = {}
    for seg, value in pairs:
        if value is None or fwd.setdefault(seg, value) != value:
            return False
        if back.setdefault(value, seg) != seg:
            return False
    return True


def _axes(params: list[Params], expanded: list[Params]) -> dict[str, list[str]]:
    """Axis -> values, in the order the playbook wrote them.

    First appearance alone would put a value first when the cells before it were
    excluded; the matrix expands as a product, so within scenarios that agree on every
    other axis the values come in written order. Those orders are merged (a topological
    sort), ties broken by first appearance. Only `expanded` (the matrix's own scenarios,
    in expansion order) say the order; explicit ones come after them all.
    """
    axes: dict[str, list[str]] = {}
    for p in params:
        for axis, value in p.items():
            if value not in axes.setdefault(axis, []):
                axes[axis].append(value)
    for axis, seen in axes.items():
        after: dict[str, set[str]] = {v: set() for v in seen}
        groups: dict[tuple[tuple[str, str], ...], list[str]] = {}
        for p in expanded:
            if axis in p:
                key = tuple(sorted((a, v) for a, v in p.items() if a != axis))
                groups.setdefault(key, []).append(p[axis])
        for seq in groups.values():
            for a, b in itertools.pairwise(seq):
                if a != b and a not in after[b]:
                    after[a].add(b)
        axes[axis] = _topo(seen, after)
    return axes


def _topo(seen: list[str], after: dict[str, set[str]]) -> list[str]:
    """`seen` reordered so every a comes before each b in after[a] (cycles: seen order)."""
    before = {v: {a for a in seen if v in after[a]} for v in seen}
    out: list[str] = []
    while len(out) < len(seen):
        ready = [v for v in seen if v not in out and before[v] <= set(out)]
        out.append(ready[0] if ready else next(v for v in seen if v not in out))
    return out


def outcome_matrix(scenarios: list[ScenarioResult]) -> Matrix | None:
    """The matrix of a run, or None when it swept nothing."""
    params = scenario_params(scenarios)
    axes = _axes(params, [p for s, p in zip(scenarios, params, strict=True) if s.params])
    if not axes:
        return None
    row_axis, *col_axes = axes
    m = Matrix(
        row_axis=row_axis,
        row_values=axes[row_axis],
        col_axes=col_axes,
        col_values=list(itertools.product(*(axes[a] for a in col_axes))),
    )
    for s, p in zip(scenarios, params, strict=True):
        if set(p) != set(axes):
            m.outside.append(s)
            continue
        m.cells.setdefault((p[row_axis], tuple(p[a] for a in col_axes)), s)
    return m
