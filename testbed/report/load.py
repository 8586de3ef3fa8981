"""Reading a run back: `result.json` as plain JSON, and where its artifacts are now.

The report layer never sees the runner's objects, only what a run wrote, so any
report can be rebuilt later from a run directory (or from `result.json` alone,
when the artifacts stayed behind on another machine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.errors import InputError

RESULT = "result.json"


@dataclass
class Run:
    """One run as written: the JSON of `result.json`, and the directory it lives in."""

    data: dict[str, Any]
    dir: Path

    @property
    def name(self) -> str:
        """The playbook's name as the stable JUnit classname: its file name without .yaml."""
        return Path(str(self.data.get("playbook") or "run")).stem or "run"

    @property
    def scenarios(self) -> list[dict[str, Any]]:
        return list(self.data.get("scenarios") or [])


def load_run(target: str | Path) -> Run:
    """A run directory (or its result.json); anything else is an InputError saying which."""
    path = Path(target)
    if path.is_dir():
        file = path / RESULT
        if not file.is_file():
            raise InputError(
                f"{path} is not a run directory: it has no {RESULT}",
                hint="give the --out directory of `testbed run` (or its result.json)",
            )
    elif path.is_file():
        file = path
    else:
        raise InputError(f"{path} does not exist", hint="give a run directory or its result.json")
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read {file}: {e}") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{file}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("scenarios"), list):
        raise InputError(
            f"{file} is not a testbed result: expected a mapping with a 'scenarios' list",
            hint="result.json is what `testbed run` writes into its output directory",
        )
    for i, s in enumerate(data["scenarios"]):
        if not isinstance(s, dict) or not isinstance(s.get("name"), str):
            raise InputError(f"{file}: scenarios[{i}] has no name: not a testbed result")
    return Run(data, file.parent.resolve())


def artifact_path(run: Run, scenario: dict[str, Any], recorded: str) -> Path | None:
    """Where an artifact is now: where it was recorded, or the same place in a moved run.

    A run directory may have been copied (CI archives, another machine): a path under
    the scenario's recorded out_dir is then looked up under `run.dir/<its basename>`.
    """
    p = Path(recorded)
    out_dir = scenario.get("out_dir")
    if out_dir:
        try:
            rel = p.relative_to(out_dir)
        except ValueError:
            rel = None
        if rel is not None:
            moved = run.dir / Path(out_dir).name / rel
            if moved.exists():
                return moved
    if p.is_absolute() and p.exists():
        return p
    if not p.is_absolute() and (run.dir / p).exists():
        return run.dir / p
    return p if p.exists() else None


def scenario_dir(run: Run, scenario: dict[str, Any]) -> str | None:
    """The scenario's output directory as it is now (moved runs too), else as recorded."""
    out_dir = scenario.get("out_dir")
    if not out_dir:
        return None
    moved = run.dir / Path(out_dir).name
    return str(moved) if moved.is_dir() else str(out_dir)


def attachments(run: Run, scenario: dict[str, Any], limit: int = 40) -> list[tuple[str, str]]:
    """(kind, absolute path) of each artifact file; a directory (logs) gives its files."""
    found: list[tuple[str, str]] = []
    for kind, recorded in (scenario.get("artifacts") or {}).items():
        p = artifact_path(run, scenario, str(recorded))
        if p is None:
            found.append((kind, str(recorded)))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            found += [(f"{kind}/{f.relative_to(p)}", str(f.resolve())) for f in files]
        else:
            found.append((kind, str(p.resolve())))
    return found[:limit]
