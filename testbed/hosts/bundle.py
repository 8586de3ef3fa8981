"""testbed's own code for an SSH host: one tarball of the pure-Python parts it runs there.

Helpers that must run on the host itself (the shaping agent's pyroute2 calls,
the X screen sampler) need testbed, pyroute2 and python-xlib importable by the
host's interpreter. They are sent once per host and state folder, unpacked,
and put on PYTHONPATH by `SshHost.module_argv`. Compiled modules are not sent:
a host that needs one (NetfilterQueue, for the userspace delay line) must have
it installed, and the doctor says so.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import os
import tarfile
import tempfile
import threading
from pathlib import Path, PurePath

from testbed.hosts.base import Host

log = logging.getLogger(__name__)

PACKAGES = ("testbed", "pyroute2", "Xlib", "six")


def _roots() -> list[Path]:
    """Each package's folder (or module file), as this interpreter imports it."""
    out = []
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            continue
        origin = Path(spec.origin)
        out.append(origin.parent if origin.name == "__init__.py" else origin)
    return out


def _files() -> list[tuple[Path, str]]:
    files = []
    for root in _roots():
        if root.is_file():
            files.append((root, root.name))
            continue
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.suffix not in (".pyc", ".so") and "__pycache__" not in f.parts:
                files.append((f, str(Path(root.name) / f.relative_to(root))))
    return files


_BUILT: dict[str, tuple[bytes, str]] = {}
_BUILDING = threading.Lock()


def build() -> tuple[bytes, str]:
    """The bundle and its version, made once per process (hosts set up at once share it)."""
    with _BUILDING:
        if "bundle" not in _BUILT:
            _BUILT["bundle"] = _build()
        return _BUILT["bundle"]


def _build() -> tuple[bytes, str]:
    """The tarball and its content hash (the same code gives the same bytes)."""
    buf = io.BytesIO()
    digest = hashlib.sha256()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=6) as tar:
        for path, arcname in _files():
            data = path.read_bytes()
            digest.update(arcname.encode() + b"\0" + data)
            info = tarfile.TarInfo(arcname)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue(), digest.hexdigest()[:12]


def ensure_bundle(host: Host) -> PurePath:
    """Send the bundle to `host` unless it has this version; return where it is there."""
    data, version = build()
    where = host.state_dir / f"bundle-{version}"
    if not host.exists(where / ".complete"):
        with tempfile.NamedTemporaryFile(suffix=".tar.gz", delete=False) as f:
            f.write(data)
        try:
            host.put(Path(f.name), Path(str(where) + ".tar.gz"))
        finally:
            os.unlink(f.name)
        host.run(
            [
                "sh",
                "-c",
                'rm -rf "$1" && mkdir -p "$1" && tar -xzf "$1.tar.gz" -C "$1" '
                '&& rm -f "$1.tar.gz" && touch "$1/.complete"',
                "sh",
                str(where),
            ]
        )
        log.info("%s: sent testbed's helpers (%d KiB) to %s", host.name, len(data) // 1024, where)
    return where
