"""`esxdr plan`: recovery plans. `plan discover` finds a protection group's mapping in production."""

from __future__ import annotations

import os

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.util import atomic_write


@click.group(help="""Recovery plans (the protection groups' datasets, datastores and VMs).

\b
Examples:
  esxdr plan discover core                       print the mapping as site-file YAML
  esxdr plan discover core --json                the same as data
  esxdr plan discover core --write core-plan.yaml
  esxdr plan discover core --manifest prod-targets.yaml   NAAs from `esxdr target export`
""")
def plan() -> None:
    pass


@plan.command(epilog="""\b
Examples:
  esxdr plan discover core
  esxdr plan discover core --json
  esxdr plan discover core --write core-plan.yaml          refuses to overwrite an existing file
  esxdr plan discover core --write core-plan.yaml --force
Reads production vSphere (one property read) and the target manifest; changes nothing there.
""")
@click.argument("group", required=False)
@click.option("--manifest", "manifest_path", metavar="FILE",
              help="Production target manifest (default: shipped with the replica, else the lab's, else the site's NAAs).")
@click.option("--write", "write", metavar="FILE", type=click.Path(dir_okay=False),
              help="Write the YAML to FILE instead of printing it (never over an existing file without --force).")
@click.option("--force", is_flag=True, help="With --write: replace FILE if it exists.")
@json_option
@site_option
@pass_ctx
def discover(ctx: Context, group: str | None, manifest_path: str | None, write: str | None, force: bool) -> None:
    """Map datasets ↔ LUNs (NAA) ↔ datastores ↔ VMs of a protection group from production vSphere."""
    from esxdr.errors import EsxdrError, UsageError
    from esxdr.plan.discover import discover as find
    from esxdr.recovery import resolve_manifest
    from esxdr.vsphere.recovery import read_for_discovery
    from esxdr.vsphere.session import connect

    site = ctx.site()
    g = site.group(group)
    if not g.vsphere_production:
        raise UsageError(f"protection group {g.name} names no vsphere_production endpoint",
                         hint=f"add vsphere_production: NAME to protection_groups.{g.name} (a vsphere entry with "
                              "role: production)")
    if write and os.path.exists(write) and not force:
        raise UsageError(f"{write} exists; not overwritten", hint="choose another file, or add --force")
    dr_zfs = None
    dr = None
    if not manifest_path:
        try:  # the manifest replication shipped to DR, when DR is reachable
            from esxdr.replication.sides import open_side

            dr = open_side(site, g.destination)
            dr_zfs = dr.zfs
        except EsxdrError:
            dr = None

    def live():  # before the first replication shipped anything: production's target itself
        from esxdr.recovery.sources import live_manifest

        try:
            return live_manifest(site.storage_server(g.source), g)
        except EsxdrError:
            return None

    try:
        # read-only, often run off the DR box: validate the shipped manifest, take no pin here
        manifest, origin = resolve_manifest(site, g, dr_zfs, manifest_path, pin_first_use=False, live=live)
    finally:
        if dr is not None:
            dr.transport.close()
    with connect(site.endpoint(g.vsphere_production)) as s:
        stores, vms = read_for_discovery(s)
        requests = s.requests
    d = find(g, manifest, stores, vms, manifest_origin=origin, endpoint=g.vsphere_production)
    for n in d.notes:
        ctx.info(f"note: {n}")
    text = d.to_yaml()
    if write:
        atomic_write(write, text)
    ctx.emit({**d.to_dict(), "written": write, "requests": {"vsphere": requests}},
             f"wrote {write}: {len(d.datasets)} dataset(s), {len(d.vms)} VM(s)" if write else text.rstrip("\n"))
