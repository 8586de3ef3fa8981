"""pydantic's validation errors in the user's words, next to the YAML source (yamlsrc).

A model may accept several spellings of a field (`AliasChoices`); an error must name the
one the user wrote, and say what is wrong without pydantic's prefixes. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from pydantic import AliasChoices, BaseModel, ValidationError

from testbed.errors import InputError


def input_keys(model: type[BaseModel], skip: Iterable[str] = ()) -> dict[str, str]:
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


class Problem(NamedTuple):
    """The first problem of a ValidationError: message, field path below the model, hint.

    `model_level` is true when pydantic named no field (a check between fields): any
    field of the model may be the cause.
    """

    message: str
    loc: tuple[str | int, ...]
    hint: str | None
    model_level: bool


def first_problem(e: ValidationError, model: type[BaseModel], given: Mapping[str, Any]) -> Problem:
    """The first pydantic error, at the key the user wrote (in `given`), in the user's words."""
    err = e.errors(include_url=False)[0]
    cause = err.get("ctx", {}).get("error")
    loc: list[str | int] = [p for p in err["loc"] if not (isinstance(p, str) and "[" in p)]
    model_level = not loc
    hint = None
    if isinstance(cause, InputError):
        msg, hint = bare_message(cause), cause.hint
        if not loc and cause.field:
            loc = [cause.field]
    elif err["type"] == "missing":
        msg = "required field is missing"
    elif err["type"] == "value_error":
        msg = err["msg"].removeprefix("Value error, ")
    else:
        msg = f"{err['msg']} (found {err.get('input')!r})"
    if loc:
        loc[0] = user_key(model, str(loc[0]), given)
    return Problem(msg, tuple(loc), hint, model_level)


def bare_message(e: InputError) -> str:
    """An InputError's message without the "field: " it was prefixed with."""
    return e.message.removeprefix(f"{e.field}: ") if e.field and not e.file else e.message


def user_key(model: type[BaseModel], key: str, given: Mapping[str, Any]) -> str:
    """The spelling of field `key` (a name or any alias) that the user wrote."""
    keys = input_keys(model)
    target = keys.get(key, key)
    spellings = [k for k, f in keys.items() if f == target]
    return next((k for k in spellings if k in given), spellings[0] if spellings else key)
