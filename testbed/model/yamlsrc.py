"""YAML with line numbers, and pydantic errors turned into file:line: field messages.

PyYAML's composer keeps a mark on every node; we build plain Python data from
the node tree and remember the line of every path, so an error found later by
pydantic can still say where in the file it is.

Hostile input stops here, for every loader alike: a file that is not UTF-8
text, a file over MAX_FILE_BYTES, more than MAX_NODES nodes (counted after
aliases are expanded, so an alias bomb stops early), more than MAX_ALIASES
aliases, nesting deeper than MAX_DEPTH, and an anchor that refers to itself.
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

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_NODES = 100_000  # values after alias expansion
MAX_ALIASES = 1_000
MAX_DEPTH = 64


class _LimitedLoader(yaml.SafeLoader):
    """SafeLoader's composer with a node budget, an alias budget and a depth limit,
    so a hostile document fails while it is read, not after."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file = file
        self.nodes = 0
        self.aliases = 0
        self.depth = 0

    def _limit(self, what: str, limit: int) -> InputError:
        mark = self.peek_event().start_mark if self.check_event() else None
        return InputError(
            f"{what} (the limit is {limit:,})",
            file=self.file,
            line=mark.line + 1 if mark else None,
        )

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise self._limit("too many aliases (*name)", MAX_ALIASES)
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self._limit("too many values in the file", MAX_NODES)
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise self._limit("nested too deep", MAX_DEPTH)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


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
        self._open: set[int] = set()  # collections being built: an alias to one is a loop
        self._built = 0

    def build(self, node: yaml.Node, path: PathKey) -> Any:
        line = node.start_mark.line + 1
        self.lines[path] = line
        self._built += 1
        if self._built > MAX_NODES:
            raise InputError(
                f"too many values once aliases are expanded (the limit is {MAX_NODES:,})",
                file=self.file,
                line=line,
            )
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            if id(node) in self._open:
                raise InputError(
                    "an alias refers to the collection that holds it (a loop)",
                    file=self.file,
                    line=line,
                    field=dotted(path) or None,
                )
            self._open.add(id(node))
            try:
                if isinstance(node, yaml.MappingNode):
                    return self._mapping(node, path)
                return [self.build(n, (*path, i)) for i, n in enumerate(node.value)]
            finally:
                self._open.discard(id(node))
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
            and isinstance(node, yaml.ScalarNode)  # collections returned above
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
        loader = _LimitedLoader(text, file)  # its reader refuses control characters at once
    except yaml.reader.ReaderError as e:
        line: int | None = text.count("\n", 0, e.position) + 1
        raise InputError(
            f"not text YAML can hold (character #x{e.character:04x})", file=file, line=line
        ) from None
    try:
        node = loader.get_single_node()
    except RecursionError:
        raise InputError("nested too deep", file=file) from None
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise InputError(f"not valid YAML: {e.problem}", file=file, line=line) from None
    except yaml.YAMLError as e:
        raise InputError(f"not valid YAML: {e}", file=file) from None
    finally:
        loader.dispose()
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
    return load_yaml_text(read_text_file(path), str(path), keep_text, empty_hint)


def read_text_file(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> str:
    """A UTF-8 text file of at most `max_bytes`, or an InputError saying what it is."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise InputError("no such file", file=str(path)) from None
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror}", file=str(path)) from None
    if len(raw) > max_bytes:
        raise InputError(f"the file is larger than {max_bytes:,} bytes", file=str(path))
    return decode_text(raw, str(path))


def decode_text(raw: bytes, file: str) -> str:
    """`raw` as UTF-8 text; binary data, UTF-16 and bad UTF-8 are input errors."""
    hint = "save it as UTF-8 text"
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InputError("the file is UTF-16, not UTF-8", file=file, hint=hint)
    nul = raw.find(b"\0")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise InputError("the file holds binary data (a NUL byte)", file=file, line=line)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise InputError(
            f"not UTF-8 text (byte 0x{raw[e.start]:02x})", file=file, line=line, hint=hint
        ) from None


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
