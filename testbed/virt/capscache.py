"""QEMU capabilities probed once per host, shared read-only by every lab's libvirtd.

Each lab's daemons start with a private, empty cache, so each probed QEMU again:
two QEMU processes under TCG, about 4 s, once on the source at the first guest
start and once on the destination while the migration sat at 0 %. libvirt keeps
the probe as one XML file per emulator binary under
`/var/cache/libvirt/qemu/capabilities/`, and checks each file itself (libvirtd's
and the binary's ctime, the kernel, the microcode) before trusting it, so a copy
made by another daemon of the same machine is either valid or re-probed.

`seed` copies the host's shared files into a daemon's private cache before it
starts; `publish` copies a daemon's probe into the shared cache (write to a
temporary name, then rename, so a lab reading it never sees half a file, and two
labs probing at once leave one whole copy).
"""

from __future__ import annotations

import shlex
from pathlib import PurePath

from testbed.hosts.base import Host

SHARED = PurePath("/var/cache/testbed/qemu-caps")
CAPS = PurePath("qemu") / "capabilities"  # under a daemon's cache directory


def seed(host: Host, cache_dir: PurePath) -> int:
    """Copy the shared probe files into `cache_dir` (a daemon's private
    /var/cache/libvirt); how many files it copied."""
    dst = cache_dir / CAPS
    script = (
        f"mkdir -p {_q(dst)}; n=0; for f in {_q(SHARED)}/*.xml; do "
        f'[ -f "$f" ] && cp -p "$f" {_q(dst)}/ && n=$((n+1)); done; echo $n'
    )
    return _count(host, script)


def publish(host: Host, cache_dir: PurePath) -> int:
    """Copy the daemon's probe files that the shared cache lacks or has older; how many."""
    src = cache_dir / CAPS
    script = (
        f"mkdir -p {_q(SHARED)} && chmod 0755 {_q(SHARED)}; n=0; for f in {_q(src)}/*.xml; do "
        '[ -f "$f" ] || continue; b=$(basename "$f"); '
        f'if [ ! -f {_q(SHARED)}/"$b" ] || [ "$f" -nt {_q(SHARED)}/"$b" ]; then '
        f'cp -p "$f" {_q(SHARED)}/".$b.$$" && mv -f {_q(SHARED)}/".$b.$$" {_q(SHARED)}/"$b" '
        "&& n=$((n+1)); fi; done; echo $n"
    )
    return _count(host, script)


def _count(host: Host, script: str) -> int:
    """Run `script` on `host`; the count it echoes last (0 if it failed)."""
    res = host.run(["sh", "-c", script], check=False)
    try:
        return int(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return 0


def _q(p: PurePath) -> str:
    return shlex.quote(str(p))
