"""esxdr schedule render --cron|--systemd: the replication schedule as cron or systemd units."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click

from esxdr import templating
from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import UsageError

DOW = {"0": "Sun", "1": "Mon", "2": "Tue", "3": "Wed", "4": "Thu", "5": "Fri", "6": "Sat", "7": "Sun"}


def cron_of(schedule) -> str:
    if schedule.cron:
        return schedule.cron
    s = schedule.every_seconds
    if not s:
        raise UsageError("the group has no schedule", hint="add schedule: {every: 1h} to the protection group")
    if s < 3600 and 3600 % s == 0 and s % 60 == 0:
        return f"*/{s // 60} * * * *" if s > 60 else "* * * * *"
    if s < 86400 and 86400 % s == 0 and s % 3600 == 0:
        return f"0 */{s // 3600} * * *" if s > 3600 else "0 * * * *"
    if s == 86400:
        return "0 0 * * *"
    raise UsageError(f"every {s}s cannot be expressed in cron",
                     hint="use an interval that divides an hour or a day, or give a cron expression")


def _sd_field(f: str) -> str:
    if f.startswith("*/"):
        return f"0/{f[2:]}"
    return f.replace("-", "..")


def on_calendar(cron: str, timezone: str) -> str:
    """A five-field cron expression as a systemd OnCalendar value (with its timezone)."""
    minute, hour, dom, month, dow = cron.split()
    days = ""
    if dow != "*":
        parts = []
        for item in dow.split(","):
            a, _, b = item.partition("-")
            parts.append(f"{DOW.get(a, a)}..{DOW.get(b, b)}" if b else DOW.get(a, a))
        days = ",".join(parts) + " "
    return (f"{days}*-{_sd_field(month) if month != '*' else '*'}-{_sd_field(dom) if dom != '*' else '*'} "
            f"{_sd_field(hour) if hour != '*' else '*'}:{_sd_field(minute) if minute != '*' else '*'}:00 {timezone}")


# Per --side: the esxdr command each job runs, what the file says it is, the unit and cron file
# names and the log suffix. Push mode: source (production) and dr (DR's own retention). Pull mode:
# snapshot (production snapshots and prunes itself) and pull (the DR box fetches).
SIDES = {
    "source": ("replicate {group}", "replication", "replicate", "esxdr", ""),
    "dr": ("prune {group} --side dr", "DR retention", "prune-dr", "esxdr-dr", "-dr-prune"),
    "snapshot": ("replicate {group} --snapshot-only", "snapshots (pull mode)", "snapshot", "esxdr-snapshot",
                 "-snapshot"),
    "pull": ("replicate {group} --pull", "pull replication", "pull", "esxdr-pull", "-pull"),
}


def _jobs(site, groups: list[str], side: str = "source") -> list[dict]:
    jobs = []
    for name in groups:
        g = site.protection_groups[name]
        cron = cron_of(g.schedule)
        describe = f"every {g.schedule.every_seconds}s" if g.schedule.every_seconds else f"cron {cron}"
        # DR's own retention (DR behind esxdr serve) runs on the DR box, on the replication's schedule;
        # so do both halves of pull mode
        command = SIDES[side][0].format(group=name)
        jobs.append({"group": name, "cron": cron, "describe": f"{describe} ({g.schedule.timezone})",
                     "on_calendar": on_calendar(cron, g.schedule.timezone), "timezone": g.schedule.timezone,
                     "command": command})
    return jobs


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
    groups = site.group_names(group)
    jobs = _jobs(site, groups, side)
    esxdr_bin = shutil.which("esxdr") or f"{sys.executable} -m esxdr"
    _command, what, unit, cron_file, log_suffix = SIDES[side]
    common = {"path": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "site": site.path,
              "esxdr": esxdr_bin, "what": what, "side_flag": "" if side == "source" else f" --side {side}",
              "log_suffix": log_suffix}
    files: dict[str, str] = {}
    if kind == "cron":
        tzs = {j["timezone"] for j in jobs}
        if len(tzs) > 1:
            raise UsageError("cron files carry one timezone; these groups use several: " + ", ".join(sorted(tzs)),
                             hint="render per group with --group, or use --systemd")
        files[cron_file] = templating.render("cron.j2",
            **common, jobs=jobs, timezone=jobs[0]["timezone"], user=user, log_dir=f"{site.state_dir}/logs")
    else:
        for j in jobs:
            files[f"esxdr-{unit}-{j['group']}.service"] = templating.render("systemd.service.j2",
                **common, job=j, timezone=j["timezone"])
            files[f"esxdr-{unit}-{j['group']}.timer"] = templating.render("systemd.timer.j2", **common, job=j)
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (Path(out_dir) / name).write_text(text)
    ctx.emit({"kind": kind, "files": files},
             "\n".join(f"# ---- {n}\n{t}" if len(files) > 1 else t for n, t in files.items()) if not out_dir
             else "\n".join(str(Path(out_dir) / n) for n in files))
