"""PURE: a protection group's schedule as cron or systemd units, for each side that runs a job.

Both carry TZ and PATH explicitly (the classic cron pitfalls). The command writes the files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from esxdr import templating
from esxdr.errors import UsageError

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Schedule

DOW = {"0": "Sun", "1": "Mon", "2": "Tue", "3": "Wed", "4": "Thu", "5": "Fri", "6": "Sat", "7": "Sun"}


def cron_of(schedule: Schedule) -> str:
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


def jobs(groups: list[ProtectionGroup], side: str = "source") -> list[dict]:
    """One job per group: its cron expression, systemd OnCalendar value, timezone and command."""
    out = []
    for g in groups:
        name = g.name
        cron = cron_of(g.schedule)
        describe = f"every {g.schedule.every_seconds}s" if g.schedule.every_seconds else f"cron {cron}"
        # DR's own retention (DR behind esxdr serve) runs on the DR box, on the replication's schedule;
        # so do both halves of pull mode
        command = SIDES[side][0].format(group=name)
        out.append({"group": name, "cron": cron, "describe": f"{describe} ({g.schedule.timezone})",
                     "on_calendar": on_calendar(cron, g.schedule.timezone), "timezone": g.schedule.timezone,
                     "command": command})
    return out


def unit_files(kind: str, groups: list[ProtectionGroup], side: str, *, site_path: str, state_dir: str,
               esxdr_bin: str, user: str) -> dict[str, str]:
    """File name → text: one /etc/cron.d file (``kind`` cron), or a .service and a .timer per group."""
    todo = jobs(groups, side)
    _command, what, unit, cron_file, log_suffix = SIDES[side]
    common = {"path": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "site": site_path,
              "esxdr": esxdr_bin, "what": what, "side_flag": "" if side == "source" else f" --side {side}",
              "log_suffix": log_suffix}
    files: dict[str, str] = {}
    if kind == "cron":
        tzs = {j["timezone"] for j in todo}
        if len(tzs) > 1:
            raise UsageError("cron files carry one timezone; these groups use several: " + ", ".join(sorted(tzs)),
                             hint="render per group with --group, or use --systemd")
        files[cron_file] = templating.render("cron.j2", **common, jobs=todo, timezone=todo[0]["timezone"], user=user,
                                             log_dir=f"{state_dir}/logs")
    else:
        for j in todo:
            files[f"esxdr-{unit}-{j['group']}.service"] = templating.render("systemd.service.j2", **common, job=j,
                                                                           timezone=j["timezone"])
            files[f"esxdr-{unit}-{j['group']}.timer"] = templating.render("systemd.timer.j2", **common, job=j)
    return files
