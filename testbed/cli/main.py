"""The `testbed` command."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
from rich.table import Table

from testbed.cli.common import (
    DEFAULT_TOPOLOGY,
    console,
    find_lab,
    friendly_errors,
    lab_option,
    out,
    setup_logging,
    step,
)
from testbed.cli.links import links as links_cmd
from testbed.cli.links import probe as probe_cmd
from testbed.cli.links import shape as shape_cmd
from testbed.cli.report import report as report_cmd
from testbed.cli.run import classify as classify_cmd
from testbed.cli.run import run as run_cmd
from testbed.errors import TestbedError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="-v tells the story, -vv every detail.")
def cli(verbose: int) -> None:
    """A network-emulating integration testbed for virtualisation QE."""
    setup_logging(verbose)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.option("--no-kvm-probe", is_flag=True, help="Do not boot a guest to test KVM.")
@click.option("--topology", "-t", default=None, help="Check every host of this topology.")
@friendly_errors
def doctor(as_json: bool, no_kvm_probe: bool, topology: str | None) -> None:
    """Check that this machine (or every host of a topology) can run the lab."""
    from testbed.lab.doctor import embedded_lab_ok, run_checks, topology_checks
    from testbed.model.topology import load_topology

    with step("checking"):
        if topology:
            rows = topology_checks(load_topology(topology))
        else:
            rows = [("this machine", c) for c in run_checks(probe_kvm=not no_kvm_probe)]
    ok = embedded_lab_ok([c for _h, c in rows])
    if as_json:
        out.print_json(
            json.dumps({"ok": ok, "checks": [{"host": h, **c.__dict__} for h, c in rows]})
        )
        sys.exit(0 if ok else 1)
    t = Table("host", "check", "", "detail", "to fix", title="testbed doctor")
    for h, c in rows:
        miss = "[red]MISSING[/]" if c.required else "[yellow]no[/]"
        t.add_row(h, c.name, "[green]ok[/]" if c.ok else miss, c.detail, "" if c.ok else c.fix)
    out.print(t)
    what = f"the lab of {topology}" if topology else "The embedded lab"
    out.print(
        f"[green]{what} can run.[/]" if ok else f"[red]{what} cannot run: fix the MISSING lines.[/]"
    )
    sys.exit(0 if ok else 1)


@cli.command()
@click.argument("topology", default=DEFAULT_TOPOLOGY, required=False)
@click.option("--id", "lab_id", default=None, help="Use this lab id (4 hex digits).")
@click.option(
    "--bare",
    is_flag=True,
    help="Wire the hosts (and their sshds) only: no libvirtd, no X server, no shaping.",
)
@click.option(
    "--inventory",
    "inventory",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the hosts as an SSH inventory (a drive: ssh topology), e.g. for from_pool.",
)
@friendly_errors
def up(topology: str, lab_id: str | None, bare: bool, inventory: Path | None) -> None:
    """Bring a lab up from TOPOLOGY (default: the embedded local lab)."""
    from testbed.lab.lab import Lab
    from testbed.lab.links import LabLinks
    from testbed.lab.site import write_inventory
    from testbed.model.topology import load_topology

    topo = load_topology(topology)
    with step(f"bringing up {topo.name}") as progress:
        lab = Lab.up(topo, progress=progress, lab_id=lab_id, services=not bare)
        try:
            if not bare:
                progress("shaping the topology's links")
                LabLinks(lab).apply_topology()
            if inventory is not None:
                write_inventory(lab, inventory)
                lab.ledger.record("file", path=str(inventory.resolve()))
        except BaseException:
            lab.down()
            raise
    lab.record.hand_over()  # the lab outlives this command: not an orphan when it exits
    _print_lab(lab.record.info)
    out.print(
        f"lab [bold]{lab.id}[/] is up ({lab.record.info.get('up_seconds')} s); "
        f"`testbed down {lab.id}` removes it"
    )


def _print_lab(info: dict) -> None:
    from testbed.hosts.factory import host_from_record
    from testbed.model.topology import Topology, load_topology

    t = Table(
        "host",
        "reached as",
        "addresses",
        "libvirt",
        "display",
        title=f"lab {info.get('id')} ({info.get('topology_name')})",
    )
    spec = info.get("topology_spec")
    topo = (
        Topology.model_validate(spec)
        if spec
        else load_topology(info["topology"])
        if info.get("topology")
        else None
    )
    for name, h in info.get("hosts", {}).items():
        addrs = ""
        if topo:
            addrs = ", ".join(
                f"{n}={topo.address(n, name)}"
                for n, net in topo.networks.items()
                if name in net.members
            )
        disp = h.get("display", {})
        uri = h.get("libvirt_uri", "")
        t.add_row(
            name,
            host_from_record(name, h).reached_as if "ssh" in h else h.get("netns", ""),
            addrs,
            uri.split("?", 1)[0] + (" (own socket)" if "socket=" in uri else ""),
            f":{disp['number']}" if disp else "",
        )
    out.print(t)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def status(as_json: bool) -> None:
    """List labs on this machine."""
    from testbed.lab.state import list_labs

    labs = list_labs()
    if as_json:
        out.print_json(
            json.dumps(
                [{"id": r.id, "status": r.status, "orphaned": r.orphaned, **r.info} for r in labs],
                default=str,
            )
        )
        return
    if not labs:
        out.print("no labs")
        return
    t = Table("lab", "topology", "status", "hosts", "guests")
    for r in labs:
        st = r.status + (" (orphaned: owner died)" if r.orphaned else "")
        guests = ", ".join(f"{g}@{v.get('host')}" for g, v in r.info.get("guests", {}).items())
        t.add_row(r.id, r.topology_name, st, ", ".join(r.info.get("hosts", {})), guests)
    out.print(t)


@cli.command()
@click.argument("target", required=False)
@click.option(
    "--all",
    "everything",
    is_flag=True,
    help="Remove every lab, and stray lab namespaces no lab claims.",
)
@friendly_errors
def down(target: str | None, everything: bool) -> None:
    """Remove a lab (by id or topology; the only one up by default) and everything it
    made. Idempotent."""
    from testbed.lab.state import list_labs
    from testbed.lab.teardown import sweep_strays, teardown

    if everything:
        labs = list_labs()
        removed = []
        for r in labs:
            teardown(r)
            removed.append(r.id)
        strays = sweep_strays()
        out.print(
            f"removed {len(removed)} lab(s) {' '.join(removed)}"
            + (f" and {len(strays)} stray namespace(s)" if strays else "")
        )
        return
    up = [r for r in list_labs() if r.status == "up"]
    if target is None:  # the only lab that is up, else the default topology's
        target = up[0].id if len(up) == 1 else DEFAULT_TOPOLOGY
    try:
        rec = find_lab(target)
    except TestbedError as e:
        if "no lab is up" in str(e):
            out.print("nothing to remove")
            return
        raise
    done = teardown(rec)
    out.print(f"lab {rec.id} removed ({len(done)} resources)")


@cli.group()
def guest() -> None:
    """Guest images."""


@guest.command("build")
@click.option("--force", is_flag=True, help="Rebuild even if cached.")
@friendly_errors
def guest_build(force: bool) -> None:
    """Build the default guest image (kernel + initramfs) into the cache."""
    from testbed.virt.image import build_guest_image

    with step("guest image") as progress:
        image, built = build_guest_image(force=force, progress=progress)
    out.print(
        ("built " if built else "already built, nothing to do: ")
        + f"{image.kernel_version} {image.initrd.parent}"
    )


@guest.command("start")
@click.argument("name", default="vm")
@lab_option
@click.option("--dirty-rate", type=float, default=None, help="MiB/s the guest rewrites.")
@friendly_errors
def guest_start(name: str, lab_target: str | None, dirty_rate: float | None) -> None:
    """Start guest NAME of the topology on its hypervisor and wait until it has booted."""
    from testbed.lab.guests import start_guest
    from testbed.lab.lab import Lab

    lab = Lab.open(find_lab(lab_target).id)
    with step(f"starting {name}"):
        g = start_guest(lab, name, dirty_rate=dirty_rate)
    out.print(f"{name} ({g.domain}) runs on {g.host} under {g.accel}, booted in {g.boot_s:.1f} s")


@cli.command()
@click.argument("guest_name", metavar="GUEST", default="vm")
@click.argument("to", default="dst")
@lab_option
@click.option("--bandwidth", type=int, default=None, help="MiB/s.")
@click.option("--timeout", type=float, default=300, help="Abort after this many seconds.")
@friendly_errors
def migrate(
    guest_name: str, to: str, lab_target: str | None, bandwidth: int | None, timeout: float
) -> None:
    """Live-migrate GUEST to hypervisor TO over the migration network."""
    from rich.progress import Progress

    from testbed.lab.guests import finish_migration, migration_for
    from testbed.lab.lab import Lab

    lab = Lab.open(find_lab(lab_target).id)
    m = migration_for(lab, guest_name, to, bandwidth_mib=bandwidth, timeout_s=timeout)
    m.start()
    with Progress(console=console, transient=True) as bar:
        task = bar.add_task(f"migrating {guest_name} to {to}", total=100)
        while not m.done and m.elapsed() < timeout:
            bar.update(task, completed=m.progress())
            time.sleep(0.3)
    rec = m.wait(timeout)
    finish_migration(lab, guest_name, m, to)
    if rec.result != "completed":
        raise TestbedError(f"migration {rec.result}: {rec.error}")
    out.print(
        f"{guest_name} migrated to {to} in {rec.duration_s} s, downtime "
        f"{rec.downtime_ms} ms, {(rec.bytes or 0) / 2**20:.0f} MiB"
    )


cli.add_command(run_cmd)
cli.add_command(shape_cmd)
cli.add_command(links_cmd)
cli.add_command(probe_cmd)
cli.add_command(classify_cmd)
cli.add_command(report_cmd)


@cli.command()
@click.argument("what", type=click.Choice(["result"]))
def schema(what: str) -> None:
    """Print the JSON Schema of WHAT (result: the result.json `testbed run` writes)."""
    from testbed.model.result import result_schema

    click.echo(json.dumps(result_schema(), indent=2))


def main() -> None:
    cli(prog_name="testbed")


if __name__ == "__main__":
    main()
