"""`esxdr schedule render --systemd`: the units it writes pass `systemd-analyze verify` (systemd's own
parser of unit files, calendar specifications and ExecStart lines), for every side and the schedule
forms a site file may hold."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from esxdr.cli.main import run
from esxdr.plan.schedule import SIDES, on_calendar

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"

GROUP = """\
  {name}:
    source: ss1
    destination: ss2
    source_root: sp1/{name}
    dr_root: rp1/{name}
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 2d
    schedule: {schedule}
"""
# each form on_calendar() turns into OnCalendar: intervals that divide an hour or a day, cron
# steps, ranges, lists, weekday names and numbers (7 = Sunday), time zones
SCHEDULES = {
    "quarter": "{every: 15m}",
    "hourly": "{every: 1h}",
    "four-hours": "{every: 4h, timezone: Europe/Berlin}",
    "daily": "{every: 1d, timezone: America/New_York}",
    "weekdays": '{cron: "15 */4 * * mon-fri", timezone: Europe/Zurich}',
    "lists": '{cron: "5,35 1-5 1,15 1-6 1,3,5"}',
    "sunday": '{cron: "30 2 * * 7", timezone: Asia/Kolkata}',
    "stepped": '{cron: "*/20 0-12/3 * * *"}',
}


def verify(unit_dir: Path) -> None:
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.fail("systemd-analyze is missing: scripts/setup installs Debian's systemd package")
    units = sorted(unit_dir.glob("*.service")) + sorted(unit_dir.glob("*.timer"))
    assert units
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, units)], capture_output=True, text=True)
    # a warning ("Unknown key …, ignoring") is a defect too, though systemd starts the unit anyway
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr


def _site(directory: Path, schedules: dict[str, str]) -> Path:
    directory.mkdir(parents=True)
    (directory / "id").write_text("key\n")
    (directory / "id").chmod(0o600)
    text = ("version: 1\nname: lab\nstate_dir: state\nstorage:\n  ss1: {role: production, local: true}\n"
            "  ss2: {role: dr, address: 127.0.0.2, user: esxdr, key: id,\n"
            "        host_key: SHA256:HYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw}\nprotection_groups:\n")
    text += "".join(GROUP.format(name=n, schedule=s) for n, s in schedules.items())
    (directory / "site.yaml").write_text(text)
    return directory / "site.yaml"


@pytest.mark.parametrize("side", sorted(SIDES))
def test_every_rendered_unit_passes_systemd_analyze_verify(tmp_path, capsys, side):
    # a site path with a space and a % (systemd would read "%x" as a specifier): quoted and escaped
    site = _site(tmp_path / "site files 100%x", SCHEDULES)
    out = tmp_path / "units"
    assert run(["--site", str(site), "schedule", "render", "--systemd", "--side", side, "--out", str(out)]) == 0
    capsys.readouterr()
    assert len(list(out.glob("*.timer"))) == len(SCHEDULES) == len(list(out.glob("*.service")))
    verify(out)
    for service in out.glob("*.service"):
        (line,) = [ln for ln in service.read_text().splitlines() if ln.startswith("ExecStart=")]
        argv = shlex.split(line.removeprefix("ExecStart=").replace("%%", "%"))
        assert Path(argv[0]).exists()  # what verify checks too: the program is there and executable
        assert argv[argv.index("--site") + 1] == str(site)


def test_a_unit_run_by_an_esxdr_binary_in_a_percent_directory_verifies(tmp_path):
    from esxdr.plan.schedule import unit_files
    from esxdr.site import load_site

    site = load_site(_site(tmp_path / "site", {"hourly": "{every: 1h}"}))
    esxdr = tmp_path / "venv-2%" / "esxdr"  # a console script in a directory with a % in its name
    esxdr.parent.mkdir()
    esxdr.write_text("#!/bin/sh\n")
    esxdr.chmod(0o755)
    files = unit_files("systemd", list(site.protection_groups.values()), "source", site_path=site.path,
                       state_dir=site.state_dir, esxdr_bin=str(esxdr), user="root")
    (tmp_path / "units").mkdir()
    for name, text in files.items():
        (tmp_path / "units" / name).write_text(text)
    verify(tmp_path / "units")


# cron forms systemd reads differently: day and month steps from 1, month names, weekday steps and
# names, ranges through Sunday (0 and 7), and both day fields restricted (cron: either one)
CRON_FORMS = ["0 3 */2 * *", "0 3 1 */3 *", "0 3 1 jan-mar *", "0 3 * * */2", "0 3 * * 0-2", "0 3 * * 1-5/2",
              "0 3 1,15 * 1", "30 4 1-7 * mon", "0 0 5/10 feb,aug sun-tue", "0 3 * * 1/2", "0 12 13 * 5",
              "0 3 */2 * 1", "0 3 * * 4-7", "0 3 1-31 * 1"]


@pytest.mark.parametrize("cron", CRON_FORMS)
def test_cron_forms_pass_systemd_analyze_verify(tmp_path, capsys, cron):
    site = _site(tmp_path / "site", {"odd": f'{{cron: "{cron}"}}'})
    assert run(["--site", str(site), "schedule", "render", "--systemd", "--out", str(tmp_path / "units")]) == 0
    capsys.readouterr()
    verify(tmp_path / "units")
    timer = (tmp_path / "units" / "esxdr-replicate-odd.timer").read_text()
    restricted = not cron.split()[2].startswith("*") and not cron.split()[4].startswith("*")
    assert timer.count("OnCalendar=") == (2 if restricted else 1), timer


# ---------------------------------------------------------------- what systemd makes of it


MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
BASE = datetime(2027, 1, 1, 0, 0, 30)  # UTC; half a minute past, so "next" is the same for both
RUNS = 25


def _cron_values(field: str, lo: int, hi: int, names: list[str] | None = None) -> set[int]:
    def number(s: str) -> int:
        return names.index(s.lower()) + lo if names and s.lower() in names else int(s)

    out: set[int] = set()
    for item in field.split(","):
        base, _, step = item.partition("/")
        if base == "*":
            a, b = lo, hi
        else:
            start, dash, end = base.partition("-")
            a = number(start)
            b = number(end) if dash else hi if step else a  # "a/n": a to the end (cronie)
        out.update(range(a, b + 1, int(step or 1)))
    return out


def cron_runs(cron: str, n: int) -> list[datetime]:
    """The next n times cron runs ``cron`` after BASE, by crontab(5): day of week 0-7 (0 and 7 are
    Sunday); a day matches both day fields, or either when neither field starts with "*"."""
    minute, hour, dom, month, dow = cron.split()
    minutes, hours = sorted(_cron_values(minute, 0, 59)), sorted(_cron_values(hour, 0, 23))
    doms, months = _cron_values(dom, 1, 31), _cron_values(month, 1, 12, MONTHS)
    dows = {d % 7 for d in _cron_values(dow, 0, 7, DAYS)}
    either = not dom.startswith("*") and not dow.startswith("*")
    out: list[datetime] = []
    day = BASE.date()
    while len(out) < n:
        on_dom, on_dow = day.day in doms, day.isoweekday() % 7 in dows
        if day.month in months and ((on_dom or on_dow) if either else (on_dom and on_dow)):
            out += [t for h in hours for m in minutes if (t := datetime(day.year, day.month, day.day, h, m)) > BASE]
        day += timedelta(days=1)
    return out[:n]


def systemd_runs(calendars: list[str], n: int) -> list[datetime]:
    """The next n times a timer with these OnCalendar= values elapses after BASE, as systemd computes them."""
    if not Path(SYSTEMD_ANALYZE).exists():
        pytest.fail("systemd-analyze is missing: scripts/setup installs Debian's systemd package")
    r = subprocess.run([SYSTEMD_ANALYZE, "calendar", f"--iterations={n}", f"--base-time={BASE:%Y-%m-%d %H:%M:%S} UTC",
                        *calendars], capture_output=True, text=True, env={**os.environ, "TZ": "UTC"})
    assert r.returncode == 0, r.stdout + r.stderr
    found = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", r.stdout)
    assert len(found) == n * len(calendars), r.stdout
    return sorted({datetime.fromisoformat(t) for t in found})[:n]


@pytest.mark.parametrize("cron", CRON_FORMS + [s.split('"')[1] for s in SCHEDULES.values() if "cron" in s])
def test_systemd_runs_a_timer_when_cron_would(cron):
    calendars = on_calendar(cron, "UTC")
    assert systemd_runs(calendars, RUNS) == cron_runs(cron, RUNS), calendars
