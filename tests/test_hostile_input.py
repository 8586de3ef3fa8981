"""Hostile input through the real CLI: each case ends in exit 2 with a clear message
(file, and line/field where there is one), never a traceback, and quickly.

Every file is written in the test's tmp folder; `up` is only given files that must be
refused before anything is made, and the test checks that no lab was created.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from testbed.cli.main import cli
from testbed.model.yamlsrc import MAX_FILE_BYTES

REPO = Path(__file__).resolve().parent.parent
BOUND_S = 20.0  # the loaders answer in well under this (the 200,000-step file included)

GOOD_TOPOLOGY = (REPO / "topologies" / "local.yaml").read_text()
GOOD_PLAYBOOK = """name: p
steps:
  - start_guest: {guest: vm}
"""


def _bomb(levels: int = 9) -> str:
    """A billion-laughs document: 9 levels of 9 aliases each (9**9 values expanded)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


def _topology(subnets: dict[str, str], extra_host: bool = False) -> str:
    hosts = (
        "  src: {roles: [hypervisor]}\n  dst: {roles: [hypervisor]}\n  client: {roles: [client]}\n"
    )
    if extra_host:
        hosts += "  lonely: {roles: [client]}\n"
    members = {"display": "client, src, dst"}
    nets = "".join(
        f"  {n}: {{subnet: {s}, members: [{members.get(n, 'src, dst')}]}}\n"
        for n, s in subnets.items()
    )
    return f"name: t\nhosts:\n{hosts}networks:\n{nets}guests:\n  vm: {{host: src}}\n"


OK_NETS = {"display": "198.18.1.0/24", "migration": "198.18.2.0/24"}

Content = bytes | str | Callable[[], bytes | str]

# name -> (file contents, the words the message must hold)
PLAYBOOKS: dict[str, tuple[Content, str]] = {
    "binary": (bytes(range(256)) * 8, "binary data"),
    "utf-16": (GOOD_PLAYBOOK.encode("utf-16"), "UTF-16"),
    "bad-utf-8": (b"name: p\nsteps: [\xff\xfe]\n", ":2: not UTF-8"),
    "self-alias": ("name: p\nsteps: &s [{start_guest: {guest: vm}}, *s]\n", "loop"),
    "nested-5000": ("[" * 5000, "nested too deep"),
    "bomb-in-steps": (_bomb() + "\nname: p\nsteps: *a8\n", "limit"),
    "bomb-in-vars": ("vars:\n" + _indent(_bomb(), 2) + "\nname: p\nsteps: []\n", "limit"),
    "200000-steps": (lambda: "name: p\nsteps:\n" + "- wait: 1s\n" * 200_000, "limit"),
    "2001-steps": (
        lambda: "name: p\nsteps:\n" + "- wait: 1s\n" * 2001,
        "steps: List should have at most 2000 items",
    ),
    "matrix-of-a-billion": (
        "name: p\nmatrix:\n"
        + "".join(
            f"  a{i}: {{" + ", ".join(f"v{j}: {{}}" for j in range(10)) + "}\n" for i in range(9)
        )
        + "steps:\n  - start_guest: {guest: vm}\n",
        "matrix: the matrix makes 1,000,000,000 scenarios",
    ),
    "too-large": (lambda: "# " + "x" * MAX_FILE_BYTES + "\n", "larger than"),
}
TOPOLOGIES: dict[str, tuple[Content, str]] = {
    "binary": (bytes(range(256)) * 8, "binary data"),
    "utf-16": (GOOD_TOPOLOGY.encode("utf-16"), "UTF-16"),
    "self-alias": ("name: t\nhosts: &h {a: {roles: [client], x: *h}}\n", "loop"),
    "nested-5000": ("[" * 5000, "nested too deep"),
    "bomb": (_bomb() + "\n" + GOOD_TOPOLOGY, "limit"),
    "overlapping-subnets": (
        _topology({"display": "198.18.0.0/16", "migration": "198.18.2.0/24"}),
        "overlaps network 'display'",
    ),
    "host-in-no-network": (_topology(OK_NETS, extra_host=True), "'lonely' is on no network"),
    "public-subnet": (
        _topology({"display": "8.8.8.0/24", "migration": "198.18.2.0/24"}),
        "networks.display.subnet: subnet 8.8.8.0/24 is not private",
    ),
    "loopback-subnet": (
        _topology({"display": "198.18.1.0/24", "migration": "127.0.0.0/24"}),
        "networks.migration.subnet: subnet 127.0.0.0/24 is not private",
    ),
}
CLIENT_LOGS: dict[str, Content] = {
    "empty": b"",
    "binary": lambda: os.urandom(4096).replace(b"DEBUG", b"debug"),
    "bad-utf-8": b"remote-viewer said \xff\xfe\xfd\n" * 10,
    "one-200MB-line": lambda: b"x" * (200 * 1024 * 1024),
}


def _write(tmp: Path, name: str, content: Content) -> Path:
    data = content() if callable(content) else content
    p = tmp / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _invoke(*args: str) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = CliRunner().invoke(cli, list(args), catch_exceptions=True)
    took = time.monotonic() - t0
    text = r.output
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise AssertionError(f"{args}: raised {r.exception!r}\n{text}") from r.exception
    return r.exit_code, "".join(text.split()), took  # rich wraps lines: compare unspaced


def _check(args: tuple[str, ...], path: Path, words: str) -> None:
    code, text, took = _invoke(*args)
    assert code == 2, (args, code, text)
    assert "Traceback" not in text
    assert f"error:{path}" in text, text  # the file, first
    assert "".join(words.split()) in text, text
    assert took < BOUND_S, (args, took)


@pytest.mark.parametrize("case", sorted(PLAYBOOKS))
def test_playbook_run_list(tmp_path: Path, case: str) -> None:
    content, words = PLAYBOOKS[case]
    p = _write(tmp_path, f"{case}.yaml", content)
    _check(("run", "--list", str(p)), p, words)


@pytest.mark.parametrize("case", sorted(TOPOLOGIES))
@pytest.mark.parametrize("command", ["run --topology", "up", "down"])
def test_topology(tmp_path: Path, state_root: Path, case: str, command: str) -> None:
    content, words = TOPOLOGIES[case]
    t = _write(tmp_path, f"{case}.yaml", content)
    if command == "run --topology":
        pb = _write(tmp_path, "pb.yaml", GOOD_PLAYBOOK)
        args: tuple[str, ...] = ("run", "--list", "--topology", str(t), str(pb))
    else:
        args = (command, str(t))
    labs = state_root / "labs"
    before = set(os.listdir(labs)) if labs.exists() else set()
    _check(args, t, words)
    after = set(os.listdir(labs)) if labs.exists() else set()
    assert after <= before, f"{command} made a lab: {after - before}"


@pytest.mark.parametrize("case", sorted(CLIENT_LOGS))
def test_classify_refuses_what_is_not_a_client_log(tmp_path: Path, case: str) -> None:
    p = _write(tmp_path, f"{case}.log", CLIENT_LOGS[case])
    _check(("classify", str(p)), p, "not a remote-viewer debug log")


def test_classify_still_reads_a_real_log() -> None:
    log = REPO / "tests" / "data" / "spice" / "seamless.log.gz"
    code, text, _ = _invoke("classify", str(log))
    assert code == 0, text
    assert "outcome:seamless" in text
