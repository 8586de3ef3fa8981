"""What changed between two runs: per scenario, the old and new outcome and verdict.

Matched by scenario name (stable across runs, as in JUnit). A scenario in only one
run is a change too: it appeared or disappeared.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from testbed.model.outcome import Verdict
from testbed.report.load import Run
from testbed.report.text import outcome_label


@dataclass
class Change:
    scenario: str
    old_outcome: str | None
    old_verdict: Verdict | None
    new_outcome: str | None
    new_verdict: Verdict | None

    @property
    def changed(self) -> bool:
        return (self.old_outcome, self.old_verdict) != (self.new_outcome, self.new_verdict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "changed": self.changed}


def compare_runs(old: Run, new: Run) -> list[Change]:
    """Every scenario of either run, in the new run's order, then those only the old had."""
    before = {s.name: s for s in old.scenarios}
    after = {s.name: s for s in new.scenarios}
    names = list(after) + [n for n in before if n not in after]
    rows = []
    for name in names:
        o, n = before.get(name), after.get(name)
        rows.append(
            Change(
                scenario=name,
                old_outcome=outcome_label(o) if o else None,
                old_verdict=o.verdict if o else None,
                new_outcome=outcome_label(n) if n else None,
                new_verdict=n.verdict if n else None,
            )
        )
    return rows
