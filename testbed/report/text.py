"""The words every report uses for one scenario: expected vs got, and its verdict.

JUnit, HTML, the pytest plugin and `--compare` say the same thing the same way, so a
failure reads alike wherever a user meets it.
"""

from __future__ import annotations

from typing import Any

EXPECT_ORDER = ("outcome", "usbredir", "migration", "max_frozen_ms")


def expected_text(s: dict[str, Any]) -> str:
    exp = s.get("expected") or {}
    keys = [k for k in EXPECT_ORDER if k in exp] + [k for k in exp if k not in EXPECT_ORDER]
    return ", ".join(f"{k}={exp[k]}" for k in keys) or "nothing (no expect step)"


def got_text(s: dict[str, Any]) -> str:
    client = s.get("client") or {}
    mig = s.get("migration") or {}
    parts = [
        f"outcome={s.get('outcome')}",
        f"usbredir={client.get('usbredir')}",
        f"migration={mig.get('result')}",
        f"frozen_ms={client.get('frozen_ms')}",
    ]
    if s.get("error"):
        parts.append(f"error={s['error']}")
    return ", ".join(parts)


def verdict(s: dict[str, Any]) -> str:
    """PASS, FAIL (an expectation missed) or ERROR (the scenario could not run to the end)."""
    if s.get("passed"):
        return "PASS"
    return "ERROR" if s.get("error") else "FAIL"


def failure_text(s: dict[str, Any], where: str | None = None) -> str:
    """Why a scenario failed, expected vs got, and where its output is (`where`, if moved)."""
    lines = list(s.get("failures") or [])
    if not lines and not s.get("passed"):
        lines = ["not passed (no failure recorded)"]
    lines += [f"expected: {expected_text(s)}", f"got: {got_text(s)}"]
    if where or s.get("out_dir"):
        lines.append(f"output: {where or s['out_dir']}")
    return "\n".join(lines)


def outcome_label(s: dict[str, Any]) -> str:
    """The outcome as a cell shows it: the outcome, or what went wrong instead."""
    if s.get("outcome"):
        return str(s["outcome"])
    return "error" if s.get("error") else "-"
