"""The bug 884631 fix inside spice-server (and QEMU): the builds, and what ran.

The build tests read the real builds in ~/.cache/testbed/builds (made by `make setup`,
`make spice-fix`, and `make build-qemu-fix` for the no-freeze variant, whose tests skip
naming that target when it is not built); the lab tests run real migrations on the
local lab with the patched library mapped by both QEMUs.
"""

from __future__ import annotations

import ctypes
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
from testbed.virt.qemu_build import QemuBuild, inputs, qemu_build
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
    for choice in ("patched", "patched-qemu"):
        assert HostSpec(roles=["hypervisor"], spice_server=choice).emulator is None
        with pytest.raises(ValidationError, match=f"{choice} runs .* drop emulator"):
            HostSpec(roles=["hypervisor"], spice_server=choice, emulator="/usr/bin/qemu-kvm")
    with pytest.raises(ValidationError):
        HostSpec(roles=["hypervisor"], spice_server="fixed")


def test_patched_library_exports_the_connecting_query() -> None:
    """Patch 0004: the query the patched QEMU asks, in its own symbol version node."""
    lib = spice_server_build().library
    assert hasattr(ctypes.CDLL(str(lib)), "spice_server_migrate_client_connecting")
    assert not hasattr(ctypes.CDLL(str(STOCK_LIB)), "spice_server_migrate_client_connecting")
    out = subprocess.run(["nm", "-D", str(lib)], capture_output=True, text=True).stdout
    assert "spice_server_migrate_client_connecting@@SPICE_SERVER_0.15.3" in out
    # QEMU builds against the build's headers, through its relocatable .pc
    pc = spice_server_build().dir / "lib" / "pkgconfig"
    flags = subprocess.run(
        ["pkg-config", "--cflags", "spice-server"],
        env={**os.environ, "PKG_CONFIG_PATH": str(pc)},
        capture_output=True,
        text=True,
    ).stdout.split()
    include = Path(next(f for f in flags if "spice-server" in f).removeprefix("-I"))
    assert include.resolve() == (spice_server_build().dir / "include" / "spice-server").resolve()
    assert "spice_server_migrate_client_connecting" in (include / "spice-migration.h").read_text()


def test_qemu_build_key_follows_its_inputs(tmp_path: Path) -> None:
    """The QEMU build is keyed by its patches, its device list and the spice-server build."""
    ins = inputs()
    assert [p.name for p in ins][-1] == "testbed-884631.mak" and len(ins) >= 2
    dsc = ("qemu_7.2+dfsg-7+deb12u18.dsc", "ab12")
    key = build_key(dsc, ins, extra="spice-a")
    assert key == build_key(dsc, ins, extra="spice-a")
    assert key != build_key(dsc, ins, extra="spice-b")  # a new spice-server build
    edited = tmp_path / ins[-1].name
    edited.write_bytes(ins[-1].read_bytes() + b"CONFIG_USB_EHCI_PCI=y\n")
    assert key != build_key(dsc, [*ins[:-1], edited])


def _qemu_build_or_skip() -> QemuBuild:
    try:
        return qemu_build()
    except InputError as e:
        pytest.skip(f"needs the patched QEMU (make build-qemu-fix): {e.message}")


def test_missing_qemu_build_names_its_make_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The spice-server build present, the QEMU one not: run make build-qemu-fix."""
    spice = spice_server_build()
    (tmp_path / "builds").mkdir()
    (tmp_path / "builds" / spice.dir.name).symlink_to(spice.dir)
    monkeypatch.setenv("TESTBED_CACHE", str(tmp_path))
    with pytest.raises(InputError, match="patched QEMU .* is not built") as e:
        qemu_build()
    assert "make build-qemu-fix" in str(e.value)


def test_qemu_build_runs_and_has_the_guests_devices() -> None:
    """The wrapper runs the build's QEMU on the patched spice-server, with the wait's cap
    and trace points; the QEMU has what testbed.virt.domain's guest uses, and SPICE."""
    b = _qemu_build_or_skip()
    spice = spice_server_build()
    text = b.emulator.read_text()
    assert f"LD_LIBRARY_PATH={spice.dir / 'lib'}" in text
    assert "QEMU_MIGRATE_SPICE_WAIT_MS=${QEMU_MIGRATE_SPICE_WAIT_MS:-30000}" in text
    assert f"exec {b.qemu} -trace 'migration_spice_wait_*' \"$@\"" in text
    assert b.spice_key == spice.key and b.qemu.is_file()
    out = subprocess.run([str(b.emulator), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "(qemu-884631)" in out.stdout, out.stderr
    devices = subprocess.run(
        [str(b.emulator), "-device", "help"], capture_output=True, text=True
    ).stdout
    for dev in ("qxl-vga", "qemu-xhci", "usb-redir", "usb-tablet", "virtio-blk-pci"):
        assert f'name "{dev}"' in devices, dev
    assert f'name "{"e1000"}"' not in devices  # default devices are off
    ldd = subprocess.run(
        ["ldd", str(b.qemu)],
        env={**os.environ, "LD_LIBRARY_PATH": str(spice.dir / "lib")},
        capture_output=True,
        text=True,
    ).stdout
    assert str(spice.library.parent) in ldd  # SPICE linked in, from the patched build


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


def _guest_lives_on_dst(s: ScenarioResult) -> None:
    """The guest kept running after the switchover: its heartbeat goes on in the
    destination's serial log (a second at 25 Hz), and its kernel did not panic (a page
    the migration lost shows up so: Debian's QEMU 7.2 under TCG, QEMU patch 0001)."""
    logs = Path(s.artifacts["logs"]) / "dst" / "qemu"
    serial = "".join(p.read_text(errors="replace") for p in logs.glob("*-vm-serial.log"))
    assert "Kernel panic" not in serial, serial[-1500:]
    assert serial.count("HB ") >= 25, serial[-500:]


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


# ---- the no-freeze variant: the patched QEMU (make build-qemu-fix) --------------------


@pytest.fixture(scope="module")
def qemu_run(root: None, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    _qemu_build_or_skip()
    out = tmp_path_factory.mktemp("fix-server-qemu")
    (run,) = run_plan(plan([REPO / "playbooks" / "bug-884631-qemu.yaml"]), out / "bug")
    return run


@pytest.mark.lab
@pytest.mark.parametrize("case", ["late-client", "slow-dst"])
def test_server_qemu_fix_is_seamless_and_keeps_usb(qemu_run: RunResult, case: str) -> None:
    """Both cases, fixed by the patched QEMU and spice-server: seamless, usbredir
    migrated, and the spice-server never had to hold the end with the guest stopped."""
    s = _scenario(qemu_run, f"{case}/fix-server-qemu")
    assert s.error is None, s.error
    assert (s.outcome, s.client.usbredir, s.passed) == ("seamless", "migrated", True), s.evidence
    _guest_lives_on_dst(s)
    assert s.guard is None
    log = _src_qemu_log(s)
    assert "deferring the end" not in log  # QEMU waited with the guest running instead
    if case == "late-client":
        assert "client attached during migration, connecting it to the target" in log
    else:  # 1 s away: the copy was done long before the client reached the destination
        assert "migration_spice_wait_start" in log, log[-2000:]
        assert "connected 1" in log.split("migration_spice_wait_end", 1)[1].splitlines()[0]


@pytest.mark.lab
def test_server_qemu_runs_the_patched_qemu_and_server(qemu_run: RunResult) -> None:
    """The result proves what ran: the patched spice-server, mapped by the patched QEMU."""
    b, spice = qemu_build(), spice_server_build()
    for s in qemu_run.scenarios:
        libs = s.guest.spice_server
        assert set(libs) == {"src", "dst"}, libs
        for host, lib in libs.items():
            got = (lib.asked, lib.path, lib.build_id, lib.qemu)
            assert got == ("patched-qemu", str(spice.library), spice.build_id, str(b.qemu)), host


@pytest.mark.lab
def test_server_qemu_freezes_the_console_less_than_server(
    qemu_run: RunResult, fix_run: RunResult
) -> None:
    """The point of the variant: where the server fix holds the end with the guest
    stopped (slow-dst: the client shows the last frame meanwhile), the patched QEMU
    keeps the guest running, so the client's frozen console is shorter; in the late
    client case it is no longer (TCG noise allowed). The variant's guests live on; the
    server fix runs on Debian's QEMU 7.2, whose TCG dirty-tracking hole (what QEMU patch
    0001 fixes) panics a migrated guest now and then (seen in CI: late-client/fix-server),
    so its liveness is not this test's to judge."""
    frozen: dict[str, dict[str, float]] = {}
    for run, fix in ((fix_run, "server"), (qemu_run, "server-qemu")):
        for case in ("late-client", "slow-dst"):
            s = _scenario(run, f"{case}/fix-{fix}")
            if fix == "server-qemu":
                _guest_lives_on_dst(s)
            assert s.client.frozen_ms is not None, (s.name, s.evidence)
            frozen.setdefault(case, {})[fix] = s.client.frozen_ms
    print(f"frozen console ms: {frozen}")
    # slow-dst: the server fix freezes for its hold (2-5 s here) plus the display's move
    # to the 1 s-away destination (~2 s, which server-qemu pays too: one RTT and more)
    assert frozen["slow-dst"]["server-qemu"] + 500 < frozen["slow-dst"]["server"], frozen
    assert frozen["late-client"]["server-qemu"] <= frozen["late-client"]["server"] + 500, frozen
