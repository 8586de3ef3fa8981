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

Variables: ``"{x}"`` as the whole string is x itself (number, bool, mapping keep their
type); inside a longer string x is formatted in (bools as true/false); ``{{`` and ``}}``
are literal braces. Variable values are inserted as they are, never substituted again.
A scenario's variables are `vars`, then the overrides of its matrix values (each variable
belongs to one axis) or of its explicit scenario. YAML 1.1 reads keys such as ``on``,
``off``, ``yes`` or ``10`` as bools and numbers; in a playbook every key is a name, so
keys (and the names in ``exclude``) are kept as the user wrote them.
"""

from __future__ import annotations

import difflib
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from testbed.errors import InputError
from testbed.model import units
from testbed.model.profile import LinkProfile
from testbed.model.yamlsrc import (
    PathKey,
    YamlDoc,
    dotted,
    load_yaml_file,
    load_yaml_text,
    validate,
)

EMPTY_HINT = "a playbook needs name and steps"

# the classifier's words (testbed.spice.classifier), so a playbook can expect any of them
Outcome = Literal[
    "seamless", "semi-seamless", "switch-host", "lost", "no-migration", "migration-failed"
]
FaultKill = Literal[
    "none", "client", "dst-libvirtd", "src-libvirtd", "src-qemu", "dst-qemu", "delay-line"
]
UsbRedir = Literal["migrated", "reconnected", "lost", "kept", "none"]
MigrationResult = Literal["completed", "failed", "aborted"]

DEFAULT_TIMEOUT_MS = 300_000.0  # as the virt layer's MigrationOptions.timeout_s
MIN_TIMEOUT_MS = 1_000.0  # below this a timeout is a missing unit ("180" is 180 ms)

VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
NAME_RE = re.compile(r"^[^\s(){}]+$")
NAME_RULE = "a name without spaces, braces or parentheses"

TRIGGER_GRAMMAR = (
    "before, after, 'at N%' (migration progress) or 'at DURATION' after the migration "
    "starts (e.g. 'at 3s')"
)
CONDITION_GRAMMAR = (
    "migration_done, client_connected, 'migration_progress >= N' (percent) or a "
    "duration such as '2s'"
)

_BARE_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)\s*$")


class Strict(BaseModel):
    """Unknown fields are errors: a misspelt field must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _choices(name: str, *more: str, **kw: Any) -> Any:
    """A field the user may spell several ways; the first spelling is the one errors use."""
    return Field(validation_alias=AliasChoices(name, *more), **kw)


# -- typed values -------------------------------------------------------------------------


def _duration(value: Any) -> float | None:
    """Durations in ms; a bare number is ms, as everywhere in testbed (units)."""
    return None if value is None else units.parse_duration_ms(value)


def _fill_mib(value: Any) -> int | None:
    """Guest sizes as in topologies: a bare number is MiB, a string carries its unit."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    return int(units.parse_size_bytes(value) // (1024 * 1024))


Ms = Annotated[float, BeforeValidator(_duration)]
OptionalMs = Annotated[float | None, BeforeValidator(_duration)]


def _unit_required(arg: str, text: object, grammar: str) -> None:
    """A bare number is ambiguous in a trigger or a wait (percent? seconds?): refuse it."""
    if _BARE_NUMBER.match(arg):
        raise ValueError(f"{arg.strip()!r} has no unit; expected {grammar}, found {text!r}")


def _percent(arg: str, text: object, grammar: str) -> float:
    try:
        pct = units.parse_percent(arg)
    except InputError:
        raise ValueError(f"expected {grammar}, found {text!r}") from None
    if pct > 100:
        raise ValueError(f"progress {pct}% is more than 100%, found {text!r}")
    return pct


def _time(arg: str, text: object, grammar: str) -> float:
    _unit_required(arg, text, grammar)
    try:
        return units.parse_duration_ms(arg)
    except InputError:
        raise ValueError(f"expected {grammar}, found {text!r}") from None


class Trigger(BaseModel):
    """When a client connects, counted from the next migration.

    ``before`` it starts, ``at 30%`` of its progress (value: percent), ``at 3s`` after it
    starts (value: ms), or ``after`` it ends.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["before", "progress", "time", "after"]
    value: float | None = None

    @classmethod
    def parse(cls, text: object) -> Trigger:
        if isinstance(text, Trigger):
            return text
        if not isinstance(text, str):
            raise ValueError(f"expected {TRIGGER_GRAMMAR}, found {text!r}")
        s = text.strip()
        if s in ("before", "after"):
            return cls(kind=s)
        m = re.fullmatch(r"at\s+(\S.*)", s)
        if not m:
            raise ValueError(f"expected {TRIGGER_GRAMMAR}, found {text!r}")
        arg = m.group(1).strip()
        if arg.endswith("%"):
            return cls(kind="progress", value=_percent(arg, text, TRIGGER_GRAMMAR))
        return cls(kind="time", value=_time(arg, text, TRIGGER_GRAMMAR))

    def __str__(self) -> str:
        if self.kind == "progress":
            return f"at {units.format_percent(self.value or 0)}"
        if self.kind == "time":
            return f"at {units.format_duration(self.value or 0)}"
        return self.kind


class Condition(BaseModel):
    """What a wait step waits for: an event, a migration progress (percent) or a time (ms)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["migration_done", "client_connected", "progress", "time"]
    value: float | None = None

    @classmethod
    def parse(cls, text: object) -> Condition:
        if isinstance(text, Condition):
            return text
        if not isinstance(text, str):
            raise ValueError(f"expected {CONDITION_GRAMMAR}, found {text!r}")
        s = text.strip()
        if s in ("migration_done", "client_connected"):
            return cls(kind=s)
        m = re.fullmatch(r"migration_progress\s*>=\s*(\S+?)\s*(%?)", s)
        if m:
            return cls(kind="progress", value=_percent(m.group(1) + "%", text, CONDITION_GRAMMAR))
        return cls(kind="time", value=_time(s, text, CONDITION_GRAMMAR))

    def is_event(self) -> bool:
        return self.kind != "time"

    def __str__(self) -> str:
        if self.kind == "progress":
            return f"migration_progress >= {units.format_percent(self.value or 0)}"
        if self.kind == "time":
            return units.format_duration(self.value or 0)
        return self.kind


When = Annotated[Trigger, BeforeValidator(Trigger.parse)]
Until = Annotated[Condition, BeforeValidator(Condition.parse)]


class Expectation(Strict):
    """What the verdict checks. None means "not checked"."""

    outcome: Outcome | None = None
    usbredir: UsbRedir | None = None
    max_unresponsive_ms: OptionalMs = _choices(
        "max_unresponsive_ms", "max_unresponsive", default=None
    )
    migration: MigrationResult | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, name) is None for name in Expectation.model_fields)


# -- steps ----------------------------------------------------------------------------------


class Step(Strict):
    """One thing a scenario does. `kind` is its key in the YAML; `where` is file:line: path."""

    kind: ClassVar[str] = ""
    _where: str = PrivateAttr(default="")

    @property
    def where(self) -> str:
        return self._where


class UpStep(Step):
    """Bring the lab up (the runner does it anyway; the step says when)."""

    kind: ClassVar[str] = "up"


class ShapeStep(Step):
    """Shape (or, with clear, unshape) one direction of a link, or both with both_ways."""

    kind: ClassVar[str] = "shape"

    src: str = Field(alias="from")
    dst: str = Field(alias="to")
    network: str
    both_ways: bool = False
    clear: bool = False
    profile: LinkProfile | None = None  # built from the profile fields; None with clear

    @model_validator(mode="after")
    def _coherent(self) -> ShapeStep:
        if self.src == self.dst:
            raise InputError(
                f"a link joins two different hosts (found {self.src!r} twice)", field="to"
            )
        if self.clear and self.profile is not None:
            raise InputError(
                "clear removes the shaping, so it takes no profile field", field="clear"
            )
        if not self.clear and self.profile is None:
            raise InputError(
                "clear is false and there is no profile field: the step would do nothing",
                field="clear",
            )
        return self


class StartGuestStep(Step):
    """Start a guest; fill and dirty_rate override the topology's when given."""

    kind: ClassVar[str] = "start_guest"

    guest: str
    fill_mib: Annotated[int | None, BeforeValidator(_fill_mib)] = _choices(
        "fill", "fill_mib", default=None, ge=0
    )
    dirty_rate: float | None = Field(None, ge=0, description="MiB/s the guest rewrites")


class ConnectClientStep(Step):
    """Connect a SPICE client to a guest, at a moment relative to the next migration."""

    kind: ClassVar[str] = "connect_client"

    client: str
    guest: str
    when: When = Trigger(kind="before")


class MigrateStep(Step):
    """Live-migrate a guest; wait=false returns at once so later steps run during it."""

    kind: ClassVar[str] = "migrate"

    guest: str
    to: str
    bandwidth_mib: int | None = _choices("bandwidth", "bandwidth_mib", default=None, ge=1)
    guard: bool = False
    wait: bool = True
    timeout_ms: Ms = _choices("timeout", "timeout_ms", default=DEFAULT_TIMEOUT_MS)
    max_downtime_ms: OptionalMs = _choices("max_downtime", "max_downtime_ms", default=None)
    auto_converge: bool = False
    postcopy: bool = False

    @model_validator(mode="after")
    def _timeout_floor(self) -> MigrateStep:
        _check_timeout(self.timeout_ms)
        return self


class WaitStep(Step):
    """Wait for an event (with a timeout) or for a time."""

    kind: ClassVar[str] = "wait"

    until: Until
    timeout_ms: OptionalMs = _choices("timeout", "timeout_ms", default=None)

    @model_validator(mode="after")
    def _timeout_fits(self) -> WaitStep:
        if not self.until.is_event():
            if self.timeout_ms is not None:
                raise InputError("a timed wait takes no timeout", field="timeout")
            return self
        if self.timeout_ms is None:
            self.timeout_ms = DEFAULT_TIMEOUT_MS
        _check_timeout(self.timeout_ms)
        return self


class FaultStep(Step):
    """Inject a fault: SIGKILL one of the lab's processes (`none` does nothing, so a
    matrix can leave the fault out)."""

    kind: ClassVar[str] = "fault"

    kill: FaultKill


class ExpectStep(Expectation, Step):
    """Expectations for the verdict; all expect steps of a scenario make `Scenario.expect`."""

    kind: ClassVar[str] = "expect"

    @model_validator(mode="after")
    def _something(self) -> ExpectStep:
        if self.is_empty():
            raise ValueError(
                "an expect step needs at least one of outcome, usbredir, "
                "max_unresponsive_ms, migration"
            )
        return self


def _check_timeout(ms: float) -> None:
    if ms < MIN_TIMEOUT_MS:
        raise InputError(
            f"timeout {units.format_duration(ms)} is shorter than {units.format_duration(1000)}",
            field="timeout",
            hint="a bare number is milliseconds; write the unit, e.g. 180s",
        )


STEP_TYPES: dict[str, type[Step]] = {
    t.kind: t
    for t in (
        UpStep,
        ShapeStep,
        StartGuestStep,
        ConnectClientStep,
        MigrateStep,
        WaitStep,
        FaultStep,
        ExpectStep,
    )
}


def _input_keys(model: type[BaseModel], skip: Iterable[str] = ()) -> dict[str, str]:
    """Every key a user may write for `model`, mapped to the field it sets."""
    keys: dict[str, str] = {}
    for name, f in model.model_fields.items():
        if name in skip:
            continue
        if isinstance(f.validation_alias, AliasChoices):
            spellings = [c for c in f.validation_alias.choices if isinstance(c, str)]
        else:
            spellings = [f.alias or name]
        for spelling in spellings:
            keys[spelling] = name
    return keys


PROFILE_KEYS = _input_keys(LinkProfile)
STEP_KEYS: dict[str, dict[str, str]] = {
    kind: _input_keys(t, skip=("profile",)) for kind, t in STEP_TYPES.items()
}
STEP_KEYS["shape"].update(PROFILE_KEYS)
PROFILE_SHORT = list(
    dict.fromkeys(
        min((k for k, f in PROFILE_KEYS.items() if f == name), key=len)
        for name in PROFILE_KEYS.values()
    )
)


# -- the raw playbook ----------------------------------------------------------------------


class ScenarioSpec(Strict):
    """An explicit scenario: a name and the variables it sets."""

    name: str
    vars: dict[str, Any] = Field(default_factory=dict)


class Playbook(Strict):
    """A playbook as written: checked, not yet expanded. `scenarios()` expands it."""

    name: str
    description: str = ""
    topology: str | None = Field(None, description="default topology; the CLI may override")
    vars: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, dict[str, dict[str, Any] | None]] = Field(default_factory=dict)
    name_format: str | None = None
    exclude: list[dict[str, str]] = Field(default_factory=list)
    extra_scenarios: list[ScenarioSpec] = Field(default_factory=list, alias="scenarios")
    steps: list[Any] = Field(min_length=1, description="one-key mappings, checked by kind")
    source: str | None = Field(None, exclude=True)

    _doc: YamlDoc | None = PrivateAttr(default=None)
    _expanded: list[Scenario] | None = PrivateAttr(default=None)

    def scenarios(self) -> list[Scenario]:
        """Every scenario, typed: the matrix (in axis order), then the explicit ones."""
        if self._expanded is None:
            doc = self._doc or YamlDoc(file="<playbook>", data=self.model_dump(by_alias=True))
            if self._doc is None:
                _check(self, doc)
                self._doc = doc
            self._expanded = _expand(self, doc)
        return list(self._expanded)

    def axes(self) -> dict[str, list[str]]:
        """Axis name -> its value names, in the order written."""
        return {axis: list(values) for axis, values in self.matrix.items()}


@dataclass(frozen=True)
class Scenario:
    """One run of a playbook: its name, the matrix values it took, its variables and steps."""

    name: str
    params: dict[str, str]
    vars: dict[str, Any]
    steps: list[Step]
    expect: Expectation | None

    @property
    def outcome(self) -> str | None:
        return self.expect.outcome if self.expect else None

    def keywords(self) -> list[str]:
        """What `-k` matches against: the name and every "axis=value"."""
        return [self.name, *(f"{a}={v}" for a, v in self.params.items())]


class ScenarioRow(NamedTuple):
    """One line of `testbed run --list`."""

    name: str
    params: dict[str, str]
    outcome: str | None


def scenario_rows(scenarios: Iterable[Scenario]) -> list[ScenarioRow]:
    return [ScenarioRow(s.name, dict(s.params), s.outcome) for s in scenarios]


# -- loading ------------------------------------------------------------------------------


def load_playbook(path: str | Path) -> Playbook:
    """Read, check and expand a playbook; any problem is an InputError naming file and line."""
    return _from_doc(load_yaml_file(path, keep_text=_is_name, empty_hint=EMPTY_HINT))


def parse_playbook(text: str, file: str = "<playbook>") -> Playbook:
    """As `load_playbook`, from text (`file` is the name errors use)."""
    return _from_doc(load_yaml_text(text, file, keep_text=_is_name, empty_hint=EMPTY_HINT))


def _from_doc(doc: YamlDoc) -> Playbook:
    file = doc.file
    if not isinstance(doc.data, dict):
        raise InputError(
            "a playbook is a mapping with name, steps and optionally vars, matrix, scenarios",
            file=file,
            line=1,
        )
    _check_keys(doc, doc.data, (), _input_keys(Playbook, skip=("source",)), "playbook")
    _check_matrix_shape(doc, doc.data.get("matrix"))
    pb = validate(Playbook, doc)
    pb.source = file
    _check(pb, doc)
    pb._doc = doc
    pb.scenarios()  # every scenario is checked now, not halfway through a run
    return pb


def _is_name(path: PathKey) -> bool:
    """Values that are names, kept as written: the playbook's, scenarios', exclude's."""
    return (
        path == ("name",)
        or (len(path) == 3 and path[0] == "exclude")
        or (len(path) == 3 and path[0] == "scenarios" and path[2] == "name")
    )


# -- checks that do not depend on a scenario ------------------------------------------------


def _fail(doc: YamlDoc, msg: str, path: PathKey, hint: str | None = None) -> InputError:
    return InputError(
        msg, file=doc.file, line=doc.line_of(path), field=dotted(path) or None, hint=hint
    )


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _check_keys(
    doc: YamlDoc, data: Mapping[str, Any], path: PathKey, known: Mapping[str, str], what: str
) -> None:
    """Unknown keys, with the closest known one; `known` maps each spelling to its field."""
    for key in data:
        if key not in known:
            raise _fail(
                doc,
                f"unknown field {key!r} in {what}{_did_you_mean(str(key), known)} "
                f"(known: {', '.join(_shortest(known)) or 'none'})",
                (*path, key),
            )


def _shortest(spellings: Mapping[str, str]) -> list[str]:
    """One spelling per field, the shortest: "delay", not also "delay_ms"."""
    best: dict[str, str] = {}
    for spelling, name in spellings.items():
        if name not in best or len(spelling) < len(best[name]):
            best[name] = spelling
    return list(best.values())


def _check_matrix_shape(doc: YamlDoc, matrix: Any) -> None:
    """Axes map value names to the variables they set; said plainly, before pydantic does."""
    if not isinstance(matrix, dict):
        return
    for axis, values in matrix.items():
        if not isinstance(values, dict) or not values:
            raise _fail(
                doc,
                "an axis maps value names to the variables each sets, e.g. "
                f"{{late: {{connect: at 3s}}, early: {{connect: before}}}}; found {values!r}",
                ("matrix", axis),
            )
        for value, sets in values.items():
            if sets is not None and not isinstance(sets, dict):
                raise _fail(
                    doc,
                    "a matrix value sets variables: expected a mapping such as "
                    f"{{connect: before}}, found {sets!r}",
                    ("matrix", axis, value),
                )


def _check(pb: Playbook, doc: YamlDoc) -> None:
    """Everything that is wrong in every scenario alike, reported without a scenario."""
    _check_name(doc, pb.name, ("name",))
    for name in pb.vars:
        _check_var_name(doc, name, ("vars", name))
    _check_matrix(pb, doc)
    _check_exclude(pb, doc)
    for i, spec in enumerate(pb.extra_scenarios):
        _check_name(doc, spec.name, ("scenarios", i, "name"))
        for name in spec.vars:
            _check_var_name(doc, name, ("scenarios", i, "vars", name))
    for i, step in enumerate(pb.steps):
        _check_step(doc, step, i)
    _check_variables(pb, doc)


def _check_name(doc: YamlDoc, name: str, path: PathKey) -> None:
    if not NAME_RE.match(name):
        raise _fail(doc, f"expected {NAME_RULE}, found {name!r}", path)


def _check_var_name(doc: YamlDoc, name: str, path: PathKey) -> None:
    if not VAR_RE.match(name):
        raise _fail(doc, f"a variable name is letters, digits and _ (found {name!r})", path)


def _check_matrix(pb: Playbook, doc: YamlDoc) -> None:
    owner: dict[str, str] = {}
    for axis, values in pb.matrix.items():
        if not VAR_RE.match(axis):
            raise _fail(
                doc, f"an axis name is letters, digits and _ (found {axis!r})", ("matrix", axis)
            )
        if not values:
            raise _fail(doc, "an axis needs at least one value", ("matrix", axis))
        for value, overrides in values.items():
            _check_name(doc, value, ("matrix", axis, value))
            for var in overrides or {}:
                path = ("matrix", axis, value, var)
                _check_var_name(doc, var, path)
                if owner.setdefault(var, axis) != axis:
                    raise _fail(
                        doc,
                        f"variable {var!r} is set by axis {owner[var]!r} and axis {axis!r}; "
                        "each variable belongs to one axis",
                        path,
                        hint="use an explicit scenario (scenarios:) for a special combination",
                    )


def _check_exclude(pb: Playbook, doc: YamlDoc) -> None:
    for i, entry in enumerate(pb.exclude):
        if not entry:
            raise _fail(doc, "an exclude entry names at least one axis: value", ("exclude", i))
        for axis, value in entry.items():
            path = ("exclude", i, axis)
            if axis not in pb.matrix:
                raise _fail(
                    doc,
                    f"no matrix axis {axis!r}{_did_you_mean(axis, pb.matrix)} "
                    f"(axes: {', '.join(pb.matrix) or 'none'})",
                    path,
                )
            if value not in pb.matrix[axis]:
                raise _fail(
                    doc,
                    f"axis {axis!r} has no value {value!r}{_did_you_mean(value, pb.matrix[axis])}"
                    f" (values: {', '.join(pb.matrix[axis])})",
                    path,
                )


def _check_step(doc: YamlDoc, step: Any, i: int) -> None:
    path: PathKey = ("steps", i)
    kinds = ", ".join(STEP_TYPES)
    if not isinstance(step, dict):
        raise _fail(
            doc, f"a step is a mapping with one key, its kind ({kinds}); found {step!r}", path
        )
    if len(step) != 1:
        raise _fail(
            doc,
            f"a step is a mapping with one key, its kind ({kinds}); "
            f"found {len(step)} keys: {', '.join(map(str, step)) or 'none'}",
            path,
        )
    kind, args = next(iter(step.items()))
    if kind not in STEP_TYPES:
        raise _fail(
            doc,
            f"unknown step kind {kind!r}{_did_you_mean(kind, STEP_TYPES)} (known: {kinds})",
            (*path, kind),
        )
    if args is not None and not isinstance(args, dict):
        raise _fail(
            doc,
            f"a {kind} step takes a mapping of fields "
            f"({', '.join(_shortest(STEP_KEYS[kind])) or 'none'}); found {args!r}",
            (*path, kind),
        )
    _check_keys(doc, args or {}, (*path, kind), STEP_KEYS[kind], f"a {kind} step")
    if kind == "shape" and "clear" not in (args or {}):
        if not any(k in PROFILE_KEYS for k in args or {}):
            raise _fail(
                doc,
                f"a shape step needs a profile field ({', '.join(PROFILE_SHORT)}) or clear: true",
                (*path, kind),
            )


def _check_variables(pb: Playbook, doc: YamlDoc) -> None:
    """Names used but set nowhere, and overrides that nothing uses (a typo, usually)."""
    used = _used_variables(pb, doc)
    defined = set(pb.vars)
    overrides: list[tuple[str, PathKey]] = [
        (var, ("matrix", axis, value, var))
        for axis, values in pb.matrix.items()
        for value, sets in values.items()
        for var in sets or {}
    ]
    overrides += [
        (var, ("scenarios", i, "vars", var))
        for i, spec in enumerate(pb.extra_scenarios)
        for var in spec.vars
    ]
    defined |= {var for var, _ in overrides}
    for name, path in used.items():
        known = sorted(defined | (set(pb.matrix) if path == ("name_format",) else set()))
        if name not in known:
            raise _fail(
                doc,
                f"unknown variable {{{name}}}{_did_you_mean(name, known)} "
                f"(variables: {', '.join(known) or 'none'})",
                path,
            )
    for var, path in overrides:
        if var not in pb.vars and var not in used:
            raise _fail(
                doc,
                f"sets variable {var!r}, which vars does not declare and no step uses"
                f"{_did_you_mean(var, set(used) | set(pb.vars))}",
                path,
            )


def _used_variables(pb: Playbook, doc: YamlDoc) -> dict[str, PathKey]:
    """Every variable a step or name_format names, with where it is first named."""
    used: dict[str, PathKey] = {}
    sources: list[tuple[PathKey, str]] = []
    if pb.name_format is not None:
        sources.append((("name_format",), pb.name_format))
    for i, step in enumerate(pb.steps):
        sources += list(_strings(step, ("steps", i)))
    for path, text in sources:
        for name in _template_names(text, lambda msg, path=path: _fail(doc, msg, path)):
            used.setdefault(name, path)
    return used


def _raise_plain(msg: str) -> Exception:
    return InputError(msg)


# -- templates ----------------------------------------------------------------------------

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_WHOLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def _strings(value: Any, path: PathKey) -> Iterator[tuple[PathKey, str]]:
    """Every string value under `value`, with its path (keys are never templates)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*path, i))


def _template_names(text: str, fail: Callable[[str], Exception]) -> list[str]:
    """The variables `text` names; bad brace syntax is `fail(message)`."""
    names = []
    for tok in _TOKEN.finditer(text):
        t = tok.group(0)
        if t in ("{{", "}}"):
            continue
        if tok.group(1) is None:
            raise fail(f"unmatched {t!r} in {text!r}: write {t}{t} for a literal {t}")
        if not VAR_RE.match(tok.group(1)):
            raise fail(
                f"{t!r} in {text!r} is not a variable: write {{name}}, or {{{{ for a literal brace"
            )
        names.append(tok.group(1))
    return names


class UnsetVariable(KeyError):
    """A template names a variable the scenario does not set."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _format(value: Any, name: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        what = "mapping" if isinstance(value, dict) else "list"
        raise ValueError(
            f'variable {{{name}}} is a {what}; it can only be a whole value, "{{{name}}}"'
        )
    return str(value)


def substitute(text: str, values: Mapping[str, Any]) -> Any:
    """'{x}' alone is x itself; inside a longer string x is formatted in; '{{' is '{'.

    Raises `UnsetVariable` for a name not in `values`, ValueError for bad brace syntax or
    a mapping formatted into a longer string.
    """
    _template_names(text, ValueError)
    whole = _WHOLE.fullmatch(text)
    if whole:
        if whole.group(1) not in values:
            raise UnsetVariable(whole.group(1))
        return values[whole.group(1)]

    def one(tok: re.Match[str]) -> str:
        t = tok.group(0)
        if t in ("{{", "}}"):
            return t[0]
        name = tok.group(1)
        if name not in values:
            raise UnsetVariable(name)
        return _format(values[name], name)

    return _TOKEN.sub(one, text)


def _substitute_tree(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return substitute(value, values)
    if isinstance(value, dict):
        return {k: _substitute_tree(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute_tree(v, values) for v in value]
    return value


# -- expansion ----------------------------------------------------------------------------


@dataclass
class _Draft:
    """A scenario before its steps are built: name, params, variables and their origins."""

    name: str
    params: dict[str, str]
    vars: dict[str, Any]
    origins: dict[str, PathKey]
    path: PathKey  # where the scenario is defined, for name clashes


def _expand(pb: Playbook, doc: YamlDoc) -> list[Scenario]:
    drafts = _matrix_drafts(pb, doc) + _explicit_drafts(pb)
    _check_unique(drafts, doc)
    return [_build(pb, doc, d) for d in drafts]


def _defaults(pb: Playbook) -> tuple[dict[str, Any], dict[str, PathKey]]:
    return dict(pb.vars), {name: ("vars", name) for name in pb.vars}


def _matrix_drafts(pb: Playbook, doc: YamlDoc) -> list[_Draft]:
    if not pb.matrix:
        if pb.extra_scenarios:
            return []
        values, origins = _defaults(pb)
        return [_Draft(pb.name, {}, values, origins, ("name",))]
    drafts = []
    for combo in itertools.product(*(list(v) for v in pb.matrix.values())):
        params = dict(zip(pb.matrix, combo, strict=True))
        if any(entry.items() <= params.items() for entry in pb.exclude):
            continue
        values, origins = _defaults(pb)
        for axis, value in params.items():
            for var, v in (pb.matrix[axis][value] or {}).items():
                values[var], origins[var] = v, ("matrix", axis, value, var)
        drafts.append(
            _Draft(
                _scenario_name(pb, doc, params, values),
                params,
                values,
                origins,
                ("name_format",) if pb.name_format else ("matrix",),
            )
        )
    if not drafts and not pb.extra_scenarios:
        raise _fail(doc, "exclude drops every combination of the matrix", ("exclude",))
    return drafts


def _scenario_name(
    pb: Playbook, doc: YamlDoc, params: dict[str, str], values: dict[str, Any]
) -> str:
    if pb.name_format is None:
        return "-".join(params.values())
    try:
        name = str(substitute(pb.name_format, {**values, **params}))
    except UnsetVariable as e:
        raise _fail(
            doc, f"variable {{{e.name}}} is not set for {params}", ("name_format",)
        ) from None
    except ValueError as e:
        raise _fail(doc, str(e), ("name_format",)) from None
    if not NAME_RE.match(name):
        raise _fail(
            doc, f"makes the name {name!r} for {params}; expected {NAME_RULE}", ("name_format",)
        )
    return name


def _explicit_drafts(pb: Playbook) -> list[_Draft]:
    drafts = []
    for i, spec in enumerate(pb.extra_scenarios):
        values, origins = _defaults(pb)
        for var, v in spec.vars.items():
            values[var], origins[var] = v, ("scenarios", i, "vars", var)
        drafts.append(_Draft(spec.name, {}, values, origins, ("scenarios", i, "name")))
    return drafts


def _check_unique(drafts: list[_Draft], doc: YamlDoc) -> None:
    seen: dict[str, _Draft] = {}
    for d in drafts:
        first = seen.setdefault(d.name, d)
        if first is d:
            continue
        made_by = ", ".join(f"{a}={v}" for a, v in first.params.items()) or dotted(first.path)
        hint = None
        if d.path == ("name_format",):
            hint = "name_format must tell every combination apart: use every axis"
        raise _fail(
            doc, f"duplicate scenario name {d.name!r} (also made by {made_by})", d.path, hint
        )


@dataclass
class _Scope:
    """Where errors of one scenario point, and how they name the scenario."""

    doc: YamlDoc
    draft: _Draft

    def fail(
        self, msg: str, path: PathKey, hint: str | None = None, *, across: PathKey | None = None
    ) -> InputError:
        """An error at `path`; named after the scenario when a variable made the value.

        `across` is the step for errors between fields (jitter vs delay): any variable in
        it may be the cause.
        """
        scanned = across if across is not None else path
        names = [
            n
            for _, t in _strings(_raw_at(self.doc.data, scanned), scanned)
            for n in _template_names(t, _raise_plain)
        ]
        if names:
            msg = f"in scenario {self.draft.name!r}: {msg}"
            hint = "; ".join(h for h in (hint, self._origins(names)) if h) or None
        return _fail(self.doc, msg, path, hint)

    def _origins(self, names: list[str]) -> str:
        parts = []
        for name in dict.fromkeys(names):
            origin = self.draft.origins.get(name)
            if origin is not None:
                parts.append(
                    f"{{{name}}} is {self.draft.vars[name]!r} here, set at "
                    f"{dotted(origin)} (line {self.doc.line_of(origin)})"
                )
        return "; ".join(parts)


def _raw_at(data: Any, path: PathKey) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _build(pb: Playbook, doc: YamlDoc, draft: _Draft) -> Scenario:
    scope = _Scope(doc, draft)
    steps = [_build_step(scope, raw, i) for i, raw in enumerate(pb.steps)]
    _check_order(scope, steps)
    return Scenario(draft.name, draft.params, draft.vars, steps, _expectation(scope, steps))


def _build_step(scope: _Scope, raw: Mapping[str, Any], i: int) -> Step:
    kind, args = next(iter(raw.items()))
    path: PathKey = ("steps", i, kind)
    values = _substituted(scope, args or {}, path)
    model = STEP_TYPES[kind]
    if kind == "shape":
        values = _with_profile(scope, values, path)
    try:
        step = model.model_validate(values)
    except ValidationError as e:
        raise _validation_error(scope, e, model, values, path) from None
    step._where = f"{scope.doc.file}:{scope.doc.line_of(path)}: {dotted(path)}"
    return step


def _substituted(scope: _Scope, args: Mapping[str, Any], path: PathKey) -> dict[str, Any]:
    out = {}
    for key, value in args.items():
        try:
            out[key] = _substitute_tree(value, scope.draft.vars)
        except UnsetVariable as e:
            raise _fail(
                scope.doc,
                f"variable {{{e.name}}} is not set in scenario {scope.draft.name!r}",
                (*path, key),
                hint="set it in vars, or in every matrix value / scenario that needs it",
            ) from None
        except ValueError as e:
            raise scope.fail(str(e), (*path, key)) from None
    return out


def _with_profile(scope: _Scope, values: dict[str, Any], path: PathKey) -> dict[str, Any]:
    """The shape step's own fields, plus `profile` built from the LinkProfile fields."""
    shaping = {k: v for k, v in values.items() if k in PROFILE_KEYS}
    rest = {k: v for k, v in values.items() if k not in PROFILE_KEYS}
    if not shaping:
        return rest
    try:
        return {**rest, "profile": LinkProfile.model_validate(shaping)}
    except ValidationError as e:
        raise _validation_error(scope, e, LinkProfile, shaping, path) from None


def _validation_error(
    scope: _Scope,
    e: ValidationError,
    model: type[BaseModel],
    given: Mapping[str, Any],
    path: PathKey,
) -> InputError:
    """The first pydantic error, at the key the user wrote, in the user's words."""
    err = e.errors(include_url=False)[0]
    cause = err.get("ctx", {}).get("error")
    loc = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
    across = path if not loc else None  # a model-level check: any field may be the cause
    hint = None
    if isinstance(cause, InputError):
        msg, hint = _bare(cause), cause.hint
        if not loc and cause.field:
            loc = [cause.field]
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
    else:
        msg = f"{err['msg']} (found {err.get('input')!r})"
    if loc:
        loc[0] = _user_key(model, str(loc[0]), given)
    return scope.fail(msg, (*path, *loc), hint, across=across)


def _bare(e: InputError) -> str:
    """An InputError's message without the "field: " it was prefixed with."""
    return e.message.removeprefix(f"{e.field}: ") if e.field and not e.file else e.message


def _user_key(model: type[BaseModel], key: str, given: Mapping[str, Any]) -> str:
    """The spelling of field `key` (a name or any alias) that the user wrote."""
    keys = _input_keys(model)
    target = keys.get(key, key)
    spellings = [k for k, f in keys.items() if f == target]
    return next((k for k in spellings if k in given), spellings[0] if spellings else key)


def _check_order(scope: _Scope, steps: list[Step]) -> None:
    """Triggers and waits refer to a migration or a client; that step must be there."""
    for i, step in enumerate(steps):
        before, after = steps[:i], steps[i + 1 :]
        if isinstance(step, ConnectClientStep) and step.when.kind != "before":
            if not any(isinstance(s, MigrateStep) for s in after):
                raise scope.fail(
                    f"when {str(step.when)!r} counts from the next migration, "
                    "but no migrate step follows",
                    ("steps", i, "connect_client", "when"),
                )
        if isinstance(step, WaitStep) and step.until.kind in ("migration_done", "progress"):
            if not any(isinstance(s, MigrateStep) for s in before):
                raise scope.fail(
                    f"waits for {step.until}, but no migrate step comes before",
                    ("steps", i, "wait", "until"),
                )
        if isinstance(step, WaitStep) and step.until.kind == "client_connected":
            if not any(isinstance(s, ConnectClientStep) for s in before):
                raise scope.fail(
                    "waits for client_connected, but no connect_client step comes before",
                    ("steps", i, "wait", "until"),
                )


def _expectation(scope: _Scope, steps: list[Step]) -> Expectation | None:
    """All expect steps merged; two that disagree on a field are an error."""
    merged: dict[str, Any] = {}
    for i, step in enumerate(steps):
        if not isinstance(step, ExpectStep):
            continue
        for name in Expectation.model_fields:
            value = getattr(step, name)
            if value is None:
                continue
            if merged.get(name, value) != value:
                raise scope.fail(
                    f"expects {name} {value!r}, but an earlier expect step says {merged[name]!r}",
                    ("steps", i, "expect", name),
                )
            merged[name] = value
    return Expectation.model_validate(merged) if merged else None


# -- selection (-k) -----------------------------------------------------------------------

_K_TOKEN = re.compile(r"\(|\)|[^\s()]+")


def select(scenarios: Iterable[Scenario], pattern: str | None) -> list[Scenario]:
    """Scenarios matching a `-k` expression, as pytest -k reads simple ones.

    A word matches when it is a substring (any case) of the name or of an "axis=value";
    words combine with ``not``, ``and``, ``or`` and parentheses. An empty pattern is all.
    """
    items = list(scenarios)
    if pattern is None or not pattern.strip():
        return items
    match = _KParser(pattern).parse()
    return [s for s in items if match([k.lower() for k in s.keywords()])]


Matcher = Callable[[list[str]], bool]


class _KParser:
    """Recursive descent: or_ := and_ ('or' and_)*; and_ := not_ ('and' not_)*."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.tokens = _K_TOKEN.findall(pattern)
        self.pos = 0

    def parse(self) -> Matcher:
        m = self._or()
        if self.pos != len(self.tokens):
            raise self._error(f"unexpected {self.tokens[self.pos]!r}")
        return m

    def _error(self, why: str) -> InputError:
        return InputError(
            f"cannot read the expression {self.pattern!r}: {why}",
            field="-k",
            hint='e.g. -k "late-connect and not fix-off"',
        )

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _or(self) -> Matcher:
        parts = [self._and()]
        while self._peek() == "or":
            self.pos += 1
            parts.append(self._and())
        return parts[0] if len(parts) == 1 else lambda kw: any(p(kw) for p in parts)

    def _and(self) -> Matcher:
        parts = [self._not()]
        while self._peek() == "and":
            self.pos += 1
            parts.append(self._not())
        return parts[0] if len(parts) == 1 else lambda kw: all(p(kw) for p in parts)

    def _not(self) -> Matcher:
        if self._peek() == "not":
            self.pos += 1
            inner = self._not()
            return lambda kw: not inner(kw)
        return self._atom()

    def _atom(self) -> Matcher:
        tok = self._peek()
        if tok is None:
            raise self._error("it ends too early")
        self.pos += 1
        if tok == "(":
            inner = self._or()
            if self._peek() != ")":
                raise self._error("a '(' is not closed")
            self.pos += 1
            return inner
        if tok in (")", "and", "or"):
            raise self._error(f"unexpected {tok!r}")
        word = tok.lower()
        return lambda kw: any(word in k for k in kw)
