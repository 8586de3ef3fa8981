"""Templates: "{var}" in a playbook's strings, the names they use, and substitution.

``"{x}"`` as the whole string is x itself (number, bool, mapping keep their type); inside
a longer string x is formatted in (bools as true/false); ``{{`` and ``}}`` are literal
braces. Values are inserted as they are, never substituted again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from testbed.model.yamlsrc import PathKey

VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_WHOLE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def strings(value: Any, path: PathKey) -> Iterator[tuple[PathKey, str]]:
    """Every string value under `value`, with its path (keys are never templates)."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from strings(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from strings(v, (*path, i))


def template_names(text: str, fail: Callable[[str], Exception]) -> list[str]:
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
    template_names(text, ValueError)
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


def substitute_tree(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return substitute(value, values)
    if isinstance(value, dict):
        return {k: substitute_tree(v, values) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_tree(v, values) for v in value]
    return value
