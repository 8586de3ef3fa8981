"""Property-based fuzzing of what users hand testbed: playbooks, topologies, client logs.

Each input is written to a file and given to the real loader (load_playbook,
load_topology) or to `testbed classify`'s reader and classifier. The property:
nothing but InputError comes out, and every input is answered within 2 s.
Inputs come from three generators: raw bytes; YAML-ish token soup (brackets,
anchors, aliases, indentation, the loaders' own keys); and real documents (the
shipped playbook and topology) with values swapped, keys dropped and lines cut.
The budget is fixed and the run deterministic (derandomize), so it runs in the suite.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.cli.run import read_client_log
from testbed.errors import InputError
from testbed.model.playbook import load_playbook
from testbed.model.topology import load_topology
from testbed.spice.classifier import classify

REPO = Path(__file__).resolve().parent.parent
BOUND_S = 2.0
EXAMPLES = 300  # per target (playbook, topology, classify): 900 inputs in all
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,  # timed by the test itself, against BOUND_S
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
COUNT = {"inputs": 0}

KEYS = [
    "name", "steps", "vars", "matrix", "hosts", "networks", "guests", "links", "subnet",
    "members", "roles", "start_guest", "migrate", "connect_client", "shape", "wait", "expect",
    "guest", "to", "from", "delay", "bandwidth", "guard", "kind", "address", "inventory",
    "exclude", "scenarios", "name_format", "topology", "memory", "fill", "host", "profile",
]  # fmt: skip
TOKENS = [
    "[", "]", "{", "}", ",", ":", ": ", "- ", "\n", "\n  ", "\n    ", "&a ", "*a", "&b ",
    "*b", "<<: *a", "!!python/object:os.system", "!!binary", "'", '"', "#", "---", "...",
    "|", ">", "%YAML 1.1\n", "~", "1e999", "-1", "0x10", "198.18.0.0/16", "8.8.8.0/24",
    "hypervisor", "client", "10ms", "100%", "{x}", "\t", "\x00", "\ufeff", "é",
]  # fmt: skip
CLIENT_LINES = [
    "(remote-viewer:1): GSpice-DEBUG: 12:00:00.000: ../src/channel-main.c:2200 "
    "migration message: migrate-begin-seamless",
    "(remote-viewer:1): GSpice-DEBUG: 12:00:00.001: ../src/channel-main.c:2300 "
    "migrate-dst-seamless-ack",
    "(remote-viewer:1): GSpice-DEBUG: 12:00:01.000: ../src/spice-session.c:1 "
    "migration (seamless): connections all ok",
    "(remote-viewer:1): GSpice-DEBUG: 12:00:02.000: main channel: switching host",
    "(remote-viewer:1): virt-viewer-DEBUG: 12:00:02.000: main channel: opened",
    "(remote-viewer:1): GSpice-DEBUG: 99:99:99.999: usbredir-9:0: channel up, state 3",
    "(remote-viewer:1): GSpice-DEBUG: disconnecting device from usb channel",
    "migrate failed: some channels failed to connect",
]

token_soup = st.lists(st.sampled_from(TOKENS + KEYS), max_size=120).map("".join)
raw_bytes = st.binary(max_size=4096)


def _mutations(doc: Any) -> st.SearchStrategy[str]:
    """A real document with one of its values replaced, a key dropped, or its text cut."""
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**12), max_value=10**12),
        st.floats(allow_nan=True),
        st.text(max_size=30),
        st.sampled_from(TOKENS + KEYS),
        st.lists(st.text(max_size=5), max_size=3),
        st.dictionaries(st.sampled_from(KEYS), st.text(max_size=5), max_size=3),
    )
    paths = list(_paths(doc))

    def swap(path: tuple[Any, ...], value: Any) -> str:
        copy = yaml.safe_load(yaml.safe_dump(doc))
        *parent, last = path
        node = copy
        for p in parent:
            node = node[p]
        node[last] = value
        return yaml.safe_dump(copy, allow_unicode=True)

    def drop(path: tuple[Any, ...]) -> str:
        copy = yaml.safe_load(yaml.safe_dump(doc))
        *parent, last = path
        node = copy
        for p in parent:
            node = node[p]
        del node[last]
        return yaml.safe_dump(copy)

    text = yaml.safe_dump(doc)
    return st.one_of(
        st.builds(swap, st.sampled_from(paths), leaf),
        st.builds(drop, st.sampled_from(paths)),
        st.integers(min_value=0, max_value=len(text)).map(lambda n: text[:n]),
    )


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Any:
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for k, v in items:
        yield (*path, k)
        if isinstance(v, (dict, list)) and v:
            yield from _paths(v, (*path, k))


PLAYBOOK_DOC = yaml.safe_load((REPO / "playbooks" / "bug-884631.yaml").read_text())
TOPOLOGY_DOC = yaml.safe_load((REPO / "topologies" / "local.yaml").read_text())


def _answer(load: Callable[[Path], object], data: bytes | str, suffix: str) -> None:
    """Write `data`, hand it to `load`: only InputError may come out, within the bound."""
    COUNT["inputs"] += 1
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    with tempfile.TemporaryDirectory(prefix="tb-fuzz-") as d:
        p = Path(d) / f"input{suffix}"
        p.write_bytes(raw)
        t0 = time.monotonic()
        try:
            load(p)
        except InputError:
            pass
        took = time.monotonic() - t0
    assert took < BOUND_S, f"{took:.2f} s for {raw[:200]!r}"


def _classify(p: Path) -> None:
    classify(read_client_log(p))


@FUZZ
@given(st.one_of(raw_bytes, token_soup, _mutations(PLAYBOOK_DOC)))
def test_playbook_loader(data: bytes | str) -> None:
    _answer(load_playbook, data, ".yaml")


@FUZZ
@given(st.one_of(raw_bytes, token_soup, _mutations(TOPOLOGY_DOC)))
def test_topology_loader(data: bytes | str) -> None:
    _answer(load_topology, data, ".yaml")


@FUZZ
@given(
    st.one_of(
        raw_bytes,
        st.lists(st.one_of(st.sampled_from(CLIENT_LINES), st.text(max_size=80)), max_size=60).map(
            "\n".join
        ),
        st.lists(st.sampled_from(CLIENT_LINES), min_size=1, max_size=40).map(
            lambda lines: "\n".join(line[: len(line) * 3 // 4] for line in lines)
        ),
    )
)
def test_classify(data: bytes | str) -> None:
    _answer(_classify, data, ".log")


def test_fuzzed_inputs_count() -> None:
    """Runs after the three above (file order): says how many inputs were tried."""
    print(f"fuzzed inputs: {COUNT['inputs']}")
    if COUNT["inputs"]:
        assert COUNT["inputs"] >= EXAMPLES  # the budget was spent, not skipped
