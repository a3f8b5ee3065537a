"""esxdr schedule render --cron|--systemd: the replication schedule as cron or systemd units."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import UsageError
from esxdr.plan.schedule import SIDES, unit_files


@click.group()
def schedule() -> None:
    """Render the replication schedule for cron or systemd."""


@schedule.command(epilog="""\b
Examples:
  esxdr schedule render --cron > /etc/cron.d/esxdr
  esxdr schedule render --systemd --out /etc/systemd/system && systemctl daemon-reload
  esxdr schedule render --cron --side dr > /etc/cron.d/esxdr-dr     on the DR box: its own retention
  esxdr schedule render --cron --side snapshot      pull mode, on production: snapshots and retention
  esxdr schedule render --cron --side pull --site dr-site.yaml      pull mode, on the DR box
""")
@click.option("--cron", "kind", flag_value="cron", help="One /etc/cron.d file.")
@click.option("--systemd", "kind", flag_value="systemd", help="A .service and .timer per group.")
@click.option("--group", "group", help="Only this protection group.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Write files here instead of stdout.")
@click.option("--user", default="root", show_default=True, help="cron: the user the job runs as.")
@click.option("--side", type=click.Choice(list(SIDES)), default="source", show_default=True,
              help="source: replication, on production. dr: DR's own retention (`prune --side dr`), on the DR box. "
                   "Pull mode: snapshot (`replicate --snapshot-only`, on production), pull (`replicate --pull`, "
                   "on the DR box).")
@json_option
@site_option
@pass_ctx
def render(ctx: Context, kind: str | None, group: str | None, out_dir: str | None, user: str, side: str) -> None:
    """Print cron or systemd units with TZ and PATH set explicitly (the classic cron pitfalls)."""
    if kind is None:
        raise UsageError("say which: --cron or --systemd")
    site = ctx.site()
    files = unit_files(kind, [site.group(n) for n in site.group_names(group)], side, site_path=site.path,
                       state_dir=site.state_dir, esxdr_bin=shutil.which("esxdr") or f"{sys.executable} -m esxdr",
                       user=user)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (Path(out_dir) / name).write_text(text)
    ctx.emit({"kind": kind, "files": files},
             "\n".join(f"# ---- {n}\n{t}" if len(files) > 1 else t for n, t in files.items()) if not out_dir
             else "\n".join(str(Path(out_dir) / n) for n in files))
