"""Which shared library (and QEMU binary) a running QEMU mapped, read where it runs.

Debian's QEMU loads SPICE through a module (`ui-spice-core.so`), so `ldd` of the binary
says nothing; /proc/PID/maps of the running process does. The pid comes from libvirt's
pid file in the host's private /run/libvirt (`<host state>/run/qemu/<domain>.pid`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePath

from testbed.hosts.base import Host
from testbed.virt.elfnote import gnu_build_id

SPICE_SERVER = "libspice-server.so"
QEMU = "qemu-system-"  # the binary itself: Debian's, or a patched build behind a wrapper


@dataclass(frozen=True)
class MappedLib:
    pid: int
    path: str | None
    build_id: str | None
    qemu: str | None = None  # the QEMU binary that mapped it


def mapped_path(maps: str, soname: str) -> str | None:
    """The file of the first mapping whose name starts with `soname` (" (deleted)" kept)."""
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and PurePath(fields[5]).name.startswith(soname):
            return fields[5]
    return None


def qemu_pid(host: Host, domain: str) -> int | None:
    text = host.read_text(host.state_dir / "run" / "qemu" / f"{domain}.pid").strip()
    return int(text) if text.isdigit() else None


def mapped_library(host: Host, domain: str, soname: str = SPICE_SERVER) -> MappedLib | None:
    """What `domain`'s QEMU on `host` mapped for `soname`; None when no QEMU runs it there."""
    pid = qemu_pid(host, domain)
    if pid is None:
        return None
    maps = host.read_text(PurePath(f"/proc/{pid}/maps"))
    path, qemu = mapped_path(maps, soname), mapped_path(maps, QEMU)
    if path is None:
        return MappedLib(pid, None, None, qemu)
    data = b"" if path.endswith(" (deleted)") else host.read_bytes(PurePath(path))
    return MappedLib(pid, path, gnu_build_id(data), qemu)
