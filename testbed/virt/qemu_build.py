"""The no-freeze variant of the bug 884631 fix: QEMU 7.2 patched to hold the completion.

`make build-qemu-fix` calls `python -m testbed.virt.qemu_build`. It finds (or makes) the
patched spice-server of `testbed.virt.builds` (its headers and .pc: QEMU builds against
them, and needs its `spice_server_migrate_client_connecting`, patch 0004), fetches
`qemu` with `apt-get source` (Debian's 7.2 with Debian's patches), checks and applies
`testbed/shipped/patches/qemu/*.patch` (0001: TCG dirty tracking, a fix 7.2 lacks;
0002: the hold), configures x86_64-softmmu only, without default features or devices
(`testbed-884631.mak` there lists the devices of `testbed.virt.domain`'s guest), with
SPICE, usbredir, KVM and TCG, builds qemu-system-x86_64 with ninja and installs into
`~/.cache/testbed/builds/qemu-884631-<key>/`:

- `bin/qemu-system-x86_64`, the patched QEMU. SPICE is linked in (no modules), so
  /proc/PID/maps shows the patched libspice-server it runs with;
- `emulator`, the wrapper a host's domain runs: the patched spice-server's lib/ on
  LD_LIBRARY_PATH, its migration timeout and debug log as in `builds`, the cap on
  QEMU's wait for a connecting client (QEMU_MIGRATE_SPICE_WAIT_MS) and the trace
  points of that wait (into the domain's QEMU log);
- `build.json`, written last.

Firmware is Debian's (qemu-system-data, seabios, ipxe-qemu), found through
`--firmwarepath`. The key hashes the .dsc of `qemu`, the patches, the device list
and the spice-server build's key, so a new spice-server build makes a new QEMU build.
A topology or scenario selects it with `spice_server: patched-qemu`. Not in
`make setup`: 196-250 s on 2 cores (README).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from testbed.errors import InputError
from testbed.shipped import PATCHES
from testbed.virt.builds import (
    SpiceBuild,
    apply_patches,
    build_key,
    build_main,
    build_spice_server,
    builds_dir,
    cached_build,
    ensure_deb_src,
    fetch_source,
    patches,
    run_tool,
    source_dsc,
    spice_server_build,
    wrapper_script,
    write_emulator,
)
from testbed.virt.image import Progress

log = logging.getLogger(__name__)

#: Bump when the way the build is assembled changes (wrapper, layout, options).
FORMAT = 1
NAME = "qemu-884631"
SOURCE_PACKAGE = "qemu"
COMPONENT = "qemu"
DEVICES = "testbed-884631"  # configs/devices/x86_64-softmmu/<DEVICES>.mak
#: how long QEMU keeps a migration that could complete going while a SPICE client is
#: still connecting to the destination (QEMU patch 0002); as spice-server's own timeout
WAIT_MS = 30_000
FIRMWARE_PATH = "/usr/share/qemu:/usr/share/seabios:/usr/lib/ipxe/qemu"
CONFIGURE_OPTIONS = (
    "--target-list=x86_64-softmmu",
    "--without-default-features",
    "--without-default-devices",
    f"--with-devices-x86_64={DEVICES}",
    "--enable-kvm",
    "--enable-tcg",
    "--enable-spice",
    "--enable-spice-protocol",
    "--enable-usb-redir",
    "--disable-docs",
    "--disable-tools",
    "--disable-guest-agent",
    "--disable-modules",  # SPICE linked in: the binary maps libspice-server itself
    "--disable-install-blobs",
    "--disable-werror",
    f"--with-pkgversion={NAME}",  # its own --version line (the accel probe's cache key)
    f"--firmwarepath={FIRMWARE_PATH}",
)
#: the trace points of QEMU patch 0002, into the domain's QEMU log (QEMU's log backend)
TRACE = "-trace 'migration_spice_wait_*'"
HINT = "run make build-qemu-fix (3-4 minutes on 2 cores)"


@dataclass(frozen=True)
class QemuBuild:
    """A finished build: where it is, its QEMU, and the spice-server it runs with."""

    dir: Path
    key: str
    version: str
    qemu: Path
    spice_key: str
    built_s: float

    @property
    def emulator(self) -> Path:
        return self.dir / "emulator"


def inputs() -> list[Path]:
    """What the build is made from besides the source: the patches, then the device list."""
    return [*patches(COMPONENT), PATCHES / COMPONENT / f"{DEVICES}.mak"]


def _load(path: Path) -> QemuBuild | None:
    try:
        info = json.loads((path / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return QemuBuild(
        dir=path,
        key=info["key"],
        version=info["version"],
        qemu=Path(info["qemu"]),
        spice_key=info["spice_key"],
        built_s=float(info["built_s"]),
    )


def _key(spice: SpiceBuild) -> str:
    return build_key(source_dsc(SOURCE_PACKAGE, NAME), inputs(), fmt=FORMAT, extra=spice.key)


@lru_cache(maxsize=1)
def _current_key() -> str:
    return _key(spice_server_build())


def qemu_build() -> QemuBuild:
    """The build for today's sources, patches and spice-server build; else an InputError
    that says to run make build-qemu-fix."""
    try:
        key = _current_key()
    except InputError as e:
        raise InputError(f"the patched QEMU needs the patched spice-server: {e.message}") from None
    found = _load(builds_dir() / f"{NAME}-{key}")
    if found is None:
        raise InputError(
            f"the patched QEMU ({NAME}-{key}) is not built in {builds_dir()}", hint=HINT
        )
    return found


def patched_emulator(spice_server: str) -> Path:
    """The emulator wrapper a `spice_server:` choice other than stock runs: the patched
    spice-server's (patched) or this build's (patched-qemu); an InputError naming the
    make target when it is not built."""
    if spice_server == "patched-qemu":
        return qemu_build().emulator
    if spice_server == "patched":
        return spice_server_build().emulator
    raise ValueError(f"no build for spice_server: {spice_server}")


def _configure_env(spice: SpiceBuild) -> dict[str, str]:
    pc = str(spice.dir / "lib" / "pkgconfig")
    old = os.environ.get("PKG_CONFIG_PATH")
    return {**os.environ, "PKG_CONFIG_PATH": f"{pc}:{old}" if old else pc}


def _build_into(spice: SpiceBuild) -> Callable[[Path, Path, str, Path, Progress], None]:
    """The build step of `cached_build` for a QEMU on `spice`."""

    def build_into(out: Path, final: Path, key: str, work: Path, say: Progress) -> None:
        start = time.monotonic()
        build_log = out / "build.log"
        src = fetch_source(SOURCE_PACKAGE, NAME, work, build_log, say)
        version = src.name.removeprefix(f"{SOURCE_PACKAGE}-")
        apply_patches(src, patches(COMPONENT), NAME, build_log, say)
        devices = PATCHES / COMPONENT / f"{DEVICES}.mak"
        shutil.copy2(devices, src / "configs" / "devices" / "x86_64-softmmu" / devices.name)
        build = src / "build"
        build.mkdir()
        say(f"{NAME}: configure (x86_64-softmmu, SPICE from {spice.dir.name})")
        configure = ["../configure", f"--prefix={final}", *CONFIGURE_OPTIONS]
        env = _configure_env(spice)
        run_tool(configure, build, "configure", build_log, env=env)
        jobs = str(os.cpu_count() or 2)
        say(f"{NAME}: ninja qemu-system-x86_64 (QEMU {version}; minutes)")
        run_tool(["ninja", "-j", jobs, "qemu-system-x86_64"], build, "ninja", build_log, env=env)
        (out / "bin").mkdir()
        shutil.copy2(build / "qemu-system-x86_64", out / "bin" / "qemu-system-x86_64")
        qemu = final / "bin" / "qemu-system-x86_64"
        env_defaults = {"QEMU_MIGRATE_SPICE_WAIT_MS": str(WAIT_MS)}
        write_emulator(out, wrapper_script(NAME, spice.dir / "lib", str(qemu), env_defaults, TRACE))
        info = {
            "name": NAME,
            "key": key,
            "format": FORMAT,
            "source": source_dsc(SOURCE_PACKAGE, NAME)[0],
            "version": version,
            "patches": [p.name for p in inputs()],
            "configure": list(CONFIGURE_OPTIONS),
            "qemu": str(qemu),
            "spice_key": spice.key,
            "spice_dir": str(spice.dir),
            "emulator": str(final / "emulator"),
            "built_s": round(time.monotonic() - start, 1),
            "built_at": time.time(),
        }
        (out / "build.json").write_text(json.dumps(info, indent=1) + "\n")

    return build_into


def build_qemu(*, force: bool = False, say: Progress = print) -> tuple[QemuBuild, bool]:
    """Find or build the patched QEMU (and the spice-server it needs first)."""
    spice, _ = build_spice_server(say=say)
    ensure_deb_src(say, SOURCE_PACKAGE)
    _current_key.cache_clear()
    key = _key(spice)
    return cached_build(NAME, key, _build_into(spice), _load, force=force, say=say)


def main() -> int:
    """`python -m testbed.virt.qemu_build [--force]`: build (or find) the patched QEMU."""
    return build_main(
        NAME,
        lambda force: build_qemu(force=force),
        lambda b: (f"QEMU {b.version}", f"{b.emulator} runs {b.qemu}"),
    )


if __name__ == "__main__":
    sys.exit(main())
