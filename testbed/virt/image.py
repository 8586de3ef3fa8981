"""The guest image: Debian's cloud kernel plus a tiny initramfs, built once and cached.

The guest is a busybox `/init` that starts `heartbeat` (a static C program from
`guest/`): it fills memory with random data, dirties it at a steady rate and
ticks a heartbeat on the serial console and on the VGA text screen, so a
migration takes a controllable time and a SPICE client sees a change every
tick. Everything comes from Debian packages, so no network but apt is needed.

The cache is keyed by the guest sources; a build happens in a temporary
directory and is renamed into place, so a crash never leaves a half image that
looks complete.
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import json
import logging
import os
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from testbed.errors import CapabilityMissing, LabError

log = logging.getLogger(__name__)

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX = Path("/bin/busybox")
#: Bump when the way an image is assembled changes, so old caches are rebuilt.
IMAGE_FORMAT = 1
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.gz"
META_NAME = "image.json"

Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """Where built artefacts live: `$TESTBED_CACHE`, else `~/.cache/testbed`."""
    env = os.environ.get("TESTBED_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "testbed"


@dataclass(frozen=True)
class GuestImage:
    """A bootable guest: kernel and initramfs paths, and the kernel's release name."""

    kernel: Path
    initrd: Path
    kernel_version: str


def guest_cmdline(fill_mib: int = 64, dirty_mib_s: float = 0, hz: int = 25) -> str:
    """The kernel command line for the guest, with the workload's `tb.*` parameters.

    Serial console on ttyS0 only (kernel messages stay off the VGA screen, which
    belongs to the heartbeat); no EDD probe, no CPU mitigations and one UART to
    keep the boot short under TCG; console blanking off so the screen never
    stops changing.
    """
    if fill_mib < 0 or dirty_mib_s < 0:
        raise ValueError(f"fill and dirty rate must be >= 0, got {fill_mib}, {dirty_mib_s}")
    if not 1 <= hz <= 1000:
        raise ValueError(f"heartbeat rate must be 1..1000 Hz, got {hz}")
    return " ".join(
        [
            "console=ttyS0,115200",
            "quiet",
            "loglevel=3",
            "edd=off",
            "mitigations=off",
            "8250.nr_uarts=1",
            "consoleblank=0",
            "rdinit=/init",
            f"tb.fill={fill_mib}",
            f"tb.dirty={dirty_mib_s:g}",
            f"tb.hz={hz}",
        ]
    )


def build_guest_image(
    cache_dir: Path | None = None,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> tuple[GuestImage, bool]:
    """Return the cached guest image, building it first if needed.

    The second value says whether anything was built (False: it was cached).
    `force` rebuilds, fetching the newest cloud kernel apt knows about.
    """
    say = progress or (lambda msg: log.info("%s", msg))
    root = (cache_dir or default_cache_dir()) / "guest-image"
    target = root / _source_key()
    if not force and (image := _load(target)):
        return image, False
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if not force and (image := _load(target)):  # someone else built it meanwhile
            return image, False
        _remove_leftovers(root)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as tmp:
            work = Path(tmp)
            out = work / "image"
            out.mkdir()
            _build_into(out, work, say)
            _replace_dir(out, target)
    image = _load(target)
    if image is None:
        raise LabError(f"guest image built but unreadable at {target}")
    say(f"guest image ready: {target}")
    return image, True


# ---- cache -------------------------------------------------------------------


def _guest_sources() -> dict[str, bytes]:
    """The guest's source files, read from the package (`guest/`)."""
    folder = resources.files("testbed.virt").joinpath("guest")
    return {name: folder.joinpath(name).read_bytes() for name in ("init.sh", "heartbeat.c")}


def _source_key() -> str:
    """Cache key: what the image is made from here, so an edit to the guest rebuilds it."""
    h = hashlib.sha256(f"format={IMAGE_FORMAT}".encode())
    for name, data in sorted(_guest_sources().items()):
        h.update(name.encode() + b"\0" + data)
    return h.hexdigest()[:16]


def _load(target: Path) -> GuestImage | None:
    """The image in `target` if it is complete, else None."""
    try:
        meta = json.loads((target / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    kernel, initrd = target / KERNEL_NAME, target / INITRD_NAME
    if not (kernel.is_file() and initrd.is_file()):
        return None
    return GuestImage(kernel=kernel, initrd=initrd, kernel_version=meta["kernel_version"])


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builds between processes sharing a cache."""
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _remove_leftovers(root: Path, name: str = "") -> None:
    """Remove scratch directories of builds (of `name`) that crashed (lock held)."""
    for stale in [*root.glob(f".build-{name}*"), *root.glob(f".old-{name}*")]:
        log.debug("removing leftover %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


def _replace_dir(new: Path, target: Path) -> None:
    """Move a finished build to `target`; an old one is set aside first, then removed."""
    old = None
    if target.exists():
        old = target.with_name(f".old-{target.name}-{os.getpid()}")
        os.rename(target, old)
    os.rename(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---- build -------------------------------------------------------------------


def _build_into(out: Path, work: Path, say: Progress) -> None:
    """Fill `out` with kernel, initramfs and metadata; `work` is scratch space."""
    start = time.monotonic()
    package = _kernel_package()
    say(f"downloading {package}")
    release, pkg_version = _fetch_kernel(package, work, out / KERNEL_NAME)
    say("compiling the guest heartbeat (gcc -static)")
    heartbeat = _compile_heartbeat(work)
    say("packing the initramfs")
    (out / INITRD_NAME).write_bytes(_initramfs(heartbeat))
    meta = {
        "kernel_version": release,
        "kernel_package": package,
        "kernel_package_version": pkg_version,
        "busybox": _busybox_version(),
        "format": IMAGE_FORMAT,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    # Written last: its presence is what marks a build complete.
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")
    log.info("built guest image with %s in %.1f s", release, time.monotonic() - start)


def _run(argv: list[str], *, cwd: Path | None = None, what: str, hint: str) -> str:
    """Run a build tool; a missing tool or a failure becomes an error that says what to do."""
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise CapabilityMissing(f"{what}: {argv[0]} not found", hint=hint) from exc
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise LabError(f"{what} failed ({' '.join(argv)}): {' | '.join(detail)}", hint=hint)
    return proc.stdout


def _kernel_package() -> str:
    """The concrete kernel package the cloud meta package points at now."""
    hint = "run `apt-get update` (apt must know Debian's linux-image-cloud-amd64)"
    out = _run(
        ["apt-cache", "depends", "--important", KERNEL_META_PACKAGE],
        what="resolving the cloud kernel package",
        hint=hint,
    )
    for line in out.splitlines():
        name = line.strip().removeprefix("|").strip()
        if name.startswith("Depends:"):
            dep = name.split(":", 1)[1].strip()
            if dep.startswith("linux-image-") and dep.endswith("-cloud-amd64"):
                return dep
    raise LabError(f"apt knows no concrete kernel behind {KERNEL_META_PACKAGE}", hint=hint)


def _fetch_kernel(package: str, work: Path, dest: Path) -> tuple[str, str]:
    """Download the kernel package, extract its vmlinuz to `dest`; return (release, version)."""
    debs = work / "debs"
    debs.mkdir()
    _run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
        cwd=debs,
        what=f"downloading {package}",
        hint="needs apt access to Debian's archive; run `apt-get update` first",
    )
    deb = next(debs.glob("*.deb"))
    pkg_version = _run(
        ["dpkg-deb", "-f", str(deb), "Version"], what="reading the kernel version", hint=""
    ).strip()
    tree = work / "kernel"
    _run(["dpkg", "-x", str(deb), str(tree)], what=f"extracting {deb.name}", hint="")
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise LabError(f"expected one boot/vmlinuz-* in {deb.name}, found {len(kernels)}")
    shutil.copyfile(kernels[0], dest)
    return kernels[0].name.removeprefix("vmlinuz-"), pkg_version


def _compile_heartbeat(work: Path) -> bytes:
    """Compile guest/heartbeat.c into a static, stripped binary."""
    src = work / "heartbeat.c"
    src.write_bytes(_guest_sources()["heartbeat.c"])
    binary = work / "heartbeat"
    _run(
        ["gcc", "-static", "-O2", "-Wall", "-s", "-o", str(binary), str(src)],
        what="compiling the guest heartbeat",
        hint="apt-get install gcc libc6-dev",
    )
    return binary.read_bytes()


def _busybox_binary() -> bytes:
    """The host's static busybox; a dynamic one would not run in the initramfs."""
    hint = "apt-get install busybox-static"
    try:
        data = BUSYBOX.read_bytes()
    except OSError as exc:
        raise CapabilityMissing(f"no {BUSYBOX} to put in the guest", hint=hint) from exc
    if not _is_static_elf(data):
        raise CapabilityMissing(f"{BUSYBOX} is dynamically linked", hint=hint)
    return data


def _busybox_version() -> str:
    out = subprocess.run([str(BUSYBOX)], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "unknown"


def _busybox_applets() -> list[str]:
    """Applet paths (e.g. `bin/sh`) this busybox provides, for the initramfs symlinks."""
    out = _run(
        [str(BUSYBOX), "--list-full"],
        what="listing busybox applets",
        hint="apt-get install busybox-static",
    )
    return sorted({line.strip().lstrip("/") for line in out.splitlines() if line.strip()})


def _is_static_elf(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP program header."""
    if data[:5] != b"\x7fELF\x02" or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        (ptype,) = struct.unpack_from("<I", data, phoff + i * phentsize)
        if ptype == 3:  # PT_INTERP
            return False
    return True


# ---- initramfs -----------------------------------------------------------------


def _initramfs(heartbeat: bytes) -> bytes:
    """The gzip'd newc cpio: busybox and its applet links, /init, /bin/heartbeat, /dev/console.

    Written here rather than with cpio(1) so the console device node can be made
    without mknod rights and the archive is reproducible (owner root, mtime 0).
    """
    cpio = _Cpio()
    for d in ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root"):
        cpio.add(d, stat.S_IFDIR | 0o755)
    cpio.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    cpio.add("bin/busybox", stat.S_IFREG | 0o755, _busybox_binary())
    for applet in _busybox_applets():
        if applet != "bin/busybox":
            cpio.add(applet, stat.S_IFLNK | 0o777, b"/bin/busybox")
    cpio.add("bin/heartbeat", stat.S_IFREG | 0o755, heartbeat)
    cpio.add("init", stat.S_IFREG | 0o755, _guest_sources()["init.sh"])
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


class _Cpio:
    """A minimal writer of the "newc" cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1
        self._names: set[str] = set()

    def add(self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        if name in self._names:
            return
        self._names.add(name)
        nlink = 2 if stat.S_ISDIR(mode) else 1
        self._entry(name, mode, data, nlink, rdev)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", 1, (0, 0))
        return b"".join(self._parts)

    def _entry(self, name: str, mode: int, data: bytes, nlink: int, rdev: tuple[int, int]) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, nlink, 0, len(data), 0, 0, *rdev, len(encoded), 0)
        self._ino += 1
        header = b"070701" + b"".join(b"%08X" % f for f in fields)
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data, _pad(len(data))]


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)
