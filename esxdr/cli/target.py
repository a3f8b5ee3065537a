"""`esxdr target`: capture, convert, re-create and verify iSCSI target identities."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import UsageError

if TYPE_CHECKING:
    from esxdr.site.model import Site, StorageServer


class StackType(click.ParamType):
    """A target stack: esxdr's own or a plugin's, known only once the entry points are read (at
    use, not at start-up: esxdr's other commands pay nothing for it)."""

    name = "stack"

    def __init__(self, extra: tuple[str, ...] = ()):
        self.extra = extra

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "STACK"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from esxdr.targets import stacks

        known = (*self.extra, *stacks())
        if value in known:
            return str(value)
        self.fail(f"{value!r} is not one of {', '.join(known)} (a plugin package adds stacks: docs/plugins.md)",
                  param, ctx)


STACK_CHOICE = StackType()


def _rewrite_options(f):
    """Options that adapt a production manifest to the DR side (esxdr.plan.rewrite)."""
    opts = [
        click.option("--map-dataset", multiple=True, metavar="OLD=NEW",
                     help="Rename pools/datasets, e.g. sp2=sp1 (repeatable)."),
        click.option("--zvol-style", type=click.Choice(["illumos", "linux", "freebsd"]),
                     help="Rewrite zvol device paths for the DR platform."),
        click.option("--zvol-to-file", metavar="TEMPLATE",
                     help="Serve zvol LUs from files, e.g. '/tank/dr/{name}.img' ({dataset}, {name})."),
        click.option("--map-path", multiple=True, metavar="OLD=NEW", help="Backing-store path prefix mapping."),
        click.option("--portal", "portals", multiple=True, metavar="ADDR[:PORT]",
                     help="DR portal address(es) for every target."),
        click.option("--tpg-tag", type=int, help="TPG tag on DR (default: keep production's)."),
        click.option("--allow-initiator", multiple=True, metavar="IQN",
                     help="Add a DR ESXi initiator to every ACL (repeatable)."),
        click.option("--chap-user", help="CHAP user for every target on DR."),
        click.option("--chap-secret-ref", help="Where its secret is: secrets:KEY, env:NAME or file:/path."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _apply_rewrites(m, map_dataset, zvol_style, zvol_to_file, map_path, portals, tpg_tag, allow_initiator,
                    chap_user, chap_secret_ref, default_portal=None):
    from esxdr.model.manifest import Portal
    from esxdr.plan import rewrite

    if map_dataset:
        m = rewrite.rename_datasets(m, rewrite.parse_mapping(map_dataset, "--map-dataset"))
    if zvol_style:
        m = rewrite.zvol_style(m, zvol_style)
    if zvol_to_file:
        m = rewrite.zvols_to_files(m, zvol_to_file)
    if map_path:
        m = rewrite.map_paths(m, rewrite.parse_mapping(map_path, "--map-path"))
    chosen = list(portals) or ([default_portal] if default_portal else [])
    if chosen:
        try:
            m = rewrite.set_portals(m, [Portal.parse(p) for p in chosen], tpg_tag)
        except ValueError as e:
            raise UsageError(f"bad --portal value: {e}") from e
    if allow_initiator:
        m = rewrite.allow_initiators(m, list(allow_initiator))
    if chap_user:
        if not chap_secret_ref:
            raise UsageError("--chap-user needs --chap-secret-ref", hint="e.g. --chap-secret-ref secrets:dr-chap")
        m = rewrite.set_chap(m, chap_user, chap_secret_ref)
    return m.validate()


def _secrets(path: str | None):
    from esxdr.targets.base import Secrets

    return Secrets.load(path) if path else None


def _server(ctx: Context, name: str | None, role: str):
    site = ctx.site()
    servers = site.storage
    if name:
        if name not in servers:
            raise UsageError(f"no storage server {name!r} in {ctx.site_path}",
                             hint=f"known: {', '.join(servers) or 'none'}")
        return servers[name]
    match = [s for s in servers.values() if s.role == role]
    if len(match) != 1:
        raise UsageError(f"{len(match)} storage servers with role {role} in {ctx.site_path}",
                         hint="name one with --server")
    return match[0]


def _with_target(server: StorageServer):
    if server.target is None:
        raise UsageError(f"storage server {server.name} has no target: section in the site file",
                         hint="add target: {stack: comstar|iscsitgt|lio|tgt, portal: ADDR:PORT}")
    return server


def _transport(server: StorageServer):
    from esxdr.transport import for_server

    return for_server(server)


def _backend_kwargs(stack: str, server: StorageServer) -> dict:
    if stack == "tgt":
        return {"control_port": getattr(server.target, "control_port", None)}
    return {}


@click.group(help="""Capture, convert, re-create and verify iSCSI target identities (NAA per LUN).

\b
Examples:
  esxdr target convert --from iscsitgt backup/iscsitgt.xml --to tgt
  esxdr target export -o prod-targets.yaml
  esxdr target import prod-targets.yaml --map-dataset sp2=sp1 --dry-run
  esxdr target verify prod-targets.yaml --initiator iqn.1998-01.com.vmware:esxi-dr
  esxdr target accept core --dry-run
""")
def target() -> None:
    pass


@target.command()
@click.option("--from", "from_", type=STACK_CHOICE, required=True, help="Stack that produced the FILEs.")
@click.option("--to", "to", type=StackType(("manifest", "lio-script")), default="manifest", show_default=True,
              help="Output: the manifest, or a stack's config: comstar, iscsitgt, lio, tgt or a plugin's "
                   "(lio: saveconfig.json; lio-script: a shell script that also sets the identity "
                   "saveconfig.json cannot hold).")
@click.option("--secrets", "secrets_file", type=click.Path(dir_okay=False),
              help="Secrets file (mode 0600) to fill in CHAP secrets in native output.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@_rewrite_options
@json_option
@pass_ctx
def convert(ctx: Context, from_: str, to: str, secrets_file: str | None, files: tuple[str, ...], **rw) -> None:
    """Turn saved native target configuration into a manifest or another stack's config, offline.

    \b
    FILEs per stack:
      comstar   saved `stmfadm list-lu -v`, `stmfadm list-view -l GUID` (one per LU, with a
                '# stmfadm list-view -l GUID' line or the GUID in the file name), `sbdadm list-lu`,
                `itadm list-target -v`, `itadm list-tpg -v`, `stmfadm list-hg -v`, `stmfadm list-tg -v`
      iscsitgt  `svccfg export iscsitgt` XML
      lio       /etc/target/saveconfig.json
      tgt       `tgtadm --lld iscsi --op show --mode target` output or targets.conf
      (plugin)  what that stack's plugin package reads (docs/plugins.md)

    \b
    Examples:
      esxdr target convert --from iscsitgt /backup/iscsitgt.xml
      esxdr target convert --from comstar list-lu.txt views.txt itadm-targets.txt --to tgt
      esxdr target convert --from lio saveconfig.json --json
    """
    from esxdr.targets import convert as do_convert
    from esxdr.targets import read_native

    m = _apply_rewrites(read_native(from_, list(files)), **rw)
    if to == "manifest":
        ctx.emit(m.to_dict(), lambda: do_convert(m, "manifest"))
        for n in m.source.notes:
            ctx.info(f"note: {n}")
        return
    if to == "lio-script":
        from esxdr.targets import lio

        script = lio.script(m, _secrets(secrets_file))
        ctx.emit({"stack": "lio", "script": script}, script.rstrip("\n"))
        return
    out = do_convert(m, to, _secrets(secrets_file))
    if to == "lio":
        from esxdr.targets import lio

        # saveconfig.json alone loses company_id, vendor and product: say what each LU needs beside it.
        ctx.emit({"stack": to, "config": out, "identity": lio.identity_settings(m)}, out.rstrip("\n"))
        for n in lio.restore_notes(m):
            ctx.info(f"note: {n}")
        return
    ctx.emit({"stack": to, "config": out}, out.rstrip("\n"))


@target.command()
@click.option("--server", help="Storage server of the site (default: the production one).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the manifest here (else stdout).")
@click.option("--initiator", default="iqn.2024-01.io.esxdr:probe", show_default=True,
              help="tgt only: initiator name for reading vendor/product over iSCSI (must pass the ACL).")
@site_option
@json_option
@pass_ctx
def export(ctx: Context, server: str | None, output: str | None, initiator: str) -> None:
    """Write the manifest of the live production target.

    \b
    Examples:
      esxdr target export -o /var/lib/esxdr/targets.yaml
      esxdr target export --server prod-nas --json
    """
    from datetime import UTC, datetime

    from esxdr.model.manifest import dumps, save
    from esxdr.targets import backend

    srv = _with_target(_server(ctx, server, "production"))
    stack = srv.target.stack
    transport = _transport(srv)
    extra = {"portal": srv.target.portal, "initiator": initiator} if stack == "tgt" else {}
    m = backend(stack).observe(transport, **_backend_kwargs(stack, srv), **extra)
    m.source.host = srv.name
    for note in m.source.notes:
        ctx.info(f"note: {note}")
    m.source.exported_at = datetime.now(UTC).isoformat(timespec="seconds")
    m.validate()
    if output:
        save(m, output)
        ctx.emit({"written": output, "logical_units": len(m.logical_units), "targets": len(m.targets)},
                 f"wrote {output}: {len(m.logical_units)} LUs on {len(m.targets)} target(s)")
    else:
        ctx.emit(m.to_dict(), lambda: dumps(m).rstrip("\n"))


def _load_for_dr(ctx: Context, manifest_path: str, server: str | None, rw: dict):
    from esxdr.model.manifest import load

    srv = _with_target(_server(ctx, server, "dr"))
    m = _apply_rewrites(load(manifest_path), default_portal=getattr(srv.target, "portal", None), **rw)
    return srv, m


@target.command()
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@click.option("--server", help="Storage server of the site (default: the DR one).")
@_rewrite_options
@site_option
@json_option
@pass_ctx
def diff(ctx: Context, manifest_path: str, server: str | None, **rw) -> None:
    """Show what `target import` would change on the DR target, LU by LU (by NAA).

    \b
    Example:
      esxdr target diff prod-targets.yaml --map-dataset sp2=sp1
    """
    from esxdr.plan import rewrite
    from esxdr.targets import backend

    srv, m = _load_for_dr(ctx, manifest_path, server, rw)
    stack = srv.target.stack
    observed = backend(stack).observe(_transport(srv), **_backend_kwargs(stack, srv))
    changes = rewrite.diff(observed, m)

    def text() -> str:
        if not changes:
            return f"{srv.name}: the {stack} target already matches the manifest"
        lines = []
        for c in changes:
            what = c.get("naa") or c.get("target")
            extra = c.get("fields") or c.get("backing") or ""
            lines.append(f"{c['change']:9} {what} {extra}")
        return "\n".join(lines)

    ctx.emit({"server": srv.name, "stack": stack, "changes": changes}, text)


@target.command("import")
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@click.option("--server", help="Storage server of the site (default: the DR one).")
@click.option("--dry-run", is_flag=True, help="Print the exact commands; change nothing.")
@click.option("--secrets", "secrets_file", type=click.Path(dir_okay=False), help="CHAP secrets file (mode 0600).")
@_rewrite_options
@site_option
@json_option
@pass_ctx
def import_(ctx: Context, manifest_path: str, server: str | None, dry_run: bool, secrets_file: str | None,
            **rw) -> None:
    """Re-create the manifest's targets on DR with every LU's NAA unchanged.

    Refuses (IdentityConflict, exit 3) before any change when the DR stack cannot
    reproduce an NAA, and (exit 2) when a backing store is missing.

    \b
    Examples:
      esxdr target import prod-targets.yaml --map-dataset sp2=sp1 --dry-run
      esxdr target import prod-targets.yaml --allow-initiator iqn.1998-01.com.vmware:esxi-dr
    """
    from esxdr.targets import backend

    srv, m = _load_for_dr(ctx, manifest_path, server, rw)
    stack = srv.target.stack
    result = backend(stack).apply(_transport(srv), m, dry_run=dry_run, secrets=_secrets(secrets_file),
                                  **_backend_kwargs(stack, srv))
    ctx.emit(result.to_dict(), result.text)


@target.command()
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(dir_okay=False))
@click.option("--server", help="Storage server of the site (default: the DR one).")
@click.option("--probe-portal", "portal", metavar="ADDR[:PORT]",
              help="Probe this portal (default: the first --portal, else the DR server's portal).")
@click.option("--initiator", default="iqn.2024-01.io.esxdr:verify", show_default=True,
              help="Initiator name to log in as (it must pass the target's ACL).")
@click.option("--secrets", "secrets_file", type=click.Path(dir_okay=False), help="CHAP secrets file (mode 0600).")
@click.option("--no-vmfs", is_flag=True, help="Skip reading the VMFS headers.")
@_rewrite_options
@site_option
@json_option
@pass_ctx
def verify(ctx: Context, manifest_path: str, server: str | None, portal: str | None, initiator: str,
           secrets_file: str | None, no_vmfs: bool, **rw) -> None:
    """Probe the DR target like ESXi would: NAA, serial, product, size, and the VMFS verdict.

    Exit status 5 when any LU differs from the manifest.

    \b
    Examples:
      esxdr target verify prod-targets.yaml --initiator iqn.1998-01.com.vmware:esxi-dr
      esxdr target verify prod-targets.yaml --probe-portal 127.0.0.2:3260 --json
    """
    from esxdr.errors import StaleStateError
    from esxdr.model.manifest import Portal, load
    from esxdr.targets.verify import verify as do_verify

    portal = portal or (rw["portals"][0] if rw.get("portals") else None)
    if portal:
        m = _apply_rewrites(load(manifest_path), **rw)
        p = Portal.parse(portal)
    else:
        srv, m = _load_for_dr(ctx, manifest_path, server, rw)
        p = Portal.parse(srv.target.portal)
    report = do_verify(m, p.address, p.port, initiator=initiator, secrets=_secrets(secrets_file),
                       read_vmfs=not no_vmfs)
    ctx.emit(report.to_dict(), report.text)
    if not report.ok:
        bad = sum(not c.ok for c in report.checks) + len(report.unexpected) + len(report.errors)
        raise StaleStateError(f"{bad} problem(s): the DR target does not serve exactly the manifest's "
                              "identities",
                              hint="re-run `esxdr target import` and check the problems listed above")


@target.command()
@click.argument("group", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write the manifest here (else stdout).")
@json_option
@site_option
@pass_ctx
def shipped(ctx: Context, group: str | None, output: str | None) -> None:
    """Show the target manifest that replication stored with the group's DR datasets.

    The shipped manifest is untrusted input (production's key can write it): it is validated
    field by field, and on the DR box the first one seen is pinned (trust on first use; see
    `esxdr target accept`). A shipped manifest that differs from the pin is shown with a warning.

    \b
    Examples:
      esxdr target shipped core
      esxdr target shipped core -o /tmp/core-manifest.yaml && esxdr target diff /tmp/core-manifest.yaml
    """
    from esxdr.model.manifest import dumps, save
    from esxdr.replication import shipping

    g, m = _read_shipped(ctx, group)
    if m is None:
        raise UsageError(f"no target manifest shipped to {g.dr_root} on {g.destination} yet",
                         hint="give the production storage server a target: section and run esxdr replicate")
    site = ctx.site()
    if _on_dr_box(site, g.destination):
        pinned = shipping.load_pin(site.state_dir, g)
        if pinned is None:
            path = shipping.save_pin(site.state_dir, g.name, m)
            ctx.info(f"{g.name}: pinned on first use in {path}; a later change of identity or paths needs "
                     f"esxdr target accept {g.name}")
        else:
            diff = shipping.changes(shipping.identity(pinned, g), shipping.identity(m, g))
            if diff:
                ctx.info(f"warning: the shipped manifest differs from the one pinned in "
                         f"{shipping.pin_path(site.state_dir, g.name)} (drills and failover refuse it):")
                for c in diff:
                    ctx.info(f"  {c['text']}")
                ctx.info(f"review: esxdr target accept {g.name} --dry-run")
    if output:
        save(m, output)
        ctx.emit({"written": output, "logical_units": len(m.logical_units)},
                 f"wrote {output}: {len(m.logical_units)} LUs shipped with {g.dr_root}")
    else:
        ctx.emit(m.to_dict(), lambda: dumps(m).rstrip("\n"))


def _read_shipped(ctx: Context, group: str | None):
    """(group, the validated shipped manifest or None), read from the DR root dataset."""
    from esxdr.errors import ManifestError
    from esxdr.replication import shipping
    from esxdr.replication.sides import open_side

    site = ctx.site()
    g = site.group(group)
    side = open_side(site, g.destination)
    try:
        return g, shipping.read(side.zfs, g.dr_root, g)
    except ManifestError as e:
        raise ManifestError(e.message, hint=shipping.refusal_hint(site.state_dir, g.name)) from None
    finally:
        side.transport.close()


def _on_dr_box(site: Site, server_name: str) -> bool:
    """Whether this box is the DR storage server (local, or the lab's loopback address): the pin is
    DR-local state and means nothing anywhere else."""
    from esxdr.vsphere.session import is_loopback

    server = site.storage_server(server_name)
    return bool(server.local or (server.address and is_loopback(server.address)))


@target.command()
@click.argument("group", required=False)
@click.option("--dry-run", is_flag=True, help="Show what would be pinned; change nothing.")
@json_option
@site_option
@pass_ctx
def accept(ctx: Context, group: str | None, dry_run: bool) -> None:
    """Pin the manifest shipped with the group's replica as the identities DR presents (run on DR).

    Drills and failover present the pinned manifest (NAAs, serials, vendor/product, LU ↔ dataset ↔
    file, target IQNs and CHAP references) and refuse a shipped one that differs, because anyone
    holding production's replication key can write the shipped one. When production changed its
    LUs on purpose, review the difference and accept it here. Without a pin yet, this takes the
    first one (as the first drill, failover or `target shipped` on DR would).

    \b
    Examples:
      esxdr target accept core --dry-run     # the difference, LU by LU; nothing changes
      esxdr target accept core               # pin the shipped manifest
      esxdr target accept core --dry-run --json
    """
    from typing import Any

    from esxdr.replication import shipping

    site = ctx.site()
    dest = site.group(group).destination
    if not _on_dr_box(site, dest):
        raise UsageError(f"the pin is state of the DR box; {dest} is reached remotely from here",
                         hint=f"run esxdr target accept on {dest} itself (a site file in which "
                              f"storage.{dest} has local: true)")
    g, m = _read_shipped(ctx, group)
    if m is None or not m.logical_units:
        raise UsageError(f"no target manifest shipped to {g.dr_root} on {g.destination}: nothing to accept",
                         hint="give the production storage server a target: section and run esxdr replicate")
    path = shipping.pin_path(site.state_dir, g.name)
    pinned = shipping.load_pin(site.state_dir, g)
    empty: dict[str, Any] = {"logical_units": {}, "targets": {}}
    diff = shipping.changes(shipping.identity(pinned, g) if pinned else empty, shipping.identity(m, g))
    same = pinned is not None and m.to_dict() == pinned.to_dict()
    if not same and not dry_run:
        shipping.save_pin(site.state_dir, g.name, m)
    out = {"group": g.name, "pin": str(path), "first_pin": pinned is None, "changes": diff,
           "accepted": not same and not dry_run, "dry_run": dry_run}

    def text() -> str:
        lines = [c["text"] for c in diff]
        if same:
            head = f"{g.name}: the shipped manifest is the pinned one ({path}); nothing to accept"
        elif not diff:
            head = (f"{g.name}: same identities; other fields (sizes, aliases, LUN numbers, portals, ACLs) "
                    + ("would be taken" if dry_run else "taken") + f" into {path}")
        else:
            head = (f"{g.name}: {'would pin' if dry_run else 'pinned'} in {path}"
                    + (" (first pin)" if pinned is None else f", {len(diff)} identity change(s):"))
        return "\n".join([head, *(f"  {x}" for x in lines)])

    ctx.emit(out, text)


@target.command("present-clone")
@click.argument("group", required=False)
@click.option("--snapshot", "point", default="latest", show_default=True,
              help="The DR snapshot to present: latest (common to every dataset) or a snapshot name.")
@click.option("--new-naa", is_flag=True, help="Give the clones NAAs of their own (ESXi must resignature them).")
@click.option("--remove", is_flag=True, help="Remove the presented clones and destroy them.")
@click.option("--dry-run", is_flag=True, help="Print the steps; change nothing.")
@click.option("--allow-initiator", "allow_initiator", multiple=True, metavar="IQN",
              help="Initiator that may log in (repeatable); default: the DR hosts' own (vsphere_dr).")
@json_option
@site_option
@pass_ctx
def present_clone(ctx: Context, group: str | None, point: str, new_naa: bool, remove: bool, dry_run: bool,
                  allow_initiator: tuple[str, ...]) -> None:
    """Clone a replicated DR snapshot and present it on the DR target (storage only).

    With the same NAA (the classic method: safe only where the DR host sees no other path
    to those NAAs) or with --new-naa. Presenting another point replaces the clone; --remove
    takes it away and destroys it. Replication into the DR datasets keeps working throughout.
    Only named initiators may log in: --allow-initiator, else the iSCSI names of the group's
    vsphere_dr hosts (one vSphere read); with neither, it refuses.

    \b
    Examples:
      esxdr target present-clone core --dry-run
      esxdr target present-clone core --snapshot esxdr_core_20261201T020000Z
      esxdr target present-clone core --allow-initiator iqn.1998-01.com.vmware:esx-dr
      esxdr target present-clone core --remove
    """
    from esxdr.recovery import Drill

    site = ctx.site()
    name = site.group(group).name
    d = Drill(site, name, say=ctx.info)
    prev = d.journal.load()
    if remove or (prev and not dry_run and (point not in ("latest", prev.get("snapshot"))
                                            or new_naa != prev.get("new_naa", False))):
        if prev and not prev.get("storage_only", False):
            raise UsageError(f"a drill of {name} is running on this presentation",
                             hint=f"end it with esxdr test cleanup {name}")
        rec = d.cleanup(dry_run=dry_run)
        if remove:
            ctx.emit(rec.to_dict(), f"{name}: clone presentation removed" if not dry_run and prev
                     else (rec.runbook.render() if rec.runbook and not rec.runbook.empty
                           else f"{name}: no clone presented"))
            return
        d = Drill(ctx.site(), name, say=ctx.info)
    rec = d.start(point=point, new_naa=new_naa, dry_run=dry_run, storage_only=True, initiators=allow_initiator)
    if dry_run:
        assert rec.runbook is not None
        ctx.emit(rec.to_dict(), rec.runbook.render())
        return
    luns = (d.journal.load() or {}).get("luns", [])
    ctx.emit(rec.to_dict(), "\n".join([f"{name}: @{rec.snapshot} presented as {len(luns)} LUN(s)"] + [
        f"  naa.{lu.get('naa', '?')}  {lu.get('clone', lu.get('dataset', ''))}" for lu in luns]))


def main() -> None:  # pragma: no cover - convenience for `python -m esxdr.cli.target`
    sys.exit(target())
