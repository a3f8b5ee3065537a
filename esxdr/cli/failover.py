"""`esxdr failover`, `esxdr reprotect`, `esxdr failback`: the bad day, and the way home."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option


def _emit_run(ctx: Context, rec, dry_run: bool) -> None:
    from esxdr.recovery.failover import summary

    if dry_run:
        assert rec.runbook is not None
        at = f"@{rec.snapshot}" if rec.snapshot else "the final snapshot"
        ctx.emit(rec.to_dict(), f"{rec.group}: {rec.mode} {rec.kind} runbook at {at} "
                                f"(identities: {rec.manifest_origin})\n{rec.runbook.render()}")
        return
    ctx.emit(rec.to_dict(), summary(rec))


def _hand_off(ctx: Context, group: str | None, dry_run: bool, *, reverse: bool) -> None:
    from esxdr.recovery.handoff import HandOff, handoff_summary

    rec = HandOff(ctx.site(), group, say=ctx.info, reverse=reverse).run(dry_run=dry_run)
    if dry_run:
        assert rec.runbook is not None
        ctx.emit(rec.to_dict(), f"{rec.group}: {rec.kind} runbook\n{rec.runbook.render()}")
    else:
        ctx.emit(rec.to_dict(), handoff_summary(rec))


@click.command(epilog="""\b
Examples:
  esxdr failover core --planned --dry-run   the runbook, step by step with reasons
  esxdr failover core --planned             shut production down, final replication, switch to DR
  esxdr failover core --disaster            production is gone: recover the newest DR snapshot
  esxdr failover core --disaster --point esxdr_core_20261201T020000Z --force
  esxdr failover core --planned --hand-off  pull mode, ON PRODUCTION: stop the VMs, final
                                            snapshot, remove the LUNs; then --planned on DR
Run it on the DR box (the DR storage server is local: true there), except --hand-off. In
pull mode (DR reaches production through a send-only account) a planned failover pulls the
snapshot production handed off, and refuses until production has. Re-running after an
interruption continues where it stopped. Exit 3: the split-brain guard found production
still serving the LUNs (the message names the NAA and the portal).
""")
@click.argument("group", required=False)
@click.option("--planned", "mode", flag_value="planned", help="Production is up: stop it cleanly, nothing is lost.")
@click.option("--disaster", "mode", flag_value="disaster", help="Production is unreachable: use the DR snapshots.")
@click.option("--point", default="latest", show_default=True, metavar="latest|SNAPSHOT",
              help="--disaster: the DR snapshot to recover (an older one needs --force).")
@click.option("--force", is_flag=True, help="Go on despite the split-brain guard / discard newer snapshots.")
@click.option("--manifest", "manifest_path", metavar="FILE",
              help="Production target manifest (default: shipped with the replica).")
@click.option("--hand-off", "hand_off", is_flag=True,
              help="Pull mode, on production: its half of --planned (stop the VMs, final snapshot, remove the LUNs).")
@click.option("--dry-run", is_flag=True, help="Print the runbook; change nothing.")
@json_option
@site_option
@pass_ctx
def failover(ctx: Context, group: str | None, mode: str | None, point: str, force: bool, manifest_path: str | None,
             hand_off: bool, dry_run: bool) -> None:
    """Bring the replicated datastores online on the DR host and boot the VMs by priority."""
    from esxdr.errors import UsageError
    from esxdr.recovery.failover import Failover

    if mode is None:
        raise UsageError("say which failover: --planned (production is up) or --disaster (it is gone)")
    if hand_off:
        if mode != "planned" or force or manifest_path or point != "latest":
            raise UsageError("--hand-off is production's half of a planned failover: pass --planned alone with it")
        _hand_off(ctx, group, dry_run, reverse=False)
        return
    f = Failover(ctx.site(), group, say=ctx.info)
    _emit_run(ctx, f.run(mode, point=point, force=force, dry_run=dry_run, manifest_path=manifest_path), dry_run)


@click.command(epilog="""\b
Examples:
  esxdr reprotect core --dry-run    what production loses: snapshots and writes after the common one
  esxdr reprotect core --yes        roll production back, replicate DR → production
  esxdr reprotect core --pull --yes --site production-home.yaml
                                    pull mode, ON PRODUCTION: roll back, pull from DR's send-only account
""")
@click.argument("group", required=False)
@click.option("--dry-run", is_flag=True, help="Show the evidence; change nothing.")
@click.option("--yes", is_flag=True, help="Confirm the rollback of production.")
@click.option("--pull", is_flag=True,
              help="Pull mode's way home, on production: pull from DR's send-only account.")
@json_option
@site_option
@pass_ctx
def reprotect(ctx: Context, group: str | None, dry_run: bool, yes: bool, pull: bool) -> None:
    """After failover: make production the replica of DR (rollback to the common snapshot, then DR → production)."""
    from esxdr.recovery.reprotect import Reprotect, reprotect_summary

    out = Reprotect(ctx.site(), group, say=ctx.info, pull=pull).run(yes=yes, dry_run=dry_run)
    ctx.emit(out, reprotect_summary(out))


@click.command(epilog="""\b
Examples:
  esxdr failback core --planned --dry-run
  esxdr failback core --planned     stop the DR VMs, final DR → production, boot at home
Pull mode (production reaches DR through a send-only account), after reprotect on production:
  esxdr failback core --planned --hand-off   ON THE DR BOX: stop the DR VMs, final snapshot,
                                             remove DR's LUNs, seal the DR datasets
  esxdr failback core --planned --pull       then ON PRODUCTION: pull it, guard, boot at home
""")
@click.argument("group", required=False)
@click.option("--planned", is_flag=True, help="Required: failback is always a planned migration.")
@click.option("--force", is_flag=True, help="Go on despite the split-brain guard.")
@click.option("--hand-off", "hand_off", is_flag=True,
              help="Pull mode, on the DR box: its half of the failback (stop, final snapshot, unpresent, seal).")
@click.option("--pull", is_flag=True,
              help="Pull mode, on production: pull the DR box's hand-off from its send-only account, boot at home.")
@click.option("--dry-run", is_flag=True, help="Print the runbook; change nothing.")
@json_option
@site_option
@pass_ctx
def failback(ctx: Context, group: str | None, planned: bool, force: bool, hand_off: bool, pull: bool,
             dry_run: bool) -> None:
    """Planned migration back to production after reprotect (the failover machinery, reversed)."""
    from esxdr.errors import UsageError
    from esxdr.recovery.failover import Failover

    if not planned:
        raise UsageError("failback is a planned migration: pass --planned")
    if hand_off:
        if force or pull:
            raise UsageError("--hand-off is the DR box's half; --pull and --force belong to production's")
        _hand_off(ctx, group, dry_run, reverse=True)
        return
    f = Failover(ctx.site(), group, say=ctx.info, reverse=True, pull=pull)
    _emit_run(ctx, f.run("planned", force=force, dry_run=dry_run), dry_run)
