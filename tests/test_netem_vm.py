"""The kernel engine on a real sch_netem: its tests run inside the netem VM, with real packets.

This machine's kernel has no netem. The netem VM (`testbed.virt.netem_vm`, built by
`make setup`) boots Debian's cloud kernel, which has it, on a private bridge only the
root namespace reaches (`scratch_netem_vm`). Once per session the VM is booted, sent
testbed (the same bundle an SSH host gets) and the kernel engine's tests, and pytest
runs there: the kernel-netem half of `test_shaping.py` (delay, rate, loss, per-peer,
clearing, a live change under a TCP flow, idempotence, duplicate/corrupt/jitter), the
veth half of `test_kernel_netlink.py`, and `netem_inside.py` (read-back equals asked
for every field, u32 per-peer classes, reorder, distributions, queue limits, tbf rate,
clear leaves nothing). Each of those inner tests is one test here: it passes when it
passed in the VM, and fails with the VM's message otherwise; none may skip.
"""

from __future__ import annotations

import ast
import os
import time
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

import pytest

from testbed.hosts.bundle import ensure_bundle
from testbed.virt.netem_boot import scratch_netem_vm

pytestmark = pytest.mark.lab  # boots the netem VM (QEMU)

HERE = Path(__file__).resolve().parent
INNER = PurePosixPath("/var/lib/testbed/tests")
#: file -> which of its tests run inside (those taking `engine` run as [kernel-netem])
FILES = {
    "test_shaping.py": "engine",
    "test_kernel_netlink.py": "veth",
    "netem_inside.py": "",
}
#: the one test that checks a kernel *without* netem (it skips where netem is)
NOT_THERE = {
    "test_kernel_netlink.py::test_netem_on_a_kernel_without_it_is_a_clear_capability_error"
}


def _inner_tests() -> list[str]:
    """file::function of every test that runs inside, read from the files' source."""
    out = []
    for name, needs in FILES.items():
        tree = ast.parse((HERE / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                args = {a.arg for a in node.args.args}
                test = f"{name}::{node.name}"
                if (not needs or needs in args) and test not in NOT_THERE:
                    out.append(test)
    return out


def _node_id(test: str) -> str:
    """The inner pytest node id: the engine tests as their kernel-netem variant."""
    return f"{test}[kernel-netem]" if test.startswith("test_shaping.py::") else test


@pytest.fixture(scope="session")
def netem_vm(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("needs root: boots QEMU on a tap in a network namespace")
    with scratch_netem_vm(str(os.getpid() % 100000), tmp_path_factory.mktemp("netem-vm")) as pair:
        yield pair


@pytest.fixture(scope="session")
def inner_results(netem_vm, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict]]:
    """Run the inner tests in the VM once; testcase results by file::function."""
    vm, host = netem_vm
    bundle = ensure_bundle(host)
    host.makedirs(INNER)
    for name in ["conftest.py", *FILES]:
        host.put(HERE / name, Path(str(INNER / name)))
    junit = INNER / "junit.xml"
    start = time.monotonic()
    host.run(
        [
            "sh",
            "-c",
            f'cd "$1" && PYTHONPATH="$2" TESTBED_STATE=/run/testbed-tests python3 -m pytest '
            "-q -p no:cacheprovider -o addopts= --junitxml=junit.xml "
            f"{' '.join(_node_id(t) for t in _inner_tests())} > pytest.out 2>&1; true",
            "sh",
            str(INNER),
            str(bundle),
        ],
        timeout=900,
    )
    local = tmp_path_factory.mktemp("netem-junit") / "junit.xml"
    host.get(Path(str(junit)), local)
    print(f"netem VM: booted in {vm.boot_s:.1f} s, inner tests {time.monotonic() - start:.0f} s")
    out: dict[str, list[dict]] = {}
    for case in ET.parse(local).iter("testcase"):
        file = case.get("classname", "").rsplit(".", 1)[-1] + ".py"
        func = case.get("name", "").split("[", 1)[0]
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, (child.get("message") or "") + (child.text or "")
        out.setdefault(f"{file}::{func}", []).append(
            {"name": case.get("name"), "outcome": outcome, "message": message[-1500:]}
        )
    return out


@pytest.mark.parametrize("test", _inner_tests())
def test_in_the_netem_vm(test: str, inner_results: dict[str, list[dict]]) -> None:
    cases = inner_results.get(test)
    assert cases, f"{test} did not run in the netem VM (collected: {sorted(inner_results)})"
    bad = [c for c in cases if c["outcome"] != "passed"]
    assert not bad, "\n".join(f"{c['name']}: {c['outcome']}: {c['message']}" for c in bad)
