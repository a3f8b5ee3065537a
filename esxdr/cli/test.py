"""`esxdr test`: validation drills — recover a snapshot beside production, prove it boots, clean up."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option


@click.group(help="""Validation drills: boot a replicated snapshot on the DR host, isolated, while
replication goes on; then clean up without a trace.

\b
Examples:
  esxdr test start core --dry-run          the runbook, step by step with reasons
  esxdr test start core                    clone @latest, present, mount, boot by priority
  esxdr test start core --point esxdr_core_20261201T020000Z
  esxdr test start core --new-naa          new LUN identities + resignature (host sees the replica too)
  esxdr test cleanup core                  power off, unregister, unpresent, destroy the clones
  esxdr report open                        the drill's HTML report
""")
def test() -> None:
    pass


@test.command(epilog="""\b
Examples:
  esxdr test start core --dry-run
  esxdr test start core --point latest
  esxdr test start core --json > drill.json
Re-running after an interruption continues where the drill stopped.
""")
@click.argument("group", required=False)
@click.option("--point", default="latest", show_default=True, metavar="latest|SNAPSHOT",
              help="The DR snapshot to recover (name with or without dataset@).")
@click.option("--new-naa", is_flag=True, help="Present the clones with new NAAs and resignature the volumes.")
@click.option("--manifest", "manifest_path", metavar="FILE",
              help="Production target manifest (default: shipped with the replica, else the lab's, else the site's NAAs).")
@click.option("--dry-run", is_flag=True, help="Print the runbook; change nothing.")
@json_option
@site_option
@pass_ctx
def start(ctx: Context, group: str | None, point: str, new_naa: bool, manifest_path: str | None,
          dry_run: bool) -> None:
    """Start a drill: clone, present (same NAA), mount as-is, register, isolate, boot, verify."""
    from esxdr.recovery.drill import Drill, summary

    d = Drill(ctx.site(), group, say=ctx.info)
    rec = d.start(point=point, new_naa=new_naa, dry_run=dry_run, manifest_path=manifest_path)
    if dry_run:
        assert rec.runbook is not None
        ctx.emit(rec.to_dict(), f"{rec.group}: drill runbook at @{rec.snapshot} "
                                f"(identities: {rec.manifest_origin})\n{rec.runbook.render()}")
        return
    ctx.emit(rec.to_dict(), summary(rec))


@test.command(epilog="""\b
Examples:
  esxdr test cleanup core --dry-run
  esxdr test cleanup core
Safe to run at any time, also after a crashed or partial start; a second run finds nothing.
""")
@click.argument("group", required=False)
@click.option("--dry-run", is_flag=True, help="Print what would be removed; change nothing.")
@json_option
@site_option
@pass_ctx
def cleanup(ctx: Context, group: str | None, dry_run: bool) -> None:
    """End a drill: power off and unregister its VMs, remove the clone presentation, destroy the clones."""
    from esxdr.recovery.drill import Drill, summary

    d = Drill(ctx.site(), group, say=ctx.info)
    rec = d.cleanup(dry_run=dry_run)
    assert rec.runbook is not None
    if dry_run or rec.runbook.empty:
        ctx.emit(rec.to_dict(), rec.runbook.render() if not rec.runbook.empty
                 else f"{rec.group}: no drill left to clean up")
        return
    ctx.emit(rec.to_dict(), summary(rec))
