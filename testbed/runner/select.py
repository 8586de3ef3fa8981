"""Scenario selection: the `-k` expression of `testbed run` and the pytest plugin."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from testbed.errors import InputError
from testbed.model.playbook import Scenario

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
