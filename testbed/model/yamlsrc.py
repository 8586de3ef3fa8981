"""YAML with line numbers, and pydantic errors turned into file:line: field messages.

PyYAML's composer keeps a mark on every node; we build plain Python data from
the node tree and remember the line of every path, so an error found later by
pydantic can still say where in the file it is.
"""

from __future__ import annotations

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


def _build(node: yaml.Node, path: PathKey, lines: dict[PathKey, int], file: str) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = yaml.safe_load(yaml.serialize(key_node)) if key_node.tag else key_node.value
            if isinstance(key, (dict, list)):
                raise InputError(
                    "mapping keys must be plain values",
                    file=file,
                    line=key_node.start_mark.line + 1,
                )
            if key in out:
                raise InputError(
                    f"duplicate key {key!r}", file=file, line=key_node.start_mark.line + 1
                )
            sub = (*path, key)
            out[key] = _build(value_node, sub, lines, file)
            lines[sub] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), lines, file) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))


def load_yaml_text(text: str, file: str) -> YamlDoc:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise InputError(f"not valid YAML: {e.problem}", file=file, line=line) from None
    if node is None:
        raise InputError("the file is empty", file=file, hint="see topologies/local.yaml")
    lines: dict[PathKey, int] = {}
    data = _build(node, (), lines, file)
    return YamlDoc(file=file, data=data, lines=lines)


def load_yaml_file(path: str | Path) -> YamlDoc:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such file", file=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=str(path)) from None
    return load_yaml_text(text, str(path))


def _dotted(loc: tuple[Any, ...]) -> str:
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
            msg + more, file=doc.file, line=doc.line_of(path), field=_dotted(path) or None
        ) from None
