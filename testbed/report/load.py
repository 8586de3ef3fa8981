"""Reading a run back: `result.json` as a typed RunResult, and where its artifacts are now.

The report layer never sees the runner's objects, only what a run wrote, so any
report can be rebuilt later from a run directory (or from `result.json` alone,
when the artifacts stayed behind on another machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from testbed.errors import InputError
from testbed.model.result import RunResult, ScenarioResult, load_result

RESULT = "result.json"


@dataclass
class Run:
    """One run as written: its result (read from `result.json`), and the directory it is in."""

    result: RunResult
    dir: Path

    @property
    def name(self) -> str:
        """The playbook's name as the stable JUnit classname: its file name without .yaml."""
        return Path(self.result.playbook or "run").stem or "run"

    @property
    def scenarios(self) -> list[ScenarioResult]:
        return list(self.result.scenarios)


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
    return Run(load_result(file), file.parent.resolve())


def artifact_path(run: Run, scenario: ScenarioResult, recorded: str) -> Path | None:
    """Where an artifact is now: where it was recorded, or the same place in a moved run.

    A run directory may have been copied (CI archives, another machine): a path under
    the scenario's recorded out_dir is then looked up under `run.dir/<its basename>`.
    """
    p = Path(recorded)
    out_dir = scenario.out_dir
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


def scenario_dir(run: Run, scenario: ScenarioResult) -> str | None:
    """The scenario's output directory as it is now (moved runs too), else as recorded."""
    out_dir = scenario.out_dir
    if not out_dir:
        return None
    moved = run.dir / Path(out_dir).name
    return str(moved) if moved.is_dir() else str(out_dir)


def attachments(run: Run, scenario: ScenarioResult, limit: int = 40) -> list[tuple[str, str]]:
    """(kind, absolute path) of each artifact file; a directory (logs) gives its files."""
    found: list[tuple[str, str]] = []
    for kind, recorded in scenario.artifacts.items():
        p = artifact_path(run, scenario, str(recorded))
        if p is None:
            found.append((kind, str(recorded)))
        elif p.is_dir():
            files = sorted(f for f in p.rglob("*") if f.is_file())
            found += [(f"{kind}/{f.relative_to(p)}", str(f.resolve())) for f in files]
        else:
            found.append((kind, str(p.resolve())))
    return found[:limit]
