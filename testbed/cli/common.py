"""What every command shares: logging, the console, errors, and finding a lab."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import ParamSpec, TypeVar

import click
from rich.console import Console
from rich.logging import RichHandler

from testbed import shipped
from testbed.errors import TestbedError
from testbed.lab.state import LabRecord, list_labs

console = Console(stderr=True)
out = Console()
if not out.is_terminal:  # logs and CI: tables wide enough to read whole
    out = Console(width=150)
DEFAULT_TOPOLOGY = str(shipped.DEFAULT_TOPOLOGY)
P = ParamSpec("P")
R = TypeVar("R")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level,
        format="%(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=False)],
    )
    logging.getLogger("pyroute2").setLevel(logging.WARNING if verbose < 2 else logging.DEBUG)


def friendly_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Print a TestbedError as one clear message (no traceback) and exit with its code."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except TestbedError as e:
            # soft_wrap: a long file:line or path stays whole (rich folds it otherwise)
            console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            sys.exit(e.exit_code)
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper


@contextmanager
def step(message: str) -> Iterator[Callable[[str], None]]:
    """A spinner that shows what a long step is doing now."""
    with console.status(message) as status:

        def progress(msg: str) -> None:
            status.update(f"{message}: {msg}")
            logging.getLogger("testbed").info("%s: %s", message, msg)

        yield progress


def find_lab(target: str | None) -> LabRecord:
    """A lab by id, by topology file or by topology name; the only running one by default."""
    labs = [r for r in list_labs() if r.status == "up"]
    if target is None:
        if len(labs) == 1:
            return labs[0]
        if not labs:
            raise TestbedError("no lab is up", hint="testbed up")
        raise TestbedError(
            f"{len(labs)} labs are up; name one: "
            + ", ".join(f"{r.id} ({r.topology_name})" for r in labs)
        )
    by_id = [r for r in labs if r.id == target]
    if by_id:
        return by_id[0]
    name = target
    if target.endswith((".yaml", ".yml")) and Path(target).exists():
        from testbed.model.topology import load_topology

        name = load_topology(target).name
    by_name = [r for r in labs if r.topology_name == name]
    if len(by_name) == 1:
        return by_name[0]
    if not by_name:
        raise TestbedError(f"no lab is up for {target!r} (see `testbed status`)")
    raise TestbedError(
        f"{len(by_name)} labs are up for {name}; name one by id: "
        + ", ".join(r.id for r in by_name)
    )


lab_option = click.option(
    "--lab",
    "lab_target",
    default=None,
    metavar="ID|TOPOLOGY",
    help="Which lab (default: the only one up).",
)
