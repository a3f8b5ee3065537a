"""esxdr replicate / snapshots / prune."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import UsageError

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Site


@click.command(epilog="""\b
Examples:
  esxdr replicate core --dry-run      show the snapshot and every stream it would send
  esxdr replicate core                snapshot, send, hold, prune
  esxdr replicate --no-snapshot       only send snapshots that already exist
  esxdr replicate core --rollback-dr  accept losing DR-side changes after a conflict

\b
Pull mode (production holds no key to DR):
  esxdr replicate core --snapshot-only   on production: snapshot, publish the manifest, prune
  esxdr replicate core --pull            on DR: fetch production's new snapshots
""")
@click.argument("group", required=False)
@click.option("--dry-run", is_flag=True, help="Describe the plan; change nothing.")
@click.option("--rollback-dr", is_flag=True,
              help="Allow destroying DR-side changes or DR-only snapshots to resolve a conflict. With DR behind "
                   "esxdr serve this runs with DR's own privileges: on the DR box.")
@click.option("--no-snapshot", is_flag=True, help="Do not take a new snapshot; send what exists.")
@click.option("--no-prune", is_flag=True, help="Skip retention after replicating.")
@click.option("--pull", is_flag=True,
              help="Run on the DR box: read production through its `esxdr serve --send-only` account and receive "
                   "here. Production takes its own snapshots (--snapshot-only) and prunes itself.")
@click.option("--snapshot-only", is_flag=True,
              help="Pull mode, on production: take the group's snapshot, publish the target manifest for DR, "
                   "prune production. Sends nothing.")
@json_option
@site_option
@pass_ctx
def replicate(ctx: Context, group: str | None, dry_run: bool, rollback_dr: bool, no_snapshot: bool,
              no_prune: bool, pull: bool, snapshot_only: bool) -> None:
    """Snapshot a protection group atomically and send it to the DR side.

    The stream path is chosen per dataset by snapshot guid: a full stream for a
    new dataset, an incremental from the newest common snapshot otherwise. A DR
    dataset that was modified, diverged or is unrelated stops the run with exit
    code 3 and the evidence; nothing is overwritten without --rollback-dr.
    """
    from esxdr.replication import Engine, Options, summary_text

    if snapshot_only and (pull or no_snapshot or rollback_dr):
        other = "--pull" if pull else "--no-snapshot" if no_snapshot else "--rollback-dr"
        raise UsageError(f"--snapshot-only and {other} do not go together",
                         hint="--snapshot-only runs on production and sends nothing; --pull and --rollback-dr "
                              "run on the DR box")
    if pull and no_snapshot:
        raise UsageError("--pull never takes a snapshot: --no-snapshot is implied",
                         hint=f"esxdr replicate {group or 'GROUP'} --pull")
    results = []
    for name in ctx.site().group_names(group):
        opts = Options(dry_run=dry_run, rollback_dr=rollback_dr, take_snapshot=not no_snapshot,
                       prune=not no_prune, progress=ctx.verbosity >= 0 and not ctx.json, say=ctx.info,
                       pull=pull, snapshot_only=snapshot_only)
        results.append(Engine(ctx.site(), name, opts).run())
    ctx.emit([r.to_dict() for r in results] if len(results) > 1 else results[0].to_dict(),
             "\n".join(summary_text(r) for r in results))


def entry_names(ds) -> set[str]:  # esxdr.model.Dataset | None
    return {x.name for x in ds.snapshots} if ds else set()


@click.command(epilog="""\b
Examples:
  esxdr snapshots core
  esxdr snapshots --json
""")
@click.argument("group", required=False)
@json_option
@site_option
@pass_ctx
def snapshots(ctx: Context, group: str | None) -> None:
    """List each dataset's snapshots on both sides, marking the common one."""
    from esxdr.plan.replication import common_snapshot
    from esxdr.replication.sides import open_side

    site = ctx.site()
    data = []
    lines = []
    for name in ctx.site().group_names(group):
        g = site.protection_groups[name]
        src, dst = open_side(site, g.source), open_side(site, g.destination)
        try:
            s_obs, d_obs = src.zfs.observe([g.source_root]), dst.zfs.observe([g.dr_root])
        finally:
            src.transport.close()
            dst.transport.close()
        from esxdr.replication.consistency import consistency_by_snapshot

        levels = {**consistency_by_snapshot(d_obs), **consistency_by_snapshot(s_obs)}
        for ds in g.datasets:
            s, d = s_obs.get(ds), d_obs.get(g.dr_dataset(ds))
            pair = common_snapshot(s, d) if s and d else None
            entry = {
                "group": name, "source": ds, "dest": g.dr_dataset(ds),
                "source_snapshots": [x.name for x in s.snapshots] if s else None,
                "dr_snapshots": [x.name for x in d.snapshots] if d else None,
                "common": pair[0].name if pair else None,
                "consistency": {n: levels[n] for n in sorted(entry_names(s) | entry_names(d)) if n in levels},
            }
            data.append(entry)
            lines.append(f"{ds} → {g.dr_dataset(ds)}")
            names = sorted({*(entry["source_snapshots"] or []), *(entry["dr_snapshots"] or [])},
                           key=lambda n: next((x.createtxg for x in (s.snapshots if s else []) if x.name == n),
                                              next((x.createtxg for x in (d.snapshots if d else [])
                                                    if x.name == n), 0)))
            for n in names:
                on_s = "S" if n in (entry["source_snapshots"] or []) else "-"
                on_d = "D" if n in (entry["dr_snapshots"] or []) else "-"
                mark = "  ← common" if n == entry["common"] else ""
                level = f"  [{levels[n]}]" if n in levels else ""
                lines.append(f"  {on_s}{on_d} @{n}{level}{mark}")
    ctx.emit(data, "\n".join(lines))


@click.command(epilog="""\b
Examples:
  esxdr prune --dry-run              every snapshot with keep/destroy and the reason
  esxdr prune core
  esxdr prune core --side dr         on the DR box: DR's own retention (DR behind esxdr serve)
""")
@click.argument("group", required=False)
@click.option("--side", type=click.Choice(["both", "source", "dr"]), default="both", show_default=True,
              help="Which side to prune. A DR behind esxdr serve is pruned only on the DR box itself.")
@click.option("--dry-run", is_flag=True, help="Show the decisions; destroy nothing.")
@json_option
@site_option
@pass_ctx
def prune(ctx: Context, group: str | None, side: str, dry_run: bool) -> None:
    """Apply the retention rules of each side (only esxdr's snapshots, never the common one).

    A DR reached through esxdr serve (its storage server has serve_prefix) refuses release and
    destroy through the replication key, so that a compromised production box cannot shorten
    the DR retention window. Its retention runs on the DR box: `esxdr prune GROUP --side dr`
    there, from DR's view alone (each replica keeps its newest snapshot, the next base).
    """
    from contextlib import nullcontext

    from esxdr.lock import GroupLock
    from esxdr.replication import dr_side_site, prune_dr_side

    site = ctx.site()
    data: list[dict] = []
    lines: list[str] = []
    for name in site.group_names(group):
        g = site.protection_groups[name]
        guarded = site.storage_server(g.destination).behind_serve
        with nullcontext() if dry_run else GroupLock(site.state_dir, name):
            if side != "dr":
                _prune_through(site, g, ("source",) if guarded or side == "source" else ("source", "dr"),
                               dry_run, ctx, data, lines)
            if side != "source" and guarded:
                try:
                    dsite = dr_side_site(site, g, "esxdr prune --side dr", "release or destroy DR snapshots")
                except UsageError:
                    if side == "dr":
                        raise
                    lines.append(f"{g.destination}: pruned on the DR box itself (esxdr prune {name} --side dr there)")
                    continue
                res = prune_dr_side(dsite, g, dry_run=dry_run)
                for dec in res.decisions:
                    entry = {"group": name, "side": g.destination, **dec.to_dict()}
                    if dec.snapshot.full_name in res.kept:
                        entry["kept_because"] = res.kept[dec.snapshot.full_name]
                    data.append(entry)
                    if ctx.verbosity > 0 or not dec.keep:
                        lines.append(f"{g.destination}: {'keep   ' if dec.keep else 'destroy'} "
                                     f"{dec.snapshot.full_name}  ({'; '.join(dec.reasons)})")
                for snap, why in res.kept.items():
                    lines.append(f"{g.destination}: kept {snap}: {why}")
                doomed = sum(1 for d in res.decisions if not d.keep)
                lines.append(f"{g.destination}: {doomed if dry_run else len(res.destroyed)} snapshot(s) "
                             f"{'to prune' if dry_run else 'pruned'}")
    ctx.emit(data, "\n".join(lines))


def _prune_through(site: Site, g: ProtectionGroup, which: tuple[str, ...], dry_run: bool, ctx: Context,
                   data: list[dict], lines: list[str]) -> None:
    """Prune the named sides as the site reaches them, with replication's own retention pass:
    each dataset protects the snapshot it shares with the other side."""
    from esxdr.replication.prune import apply_prune, plan_prune
    from esxdr.replication.sides import open_side

    src, dst = open_side(site, g.source), open_side(site, g.destination)
    try:
        plans = plan_prune(g, src, dst, src.zfs.observe([g.source_root]), dst.zfs.observe([g.dr_root]), which)
        for p in plans:
            for dec in p.decisions:
                data.append({"group": g.name, "side": p.side, **dec.to_dict()})
                if ctx.verbosity > 0 or not dec.keep:
                    lines.append(f"{p.side}: {'keep   ' if dec.keep else 'destroy'} "
                                 f"{dec.snapshot.full_name}  ({'; '.join(dec.reasons)})")
        if not dry_run:
            apply_prune(g.name, plans, [src, dst], ctx.info)
        for p in plans:
            lines.append(f"{p.side}: {len(p.doomed)} snapshot(s) {'to prune' if dry_run else 'pruned'}")
    finally:
        src.transport.close()
        dst.transport.close()
