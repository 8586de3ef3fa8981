"""`testbed doctor`: can this machine run the embedded lab, and with which engines?

Every check probes the real thing (a qdisc added in a scratch namespace, a
guest booted under KVM) and a missing piece says what to install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from testbed.errors import TestbedError
from testbed.hosts import factory
from testbed.hosts.base import Host
from testbed.model.topology import Topology
from testbed.net.capabilities import probe_kernel


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True  # needed by the embedded lab
    fix: str = ""


def _version(argv: list[str], pattern: str = r"(\d+\.\d+(?:\.\d+)?)") -> str | None:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=15)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    m = re.search(pattern, out.stdout + out.stderr)
    return m.group(1) if m else None


def _kernel_checks() -> list[Check]:
    k = probe_kernel()
    if not k.netns:
        return [
            Check(
                "network namespaces",
                False,
                k.errors.get("netns", ""),
                fix="run as root on a kernel with network namespaces",
            )
        ]
    checks = [Check("network namespaces", True, "create/remove works")]
    for kind in ("htb", "tbf", "ingress"):
        checks.append(
            Check(
                f"qdisc {kind}",
                k.qdiscs.get(kind, False),
                k.errors.get(kind, "present"),
                required=kind == "htb",
                fix=f"a kernel with sch_{kind}",
            )
        )
    engine = "kernel-netem" if k.netem else "userspace-nfqueue"
    checks.append(
        Check(
            "qdisc netem",
            k.netem,
            "present"
            if k.netem
            else f"absent ({k.errors.get('netem', '')}): "
            "delay, jitter and loss use the userspace engine",
            required=False,
            fix="a kernel with sch_netem for the kernel engine",
        )
    )
    checks.append(
        Check(
            "ifb",
            k.ifb,
            "present" if k.ifb else k.errors.get("ifb", ""),
            required=False,
            fix="a kernel with ifb",
        )
    )
    checks.append(
        Check(
            "NFQUEUE",
            k.nfqueue,
            "present" if k.nfqueue else k.errors.get("nfqueue", ""),
            required=not k.netem,
            fix="iptables and nfnetlink_queue",
        )
    )
    checks.append(Check("shaping engine", k.netem or k.nfqueue, engine))
    return checks


def _virt_checks(probe_kvm: bool) -> list[Check]:
    checks = []
    qemu = _version(["qemu-system-x86_64", "--version"])
    checks.append(
        Check(
            "QEMU",
            qemu is not None,
            qemu or "qemu-system-x86_64 not found",
            fix="apt-get install qemu-system-x86 (make setup)",
        )
    )
    if qemu:
        acc = subprocess.run(
            ["qemu-system-x86_64", "-accel", "help"], capture_output=True, text=True
        ).stdout
        checks.append(Check("TCG", "tcg" in acc, "available" if "tcg" in acc else "missing"))
        spice = subprocess.run(
            ["qemu-system-x86_64", "-spice", "help"], capture_output=True, text=True
        )
        has_spice = "seamless-migration" in spice.stdout  # `-spice help` exits 1 anyway
        checks.append(
            Check(
                "SPICE in QEMU",
                has_spice,
                "built with SPICE" if has_spice else "no SPICE",
                fix="Debian's qemu-system-x86 (built with SPICE)",
            )
        )
    kvm_detail, kvm_ok = "not probed (doctor --kvm boots a guest under KVM)", False
    if not os.path.exists("/dev/kvm"):
        kvm_detail = "no /dev/kvm: guests run under TCG"
    elif probe_kvm and qemu:
        from testbed.virt.accel import probe_accel
        from testbed.virt.image import build_guest_image

        a = probe_accel(build_guest_image()[0])
        kvm_ok = a.kind == "kvm"
        kvm_detail = ("usable" if kvm_ok else "unusable: guests run under TCG") + f" ({a.reason})"
    checks.append(Check("KVM", kvm_ok, kvm_detail, required=False))
    try:
        import libvirt

        v = libvirt.getVersion()
        lv = f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"
        checks.append(Check("libvirt-python", True, lv))
    except ImportError:
        checks.append(Check("libvirt-python", False, "not importable", fix="make setup"))
    d = _version(["libvirtd", "--version"])
    checks.append(
        Check(
            "libvirtd",
            d is not None,
            d or "not found",
            fix="apt-get install libvirt-daemon-system (make setup)",
        )
    )
    return checks


def _client_checks() -> list[Check]:
    rv = _version(["remote-viewer", "--version"], r"version (\S+)")
    return [
        Check(
            "remote-viewer",
            rv is not None,
            rv or "not found",
            fix="apt-get install virt-viewer (make setup)",
        ),
        Check(
            "Xvfb",
            shutil.which("Xvfb") is not None,
            "present" if shutil.which("Xvfb") else "not found",
            fix="apt-get install xvfb (make setup)",
        ),
        Check(
            "iperf3",
            shutil.which("iperf3") is not None,
            "present" if shutil.which("iperf3") else "not found",
            required=False,
            fix="apt-get install iperf3 (make setup)",
        ),
    ]


def run_checks(probe_kvm: bool = True) -> list[Check]:
    root = os.geteuid() == 0
    checks = [
        Check(
            "root", root, "yes" if root else "testbed needs root for namespaces", fix="run as root"
        )
    ]
    if not root:
        return checks
    return [*checks, *_kernel_checks(), *_virt_checks(probe_kvm), *_client_checks()]


def embedded_lab_ok(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


# -- every host of a topology ----------------------------------------------------------------
# (name, argv, roles it matters for (None: all), required, fix)
REMOTE_CHECKS: list[tuple[str, list[str], set[str] | None, bool, str]] = [
    ("kernel", ["uname", "-r"], None, True, ""),
    ("QEMU", ["qemu-system-x86_64", "--version"], {"hypervisor"}, True, "install qemu-system-x86"),
    ("libvirtd", ["libvirtd", "--version"], {"hypervisor"}, True, "install libvirt-daemon-system"),
    (
        "KVM device",
        ["test", "-c", "/dev/kvm"],
        {"hypervisor"},
        False,
        "enable virtualisation (guests fall back to TCG)",
    ),
    ("remote-viewer", ["remote-viewer", "--version"], {"client"}, True, "install virt-viewer"),
    (
        "Xvfb",
        ["sh", "-c", "command -v Xvfb"],
        {"client"},
        False,
        "install xvfb, or give the client a display of its own",
    ),
    ("xauth", ["sh", "-c", "command -v xauth"], {"client"}, True, "install xauth"),
    (
        "netcat (nc -U)",
        ["sh", "-c", "command -v nc"],
        {"hypervisor"},
        True,
        "install netcat-openbsd (libvirt over SSH reaches the daemon's socket through it)",
    ),
    ("iptables", ["iptables", "--version"], None, True, "install iptables"),
    ("tar", ["tar", "--version"], None, True, "install tar (helpers and logs travel as tarballs)"),
    (
        "python3",
        ["@python", "-c", "import sys; assert sys.version_info >= (3, 9); print(sys.version)"],
        None,
        True,
        "install python3 >= 3.9 (testbed sends its pyroute2 helpers; they run on the host)",
    ),
    (
        "pydantic 2",
        ["@python", "-c", "import pydantic as p; print(p.VERSION); assert p.VERSION >= '2'"],
        None,
        True,
        "pip install 'pydantic>=2' for the host's python (the shaping agent validates with it)",
    ),
    (
        "NetfilterQueue",
        ["@python", "-c", "import netfilterqueue"],
        None,
        False,
        "only needed without sch_netem: pip install NetfilterQueue (the userspace delay line)",
    ),
    (
        "sch_netem",
        ["sh", "-c", "test -e /sys/module/sch_netem || modinfo sch_netem"],
        None,
        False,
        "a kernel with sch_netem (else the userspace engine shapes delay)",
    ),
]


def host_checks(host: Host, roles: list[str]) -> list[Check]:
    """Checks run on `host` itself through the Host interface (over SSH for an ssh host)."""
    out = []
    for name, argv, wanted, required, fix in REMOTE_CHECKS:
        if wanted is not None and not wanted & set(roles):
            continue
        argv = [getattr(host, "python", "python3") if a == "@python" else a for a in argv]
        try:
            res = host.run(argv, check=False, timeout=30)
        except TestbedError as e:  # cannot reach the host at all: one line says why
            return [Check("connect", False, str(e), fix=e.hint or "")]
        text = (res.stdout or res.stderr).strip().splitlines()
        out.append(
            Check(
                name,
                res.returncode == 0,
                text[0][:80] if text else ("present" if res.returncode == 0 else "missing"),
                required,
                fix,
            )
        )
    return out


def _shaping_engine(checks: list[Check]) -> Check:
    """The engine the host's agent will pick, from what the checks found there."""
    ok = {c.name for c in checks if c.ok}
    if "sch_netem" in ok:
        return Check("shaping engine", True, "kernel-netem")
    if "NetfilterQueue" in ok:
        return Check("shaping engine", True, "userspace-nfqueue (no sch_netem)")
    return Check("shaping engine", False, "none", False, "sch_netem, or NetfilterQueue")


def _booted_checks(names: list[str], roles: list[str]) -> list[tuple[str, Check]]:
    """Hosts the lab boots (`boot: netem-vm`): boot one such VM as the lab will, check it."""
    from testbed.virt.netem_boot import scratch_netem_vm
    from testbed.virt.netem_vm import cached_netem_image

    who = ", ".join(names)
    image = cached_netem_image()
    if image is None:
        return [(who, Check("netem VM image", False, "not built", fix="run `make setup`"))]
    rows = [(who, Check("netem VM image", True, f"{image.kernel_version}"))]
    try:
        with tempfile.TemporaryDirectory(prefix="testbed-doctor-") as td:
            with scratch_netem_vm(str(os.getpid() % 100000), Path(td)) as (vm, host):
                rows.append((who, Check("boot (sshd up)", True, f"{vm.boot_s:.1f} s")))
                checks = host_checks(host, roles)
    except TestbedError as e:
        return [*rows, (who, Check("boot", False, str(e)[:200], fix=e.hint or ""))]
    return rows + [(who, c) for c in [*checks, _shaping_engine(checks)]]


def topology_checks(topo: Topology) -> list[tuple[str, Check]]:
    """One table for a whole topology: local hosts share this machine's checks."""
    rows: list[tuple[str, Check]] = []
    local = factory.namespace_names(topo)
    if local:
        rows += [(", ".join(local), c) for c in run_checks(probe_kvm=False)]
    if booted := topo.booted():
        rows += _booted_checks(booted, sorted({r for n in booted for r in topo.hosts[n].roles}))
    for name in factory.remote_names(topo):
        spec = topo.hosts[name]
        if spec.boot is not None:
            continue
        try:
            host = factory.remote_host(name, topo, connect_timeout=5)
        except TestbedError as e:
            rows.append((name, Check("connect", False, str(e), fix=e.hint or "")))
            continue
        try:
            checks = host_checks(host, list(spec.roles))
        finally:
            host.close()
        rows += [(name, c) for c in [*checks, _shaping_engine(checks)]]
    return rows
