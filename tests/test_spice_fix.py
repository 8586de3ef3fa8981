"""The bug 884631 fix inside spice-server: the build `make setup` makes, and what ran.

The build tests read the real build in ~/.cache/testbed/builds (made by `make setup`,
`make spice-fix`); the lab tests run real migrations on the local lab with the
patched library mapped by both QEMUs.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from testbed.errors import InputError
from testbed.model.hostspec import HostSpec
from testbed.model.result import RunResult, ScenarioResult
from testbed.runner.plan import plan, run_plan
from testbed.shipped import PATCHES
from testbed.virt.builds import build_key, patches, spice_server_build
from testbed.virt.elfnote import gnu_build_id
from testbed.virt.qemu_maps import SPICE_SERVER, mapped_path

REPO = Path(__file__).resolve().parent.parent
STOCK_LIB = Path("/usr/lib/x86_64-linux-gnu/libspice-server.so.1.14.2")


def _readelf_build_id(path: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True).stdout
    return next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if "Build ID" in ln)


def test_build_id_matches_readelf() -> None:
    """The pure ELF note reader agrees with binutils on the stock and the patched library."""
    if not STOCK_LIB.exists():
        pytest.skip(f"needs Debian's libspice-server1 ({STOCK_LIB})")
    b = spice_server_build()
    for lib in (STOCK_LIB, b.library):
        assert gnu_build_id(lib.read_bytes()) == _readelf_build_id(lib)
    assert b.build_id != gnu_build_id(STOCK_LIB.read_bytes())
    assert gnu_build_id(b"\x7fELF" + bytes(60)) is None
    assert gnu_build_id(b"not an elf") is None


def test_build_is_there_and_names_its_inputs() -> None:
    """make setup built the library and its wrapper for today's source and patches."""
    b = spice_server_build()
    assert b.library.is_file() and b.library.parent == b.dir / "lib"
    assert (b.dir / "lib" / "libspice-server.so.1").resolve() == b.library
    text = b.emulator.read_text()
    assert f"LD_LIBRARY_PATH={b.dir / 'lib'}" in text and "exec /usr/bin/qemu-system-x86_64" in text
    assert b.version == "0.15.1"
    # the wrapper runs QEMU, and that QEMU finds its modules
    out = subprocess.run([str(b.emulator), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "QEMU emulator" in out.stdout


def test_build_key_follows_the_patches(tmp_path: Path) -> None:
    """An edited patch or another source upload is another build; the same inputs, the same."""
    ps = patches()
    assert [p.parent for p in ps] == [PATCHES / "spice-server"] * len(ps) and len(ps) >= 2
    dsc = ("spice_0.15.1-1.dsc", "fc77")
    assert build_key(dsc, ps) == build_key(dsc, ps)
    assert build_key(dsc, ps) != build_key(("spice_0.15.1-2.dsc", "ab12"), ps)
    edited = tmp_path / ps[0].name
    edited.write_bytes(ps[0].read_bytes() + b"\n")
    assert build_key(dsc, ps) != build_key(dsc, [edited, *ps[1:]])


def test_missing_build_is_an_input_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A host asking for the patched server on a machine without the build: run make setup."""
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="not built") as e:
        spice_server_build()
    assert "make setup" in str(e.value)


def test_patched_and_an_emulator_of_ones_own_conflict() -> None:
    assert HostSpec(roles=["hypervisor"], spice_server="patched").emulator is None
    with pytest.raises(ValidationError, match="drop emulator"):
        HostSpec(roles=["hypervisor"], spice_server="patched", emulator="/usr/bin/qemu-kvm")
    with pytest.raises(ValidationError):
        HostSpec(roles=["hypervisor"], spice_server="fixed")


def test_mapped_path_reads_proc_maps() -> None:
    maps = (
        "7f1c2a000000-7f1c2a020000 r--p 00000000 08:01 1234  /usr/lib/x86_64-linux-gnu/libc.so.6\n"
        "7f1c2b000000-7f1c2b040000 r--p 00000000 08:01 99 "
        " /root/.cache/testbed/builds/spice-884631-x/lib/libspice-server.so.1.14.2\n"
        "7ffd1000-7ffd2000 rw-p 00000000 00:00 0  [stack]\n"
    )
    assert mapped_path(maps, SPICE_SERVER) == (
        "/root/.cache/testbed/builds/spice-884631-x/lib/libspice-server.so.1.14.2"
    )
    assert mapped_path(maps.splitlines()[0], SPICE_SERVER) is None


# ---- on the real lab ------------------------------------------------------------------

BASELINE = """
name: baseline-stock-patched
description: the seamless baseline on Debian's spice-server and on the patched one
topology: {topology}
vars: {{bandwidth: 20, server: stock}}
matrix:
  server:
    stock: {{server: stock}}
    patched: {{server: patched}}
steps:
  - start_guest: {{guest: vm, spice_server: "{{server}}"}}
  - connect_client: {{client: client, guest: vm, when: before}}
  - migrate: {{guest: vm, to: dst, bandwidth: "{{bandwidth}}", wait: true, timeout: 180s}}
  - expect: {{outcome: seamless, usbredir: migrated, migration: completed}}
"""


def _scenario(run: RunResult, name: str) -> ScenarioResult:
    return next(s for s in run.scenarios if s.name == name)


def _src_qemu_log(s: ScenarioResult) -> str:
    logs = Path(s.artifacts["logs"]) / "src" / "qemu"
    return "".join(p.read_text(errors="replace") for p in logs.glob("*-vm.log"))


@pytest.fixture(scope="module")
def root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: the lab makes network namespaces and runs libvirtd")


@pytest.fixture(scope="module")
def fix_run(root: None, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("fix-server")
    (run,) = run_plan(
        plan([REPO / "playbooks" / "bug-884631.yaml"], pattern="fix-server"), out / "bug"
    )
    return run


@pytest.fixture(scope="module")
def baseline_run(root: None, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out = tmp_path_factory.mktemp("baseline-stock-patched")
    pb = out / "baseline.yaml"
    pb.write_text(BASELINE.format(topology=REPO / "topologies" / "local.yaml"))
    (run,) = run_plan(plan([pb]), out / "run")
    return run


@pytest.mark.lab
@pytest.mark.parametrize("case", ["late-client", "slow-dst"])
def test_server_fix_is_seamless_and_keeps_usb(fix_run: RunResult, case: str) -> None:
    """Both cases of the bug, fixed inside spice-server: seamless, usbredir migrated."""
    s = _scenario(fix_run, f"{case}/fix-server")
    assert s.error is None, s.error
    assert (s.outcome, s.client.usbredir, s.passed) == ("seamless", "migrated", True), s.evidence
    assert s.guard is None  # the server did it alone
    log = _src_qemu_log(s)
    if case == "late-client":  # patch 0001: the late client was sent the target
        assert "client attached during migration, connecting it to the target" in log
    else:  # patch 0003: the end waited for the client's connection to the target
        assert "deferring the end" in log and "client done connecting to the target" in log


@pytest.mark.lab
def test_both_qemus_mapped_the_patched_build(fix_run: RunResult) -> None:
    """The result proves what ran: the build's path and build id, on source and destination."""
    b = spice_server_build()
    for s in fix_run.scenarios:
        libs = s.guest.spice_server
        assert set(libs) == {"src", "dst"}, libs
        for host, lib in libs.items():
            assert (lib.asked, lib.path, lib.build_id) == ("patched", str(b.library), b.build_id), (
                host
            )
        assert libs["src"].pid != libs["dst"].pid


@pytest.mark.lab
def test_patched_server_changes_nothing_for_a_client_connected_first(
    baseline_run: RunResult,
) -> None:
    """The regression check on the patch itself: the seamless baseline (client connected
    before, no delay) behaves the same on stock and patched spice-server, the end is not
    held, and the frozen console is no longer (TCG noise allowed)."""
    stock, patched = _scenario(baseline_run, "stock"), _scenario(baseline_run, "patched")
    stock_lib = gnu_build_id(STOCK_LIB.read_bytes())
    assert {lib.build_id for lib in stock.guest.spice_server.values()} == {stock_lib}
    assert {lib.build_id for lib in patched.guest.spice_server.values()} == {
        spice_server_build().build_id
    }
    for s in (stock, patched):
        assert s.error is None and s.passed, (s.name, s.error, s.failures)
    assert (stock.outcome, stock.client.usbredir) == (patched.outcome, patched.client.usbredir)
    log = _src_qemu_log(patched)
    assert "deferring the end" not in log and "client attached during migration" not in log
    assert stock.client.frozen_ms is not None and patched.client.frozen_ms is not None
    assert patched.client.frozen_ms <= stock.client.frozen_ms + 500, (
        stock.client.frozen_ms,
        patched.client.frozen_ms,
    )


@pytest.mark.lab
def test_each_host_runs_its_own_spice_server(root: None, tmp_path: Path) -> None:
    """A topology field per host: the source stock, the destination patched. The domain
    migrates with the destination's own emulator, and each QEMU mapped what its host asked."""
    topo = tmp_path / "mixed.yaml"
    text = (REPO / "topologies" / "local.yaml").read_text()
    topo.write_text(
        text.replace("name: local", "name: mixed").replace(
            "  dst:\n    roles: [hypervisor]",
            "  dst:\n    roles: [hypervisor]\n    spice_server: patched",
        )
    )
    (run,) = run_plan(
        plan([REPO / "playbooks" / "seamless-baseline.yaml"], topology=topo), tmp_path / "run"
    )
    s = run.scenarios[0]
    assert s.error is None and s.passed, (s.error, s.failures)
    libs = s.guest.spice_server
    assert (libs["src"].asked, libs["src"].build_id) == (
        "stock",
        gnu_build_id(STOCK_LIB.read_bytes()),
    )
    assert (libs["dst"].asked, libs["dst"].build_id) == ("patched", spice_server_build().build_id)
