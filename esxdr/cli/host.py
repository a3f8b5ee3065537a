"""`esxdr host`: bring a DR ESXi host to the site file's network, verify its storage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import ConflictError, UsageError

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


def _pick_host(ctx: Context, name: str | None, need_network: bool = True) -> tuple[str, Any, Any]:
    """(host name, endpoint, HostNetwork or None) for HOST, or the only DR host."""
    site = ctx.site()
    if name is None:
        candidates = list(site.dr_network) or [n for n, e in site.vsphere.items() if e.role == "dr" and e.kind == "esxi"]
        if len(candidates) != 1:
            vcs = [n for n, e in site.vsphere.items() if e.role == "dr" and e.kind == "vcenter"]
            raise UsageError("name the host: " + (f"one of {', '.join(candidates + vcs)}" if candidates or vcs
                                                  else "the site file has no dr_network hosts"),
                             hint="esxdr host plan HOST (a DR vCenter's name acts on all its hosts)")
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


@dataclass
class _Target:
    """What a command acts on: one standalone host, or hosts of a vCenter (``names``)."""

    endpoint: Any
    name: str = ""  # standalone: the host; vCenter: the endpoint
    network: Any = None  # standalone: its HostNetwork
    names: list[str] | None = None  # vCenter: the hosts, in site order
    networks: dict[str, Any] = field(default_factory=dict)

    @property
    def vcenter(self) -> bool:
        return self.names is not None


def _target(ctx: Context, name: str | None, only: str | None, need_network: bool = True) -> _Target:
    """Resolve HOST / --host to a standalone host or to hosts of a DR vCenter."""
    from esxdr.plan.host import select_hosts

    site = ctx.site()

    def vcenter(ep: Any, pick: str | None) -> _Target:
        names = select_hosts(ep.name, ep.hosts, list(site.dr_network), pick, need_network=need_network)
        return _Target(endpoint=ep, name=ep.name, names=names,
                       networks={n: site.dr_network[n] for n in names if n in site.dr_network})

    ep = site.vsphere.get(name) if name else None
    if ep is not None and ep.kind == "vcenter":
        return vcenter(ep, only)
    if name is not None and only is not None and only != name:
        raise UsageError(f"--host {only} does not narrow {name}: it is a host, not a vCenter",
                         hint=f"esxdr host ... {only}, or name the vCenter that manages both")
    name = name or only
    if name is None:
        # No HOST: the only DR host, or the only DR vCenter all dr_network hosts belong to.
        owners = {e.name: e for h in site.dr_network if (e := site.endpoint_for_host(h)) is not None}
        if len(site.dr_network) > 1 and len(owners) == 1:
            only_ep = next(iter(owners.values()))
            if only_ep.kind == "vcenter":
                return vcenter(only_ep, None)
    host_name, endpoint, network = _pick_host(ctx, name, need_network)
    if endpoint.kind == "vcenter":
        return vcenter(endpoint, host_name)
    return _Target(endpoint=endpoint, name=host_name, network=network)


def _connect(endpoint: object):  # -> Session
    from esxdr.vsphere.session import connect

    return connect(endpoint)


def _host_name(endpoint: object, name: str) -> str | None:
    # On a standalone ESXi the endpoint name need not be the host's own name.
    return None if getattr(endpoint, "kind", "esxi") == "esxi" else name


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
    from esxdr.plan.host import plan_host

    t = _target(ctx, host_name, only)
    if t.vcenter:
        _plan_vcenter(ctx, t, prune)
        return
    from esxdr.vsphere.host import observe

    name, endpoint, network = t.name, t.endpoint, t.network
    with _connect(endpoint) as session:
        state = observe(session, _host_name(endpoint, name),
                        bindings=bool(network.iscsi and (network.iscsi.bind or prune)))
        result = plan_host(network, state, prune=prune, chap_secret=_chap(ctx, t).state(name, _chap_spec(network)),
                           created=_created(ctx, t).load(name))
        ctx.emit({**result.to_dict(), "requests": session.requests}, result.render)
    if result.refusals:
        r = result.refusals[0]
        raise ConflictError(f"{name}: {len(result.refusals)} refusal(s); first: {r.target}: {r.message}",
                            hint=r.hint or None)


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
    from esxdr.plan.host import plan_host
    from esxdr.vsphere.host import apply_plan, observe

    t = _target(ctx, host_name, only)
    if t.vcenter:
        _apply_vcenter(ctx, t, prune, dry_run)
        return
    name, endpoint, network = t.name, t.endpoint, t.network
    with _connect(endpoint) as session:
        state = observe(session, _host_name(endpoint, name),
                        bindings=bool(network.iscsi and (network.iscsi.bind or prune)))
        chap = _chap(ctx, t)
        records = _created(ctx, t)
        created = records.load(name) if dry_run else records.forget_absent(name, state)
        host_plan = plan_host(network, state, prune=prune, chap_secret=chap.state(name, _chap_spec(network)),
                              created=created)
        for n in host_plan.notes:
            ctx.info(f"note: {n}")
        result = apply_plan(session, state, host_plan, dry_run=dry_run, progress=ctx.info,
                            records=None if dry_run else records)
        _record_chap(chap, result, network)
        result.requests = session.requests
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
    from esxdr.model import manifest as mf
    from esxdr.vsphere.storage import expected_luns, raise_for, verify_storage

    t = _target(ctx, host_name, only, need_network=False)
    manifest = mf.load(manifest_path)
    specs = [spec for g in ctx.site().protection_groups.values() for spec in g.luns.values()]
    expected = expected_luns(manifest, specs)
    if t.vcenter:
        _verify_vcenter(ctx, t, expected, timeout, rescan_mode, resolve)
        return
    name, endpoint = t.name, t.endpoint
    with _connect(endpoint) as session:
        result = verify_storage(session, _host_name(endpoint, name), expected, timeout=timeout,
                                rescan_mode=rescan_mode, resolve=resolve, progress=ctx.info)
        result.requests = session.requests
    ctx.emit(result.to_dict(), result.render)
    raise_for(result)


# --------------------------------------------------------------------------- CHAP secrets
def _chap(ctx: Context, t: _Target):  # -> ChapRecords
    from esxdr.vsphere.chap import ChapRecords

    return ChapRecords(ctx.site().state_dir, getattr(t.endpoint, "name", t.name))


def _created(ctx: Context, t: _Target):  # -> CreatedRecords
    """What esxdr created on the hosts of this endpoint (what --prune may remove)."""
    from esxdr.vsphere.host import CreatedRecords

    return CreatedRecords(ctx.site().state_dir, getattr(t.endpoint, "name", t.name))


def _chap_spec(network: Any) -> Any:
    return network.iscsi.chap if network is not None and network.iscsi is not None and network.iscsi.enabled \
        else None


def _record_chap(chap: Any, result: Any, network: Any) -> None:
    """Remember the fingerprint of the secret a done set_chap step put on the host."""
    spec = _chap_spec(network)
    if spec is not None and any(st.action.kind == "set_chap" and st.status == "done" for st in result.steps):
        chap.record(result.host, spec)


# --------------------------------------------------------------------------- vCenter: several hosts
def _bindings(t: _Target, prune: bool) -> bool:
    return any(n.iscsi and (n.iscsi.bind or prune) for n in t.networks.values())


def _plan_all(ctx: Context, t: _Target, session: Any, prune: bool,
              applying: bool = False):  # -> (states, MultiHostPlan, ChapRecords, CreatedRecords)
    """One read of all the vCenter's hosts, then a plan per host. ``applying``: records of
    objects since removed by hand are dropped first."""
    from esxdr.plan.host import plan_hosts
    from esxdr.vsphere.host import observe_hosts

    assert t.names is not None
    states = observe_hosts(session, t.names, bindings=_bindings(t, prune))
    chap = _chap(ctx, t)
    records = _created(ctx, t)
    created = {h: records.forget_absent(h, st) if applying else records.load(h) for h, st in states.items()}
    plans = plan_hosts(t.name, t.networks, states, prune=prune,
                       chap_secrets={h: chap.state(h, _chap_spec(n)) for h, n in t.networks.items()},
                       created=created)
    return states, plans, chap, records


def _plan_vcenter(ctx: Context, t: _Target, prune: bool) -> None:
    with _connect(t.endpoint) as session:
        _, result, _, _ = _plan_all(ctx, t, session, prune)
        ctx.emit({**result.to_dict(), "requests": session.requests}, result.render)
    if result.refusals:
        host_name, r = result.refusals[0]
        raise ConflictError(f"{host_name}: {len(result.refusals)} refusal(s); first: {r.target}: {r.message}",
                            hint=r.hint or None)


def _apply_vcenter(ctx: Context, t: _Target, prune: bool, dry_run: bool) -> None:
    from esxdr.vsphere.host import apply_plans

    with _connect(t.endpoint) as session:
        states, plans, chap, records = _plan_all(ctx, t, session, prune, applying=not dry_run)
        for p in plans.plans:
            for n in p.notes:
                ctx.info(f"{p.host}: note: {n}")
        result = apply_plans(session, states, plans.plans, endpoint=t.name, dry_run=dry_run, progress=ctx.info,
                             records=None if dry_run else records)
        for r in result.results:
            _record_chap(chap, r, t.networks.get(r.host))
        result.requests = session.requests
        ctx.emit(result.to_dict(), result.render)


def _verify_vcenter(ctx: Context, t: _Target, expected: list[Any], timeout: float, rescan_mode: str,
                    resolve: str | None) -> None:
    from esxdr.vsphere.host import verify_hosts

    assert t.names is not None
    with _connect(t.endpoint) as session:
        report, rescans, resolved = verify_hosts(session, t.names, expected, endpoint=t.name, timeout=timeout,
                                                 rescan_mode=rescan_mode, resolve=resolve, progress=ctx.info)
        requests = session.requests

    def render() -> str:
        return "\n".join([f"done: {a.describe()}" for a in resolved] + [report.render()])

    ctx.emit({**report.to_dict(), "resolved": [a.to_dict() for a in resolved], "rescans": rescans,
              "requests": requests}, render)
    bad = [(r.host, c) for r in report.reports for c in r.checks if not c.ok]
    if not bad:
        return
    host_name, first = bad[0]
    hosts_bad = sorted({h for h, _ in bad})
    if any(c.status == "unresolved" for _, c in bad):
        raise ConflictError(f"{host_name}: VMFS volume(s) unresolved on {', '.join(hosts_bad)}; {first.message}",
                            hint=first.hint)
    from esxdr.errors import VsphereError

    raise VsphereError(f"{len(bad)} LUN check(s) failed on {', '.join(hosts_bad)}; {host_name}: naa.{first.naa}: "
                       f"{first.message}", hint=first.hint)


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
