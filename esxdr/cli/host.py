"""`esxdr host`: bring a DR ESXi host to the site file's network, verify its storage."""

from __future__ import annotations

from typing import Any

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import ConflictError, UsageError

HOST_HELP = """Prepare DR ESXi hosts (network, software iSCSI) and verify their datastores.

\b
Examples:
  esxdr host plan esxi-dr                 # what would change, and why
  esxdr host apply esxi-dr --dry-run      # the same list, as apply would walk it
  esxdr host apply esxi-dr                # make it so (a second plan is then empty)
  esxdr host apply esxi-dr --prune        # also remove what the site file does not list
  esxdr host verify-storage esxi-dr --manifest dr-manifest.yaml
  esxdr host verify-storage --manifest m.yaml --resolve resignature
  esxdr host thumbprint esxi-dr.example.com   # the SHA-256 to pin in the site file
"""


@click.group(help=HOST_HELP)
def host() -> None:
    pass


def _pick_host(ctx: Context, name: str | None, need_network: bool = True) -> tuple[str, Any, Any]:
    """(host name, endpoint, HostNetwork or None) for HOST, or the only DR host."""
    site = ctx.site()
    if name is None:
        candidates = list(site.dr_network) or [n for n, e in site.vsphere.items() if e.role == "dr" and e.kind == "esxi"]
        if len(candidates) != 1:
            raise UsageError("name the host: " + (f"one of {', '.join(candidates)}" if candidates
                                                  else "the site file has no dr_network hosts"),
                             hint="esxdr host plan HOST")
        name = candidates[0]
    network = site.dr_network.get(name)
    if network is None and need_network:
        raise UsageError(f"no dr_network entry for host {name!r} in {site.path}",
                         hint="known: " + (", ".join(site.dr_network) or "none"))
    endpoint = site.vsphere.get(network.endpoint) if network is not None and network.endpoint else None
    endpoint = endpoint or site.endpoint_for_host(name)
    if endpoint is None:
        raise UsageError(f"no vsphere endpoint manages host {name!r}",
                         hint="add it under vsphere: (kind esxi), or list it in a DR vCenter's hosts:")
    return name, endpoint, network


def _connect(endpoint: object):  # -> Session
    from esxdr.vsphere.session import connect

    return connect(endpoint)


def _host_name(endpoint: object, name: str) -> str | None:
    # On a standalone ESXi the endpoint name need not be the host's own name.
    return None if getattr(endpoint, "kind", "esxi") == "esxi" else name


@host.command("plan")
@click.argument("host_name", metavar="[HOST]", required=False)
@click.option("--prune", is_flag=True, help="Also plan to remove what the site file does not list.")
@json_option
@site_option
@pass_ctx
def plan_cmd(ctx: Context, host_name: str | None, prune: bool) -> None:
    """Show what `host apply` would change on HOST, with the reason for each action.

    \b
    Exit 0 with an empty plan when the host matches the site file; exit 3 when
    something must be decided first (a refusal, e.g. iSCSI binding on a port group
    with two active uplinks).
    \b
    Examples:
      esxdr host plan esxi-dr
      esxdr host plan esxi-dr --prune --json
    """
    from esxdr.plan.host import plan_host
    from esxdr.vsphere.host import observe

    name, endpoint, network = _pick_host(ctx, host_name)
    with _connect(endpoint) as session:
        state = observe(session, _host_name(endpoint, name),
                        bindings=bool(network.iscsi and (network.iscsi.bind or prune)))
        result = plan_host(network, state, prune=prune)
        ctx.emit({**result.to_dict(), "requests": session.requests}, result.render)
    if result.refusals:
        r = result.refusals[0]
        raise ConflictError(f"{name}: {len(result.refusals)} refusal(s); first: {r.target}: {r.message}",
                            hint=r.hint or None)


@host.command("apply")
@click.argument("host_name", metavar="[HOST]", required=False)
@click.option("--dry-run", is_flag=True, help="Describe each action without changing anything.")
@click.option("--prune", is_flag=True, help="Also remove what the site file does not list "
                                            "(never the management network vmk0).")
@json_option
@site_option
@pass_ctx
def apply_cmd(ctx: Context, host_name: str | None, dry_run: bool, prune: bool) -> None:
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
    """
    from esxdr.plan.host import plan_host
    from esxdr.vsphere.host import apply_plan, observe

    name, endpoint, network = _pick_host(ctx, host_name)
    with _connect(endpoint) as session:
        state = observe(session, _host_name(endpoint, name),
                        bindings=bool(network.iscsi and (network.iscsi.bind or prune)))
        host_plan = plan_host(network, state, prune=prune)
        for n in host_plan.notes:
            ctx.info(f"note: {n}")
        result = apply_plan(session, state, host_plan, dry_run=dry_run, progress=ctx.info)
        result.requests = session.requests
        ctx.emit(result.to_dict(), result.render)


@host.command("verify-storage")
@click.argument("host_name", metavar="[HOST]", required=False)
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
def verify_storage_cmd(ctx: Context, host_name: str | None, manifest_path: str, resolve: str | None,
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
    """
    from esxdr.targets import manifest as mf
    from esxdr.vsphere.storage import expected_luns, raise_for, verify_storage

    name, endpoint, _network = _pick_host(ctx, host_name, need_network=False)
    manifest = mf.load(manifest_path)
    specs = [spec for g in ctx.site().protection_groups.values() for spec in g.luns.values()]
    expected = expected_luns(manifest, specs)
    with _connect(endpoint) as session:
        result = verify_storage(session, _host_name(endpoint, name), expected, timeout=timeout,
                                rescan_mode=rescan_mode, resolve=resolve, progress=ctx.info)
        result.requests = session.requests
    ctx.emit(result.to_dict(), result.render)
    raise_for(result)


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
