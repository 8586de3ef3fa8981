"""Errors a user can act on: what went wrong, where, and what to do about it."""

from __future__ import annotations


class TestbedError(Exception):
    """Base for every error testbed reports to a user (printed without a traceback)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InputError(TestbedError, ValueError):
    """Bad user input (a topology, a playbook, a CLI value). Exit code 2, nothing created.

    A ValueError too, so a unit parser raising it inside a pydantic validator becomes a
    validation error that carries the field's location.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        field: str | None = None,
        hint: str | None = None,
    ) -> None:
        where = ""
        if file:
            where = file + (f":{line}" if line else "")
        if field:
            where = f"{where}: {field}" if where else field
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.file, self.line, self.field = file, line, field


class LabError(TestbedError):
    """Something the lab could not do on the system (a daemon, a namespace, a guest)."""


class CapabilityMissing(TestbedError):
    """The machine lacks something a feature needs; the message names what to install."""
