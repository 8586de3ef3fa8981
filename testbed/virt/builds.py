"""Patched builds that a hypervisor's QEMU can run: spice-server with the bug 884631 fix.

`make setup` calls `python -m testbed.virt.builds`. It makes sure apt knows Debian's
source packages (a deb822 `deb-src` entry for bookworm main, written when missing: the
one-line form conflicts with the image's Signed-By), fetches `spice` with `apt-get
source`, checks and applies the patches of `testbed/shipped/patches/spice-server`,
builds the server library with meson/ninja (tests, docs and optional codecs off) and
installs it into `~/.cache/testbed/builds/spice-884631-<key>/`:

- `lib/libspice-server.so.1*`, the patched library, with its headers (`include/`) and
  a relocatable `lib/pkgconfig/spice-server.pc`, which the patched QEMU builds against
  (`testbed.virt.qemu_build`, which shares this module's steps);
- `emulator`, a wrapper that puts `lib/` first on LD_LIBRARY_PATH and execs Debian's
  QEMU (which loads SPICE through a module that links libspice-server.so.1 without an
  RPATH, so the wrapper's library is the one it maps); it also sets the server's
  migration timeout (SPICE_MIGRATE_TIMEOUT_MS, patch 0002) and its debug log (to the
  domain's QEMU log);
- `build.json`, written last: what was built from what, the library's build id, the time.

The key hashes the source package's .dsc (name and SHA256 as apt lists them) and the
patches, so a new Debian upload or an edited patch makes a new build, and the same
inputs find the old one ("already built"). Builds run under a lock in a scratch folder
that is renamed into place, as `image.py`'s do. A topology selects the build per host
with `spice_server: patched` (`spice_server_build` below finds it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

from testbed.errors import CapabilityMissing, InputError, LabError
from testbed.shipped import PATCHES
from testbed.virt.domain import DEFAULT_EMULATOR
from testbed.virt.elfnote import gnu_build_id
from testbed.virt.image import Progress, _locked, _remove_leftovers, _replace_dir, default_cache_dir

log = logging.getLogger(__name__)

#: Bump when the way the build is assembled changes (wrapper, layout), to rebuild.
FORMAT = 2
NAME = "spice-884631"
SOURCE_PACKAGE = "spice"
#: how long the patched source waits for the client to reach the target (patch 0002):
#: at 1 s one-way a client needs about 12 s to connect all its channels
MIGRATE_TIMEOUT_MS = 30_000
DEB_SRC_FILE = Path("/etc/apt/sources.list.d/debian-src.sources")
DEB_SRC = """\
# written by testbed (make setup): Debian's source packages, for the patched spice-server
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""
MESON_OPTIONS = (
    "--prefix=/",  # installed with --destdir into the build; the .pc is made relocatable
    "--libdir=lib",
    "-Dtests=false",
    "-Dmanual=false",
    "-Dgstreamer=no",
    "-Dsasl=false",
    "-Dsmartcard=disabled",
    "-Dopus=disabled",
)
HINT = "run `make setup` (installs the build tools of tools/apt-packages.txt)"

T = TypeVar("T")


@dataclass(frozen=True)
class SpiceBuild:
    """A finished build: where it is and what it holds."""

    dir: Path
    key: str
    version: str
    library: Path
    build_id: str | None
    built_s: float

    @property
    def emulator(self) -> Path:
        return self.dir / "emulator"


def builds_dir() -> Path:
    return default_cache_dir() / "builds"


def patches(component: str = "spice-server") -> list[Path]:
    """The patches of testbed/shipped/patches/<component>, in the order they apply."""
    return sorted((PATCHES / component).glob("*.patch"))


# ---- the source -------------------------------------------------------------------


def _apt(
    argv: list[str], cwd: Path | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=timeout
        )
    except FileNotFoundError as exc:
        raise CapabilityMissing(f"{argv[0]} not found (not a Debian machine?)", hint=HINT) from exc


def _source_lines(package: str = SOURCE_PACKAGE) -> list[str] | None:
    """apt's `--print-uris` lines of the source package, or None when apt has no deb-src."""
    res = _apt(["apt-get", "source", "--print-uris", "-q", package], timeout=120)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("'")]
    return lines if res.returncode == 0 and lines else None


def ensure_deb_src(say: Progress = print, package: str = SOURCE_PACKAGE) -> None:
    """Make apt know Debian's source packages: write the deb822 entry if it is missing."""
    if _source_lines(package) is not None:
        return
    if not DEB_SRC_FILE.exists():
        if os.geteuid() != 0:
            raise CapabilityMissing(
                f"apt has no deb-src entry and {DEB_SRC_FILE} cannot be written",
                hint="run make setup as root",
            )
        say(f"{NAME}: adding Debian's source packages to apt ({DEB_SRC_FILE})")
        DEB_SRC_FILE.write_text(DEB_SRC)
    say(f"{NAME}: apt-get update")
    res = _apt(["apt-get", "update", "-q"])
    if res.returncode != 0 or _source_lines(package) is None:
        detail = " | ".join((res.stderr or res.stdout).strip().splitlines()[-3:])
        raise LabError(
            f"apt cannot find the source package {package!r} after adding {DEB_SRC_FILE}: {detail}",
            hint="check that deb.debian.org is reachable",
        )


def source_dsc(package: str = SOURCE_PACKAGE, name: str = NAME) -> tuple[str, str]:
    """The .dsc's file name and SHA256, as apt lists them; raises when apt has no deb-src."""
    lines = _source_lines(package)
    if lines is None:
        raise InputError(
            f"apt knows no source package {package!r}, so the {name} build cannot be found",
            hint="run make setup (it adds Debian's deb-src entry and builds it)",
        )
    for line in lines:
        fields = line.split()
        if len(fields) >= 4 and fields[1].endswith(".dsc"):
            return fields[1], fields[3]
    raise LabError(f"apt-get source --print-uris {package} lists no .dsc: {lines}")


def build_key(
    dsc: tuple[str, str], patch_files: list[Path], *, fmt: int = FORMAT, extra: str = ""
) -> str:
    """12 hex digits over the format, the source's .dsc, every patch's (or input file's)
    name and text, and `extra` (another build's key that this one builds on)."""
    h = hashlib.sha256(f"{fmt}\n{dsc[0]} {dsc[1]}\n{extra}\n".encode())
    for p in patch_files:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()[:12]


# ---- finding a build ---------------------------------------------------------------


def _load(path: Path) -> SpiceBuild | None:
    try:
        info = json.loads((path / "build.json").read_text())
    except (OSError, ValueError):
        return None
    return SpiceBuild(
        dir=path,
        key=info["key"],
        version=info["version"],
        library=Path(info["library"]),
        build_id=info.get("build_id"),
        built_s=float(info["built_s"]),
    )


@lru_cache(maxsize=1)
def _current_key() -> str:
    return build_key(source_dsc(), patches())


def spice_server_build() -> SpiceBuild:
    """The build for today's source and patches; an InputError says to run make setup."""
    key = _current_key()
    found = _load(builds_dir() / f"{NAME}-{key}")
    if found is None:
        raise InputError(
            f"the patched spice-server ({NAME}-{key}) is not built in {builds_dir()}",
            hint="run make setup (make spice-fix builds it in about a minute)",
        )
    return found


# ---- building ------------------------------------------------------------------------


def run_tool(
    argv: list[str],
    cwd: Path,
    what: str,
    log_to: Path,
    stdin: Path | None = None,
    env: dict[str, str] | None = None,
) -> None:
    """Run a build tool, its output to `log_to`; a failure quotes the end of that log."""
    try:
        with open(log_to, "a") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            with open(stdin) if stdin else open(os.devnull) as inp:
                rc = subprocess.run(
                    argv,
                    cwd=cwd,
                    stdin=inp,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    check=False,
                ).returncode
    except FileNotFoundError as exc:
        raise CapabilityMissing(f"{what}: {argv[0]} not found", hint=HINT) from exc
    if rc != 0:
        tail = " | ".join(log_to.read_text().strip().splitlines()[-4:])
        raise LabError(f"{what} failed (exit {rc}, log {log_to}): {tail}", hint=HINT)


def wrapper_script(name: str, lib: Path, qemu: str, env: dict[str, str], argv: str = "") -> str:
    """An emulator wrapper: `lib` first on LD_LIBRARY_PATH, the spice-server's migration
    timeout and debug log, `env`'s defaults (the caller's environment wins), exec `qemu`
    with `argv` before libvirt's arguments."""
    defaults = {
        "SPICE_MIGRATE_TIMEOUT_MS": str(MIGRATE_TIMEOUT_MS),
        # the server's own log (spice_debug), into the domain's QEMU log
        "G_MESSAGES_DEBUG": "Spice",
        **env,
    }
    lines = "".join(f"{k}=${{{k}:-{v}}}\n" for k, v in defaults.items())
    return f"""#!/bin/sh
# QEMU with testbed's patched spice-server ({name}); written by its build.
LD_LIBRARY_PATH={lib}${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}
{lines}export LD_LIBRARY_PATH {" ".join(defaults)}
exec {qemu} {argv + " " if argv else ""}"$@"
"""


def write_emulator(out: Path, script: str) -> None:
    (out / "emulator").write_text(script)
    (out / "emulator").chmod(0o755)


def fetch_source(package: str, name: str, work: Path, build_log: Path, say: Progress) -> Path:
    """`apt-get source package` into `work` (Debian's patches applied); the tree's path."""
    say(f"{name}: apt-get source {package}")
    run_tool(["apt-get", "source", "-q", package], work, "apt-get source", build_log)
    srcs = [d for d in work.iterdir() if d.is_dir() and d.name.startswith(f"{package}-")]
    if len(srcs) != 1:
        raise LabError(f"apt-get source {package} unpacked {srcs} into {work}")
    return srcs[0]


def apply_patches(
    src: Path, patch_files: list[Path], name: str, build_log: Path, say: Progress
) -> None:
    """Check, then apply, each patch on the tree the ones before it made."""
    for p in patch_files:
        say(f"{name}: patch {p.name}")
        argv = ["patch", "-p1", "--forward", "--batch"]
        run_tool(
            [*argv, "--dry-run"], src, f"checking {p.name} applies to {src.name}", build_log, p
        )
        run_tool(argv, src, f"applying {p.name}", build_log, p)


def _relocatable_pc(pc: Path) -> None:
    """The .pc's prefix relative to the file itself, so the build may be renamed."""
    text = pc.read_text().replace("prefix=/\n", "prefix=${pcfiledir}/../..\n", 1)
    if "${pcfiledir}" not in text:
        raise LabError(f"{pc} has no prefix=/ line to make relocatable")
    pc.write_text(text)


def _build_into(out: Path, final: Path, key: str, work: Path, say: Progress) -> None:
    start = time.monotonic()
    build_log = out / "build.log"
    src = fetch_source(SOURCE_PACKAGE, NAME, work, build_log, say)
    version = src.name.removeprefix(f"{SOURCE_PACKAGE}-")
    apply_patches(src, patches(), NAME, build_log, say)
    say(f"{NAME}: meson setup + ninja (spice-server {version})")
    run_tool(["meson", "setup", "build", *MESON_OPTIONS], src, "meson setup", build_log)
    jobs = str(os.cpu_count() or 2)
    run_tool(["ninja", "-C", "build", "-j", jobs], src, "ninja", build_log)
    install = ["meson", "install", "-C", "build", "--no-rebuild", "--destdir", str(out)]
    run_tool(install, src, "meson install", build_log)
    lib = out / "lib"
    real = sorted(
        p for p in lib.glob("libspice-server.so.1.*") if p.is_file() and not p.is_symlink()
    )
    if not real or not (lib / "libspice-server.so.1").is_symlink():
        raise LabError(f"meson install put no libspice-server.so.1.* into {lib}")
    _relocatable_pc(lib / "pkgconfig" / "spice-server.pc")
    final_lib = final / "lib" / real[-1].name
    write_emulator(out, wrapper_script(NAME, final / "lib", DEFAULT_EMULATOR, {}))
    info = {
        "name": NAME,
        "key": key,
        "format": FORMAT,
        "source": f"{SOURCE_PACKAGE} {version}",
        "version": version,
        "patches": [p.name for p in patches()],
        "library": str(final_lib),
        "build_id": gnu_build_id((lib / real[-1].name).read_bytes()),
        "emulator": str(final / "emulator"),
        "built_s": round(time.monotonic() - start, 1),
        "built_at": time.time(),
    }
    (out / "build.json").write_text(json.dumps(info, indent=1) + "\n")


def cached_build(
    name: str,
    key: str,
    build_into: Callable[[Path, Path, str, Path, Progress], None],
    load: Callable[[Path], T | None],
    *,
    force: bool = False,
    say: Progress = print,
) -> tuple[T, bool]:
    """Find `name-key` in the builds folder, or make it: under the build's lock, in a
    scratch folder renamed into place (`build_into(out, final, key, work, say)`), the
    log of a failure kept as `name-failed.log`. True when it was built now."""
    root = builds_dir()
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{name}-{key}"
    with _locked(root / f".{name}.lock"):
        found = None if force else load(final)
        if found is not None:
            return found, False
        _remove_leftovers(root, name)
        out = root / f".build-{name}-{key}-{os.getpid()}"
        out.mkdir()
        try:
            with tempfile.TemporaryDirectory(prefix=f".build-{name}-work-", dir=root) as work:
                build_into(out, final, key, Path(work), say)
            _replace_dir(out, final)
            (root / f"{name}-failed.log").unlink(missing_ok=True)
        except BaseException:
            keep = root / f"{name}-failed.log"
            if (out / "build.log").exists():
                shutil.copy2(out / "build.log", keep)
            shutil.rmtree(out, ignore_errors=True)
            raise
    built = load(final)
    assert built is not None
    return built, True


def build_spice_server(*, force: bool = False, say: Progress = print) -> tuple[SpiceBuild, bool]:
    """Find or build the patched spice-server; True when it was built now."""
    ensure_deb_src(say)
    _current_key.cache_clear()
    return cached_build(NAME, _current_key(), _build_into, _load, force=force, say=say)


class Built(Protocol):
    """What a build module's entry point says of a build."""

    @property
    def dir(self) -> Path: ...

    @property
    def built_s(self) -> float: ...


B = TypeVar("B", bound=Built)


def build_main(
    name: str, build: Callable[[bool], tuple[B, bool]], describe: Callable[[B], tuple[str, str]]
) -> int:
    """A build module's `python -m` entry (`--force` rebuilds): build or find it, and say
    how long it took; `describe` gives what was built and a line on what it holds."""
    from testbed.errors import TestbedError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    try:
        b, built = build("--force" in sys.argv[1:])
    except TestbedError as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    what, holds = describe(b)
    if built:
        print(f"{name}: built {what} in {b.built_s:.0f} s: {b.dir}")
    else:
        print(f"{name}: already built ({time.monotonic() - t0:.1f} s): {b.dir}")
    print(f"{name}: {holds}")
    return 0


def main() -> int:
    """`python -m testbed.virt.builds [--force]`: build (or find) the patched spice-server."""
    return build_main(
        NAME,
        lambda force: build_spice_server(force=force),
        lambda b: (f"spice-server {b.version}", f"{b.library} build id {b.build_id}"),
    )


if __name__ == "__main__":
    sys.exit(main())
