"""Pure pieces behind status, noise, schedule and progress."""

from __future__ import annotations

import io
from types import SimpleNamespace

import pytest

from esxdr.errors import UsageError
from esxdr.fmt import human_duration
from esxdr.model import Snapshot
from esxdr.plan.schedule import cron_of, on_calendar
from esxdr.progress import Progress
from esxdr.replication.status import change_rate, prometheus_text


@pytest.mark.parametrize("every,cron", [
    (60, "* * * * *"), (900, "*/15 * * * *"), (3600, "0 * * * *"), (4 * 3600, "0 */4 * * *"), (86400, "0 0 * * *"),
])
def test_cron_of_intervals(every, cron):
    assert cron_of(SimpleNamespace(cron=None, every_seconds=every)) == cron


def test_cron_of_refuses_what_cron_cannot_say():
    with pytest.raises(UsageError):
        cron_of(SimpleNamespace(cron=None, every_seconds=7 * 60))
    with pytest.raises(UsageError):
        cron_of(SimpleNamespace(cron=None, every_seconds=None))


@pytest.mark.parametrize("cron,tz,cal", [
    ("0 * * * *", "UTC", ["*-*-* *:0:00 UTC"]),
    ("*/15 2 * * 1-5", "Europe/Berlin", ["Mon..Fri *-*-* 2:0/15:00 Europe/Berlin"]),
    # day and month steps start at 1 (systemd's 0/3 would be months 3, 6, 9, 12)
    ("30 1 1 */3 *", "UTC", ["*-1/3-1 1:30:00 UTC"]),
    ("0 3 */2 * *", "UTC", ["*-*-1/2 3:0:00 UTC"]),
    ("0 3 1 jan-mar *", "UTC", ["*-1..3-1 3:0:00 UTC"]),
    ("0 3 1 JUN,dec *", "UTC", ["*-6,12-1 3:0:00 UTC"]),
    ("0 0-12/3 10-20/5 * *", "UTC", ["*-*-10..20/5 0..12/3:0:00 UTC"]),
    ("0 3 5/10 * *", "UTC", ["*-*-5/10 3:0:00 UTC"]),
    ("0,*/30 3 * * *", "UTC", ["*-*-* 3:0,0/30:00 UTC"]),
    ("* 3,* * * *", "UTC", ["*-*-* *:*:00 UTC"]),  # "*" in a list is the whole field
    # weekdays: listed by name in systemd's Monday-first week; 0 and 7 are Sunday
    ("0 3 * * */2", "UTC", ["Tue,Thu,Sat,Sun *-*-* 3:0:00 UTC"]),
    ("0 3 * * 0-2", "UTC", ["Mon,Tue,Sun *-*-* 3:0:00 UTC"]),
    ("0 3 * * 1-5/2", "UTC", ["Mon,Wed,Fri *-*-* 3:0:00 UTC"]),
    ("0 3 * * 7", "UTC", ["Sun *-*-* 3:0:00 UTC"]),
    ("0 3 * * SAT,sun", "UTC", ["Sat,Sun *-*-* 3:0:00 UTC"]),
    ("0 3 * * 1/2", "UTC", ["Mon,Wed,Fri,Sun *-*-* 3:0:00 UTC"]),  # 1, 3, 5, 7
    ("0 3 * * 5-7", "UTC", ["Fri..Sun *-*-* 3:0:00 UTC"]),
    ("0 3 * * 0-7", "UTC", ["*-*-* 3:0:00 UTC"]),
    # day of month and day of week both restricted: cron runs on either, so two values
    ("0 3 1,15 * 1", "UTC", ["*-*-1,15 3:0:00 UTC", "Mon *-*-* 3:0:00 UTC"]),
    ("0 3 1-7 jan mon", "Asia/Kolkata", ["*-1-1..7 3:0:00 Asia/Kolkata", "Mon *-1-* 3:0:00 Asia/Kolkata"]),
    # one field starting with "*" (even "*/2"): cron requires both, as one value does
    ("0 3 */2 * 1", "UTC", ["Mon *-*-1/2 3:0:00 UTC"]),
    ("0 3 1 * */2", "UTC", ["Tue,Thu,Sat,Sun *-*-1 3:0:00 UTC"]),
])
def test_on_calendar(cron, tz, cal):
    assert on_calendar(cron, tz) == cal


def test_on_calendar_refuses_what_is_not_cron():
    with pytest.raises(UsageError):
        on_calendar("0 3 * *", "UTC")
    with pytest.raises(UsageError):
        on_calendar("0 3 * * xyz", "UTC")
    with pytest.raises(UsageError):
        on_calendar("0 3 * * sat-sun", "UTC")  # backwards, as the site file's check says


def test_prometheus_text():
    rows = [{"group": "core", "rpo_seconds": 252.0, "rpo_target_seconds": 14400, "ok": True,
             "last_run": {"bytes": 1024, "seconds": 41.023, "finished": "2027-01-15T08:00:00+00:00"},
             "dr_retention": {"pruned_by": "dr", "due": 3, "oldest_due_seconds": 7200}},
            {"group": "db", "rpo_seconds": None, "rpo_target_seconds": 3600, "ok": False, "last_run": {"bytes": None},
             "dr_retention": {"pruned_by": "replication", "due": 0, "oldest_due_seconds": None}}]
    text = prometheus_text(rows, 1_800_000_000)
    assert 'esxdr_rpo_seconds{group="core"} 252.0' in text
    assert 'esxdr_rpo_seconds{group="db"} NaN' in text
    assert 'esxdr_rpo_ok{group="db"} 0' in text
    assert 'esxdr_last_run_bytes{group="db"} 0' in text
    assert 'esxdr_dr_snapshots_due{group="core"} 3' in text and 'esxdr_dr_snapshots_due{group="db"} 0' in text
    assert 'esxdr_last_run_seconds{group="core"} 41.023' in text and 'esxdr_last_run_seconds{group="db"} NaN' in text
    assert 'esxdr_last_run_timestamp_seconds{group="core"} 1800000000' in text  # 2027-01-15T08:00:00Z
    assert 'esxdr_last_run_timestamp_seconds{group="db"} 0' in text  # never: an alert on its age fires
    assert text.count("# TYPE") == 8 and text.endswith("\n")


def snap(i: int, day: float, written=None, used=None, referenced=None) -> Snapshot:
    return Snapshot("sp1/a", f"s{i}", i, i, int(day * 86400), used=used, written=written, referenced=referenced)


def test_change_rate_uses_written_when_known():
    snaps = [snap(1, 0, written=0), snap(2, 1, written=2 << 30), snap(3, 2, written=2 << 30)]
    rate, how = change_rate(snaps, has_written=True)
    assert rate == 2 << 30 and how == "written"


def test_change_rate_falls_back_to_used_and_growth_as_lower_bound():
    # 1 GiB overwritten after s1 (kept by s1), then 1 GiB appended before s2, over half a day
    snaps = [snap(1, 0, used=1 << 30, referenced=4 << 30), snap(2, 0.5, used=0, referenced=5 << 30)]
    rate, how = change_rate(snaps, has_written=False)
    assert rate == 4 << 30 and "lower bound" in how
    assert change_rate(snaps[:1], True) == (0.0, "fewer than two snapshots")


@pytest.mark.parametrize("s,text", [(5, "5s"), (221, "3m41s"), (7322, "2h02m")])
def test_human_duration(s, text):
    assert human_duration(s) == text


def test_progress_line_has_bytes_rate_and_eta():
    out = io.StringIO()
    p = Progress("lun0", 212 << 30, stream=out)
    p.started -= 300  # five minutes in
    p(123 << 30)
    line = p.line()
    assert line.startswith("lun0")
    assert "58%" in line and "123.0 GiB/212.0 GiB" in line and "MiB/s" in line and "ETA" in line
    p.finish()
    assert out.getvalue().endswith("\n")


def test_progress_without_total_shows_bytes_and_rate():
    p = Progress("lun1", None, enabled=False)
    p(1 << 20)
    assert "1.0 MiB" in p.line() and "ETA" not in p.line()


def test_progress_past_its_estimate_drops_the_percent_and_says_so():
    """A bar at 100% while bytes still flow was the first full send's "996.2 KiB/112.0 KiB 100%"."""
    p = Progress("lun2", 112 << 10, enabled=False)
    p(996 << 10)
    line = p.line()
    assert "%" not in line and "ETA" not in line and "996.0 KiB" in line and "estimate was 112.0 KiB" in line


def test_a_stream_total_is_what_send_nvp_predicts_or_nothing():
    from esxdr.model import LEGACY, OPENZFS
    from esxdr.transport.base import CommandResult
    from esxdr.zfs import Zfs

    seen = []

    class T:
        name = "ss1"

        def run(self, argv, *, input=None, timeout=300, check=True):
            seen.append(argv)
            return CommandResult(argv, 0, "full\tsp1/lun0@a\t4823449\nsize\t4823449\n", "", 0.0)

    assert Zfs(T(), OPENZFS).send_estimate(None, "sp1/lun0@a", False) == 4823449
    assert seen[-1] == ["zfs", "send", "-nvP", "sp1/lun0@a"]  # a full stream is estimated too
    # pool v23 has no -nvP: no estimate (the bar shows bytes and rate), and nothing is run
    assert Zfs(T(), LEGACY).send_estimate("sp1/lun0@a", "sp1/lun0@b", True) is None and len(seen) == 1
