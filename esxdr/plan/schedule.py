"""PURE: a protection group's schedule as cron or systemd units, for each side that runs a job.

Both carry TZ and PATH explicitly (the classic cron pitfalls). The command writes the files.
"""

from __future__ import annotations

import re
import shlex
from typing import TYPE_CHECKING

from esxdr import templating
from esxdr.errors import UsageError

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Schedule

# cron's names (crontab(5)); their numbers start at the field's minimum: jan = 1, sun = 0
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
SD_WEEK = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")  # systemd's names, in its week's order
# minute, hour, day of month, month: each field's range and names
_FIELDS = ((0, 59, None), (0, 23, None), (1, 31, None), (1, 12, MONTHS))


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


def _number(text: str, lo: int, names: tuple[str, ...] | None) -> int:
    if names and text.lower() in names:
        return names.index(text.lower()) + lo
    if not text.isdigit():
        raise UsageError(f"{text!r} is not a number in a cron expression", hint="check the group's schedule.cron")
    return int(text)


def _range(start: str, end: str, lo: int, names: tuple[str, ...] | None) -> tuple[int, int]:
    a, b = _number(start, lo, names), _number(end, lo, names)
    if b < a:  # cron refuses it too (the site file's check does, before this)
        raise UsageError(f"the cron range {start}-{end} runs backwards", hint="check the group's schedule.cron")
    return a, b


def _sd_field(field: str, lo: int, hi: int, names: tuple[str, ...] | None) -> str:
    """A cron minute, hour, day-of-month or month field in systemd's syntax: ranges ``a..b``, names as
    numbers, and a step from ``*`` starting at the field's minimum (cron's ``*/2`` is days 1, 3, …;
    systemd's ``0/2`` has no day 0 and would mean 2, 4, …)."""
    items = []
    for item in field.split(","):
        base, _, step = item.partition("/")
        if base == "*" and not step:
            return "*"  # the whole range: systemd reads no "*" inside a list
        if base == "*":
            text = str(lo)
        else:
            start, dash, end = base.partition("-")
            text = "..".join(map(str, _range(start, end, lo, names))) if dash else str(_number(start, lo, names))
        # "a/n" (no range): a, a+n, … up to the field's end in both
        items.append(f"{text}/{int(step)}" if step else text)
    return ",".join(items)


def _weekdays(field: str) -> set[int]:
    """A cron day-of-week field as the days it means (0 = Sunday), by cron's rules: 0 and 7 are Sunday,
    ``*`` is 0-7, a step counts from the start of its range, ``a/n`` runs to 7."""
    days: set[int] = set()
    for item in field.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            a, b = 0, 7
        else:
            start, dash, end = base.partition("-")
            a = _number(start, 0, WEEKDAYS)
            b = _range(start, end, 0, WEEKDAYS)[1] if dash else 7 if step else a
        days.update(d % 7 for d in range(a, b + 1, int(step or 1)))
    return days


def _sd_weekdays(days: set[int]) -> str:
    """Days (0 = Sunday) as a comma list of systemd names in its Monday-first week, runs of three or
    more as ``a..b``: systemd reads no weekday step, no number and no range that wraps past Sunday."""
    week = [d in days for d in (1, 2, 3, 4, 5, 6, 0)]
    parts: list[str] = []
    i = 0
    while i < 7:
        if not week[i]:
            i += 1
            continue
        j = i
        while j + 1 < 7 and week[j + 1]:
            j += 1
        parts += [f"{SD_WEEK[i]}..{SD_WEEK[j]}"] if j - i >= 2 else SD_WEEK[i:j + 1]
        i = j + 1
    return ",".join(parts)


def on_calendar(cron: str, timezone: str) -> list[str]:
    """A five-field cron expression as systemd OnCalendar values (with the timezone), one per line.

    Usually one. When both the day of month and the day of week are restricted (neither field starts
    with ``*``), cron runs on a day that matches EITHER (crontab(5)), but one OnCalendar value requires
    BOTH: then there are two, the days of the month and the days of the week, and the timer triggers
    on each.
    """
    fields = cron.split()
    if len(fields) != 5:
        raise UsageError(f"cron expression {cron!r} does not have 5 fields", hint="check the group's schedule.cron")
    minute, hour, dom, month = (_sd_field(f, *spec) for f, spec in zip(fields[:4], _FIELDS, strict=True))
    days = _weekdays(fields[4])
    weekdays = _sd_weekdays(days) + " " if len(days) < 7 else ""
    time = f"{hour}:{minute}:00 {timezone}"
    if fields[2].startswith("*") or fields[4].startswith("*"):
        return [f"{weekdays}*-{month}-{dom} {time}"]
    either = [f"*-{month}-{dom} {time}", f"{weekdays}*-{month}-* {time}"]
    return list(dict.fromkeys(either))  # the same value twice (both fields the whole range) is one


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


def _cron_word(text: str) -> str:
    """``text`` as one shell word on a crontab command line.

    cron hands the line to /bin/sh, but first ends the command at an unescaped ``%`` (the rest
    becomes stdin) and drops the backslash of ``\\%`` (crontab(5)). So the word is quoted for the
    shell, each of its own backslashes is followed by a quote break (``\\''``, the same string to sh)
    so that it never escapes the next character for cron, and each ``%`` is written ``\\%``.
    """
    return shlex.quote(text).replace("\\", "\\''").replace("%", "\\%")


def _cron_program(esxdr_bin: str) -> str:
    # the command's fallback when no esxdr script is on PATH is "<python> -m esxdr": two words
    head, sep, tail = esxdr_bin.rpartition(" -m ")
    if sep and tail == "esxdr":
        return f"{_cron_word(head)} -m esxdr"
    return _cron_word(esxdr_bin)


_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


def unit_files(kind: str, groups: list[ProtectionGroup], side: str, *, site_path: str, state_dir: str,
               esxdr_bin: str, user: str) -> dict[str, str]:
    """File name → text: one /etc/cron.d file (``kind`` cron), or a .service and a .timer per group."""
    todo = jobs(groups, side)
    if not todo:
        raise UsageError("no protection group to schedule", hint="add one to the site file")
    for label, value in (("site file path", site_path), ("state_dir", state_dir), ("esxdr program", esxdr_bin)):
        # a crontab entry and a unit file setting are one line each: no quoting carries a line break
        if "\n" in value or "\r" in value:
            raise UsageError(f"the {label} {value!r} has a line break; a schedule line cannot carry it",
                             hint="move it to a path without one")
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
        if not _USER.fullmatch(user):
            raise UsageError(f"{user!r} is not a user name cron can read", hint="give --user a plain login name")
        log_dir = f"{state_dir}/logs"
        # cron.j2 writes each path as the shell word _cron_word() makes of it
        sh = {"site": _cron_word(site_path), "esxdr": _cron_program(esxdr_bin), "log_dir": _cron_word(log_dir)}
        cron_jobs = [{**j, "command": " ".join(map(_cron_word, j["command"].split())),
                      "log": _cron_word(f"{log_dir}/{j['group']}{log_suffix}.log")} for j in todo]
        files[cron_file] = templating.render("cron.j2", **common, jobs=cron_jobs, timezone=todo[0]["timezone"],
                                             user=user, sh=sh)
    else:
        for j in todo:
            files[f"esxdr-{unit}-{j['group']}.service"] = templating.render("systemd.service.j2", **common, job=j,
                                                                           timezone=j["timezone"])
            files[f"esxdr-{unit}-{j['group']}.timer"] = templating.render("systemd.timer.j2", **common, job=j)
    return files
