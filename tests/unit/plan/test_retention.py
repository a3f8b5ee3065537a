"""Grandfather/father/son retention, decided per snapshot with reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from esxdr.model import Snapshot
from esxdr.plan.retention import decide

T0 = datetime(2026, 11, 1, 0, 30, tzinfo=UTC)


def hourly_snaps(hours: int, prefix: str = "esxdr_core_") -> list[Snapshot]:
    out = []
    for i in range(hours):
        t = T0 + timedelta(hours=i)
        out.append(Snapshot(dataset="sp1/lun0", name=f"{prefix}{t:%Y%m%dT%H%M%SZ}", guid=i + 1, createtxg=i + 1,
                            creation=int(t.timestamp())))
    return out


def kept(decisions) -> list[int]:
    return [d.snapshot.guid for d in decisions if d.keep]


def test_hourly_keeps_the_newest_n_hours():
    snaps = hourly_snaps(10)
    d = decide(snaps, {"hourly": 4}, prefix="esxdr_core_")
    assert kept(d) == [7, 8, 9, 10]
    assert all(x.reasons == ("outside every keep rule",) for x in d if not x.keep)


def test_daily_keeps_the_newest_of_each_day():
    snaps = hourly_snaps(72)  # three days
    d = decide(snaps, {"daily": 3}, prefix="esxdr_core_")
    days = [x.snapshot for x in d if x.keep]
    assert len(days) == 3
    assert all(datetime.fromtimestamp(s.creation, UTC).hour == 23 or s.guid == 72 for s in days)


@pytest.mark.parametrize("rules,expected_count", [
    # 72 hourly snapshots from Sun Nov 1 00:30: the last 48 hours, plus Nov 1's newest kept as daily
    # (and it is also the newest of its ISO week and the month's are already kept)
    ({"hourly": 48, "daily": 30, "weekly": 12, "monthly": 12}, 48 + 1),
    ({}, 1),  # `last` keeps the newest whatever the rules
])
def test_gfs_counts(rules, expected_count):
    d = decide(hourly_snaps(72), rules, prefix="esxdr_core_")
    assert len(kept(d)) == expected_count


def test_common_held_and_foreign_are_never_pruned():
    snaps = hourly_snaps(6)
    foreign = Snapshot(dataset="sp1/lun0", name="manual-before-upgrade", guid=100, createtxg=3, creation=snaps[2].creation)
    held = Snapshot(**{**snaps[1].__dict__, "userrefs": 1})
    snaps = [snaps[0], held, foreign, *snaps[2:]]
    d = {x.snapshot.guid: x for x in decide(snaps, {"hourly": 1}, prefix="esxdr_core_",
                                            protected_guids=frozenset({1}))}
    assert d[1].keep and "newest common" in d[1].reasons[0]
    assert d[2].keep and d[2].reasons[0].startswith("held")
    assert d[100].keep and d[100].reasons == ("not made by esxdr",)
    assert not d[3].keep
    # prune_foreign lets the rules decide about foreign snapshots too
    d2 = {x.snapshot.guid: x for x in decide(snaps, {"hourly": 1}, prefix="esxdr_core_", prune_foreign=True)}
    assert not d2[100].keep


def test_other_groups_snapshots_are_foreign():
    snaps = hourly_snaps(3, prefix="esxdr_db_")
    assert all(x.keep for x in decide(snaps, {}, prefix="esxdr_core_"))


def test_timezone_moves_day_boundaries():
    # 14:30 and 15:30 UTC on Nov 1 are one day in UTC, but 23:30 Nov 1 and 00:30 Nov 2 in Asia/Tokyo
    a = Snapshot("d", "esxdr_core_a", 1, 1, int(datetime(2026, 11, 1, 14, 30, tzinfo=UTC).timestamp()))
    b = Snapshot("d", "esxdr_core_b", 2, 2, int(datetime(2026, 11, 1, 15, 30, tzinfo=UTC).timestamp()))
    utc = decide([a, b], {"daily": 2}, prefix="esxdr_core_", last=0)
    tokyo = decide([a, b], {"daily": 2}, prefix="esxdr_core_", last=0, timezone="Asia/Tokyo")
    assert kept(utc) == [2]
    assert kept(tokyo) == [1, 2]
