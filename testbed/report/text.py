"""The words every report uses for one scenario: expected vs got, and its verdict.

JUnit, HTML, the pytest plugin, `testbed run` and `--compare` say the same thing the
same way, so a failure reads alike wherever a user meets it. The verdict itself
(PASS, FAIL, ERROR) is `ScenarioResult.verdict` (testbed.model.outcome).
"""

from __future__ import annotations

from testbed.model.result import ScenarioResult

EXPECT_ORDER = ("outcome", "usbredir", "migration", "max_frozen_ms")


def expected_text(s: ScenarioResult) -> str:
    exp = s.expected.given()
    keys = [k for k in EXPECT_ORDER if k in exp] + [k for k in exp if k not in EXPECT_ORDER]
    return ", ".join(f"{k}={exp[k]}" for k in keys) or "nothing (no expect step)"


def got_text(s: ScenarioResult) -> str:
    parts = [
        f"outcome={s.outcome}",
        f"usbredir={s.client.usbredir}",
        f"migration={s.migration.result}",
        f"frozen_ms={s.client.frozen_ms}",
    ]
    if s.error:
        parts.append(f"error={s.error}")
    return ", ".join(parts)


def guard_text(s: ScenarioResult) -> str:
    """What spice_guard came to, e.g. "released (2.1 s)"; empty when there was no guard."""
    return "" if s.guard is None else f"{s.guard.result} ({s.guard.held_s} s)"


def failure_text(s: ScenarioResult, where: str | None = None) -> str:
    """Why a scenario failed, expected vs got, and where its output is (`where`, if moved)."""
    lines = list(s.failures)
    if not lines and not s.passed:
        lines = ["not passed (no failure recorded)"]
    lines += [f"expected: {expected_text(s)}", f"got: {got_text(s)}"]
    if where or s.out_dir:
        lines.append(f"output: {where or s.out_dir}")
    return "\n".join(lines)


def outcome_label(s: ScenarioResult) -> str:
    """The outcome as a cell shows it: the outcome, or what went wrong instead."""
    if s.outcome:
        return str(s.outcome)
    return "error" if s.error else "-"


def spice_server_text(s: ScenarioResult) -> str:
    """Which libspice-server each host's QEMU mapped, e.g. "src: patched /p/lib... (id 48e4...)"."""
    if not s.guest.spice_server:
        return "not recorded"
    return "; ".join(
        f"{host}: {lib.asked} {lib.path or 'none mapped'}"
        + (f" (build id {lib.build_id})" if lib.build_id else "")
        + (f" in {lib.qemu}" if lib.qemu else "")
        for host, lib in s.guest.spice_server.items()
    )
