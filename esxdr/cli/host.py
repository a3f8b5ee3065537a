"""`esxdr host`: bring a DR ESXi host to the site file's network, verify its storage."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option

HOST_HELP = """Prepare DR ESXi hosts (network, software iSCSI) and verify their datastores.

HOST is a DR ESXi host, a host of a DR vCenter, or a DR vCenter itself: then every
host it lists (hosts:) with a dr_network entry is planned, applied in parallel and
verified, and the output is grouped per host. --host narrows to one of them.

\b
Examples:
  esxdr host plan esxi-dr                 # what would change, and why
  esxdr host plan vcenter-dr              # every DR host of the vCenter, one read
  esxdr host apply vcenter-dr --host esx2 # only esx2, through the vCenter
  esxdr host apply esxi-dr --dry-run      # the same list, as apply would walk it
  esxdr host apply esxi-dr                # make it so (a second plan is then empty)
  esxdr host apply esxi-dr --prune        # also remove what esxdr created and the site file no longer lists
  esxdr host verify-storage esxi-dr --manifest dr-manifest.yaml
  esxdr host verify-storage --manifest m.yaml --resolve resignature
  esxdr host thumbprint esxi-dr.example.com   # the SHA-256 to pin in the site file
"""


@click.group(help=HOST_HELP)
def host() -> None:
    pass


@host.command("plan")
@click.argument("host_name", metavar="[HOST]", required=False)
@click.option("--host", "only", metavar="NAME", default=None,
              help="With a vCenter: act on this one of its hosts only.")
@click.option("--prune", is_flag=True, help="Also plan to remove what esxdr created and the site file no longer "
                                            "lists (nothing esxdr did not create).")
@json_option
@site_option
@pass_ctx
def plan_cmd(ctx: Context, host_name: str | None, only: str | None, prune: bool) -> None:
    """Show what `host apply` would change on HOST, with the reason for each action.

    \b
    Exit 0 with an empty plan when the host matches the site file; exit 3 when
    something must be decided first (a refusal, e.g. iSCSI binding on a port group
    with two active uplinks).

    \b
    Examples:
      esxdr host plan esxi-dr
      esxdr host plan esxi-dr --prune --json
      esxdr host plan vcenter-dr --host esx2
    """
    from esxdr import hosts

    t = hosts.resolve(ctx.site(), host_name, only)
    result, requests = hosts.plan(ctx.site(), t, prune=prune)
    ctx.emit({**result.to_dict(), "requests": requests}, result.render)
    hosts.raise_for_refusals(t, result)


@host.command("apply")
@click.argument("host_name", metavar="[HOST]", required=False)
@click.option("--host", "only", metavar="NAME", default=None,
              help="With a vCenter: act on this one of its hosts only.")
@click.option("--dry-run", is_flag=True, help="Describe each action without changing anything.")
@click.option("--prune", is_flag=True, help="Also remove what esxdr created and the site file no longer lists "
                                            "(never anything esxdr did not create, nor the management network vmk0).")
@json_option
@site_option
@pass_ctx
def apply_cmd(ctx: Context, host_name: str | None, only: str | None, dry_run: bool, prune: bool) -> None:
    """Make HOST's network and software iSCSI match the site file's dr_network.

    \b
    vSwitches (uplinks, MTU, failover order), port groups (VLAN, active/standby),
    VMkernel NICs (static IP or DHCP, MTU), software iSCSI, CHAP, port binding,
    send and static targets, then RescanAllHba + RescanVmfs when storage changed.
    --dry-run walks the same action list and only describes it.

    \b
    Examples:
      esxdr host apply esxi-dr --dry-run
      esxdr host apply esxi-dr
      esxdr host apply esxi-dr --prune --json
      esxdr host apply vcenter-dr             # all its DR hosts, in parallel
    """
    from esxdr import hosts

    t = hosts.resolve(ctx.site(), host_name, only)
    result = hosts.apply(ctx.site(), t, prune=prune, dry_run=dry_run, say=ctx.info)
    ctx.emit(result.to_dict(), result.render)


@host.command("verify-storage")
@click.argument("host_name", metavar="[HOST]", required=False)
@click.option("--host", "only", metavar="NAME", default=None,
              help="With a vCenter: act on this one of its hosts only.")
@click.option("--manifest", "manifest_path", required=True, type=click.Path(dir_okay=False),
              help="The DR target manifest (esxdr target export/import).")
@click.option("--resolve", type=click.Choice(["keep-uuid", "resignature"]), default=None,
              help="Resolve unresolved VMFS volumes: keep-uuid = force-mount (UUID kept, nothing written); "
                   "resignature = new UUID, datastore renamed back to its expected name.")
@click.option("--timeout", default=60.0, show_default=True, type=float,
              help="Seconds to keep rescanning while expected LUNs are missing.")
@click.option("--rescan", "rescan_mode", type=click.Choice(["missing", "always", "never"]), default="missing",
              show_default=True, help="When to rescan the HBAs.")
@json_option
@site_option
@pass_ctx
def verify_storage_cmd(ctx: Context, host_name: str | None, only: str | None, manifest_path: str, resolve: str | None,
                       timeout: float, rescan_mode: str) -> None:
    """Prove that HOST sees every LUN of the manifest by its NAA and mounts each VMFS volume as itself.

    \b
    The expected datastore name and VMFS UUID come from the site file (datasets with
    naa/datastore/vmfs_uuid) or from the VMFS header on each LUN's backing file.
    An unresolved volume (ESXi takes it for a snapshot) is explained (which NAA was
    expected, which is served) and only resolved with --resolve. Exit 3 when volumes
    are unresolved, 4 when LUNs are missing.

    \b
    Examples:
      esxdr host verify-storage esxi-dr --manifest dr.yaml
      esxdr host verify-storage esxi-dr --manifest dr.yaml --resolve keep-uuid
      esxdr host verify-storage esxi-dr --manifest dr.yaml --resolve resignature --json
      esxdr host verify-storage vcenter-dr --manifest dr.yaml   # every host, one read
    """
    from esxdr import hosts
    from esxdr.model import manifest as mf
    from esxdr.vsphere.storage import expected_luns

    t = hosts.resolve(ctx.site(), host_name, only, need_network=False)
    manifest = mf.load(manifest_path)
    specs = [spec for g in ctx.site().protection_groups.values() for spec in g.luns.values()]
    data, render, error = hosts.verify(t, expected_luns(manifest, specs), timeout=timeout, rescan_mode=rescan_mode,
                                       resolve=resolve, say=ctx.info)
    ctx.emit(data, render)
    if error is not None:
        raise error


@host.command("thumbprint")
@click.argument("address", metavar="HOST[:PORT]")
@click.option("--timeout", default=10.0, show_default=True, type=float)
@json_option
@pass_ctx
def thumbprint_cmd(ctx: Context, address: str, timeout: float) -> None:
    """Print the SHA-256 thumbprint of HOST's TLS certificate, to pin in the site file.

    \b
    Compare it out of band (ESXi console, `openssl x509 -fingerprint -sha256`)
    before trusting it.

    \b
    Examples:
      esxdr host thumbprint esxi-dr.example.com
      esxdr host thumbprint 127.0.0.2:18443
    """
    from esxdr.vsphere.session import fetch_thumbprint

    host_part, port = address, 443
    if address.startswith("["):
        host_part, _, rest = address[1:].partition("]")
        port = int(rest.lstrip(":") or 443)
    elif address.count(":") == 1:
        host_part, p = address.split(":")
        port = int(p)
    tp = fetch_thumbprint(host_part, port, timeout)
    ctx.emit({"host": host_part, "port": port, "thumbprint": tp},
             f"{tp}\n(site file: thumbprint: {tp})" if ctx.verbosity >= 0 else tp)
