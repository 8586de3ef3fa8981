"""Fault steps, and what the runner does after a migration that did not complete.

`fault` injects one (through `testbed.lab.faults`) and puts it on the timeline. After
the migration, `reconcile` makes the end state honest: where libvirt says the guest
runs (`guest.where` on the timeline), no orphan QEMU of the guest on the side it does
not run on, and an outcome that never says `seamless` when the migration failed
(`migration-failed`).
"""

from __future__ import annotations

import logging
from typing import Any

import libvirt

from testbed.errors import LabError, TestbedError
from testbed.lab import faults
from testbed.model.outcome import Outcome
from testbed.model.playbook import FaultStep
from testbed.runner.context import Context

log = logging.getLogger(__name__)
FAILED: Outcome = "migration-failed"


def fault(ctx: Context, s: FaultStep) -> None:
    if s.kill == "none":
        return
    lab = ctx.need_lab()
    w = ctx.watch
    guest = w.guest if w else next(iter(lab.topology.guests))
    src = w.src if w else lab.topology.guests[guest].host
    dst = w.to if w else next((h for h in lab.topology.hypervisors() if h != src), src)
    ctx.say(f"fault: kill {s.kill}")
    if s.kill == "client":
        done = faults.kill_client(ctx.session.client if ctx.session else None)
    elif s.kill in ("dst-libvirtd", "src-libvirtd"):
        done = faults.kill_libvirtd(lab, dst if s.kill.startswith("dst") else src)
    elif s.kill in ("src-qemu", "dst-qemu"):
        incoming = s.kill == "dst-qemu"
        done = faults.kill_qemu(lab, dst if incoming else src, guest, incoming=incoming)
    elif s.kill in ("dst-sshd", "src-sshd"):
        done = faults.kill_sshd(lab, dst if s.kill.startswith("dst") else src)
    else:
        assert ctx.links
        done = faults.kill_delay_lines(ctx.links)
    ctx.timeline.add("fault", fault=s.kill, **done.to_json())
    if s.kill == "delay-line":  # fails open: traffic passes unshaped until the next apply
        health = ctx.links.health() if ctx.links else {}
        ctx.timeline.add("links.health", **health)
        ctx.result.evidence.append(
            f"delay line killed: shaping fails {health.get('fail_mode')}, unshaped now: "
            f"{', '.join(health.get('unshaped', [])) or 'none'}"
        )
    ctx.result.evidence.append(f"fault: killed {s.kill} (pids {done.pids})")


def _where(ctx: Context, guest: str) -> dict[str, str]:
    """What each hypervisor's libvirt says of the guest: running, shut off, absent or
    unreachable (its libvirtd is gone)."""
    lab = ctx.need_lab()
    name = lab.domain_name(guest)
    out: dict[str, str] = {}
    for hv in lab.topology.hypervisors():
        try:
            dom = lab.conn(hv).lookupByName(name)
            out[hv] = "running" if dom.isActive() else "shut off"
        except libvirt.libvirtError as e:
            no_domain = e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
            out[hv] = "absent" if no_domain else f"unreachable ({e.get_error_message()})"
        except TestbedError as e:
            out[hv] = f"unreachable ({e})"
    return out


def reconcile(ctx: Context) -> None:
    """After a migration: kill an orphan QEMU on the side the guest does not live on,
    record where it lives, and name a failed migration's outcome honestly."""
    w = ctx.watch
    if w is None or ctx.lab is None:
        return
    completed = w.m.record.result == "completed"
    other = w.src if completed else w.to
    orphans: list[int] = []
    try:  # the destination's QEMU, if its libvirtd died, keeps the -incoming flag
        orphans = faults.qemu_pids(ctx.lab, other, w.guest, incoming=not completed)
        if orphans:
            faults.kill_qemu(ctx.lab, other, w.guest, incoming=not completed)
    except LabError as e:
        log.warning("looking for an orphan QEMU on %s: %s", other, e)
    where = _where(ctx, w.guest)
    data: dict[str, Any] = {"guest": w.guest, "libvirt": where, "orphans_killed": orphans}
    data["runs_on"] = [h for h, state in where.items() if state == "running"]
    ctx.timeline.add("guest.where", **data)
    if orphans:
        ctx.result.evidence.append(f"killed orphan QEMU on {other}: pids {orphans}")
    if not completed and ctx.result.outcome not in (None, "lost"):
        ctx.result.evidence.append(
            f"the client saw {ctx.result.outcome}, but the migration {w.m.record.result}"
        )
        ctx.result.outcome = FAILED
