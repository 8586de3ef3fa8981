"""Which accelerator guests get here: KVM if a guest really boots under it, else TCG.

`/dev/kvm` existing proves nothing: on some hosts (a nested PVM hypervisor)
SeaBIOS runs under KVM but Linux hangs early. So the probe boots the real
guest once under KVM with a short deadline and watches its serial console for
the READY marker. The answer is cached per guest kernel, QEMU version and host
kernel, so a machine pays for the probe once.

Also here: `boot_direct`, which runs QEMU on the guest image without libvirt
and reads its serial console; the probe and the image's tests use it.
"""

from __future__ import annotations

import ctypes
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from testbed.errors import CapabilityMissing
from testbed.virt.image import GuestImage, default_cache_dir, guest_cmdline

log = logging.getLogger(__name__)

READY_MARKER = "TESTBED-GUEST-READY"
#: CPU model for the KVM probe: nested hypervisors reject `svm`, and host-model
#: fails on some (MSR 0x10a), so a plain model is the one most likely to run.
KVM_PROBE_CPU = "qemu64,-svm"
QEMU_HINT = "apt-get install qemu-system-x86"
#: The kernel's first console line; SeaBIOS output before it proves nothing.
KERNEL_BANNER = r"Linux version \d"


AccelKind = Literal["kvm", "tcg"]


@dataclass(frozen=True)
class Accel:
    """The accelerator to use, why, and whether the answer came from the cache."""

    kind: AccelKind
    reason: str
    cached: bool = False


def probe_accel(
    image: GuestImage,
    *,
    emulator: str = "qemu-system-x86_64",
    cache_dir: Path | None = None,
    deadline_s: float = 20,
    force: bool = False,
) -> Accel:
    """Answer kvm only if the guest boots to READY under KVM within `deadline_s`.

    The result is cached; `force` probes again.
    """
    qemu_version = _qemu_version(emulator)
    cache_file = (cache_dir or default_cache_dir()) / "accel" / _cache_key(image, qemu_version)
    if not force and (cached := _load(cache_file)):
        return cached
    start = time.monotonic()
    kind, reason = _probe(image, emulator, deadline_s)
    log.info("accel probe: %s (%s) in %.1f s", kind, reason, time.monotonic() - start)
    _store(cache_file, kind, reason, image, qemu_version)
    return Accel(kind=kind, reason=reason, cached=False)


# ---- cache -------------------------------------------------------------------


def _qemu_version(emulator: str) -> str:
    """First line of `emulator --version`; also proves the emulator runs."""
    try:
        out = subprocess.run(
            [emulator, "--version"], capture_output=True, text=True, check=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise CapabilityMissing(f"cannot run {emulator}: {exc}", hint=QEMU_HINT) from exc
    return out.splitlines()[0].strip() if out else "unknown"


def _cache_key(image: GuestImage, qemu_version: str) -> str:
    parts = (image.kernel_version, qemu_version, os.uname().release)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16] + ".json"


def _load(path: Path) -> Accel | None:
    try:
        data = json.loads(path.read_text())
        kind = data["kind"]
        if kind not in ("kvm", "tcg"):
            return None
        return Accel(kind=kind, reason=str(data["reason"]), cached=True)
    except (OSError, ValueError, KeyError):
        return None


def _store(path: Path, kind: str, reason: str, image: GuestImage, qemu_version: str) -> None:
    """Write the answer atomically, with what it was keyed on for a reader."""
    data = {
        "kind": kind,
        "reason": reason,
        "guest_kernel": image.kernel_version,
        "qemu": qemu_version,
        "host_kernel": os.uname().release,
        "probed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


# ---- the probe -----------------------------------------------------------------


def _probe(image: GuestImage, emulator: str, deadline_s: float) -> tuple[AccelKind, str]:
    """Boot once under KVM; return (kind, reason)."""
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
    except OSError as exc:
        return "tcg", f"/dev/kvm unusable ({exc.strerror}); KVM module not loaded or no rights"
    # Not quiet: a working kernel prints within a second, so silence means a hang.
    cmdline = guest_cmdline(fill_mib=8) + " loglevel=6"
    argv = qemu_direct_argv(
        image, accel="kvm", cmdline=cmdline, cpu=KVM_PROBE_CPU, emulator=emulator
    )
    with boot_direct(argv) as console:
        start = time.monotonic()
        if not console.wait_for(KERNEL_BANNER, timeout=deadline_s / 2):
            return "tcg", _failure(console, f"no kernel output within {deadline_s / 2:g} s")
        left = deadline_s - (time.monotonic() - start)
        if not console.wait_for(re.escape(READY_MARKER), timeout=left):
            return "tcg", _failure(console, f"no {READY_MARKER} within {deadline_s:g} s")
        took = time.monotonic() - start
    return "kvm", f"guest booted to READY under KVM (-cpu {KVM_PROBE_CPU}) in {took:.1f} s"


def _failure(console: SerialConsole, what: str) -> str:
    """Why KVM was refused, with QEMU's own complaint if it exited."""
    err = " | ".join(console.stderr_tail())
    if console.returncode is not None:
        return f"QEMU with -accel kvm exited ({console.returncode}): {err or 'no message'}"
    last = console.lines()[-1:] or ["(none)"]
    said = f"; QEMU said: {err}" if err else ""
    return f"guest hangs under KVM: {what}; last serial line: {last[0]!r}{said}"


# ---- direct boot (QEMU without libvirt) ------------------------------------------


def qemu_direct_argv(
    image: GuestImage,
    *,
    accel: Literal["kvm", "tcg"],
    cmdline: str,
    memory_mib: int = 128,
    cpu: str | None = None,
    emulator: str = "qemu-system-x86_64",
    extra: Sequence[str] = (),
) -> list[str]:
    """QEMU arguments that boot the image headless with the serial console on stdout."""
    argv = [emulator, "-accel", accel, "-m", str(memory_mib), "-nographic", "-no-reboot"]
    argv += ["-cpu", cpu] if cpu else []
    argv += ["-kernel", str(image.kernel), "-initrd", str(image.initrd), "-append", cmdline]
    return argv + list(extra)


class SerialConsole:
    """A running QEMU's serial console: lines as they arrive, and waiting for one."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._lines: list[tuple[float, str]] = []
        self._stderr: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """After QEMU has exited: let the readers drain, and close the pipes."""
        for t in self._threads:
            t.join(timeout=5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def lines(self) -> list[str]:
        """Every serial line so far."""
        with self._cond:
            return [text for _, text in self._lines]

    def timed_lines(self) -> list[tuple[float, str]]:
        """Every serial line so far with the host's `time.monotonic()` when it was read."""
        with self._cond:
            return list(self._lines)

    def stderr_tail(self, n: int = 3) -> list[str]:
        with self._cond:
            return self._stderr[-n:]

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str] | None:
        """The first match of `pattern` in any line, waiting up to `timeout` seconds."""
        regex = re.compile(pattern)
        end = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for _, text in self._lines[seen:]:
                    if m := regex.search(text):
                        return m
                seen = len(self._lines)
                left = end - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and self._eof):
                    return None
                self._cond.wait(min(left, 0.5))

    def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        assert isinstance(stdout, io.BufferedReader)  # Popen's default bufsize: buffered
        buf = b""
        while chunk := stdout.read1(4096):
            buf += chunk
            *done, buf = buf.split(b"\n")
            if done:
                now = time.monotonic()
                with self._cond:
                    self._lines += [(now, _clean(raw)) for raw in done]
                    self._cond.notify_all()
        with self._cond:
            if buf:
                self._lines.append((time.monotonic(), _clean(buf)))
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self._stderr.append(raw.decode(errors="replace").rstrip())


def _clean(raw: bytes) -> str:
    """A serial line as text, without the terminal escapes SeaBIOS and the kernel send."""
    text = raw.decode(errors="replace").replace("\r", "")
    return re.sub(r"\x1b(\[[0-9;?]*[A-Za-z]|[A-Za-z])", "", text)


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it if the thread that started it dies.

    Covers what `finally` cannot: the test runner itself being SIGKILLed.
    """
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@contextmanager
def boot_direct(argv: Sequence[str]) -> Iterator[SerialConsole]:
    """Run QEMU for the duration of the block; it is killed on leaving, whatever happened.

    Use it from the thread that stays in the block: QEMU also dies with that thread.
    """
    if shutil.which(argv[0]) is None:
        raise CapabilityMissing(f"{argv[0]} not found", hint=QEMU_HINT)
    log.debug("starting %s", " ".join(argv))
    proc = subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    console = None
    try:
        console = SerialConsole(proc)
        yield console
    finally:
        proc.kill()  # first, so a second Ctrl-C during wait() cannot leave it running
        proc.wait()
        if console is not None:
            console.close()
        log.debug("QEMU %d stopped", proc.pid)
