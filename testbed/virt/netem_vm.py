"""The netem VM image: a Debian host with a real sch_netem, for the kernel shaping engine.

This machine's kernel has no netem; Debian's cloud kernel (the one the guest image
boots) ships sch_netem, sch_htb, sch_tbf, ifb, act_mirred and nfnetlink_queue as
modules. The image is a `debootstrap --variant=minbase` bookworm tree with python3,
iproute2, iperf3, ping, sshd, kmod and iptables, that kernel's modules (with
`depmod`), the Python packages testbed's shaping agent and its tests import (copied
from this machine's wheels at the versions installed here), and a small `/init`
(`netem/init.sh`, no systemd). The tree is packed as one gzip'd initramfs, so a boot
needs no disk: `netem_boot` adds a second small archive per VM (host key, the lab's
client key, the address) and boots it under QEMU.

testbed itself is not baked in: it is sent at connect time like to any SSH host
(`hosts.bundle`), so an edit to testbed never rebuilds the image. The cache follows
`image.py`'s conventions: `~/.cache/testbed/netem-vm/<key>/`, the key hashing the
format, the package list, the Python packages' versions and the init script; a build
happens in a scratch folder under a lock and is renamed into place, `image.json`
written last marks it complete.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from testbed.errors import CapabilityMissing, LabError
from testbed.virt.image import (
    Progress,
    _kernel_package,
    _locked,
    _remove_leftovers,
    _replace_dir,
    _run,
    default_cache_dir,
)

log = logging.getLogger(__name__)

#: Bump when the way the image is assembled changes, so old caches are rebuilt.
FORMAT = 1
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
DEBIAN_PACKAGES = (
    "python3",
    "iproute2",
    "iperf3",
    "iputils-ping",
    "openssh-server",
    "kmod",
    "iptables",
    "libnetfilter-queue1",
)
#: What the shaping agent, both engines and the kernel engine's tests import there.
PYTHON_DISTS = (
    "pydantic",
    "pydantic_core",
    "annotated-types",
    "typing_extensions",
    "typing-inspection",
    "PyYAML",
    "pyroute2",
    "NetfilterQueue",
    "pytest",
    "pluggy",
    "iniconfig",
    "packaging",
    "pytest-timeout",
    "Pygments",
)
#: Loaded by /init: qdiscs, classifier, actions, ifb, veth/bridge for scratch nets, NFQUEUE.
MODULES = (
    "virtio_pci",
    "virtio_net",
    "sch_netem",
    "sch_htb",
    "sch_tbf",
    "sch_ingress",
    "cls_u32",
    "act_mirred",
    "ifb",
    "veth",
    "bridge",
    "nfnetlink_queue",
    "xt_NFQUEUE",
    "iptable_filter",
    "iptable_mangle",
)
#: Folders of the rootfs a shaping host never reads (docs, locales, apt's caches).
TRIM = (
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/i18n",
    "usr/share/lintian",
    "var/cache/apt",
    "var/lib/apt/lists",
    "var/cache/debconf",
)
#: Kernel module folders the VM never loads from (it has no sound, GPU, storage HBAs ...).
MODULE_TRIM = ("kernel/sound", "kernel/drivers/gpu", "kernel/drivers/infiniband", "kernel/fs")
KERNEL_NAME = "vmlinuz"
ROOTFS_NAME = "rootfs.cpio.gz"
META_NAME = "image.json"
SSHD_CONFIG = """\
# testbed netem VM: key authentication only, one host key (written per VM)
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /root/.ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PidFile /run/sshd.pid
Subsystem sftp /usr/lib/openssh/sftp-server
"""


@dataclass(frozen=True)
class NetemImage:
    """A bootable netem VM: kernel, rootfs initramfs and the kernel's release name."""

    kernel: Path
    rootfs: Path
    kernel_version: str
    built_s: float


def cached_netem_image(cache_dir: Path | None = None) -> NetemImage | None:
    """The image of today's sources if `make setup` built it, else None (nothing built)."""
    return load((cache_dir or default_cache_dir()) / "netem-vm" / source_key())


def build_netem_image(
    cache_dir: Path | None = None, *, force: bool = False, progress: Progress | None = None
) -> tuple[NetemImage, bool]:
    """The cached netem VM image, built first if needed; the second value: built now."""
    say = progress or (lambda msg: log.info("%s", msg))
    if not force and (image := cached_netem_image(cache_dir)):
        return image, False
    root = (cache_dir or default_cache_dir()) / "netem-vm"
    target = root / source_key()
    if os.geteuid() != 0:
        raise CapabilityMissing("building the netem VM image needs root (debootstrap, chroot)")
    if shutil.which("debootstrap") is None:
        raise CapabilityMissing("debootstrap is not installed", hint="apt-get install debootstrap")
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / ".lock"):
        if not force and (image := load(target)):
            return image, False
        _remove_leftovers(root)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=root) as tmp:
            work = Path(tmp)
            out = work / "image"
            out.mkdir()
            _build_into(out, work, say)
            _replace_dir(out, target)
    image = load(target)
    if image is None:
        raise LabError(f"netem VM image built but unreadable at {target}")
    say(f"netem VM image ready: {target} (built in {image.built_s:.0f} s)")
    return image, True


# ---- cache -------------------------------------------------------------------


def init_script() -> bytes:
    return resources.files("testbed.virt").joinpath("netem/init.sh").read_bytes()


def _dist_versions() -> dict[str, str]:
    try:
        return {d: importlib.metadata.version(d) for d in PYTHON_DISTS}
    except importlib.metadata.PackageNotFoundError as e:
        raise CapabilityMissing(
            f"the netem VM needs Python package {e.name} installed here (its wheel is copied in)",
            hint="run `make setup`",
        ) from None


def source_key() -> str:
    """What the image is made from: an edit to any of it rebuilds the image."""
    h = hashlib.sha256(f"format={FORMAT} suite={SUITE}".encode())
    for part in (DEBIAN_PACKAGES, MODULES, TRIM, MODULE_TRIM):
        h.update(("\0".join(part) + "\n").encode())
    h.update(json.dumps(_dist_versions(), sort_keys=True).encode())
    h.update(init_script() + SSHD_CONFIG.encode())
    return h.hexdigest()[:16]


def load(target: Path) -> NetemImage | None:
    """The image in `target` if it is complete, else None."""
    try:
        meta = json.loads((target / META_NAME).read_text())
    except (OSError, ValueError):
        return None
    kernel, rootfs = target / KERNEL_NAME, target / ROOTFS_NAME
    if not (kernel.is_file() and rootfs.is_file()):
        return None
    return NetemImage(kernel, rootfs, meta["kernel_version"], float(meta.get("build_s", 0)))


# ---- build -------------------------------------------------------------------


def _build_into(out: Path, work: Path, say: Progress) -> None:
    start = time.monotonic()
    rootfs = work / "rootfs"
    say(f"debootstrap {SUITE} minbase ({', '.join(DEBIAN_PACKAGES)})")
    _run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES)}",
            SUITE,
            str(rootfs),
            MIRROR,
        ],
        what="debootstrap of the netem VM",
        hint="needs apt access to Debian's archive (deb.debian.org)",
    )
    package = _kernel_package()
    say(f"adding {package}'s kernel and modules")
    release, pkg_version = _add_kernel(package, work, rootfs, out / KERNEL_NAME)
    say("copying the Python packages in (" + ", ".join(PYTHON_DISTS) + ")")
    _add_python(rootfs)
    _configure(rootfs)
    _trim(rootfs)
    say("packing the rootfs initramfs (cpio, gzip -1)")
    _pack(rootfs, out / ROOTFS_NAME)
    meta = {
        "kernel_version": release,
        "kernel_package": package,
        "kernel_package_version": pkg_version,
        "suite": SUITE,
        "python_dists": _dist_versions(),
        "format": FORMAT,
        "rootfs_bytes": (out / ROOTFS_NAME).stat().st_size,
        "build_s": round(time.monotonic() - start, 1),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (out / META_NAME).write_text(json.dumps(meta, indent=2) + "\n")


def _add_kernel(package: str, work: Path, rootfs: Path, dest: Path) -> tuple[str, str]:
    """vmlinuz to `dest`, the modules into the rootfs (trimmed), then depmod in a chroot."""
    debs = work / "debs"
    debs.mkdir()
    _run(
        ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package],
        cwd=debs,
        what=f"downloading {package}",
        hint="run `apt-get update` first",
    )
    deb = next(debs.glob("*.deb"))
    pkg_version = _run(["dpkg-deb", "-f", str(deb), "Version"], what="kernel version", hint="")
    tree = work / "kernel"
    _run(["dpkg", "-x", str(deb), str(tree)], what=f"extracting {deb.name}", hint="")
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    if len(kernels) != 1:
        raise LabError(f"expected one boot/vmlinuz-* in {deb.name}, found {len(kernels)}")
    shutil.copyfile(kernels[0], dest)
    release = kernels[0].name.removeprefix("vmlinuz-")
    mods = next(p for p in (tree / "lib/modules", tree / "usr/lib/modules") if p.is_dir()) / release
    for sub in MODULE_TRIM:
        shutil.rmtree(mods / sub, ignore_errors=True)
    into = rootfs / "lib/modules" / release  # /lib is /usr/lib in bookworm's merged /usr
    into.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(mods, into, symlinks=True, dirs_exist_ok=True)
    _run(["chroot", str(rootfs), "depmod", release], what="depmod in the rootfs", hint="")
    for m in MODULES:  # a module that is built in or missing would only show at boot
        _run(
            ["chroot", str(rootfs), "modinfo", "-k", release, "-F", "filename", m],
            what=f"finding kernel module {m}",
            hint="",
        )
    return release, pkg_version.strip()


def _add_python(rootfs: Path) -> None:
    """pip-install the pinned wheels into the rootfs's site folder, no dependencies resolved."""
    sites = glob.glob(str(rootfs / "usr/lib/python3.*"))
    if not sites:
        raise LabError("the rootfs has no python3")
    version = Path(sorted(sites)[-1]).name  # python3.11
    if version != f"python{sys.version_info.major}.{sys.version_info.minor}":
        raise CapabilityMissing(
            f"the netem VM's {version} differs from this interpreter's; its compiled wheels "
            "(pydantic_core, NetfilterQueue) would not import there"
        )
    target = rootfs / "usr/local/lib" / version / "dist-packages"
    pins = [f"{name}=={v}" for name, v in _dist_versions().items()]
    argv = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target)]
    _run(argv + pins, what="installing Python packages into the rootfs", hint="")


def _configure(rootfs: Path) -> None:
    """/init, sshd's config, the module list; no host keys (each VM gets its own)."""
    (rootfs / "init").write_bytes(init_script())
    (rootfs / "init").chmod(0o755)
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (rootfs / "etc/ssh/sshd_config").write_text(SSHD_CONFIG)
    tb = rootfs / "etc/testbed"
    tb.mkdir(exist_ok=True)
    (tb / "modules").write_text("\n".join(MODULES) + "\n")
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (rootfs / "etc/hostname").write_text("netem-vm\n")


def _trim(rootfs: Path) -> None:
    for sub in TRIM:
        folder = rootfs / sub
        if folder.is_dir():
            shutil.rmtree(folder)
            folder.mkdir()
    for f in (rootfs / "var/cache/debconf", rootfs / "var/log"):
        f.mkdir(parents=True, exist_ok=True)


def _pack(rootfs: Path, dest: Path) -> None:
    """The tree as a newc cpio, gzip -1 (the kernel unpacks it into its rootfs)."""
    with open(dest, "wb") as out:
        proc = subprocess.run(
            "find . -print0 | cpio --null -o -H newc --quiet | gzip -1",
            shell=True,
            cwd=rootfs,
            stdout=out,
            stderr=subprocess.PIPE,
            text=False,
            check=False,
        )
    if proc.returncode != 0:
        raise LabError(f"packing the netem rootfs failed: {proc.stderr.decode()[-300:]}")


def main() -> int:
    """`python -m testbed.virt.netem_vm [--force]`: build (or find) the image, say where."""
    from testbed.errors import TestbedError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        image, built = build_netem_image(force="--force" in sys.argv[1:], progress=print)
    except TestbedError as e:
        print(f"netem VM image: {e}", file=sys.stderr)
        return 1
    state = f"built in {image.built_s:.0f} s" if built else "cached"
    print(f"netem VM image ({state}): {image.kernel.parent} kernel {image.kernel_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
