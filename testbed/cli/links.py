"""`testbed shape`, `testbed links`, `testbed probe`: shaping a running lab's links by hand."""

from __future__ import annotations

import json

import click
from pydantic import ValidationError
from rich.table import Table

from testbed.cli.common import find_lab, friendly_errors, lab_option, out
from testbed.errors import InputError

PROFILE_OPTIONS = (
    "delay",
    "jitter",
    "distribution",
    "loss",
    "duplicate",
    "corrupt",
    "reorder",
    "rate",
    "limit",
)


def _profile(values: dict[str, str | None]):  # noqa: ANN202 - LinkProfile, imported lazily
    from testbed.model.profile import LinkProfile

    given = {k: v for k, v in values.items() if v is not None}
    if "distribution" in given:
        given["jitter_distribution"] = given.pop("distribution")
    if not given:
        raise InputError("say how to shape: --delay, --jitter, --loss, --rate, ... or --clear")
    try:
        return LinkProfile.model_validate(given)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        field = (
            "--"
            + str(err["loc"][0])
            .replace("_ms", "")
            .replace("_pct", "")
            .replace("_bit", "")
            .replace("jitter_distribution", "distribution")
            if err["loc"]
            else None
        )
        raise InputError(err["msg"].removeprefix("Value error, "), field=field) from None


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--delay", help="One-way delay, e.g. 100ms.")
@click.option("--jitter", help="Jitter, e.g. 10ms.")
@click.option("--distribution", help="Jitter distribution: uniform, normal, pareto, ...")
@click.option("--loss", help="Loss, e.g. 1%.")
@click.option("--duplicate", help="Duplicates, e.g. 0.5%.")
@click.option("--corrupt", help="Corruption, e.g. 0.1%.")
@click.option("--reorder", help="Reordering, e.g. 1%.")
@click.option("--rate", help="Rate, e.g. 10mbit.")
@click.option("--limit", help="Queue limit in packets (default: from the bandwidth-delay product).")
@click.option("--both-ways", is_flag=True, help="Shape DST -> SRC the same way.")
@click.option("--network", default=None, help="Which network (default: the one they share).")
@click.option("--clear", is_flag=True, help="Remove the shaping of this direction.")
@lab_option
@friendly_errors
def shape(
    src: str,
    dst: str,
    both_ways: bool,
    network: str | None,
    clear: bool,
    lab_target: str | None,
    **values: str | None,
) -> None:
    """Shape traffic from SRC to DST on a lab that is up."""
    from testbed.lab.lab import Lab
    from testbed.lab.links import LabLinks

    links = LabLinks(Lab.open(find_lab(lab_target).id))
    net = network or links.shared_network(src, dst)
    if clear:
        links.clear(net, src, dst, both_ways=both_ways)
        out.print(f"{net}: {src} -> {dst} unshaped" + (" (both ways)" if both_ways else ""))
    else:
        profile = _profile(values)
        links.shape(net, src, dst, profile, both_ways=both_ways)
        out.print(
            f"{net}: {src} -> {dst} {profile.describe()}"
            + (" (both ways)" if both_ways else "")
            + f" [{links.engine.name}]"
        )


@click.command()
@lab_option
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def links(lab_target: str | None, as_json: bool) -> None:
    """Every shaped direction of a lab: asked, installed (read back), engine."""
    from testbed.lab.lab import Lab
    from testbed.lab.links import LabLinks

    lab = Lab.open(find_lab(lab_target).id)
    ll = LabLinks(lab)
    rows = ll.rows() if ll.asked else []
    if as_json:
        out.print_json(
            json.dumps({"rows": rows, "health": ll.health() if ll.asked else {}}, default=str)
        )
        return
    if not rows:
        out.print(f"lab {lab.id}: no shaped links")
        return
    t = Table("network", "from", "to", "asked", "installed", "engine", title=f"lab {lab.id} links")
    for r in rows:
        same = r["asked"] == r["installed"]
        t.add_row(
            r["network"],
            r["src"],
            r["dst"],
            r["asked"],
            r["installed"] if same else f"[red]{r['installed'] or 'nothing'}[/]",
            r["engine"],
        )
    out.print(t)


@click.command()
@click.argument("src")
@click.argument("dst")
@click.option("--network", default=None)
@click.option("--pings", default=50, show_default=True)
@click.option(
    "--seconds", "goodput_s", default=3.0, show_default=True, help="Length of the goodput flow."
)
@click.option("--json", "as_json", is_flag=True)
@lab_option
@friendly_errors
def probe(
    src: str,
    dst: str,
    network: str | None,
    pings: int,
    goodput_s: float,
    as_json: bool,
    lab_target: str | None,
) -> None:
    """Measure RTT, goodput and loss from SRC to DST in the lab."""
    from testbed.lab.lab import Lab
    from testbed.lab.links import LabLinks
    from testbed.net.probe import probe as run_probe

    lab = Lab.open(find_lab(lab_target).id)
    ll = LabLinks(lab)
    net = network or ll.shared_network(src, dst)
    hosts = (lab.hosts[src], lab.hosts[dst]) if lab.over_ssh else None  # the tools run there
    res = run_probe(
        ll.endpoint(net, src), ll.endpoint(net, dst), pings=pings, goodput_s=goodput_s, hosts=hosts
    )
    data = json.loads(res.to_json())
    if as_json:
        print(res.to_json())
        return
    rtt = data.get("rtt_ms") or {}
    out.print(
        f"{net}: {src} -> {dst}: rtt min/avg/max {rtt.get('min')}/{rtt.get('avg')}/"
        f"{rtt.get('max')} ms, loss {data.get('loss_pct')} %, goodput "
        f"{data.get('goodput_mbit')} Mbit/s"
    )
