"""Checks that do not depend on a scenario: field names, step kinds, matrix, exclude, names.

Each error names file, line and field path; nothing here knows any scenario's values.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from functools import partial
from typing import Any

from testbed.errors import InputError
from testbed.model.playbook.spec import PlaybookSpec
from testbed.model.playbook.steps import PROFILE_KEYS, PROFILE_SHORT, STEP_KEYS, STEP_TYPES
from testbed.model.playbook.template import VAR_RE, strings, template_names
from testbed.model.yamlsrc import PathKey, YamlDoc, dotted

NAME_RE = re.compile(r"^[^\s(){}]+$")
NAME_RULE = "a name without spaces, braces or parentheses"


def fail_at(doc: YamlDoc, msg: str, path: PathKey, hint: str | None = None) -> InputError:
    return InputError(
        msg, file=doc.file, line=doc.line_of(path), field=dotted(path) or None, hint=hint
    )


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_keys(
    doc: YamlDoc, data: Mapping[str, Any], path: PathKey, known: Mapping[str, str], what: str
) -> None:
    """Unknown keys, with the closest known one; `known` maps each spelling to its field."""
    for key in data:
        if key not in known:
            raise fail_at(
                doc,
                f"unknown field {key!r} in {what}{did_you_mean(str(key), known)} "
                f"(known: {', '.join(shortest(known)) or 'none'})",
                (*path, key),
            )


def shortest(spellings: Mapping[str, str]) -> list[str]:
    """One spelling per field, the shortest: "delay", not also "delay_ms"."""
    best: dict[str, str] = {}
    for spelling, name in spellings.items():
        if name not in best or len(spelling) < len(best[name]):
            best[name] = spelling
    return list(best.values())


def check_matrix_shape(doc: YamlDoc, matrix: Any) -> None:
    """Axes map value names to the variables they set; said plainly, before pydantic does."""
    if not isinstance(matrix, dict):
        return
    for axis, values in matrix.items():
        if not isinstance(values, dict) or not values:
            raise fail_at(
                doc,
                "an axis maps value names to the variables each sets, e.g. "
                f"{{late: {{connect: at 3s}}, early: {{connect: before}}}}; found {values!r}",
                ("matrix", axis),
            )
        for value, sets in values.items():
            if sets is not None and not isinstance(sets, dict):
                raise fail_at(
                    doc,
                    "a matrix value sets variables: expected a mapping such as "
                    f"{{connect: before}}, found {sets!r}",
                    ("matrix", axis, value),
                )


def check_playbook(pb: PlaybookSpec, doc: YamlDoc) -> None:
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
        raise fail_at(doc, f"expected {NAME_RULE}, found {name!r}", path)


def _check_var_name(doc: YamlDoc, name: str, path: PathKey) -> None:
    if not VAR_RE.match(name):
        raise fail_at(doc, f"a variable name is letters, digits and _ (found {name!r})", path)


def _check_matrix(pb: PlaybookSpec, doc: YamlDoc) -> None:
    owner: dict[str, str] = {}
    for axis, values in pb.matrix.items():
        if not VAR_RE.match(axis):
            raise fail_at(
                doc, f"an axis name is letters, digits and _ (found {axis!r})", ("matrix", axis)
            )
        if not values:
            raise fail_at(doc, "an axis needs at least one value", ("matrix", axis))
        for value, overrides in values.items():
            _check_name(doc, value, ("matrix", axis, value))
            for var in overrides or {}:
                path = ("matrix", axis, value, var)
                _check_var_name(doc, var, path)
                if owner.setdefault(var, axis) != axis:
                    raise fail_at(
                        doc,
                        f"variable {var!r} is set by axis {owner[var]!r} and axis {axis!r}; "
                        "each variable belongs to one axis",
                        path,
                        hint="use an explicit scenario (scenarios:) for a special combination",
                    )


def _check_exclude(pb: PlaybookSpec, doc: YamlDoc) -> None:
    for i, entry in enumerate(pb.exclude):
        if not entry:
            raise fail_at(doc, "an exclude entry names at least one axis: value", ("exclude", i))
        for axis, value in entry.items():
            path = ("exclude", i, axis)
            if axis not in pb.matrix:
                raise fail_at(
                    doc,
                    f"no matrix axis {axis!r}{did_you_mean(axis, pb.matrix)} "
                    f"(axes: {', '.join(pb.matrix) or 'none'})",
                    path,
                )
            if value not in pb.matrix[axis]:
                raise fail_at(
                    doc,
                    f"axis {axis!r} has no value {value!r}{did_you_mean(value, pb.matrix[axis])}"
                    f" (values: {', '.join(pb.matrix[axis])})",
                    path,
                )


def _check_step(doc: YamlDoc, step: Any, i: int) -> None:
    path: PathKey = ("steps", i)
    kinds = ", ".join(STEP_TYPES)
    if not isinstance(step, dict):
        raise fail_at(
            doc, f"a step is a mapping with one key, its kind ({kinds}); found {step!r}", path
        )
    if len(step) != 1:
        raise fail_at(
            doc,
            f"a step is a mapping with one key, its kind ({kinds}); "
            f"found {len(step)} keys: {', '.join(map(str, step)) or 'none'}",
            path,
        )
    kind, args = next(iter(step.items()))
    if kind not in STEP_TYPES:
        raise fail_at(
            doc,
            f"unknown step kind {kind!r}{did_you_mean(kind, STEP_TYPES)} (known: {kinds})",
            (*path, kind),
        )
    if args is not None and not isinstance(args, dict):
        raise fail_at(
            doc,
            f"a {kind} step takes a mapping of fields "
            f"({', '.join(shortest(STEP_KEYS[kind])) or 'none'}); found {args!r}",
            (*path, kind),
        )
    check_keys(doc, args or {}, (*path, kind), STEP_KEYS[kind], f"a {kind} step")
    if kind == "shape" and "clear" not in (args or {}):
        if not any(k in PROFILE_KEYS for k in args or {}):
            raise fail_at(
                doc,
                f"a shape step needs a profile field ({', '.join(PROFILE_SHORT)}) or clear: true",
                (*path, kind),
            )


def _check_variables(pb: PlaybookSpec, doc: YamlDoc) -> None:
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
            raise fail_at(
                doc,
                f"unknown variable {{{name}}}{did_you_mean(name, known)} "
                f"(variables: {', '.join(known) or 'none'})",
                path,
            )
    for var, path in overrides:
        if var not in pb.vars and var not in used:
            raise fail_at(
                doc,
                f"sets variable {var!r}, which vars does not declare and no step uses"
                f"{did_you_mean(var, set(used) | set(pb.vars))}",
                path,
            )


def _used_variables(pb: PlaybookSpec, doc: YamlDoc) -> dict[str, PathKey]:
    """Every variable a step or name_format names, with where it is first named."""
    used: dict[str, PathKey] = {}
    sources: list[tuple[PathKey, str]] = []
    if pb.name_format is not None:
        sources.append((("name_format",), pb.name_format))
    for i, step in enumerate(pb.steps):
        sources += list(strings(step, ("steps", i)))
    for path, text in sources:
        for name in template_names(text, partial(fail_at, doc, path=path)):
            used.setdefault(name, path)
    return used
