"""Expansion: a checked playbook to its scenarios, each with typed, validated steps.

A scenario's variables are `vars`, then the overrides of its matrix values (each variable
belongs to one axis) or of its explicit scenario. An error a variable made names the
scenario and where that variable was set.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from testbed.errors import InputError
from testbed.model.playbook.checks import NAME_RE, NAME_RULE, fail_at
from testbed.model.playbook.spec import PlaybookSpec, Scenario
from testbed.model.playbook.steps import (
    PROFILE_KEYS,
    STEP_TYPES,
    ConnectClientStep,
    Expectation,
    ExpectStep,
    MigrateStep,
    Step,
    WaitStep,
)
from testbed.model.playbook.template import (
    UnsetVariable,
    strings,
    substitute,
    substitute_tree,
    template_names,
)
from testbed.model.profile import LinkProfile
from testbed.model.pydantic_errors import first_problem
from testbed.model.yamlsrc import PathKey, YamlDoc, dotted


def _raise_plain(msg: str) -> Exception:
    return InputError(msg)


@dataclass
class _Draft:
    """A scenario before its steps are built: name, params, variables and their origins."""

    name: str
    params: dict[str, str]
    vars: dict[str, Any]
    origins: dict[str, PathKey]
    path: PathKey  # where the scenario is defined, for name clashes


def expand(pb: PlaybookSpec, doc: YamlDoc) -> list[Scenario]:
    drafts = _matrix_drafts(pb, doc) + _explicit_drafts(pb)
    _check_unique(drafts, doc)
    return [_build(pb, doc, d) for d in drafts]


def _defaults(pb: PlaybookSpec) -> tuple[dict[str, Any], dict[str, PathKey]]:
    return dict(pb.vars), {name: ("vars", name) for name in pb.vars}


def _matrix_drafts(pb: PlaybookSpec, doc: YamlDoc) -> list[_Draft]:
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
        raise fail_at(doc, "exclude drops every combination of the matrix", ("exclude",))
    return drafts


def _scenario_name(
    pb: PlaybookSpec, doc: YamlDoc, params: dict[str, str], values: dict[str, Any]
) -> str:
    if pb.name_format is None:
        return "-".join(params.values())
    try:
        name = str(substitute(pb.name_format, {**values, **params}))
    except UnsetVariable as e:
        raise fail_at(
            doc, f"variable {{{e.name}}} is not set for {params}", ("name_format",)
        ) from None
    except ValueError as e:
        raise fail_at(doc, str(e), ("name_format",)) from None
    if not NAME_RE.match(name):
        raise fail_at(
            doc, f"makes the name {name!r} for {params}; expected {NAME_RULE}", ("name_format",)
        )
    return name


def _explicit_drafts(pb: PlaybookSpec) -> list[_Draft]:
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
        raise fail_at(
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
            for _, t in strings(_raw_at(self.doc.data, scanned), scanned)
            for n in template_names(t, _raise_plain)
        ]
        if names:
            msg = f"in scenario {self.draft.name!r}: {msg}"
            hint = "; ".join(h for h in (hint, self._origins(names)) if h) or None
        return fail_at(self.doc, msg, path, hint)

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


def _build(pb: PlaybookSpec, doc: YamlDoc, draft: _Draft) -> Scenario:
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
            out[key] = substitute_tree(value, scope.draft.vars)
        except UnsetVariable as e:
            raise fail_at(
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
    p = first_problem(e, model, given)
    return scope.fail(p.message, (*path, *p.loc), p.hint, across=path if p.model_level else None)


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
