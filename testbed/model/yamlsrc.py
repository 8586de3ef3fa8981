"""YAML with line numbers, and pydantic errors turned into file:line: field messages.

PyYAML's composer keeps a mark on every node; we build plain Python data from
the node tree and remember the line of every path, so an error found later by
pydantic can still say where in the file it is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from testbed.errors import InputError

PathKey = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass
class YamlDoc:
    """Parsed YAML data plus the line (1-based) of every key and item."""

    file: str
    data: Any
    lines: dict[PathKey, int] = field(default_factory=dict)

    def line_of(self, path: PathKey) -> int | None:
        """The line of `path`, or of its nearest ancestor that has one."""
        p = tuple(path)
        while p:
            if p in self.lines:
                return self.lines[p]
            p = p[:-1]
        return self.lines.get((), None)


class _Builder:
    """Plain data from a node tree, with the line of every path.

    Keys are the text the user wrote: YAML 1.1 would read `on:`/`off:` as booleans and
    `10:` as a number, but every key we use is a name. Values at paths where
    `keep_text(path)` holds stay text too (a scenario named `on` is not True).
    """

    def __init__(self, file: str, keep_text: Callable[[PathKey], bool] | None) -> None:
        self.file = file
        self.keep_text = keep_text
        self.lines: dict[PathKey, int] = {}
        self._loader = yaml.SafeLoader("")  # only its constructor: tags -> Python values

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(n, (*path, i)) for i, n in enumerate(node.value)]
        try:
            value = self._loader.construct_object(node, deep=True)
        except yaml.constructor.ConstructorError as e:
            raise InputError(
                f"cannot read this value: {e.problem}",
                file=self.file,
                line=node.start_mark.line + 1,
            ) from None
        if (
            self.keep_text
            and self.keep_text(path)
            and node.style is None
            and not isinstance(value, str)
        ):
            return node.value
        return value

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise InputError("mapping keys must be plain names", file=self.file, line=line)
            key = key_node.value
            if key in out:
                raise InputError(f"duplicate key {key!r}", file=self.file, line=line)
            out[key] = self.build(value_node, (*path, key))
            self.lines[(*path, key)] = line
        return out


def load_yaml_text(
    text: str,
    file: str,
    keep_text: Callable[[PathKey], bool] | None = None,
    empty_hint: str | None = None,
) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise InputError(f"not valid YAML: {e.problem}", file=file, line=line) from None
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML: {e}", file=file) from None
    if node is None:
        raise InputError("the file is empty", file=file, hint=empty_hint)
    builder = _Builder(file, keep_text)
    data = builder.build(node, ())
    return YamlDoc(file=file, data=data, lines=builder.lines)


def load_yaml_file(
    path: str | Path,
    keep_text: Callable[[PathKey], bool] | None = None,
    empty_hint: str | None = None,
) -> YamlDoc:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such file", file=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=str(path)) from None
    return load_yaml_text(text, str(path), keep_text, empty_hint)


def dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validate(model: type[M], doc: YamlDoc, data: Any = None, prefix: PathKey = ()) -> M:
    """Validate `data` (default: the whole document) as `model`; errors name file, line, field."""
    try:
        return model.model_validate(doc.data if data is None else data)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = (*prefix, *loc)
        found = err.get("input")
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] not in ("missing",) and not isinstance(found, (dict, list)):
            msg += f" (found {found!r})"
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        raise InputError(
            msg + more, file=doc.file, line=doc.line_of(path), field=dotted(path) or None
        ) from None
