"""Playbook: what happens in a lab, and the scenarios a matrix of variables makes of it.

A playbook is YAML. `vars` holds defaults; `matrix` holds explicit, named axes whose
cross product (minus `exclude`, plus explicit `scenarios`) gives the scenarios; `steps`
say what each scenario does, and any string in them may name a variable as "{var}".

Loading (`load_playbook`) checks everything that does not depend on a scenario: the
shape of the file, step kinds and their field names, template syntax, matrix, exclude
and names. `Playbook.scenarios()` then substitutes each scenario's variables and
validates the typed steps, units and triggers. Every error names file, line, field path
(``steps[3].migrate.bandwidth``) and, when a variable made the bad value, the scenario
and where that variable was set. Pure: reads the one file it is given, nothing else.
YAML 1.1 reads keys such as ``on``, ``off``, ``yes`` or ``10`` as bools and numbers; in
a playbook every key is a name, so keys (and the names in ``exclude``) are kept as the
user wrote them.

Modules, lowest first:
- steps: the step schema (each step kind, its fields, triggers, conditions, expectations);
- template: "{var}" templates and substitution;
- spec: the playbook's fields as written, and `Scenario`, what expansion makes;
- checks: checks that do not depend on a scenario;
- expand: a playbook to its scenarios, with errors naming the scenario and the variable;
- load: reading a file or text into a checked, expanded `Playbook`.
Selecting scenarios (`-k`) is the runner's (testbed.runner.select).
"""

from testbed.model.outcome import MigrationResult, Outcome, UsbRedir
from testbed.model.playbook.load import Playbook, load_playbook, parse_playbook
from testbed.model.playbook.spec import Scenario, ScenarioRow, ScenarioSpec, scenario_rows
from testbed.model.playbook.steps import (
    DEFAULT_TIMEOUT_MS,
    STEP_TYPES,
    Condition,
    ConnectClientStep,
    Expectation,
    ExpectStep,
    FaultStep,
    MigrateStep,
    ShapeStep,
    StartGuestStep,
    Step,
    Trigger,
    UpStep,
    WaitStep,
)
from testbed.model.playbook.template import UnsetVariable, substitute

__all__ = [
    "DEFAULT_TIMEOUT_MS",
    "STEP_TYPES",
    "Condition",
    "ConnectClientStep",
    "ExpectStep",
    "Expectation",
    "MigrateStep",
    "MigrationResult",
    "Outcome",
    "Playbook",
    "Scenario",
    "ScenarioRow",
    "ScenarioSpec",
    "ShapeStep",
    "StartGuestStep",
    "Step",
    "Trigger",
    "UnsetVariable",
    "UpStep",
    "UsbRedir",
    "WaitStep",
    "FaultStep",
    "load_playbook",
    "parse_playbook",
    "scenario_rows",
    "substitute",
]
