"""The words a run's outcome is told in, defined once for playbooks, classifier and reports.

`Outcome` is what a SPICE client did across a migration, as the classifier
(testbed.spice.classifier) tells it and a playbook may expect it; the classifier may also
say `unknown` (`Observed`). `migration-failed`: the client may have moved, but libvirt's
migration job failed, so the run says so rather than seamless. `Verdict` is what a
scenario came to: PASS (every expectation held), FAIL (one missed) or ERROR (the
scenario could not run to its end).
"""

from __future__ import annotations

from typing import Literal

Outcome = Literal[
    "seamless", "semi-seamless", "switch-host", "lost", "no-migration", "migration-failed"
]
Observed = Literal[
    "seamless",
    "semi-seamless",
    "switch-host",
    "lost",
    "no-migration",
    "migration-failed",
    "unknown",
]
UsbRedir = Literal["migrated", "reconnected", "lost", "kept", "none"]
MigrationResult = Literal["completed", "failed", "aborted"]
Verdict = Literal["PASS", "FAIL", "ERROR"]


def verdict_of(passed: bool, error: str | None) -> Verdict:
    """PASS, FAIL (an expectation missed) or ERROR (the scenario aborted)."""
    if passed:
        return "PASS"
    return "ERROR" if error else "FAIL"
