"""The replication planner: observed datasets in, actions or typed conflicts out (table-driven)."""

from __future__ import annotations

import pytest

from esxdr.errors import ReplicationConflict
from esxdr.fmt import human_bytes
from esxdr.model import Dataset, Snapshot
from esxdr.plan.replication import (
    RollbackDr,
    SendFull,
    SendIncremental,
    UpToDate,
    common_snapshot,
    plan_dataset,
)


def ds(name: str, snaps: list[tuple[str, int]], written: int | None = None, token: str | None = None) -> Dataset:
    """snaps: (name, guid); createtxg follows list order."""
    return Dataset(name=name, type="filesystem", guid=1, written=written, resume_token=token,
                   snapshots=[Snapshot(dataset=name, name=n, guid=g, createtxg=10 * (i + 1), creation=1000 + i,
                                       referenced=1 << 20)
                              for i, (n, g) in enumerate(snaps)])


SRC = ds("sp1/iscsi/lun0", [("a", 1), ("b", 2), ("c", 3)])


@pytest.mark.parametrize("dest,intermediate,expect", [
    # not on DR: full of the oldest, then -I to the newest
    (None, True, [("send-full", "a"), ("send-incremental", "a", "c", True)]),
    # direct mode: only the newest, full
    (None, False, [("send-full", "c")]),
    # DR at b: one incremental b→c
    (ds("rp1/lun0", [("a", 1), ("b", 2)]), True, [("send-incremental", "b", "c", True)]),
    (ds("rp1/lun0", [("a", 1), ("b", 2)]), False, [("send-incremental", "b", "c", False)]),
    # DR at a (b pruned on DR? no: DR only lacks newer): -I a→c carries b and c
    (ds("rp1/lun0", [("a", 1)]), True, [("send-incremental", "a", "c", True)]),
    # up to date
    (ds("rp1/lun0", [("a", 1), ("b", 2), ("c", 3)]), True, [("up-to-date", "c")]),
    # same names on DR but other guids do not count as common: matching is by guid
    (ds("rp1/lun0", [("a", 1), ("b", 99)]), True, "diverged"),
    # DR has a snapshot the source never had, after the common one
    (ds("rp1/lun0", [("a", 1), ("x", 50)]), True, "diverged"),
    # DR exists without snapshots
    (ds("rp1/lun0", []), True, "unrelated"),
    # DR has snapshots, none in common
    (ds("rp1/lun0", [("q", 70)]), True, "no-common"),
    # OpenZFS says DR was written since its newest snapshot
    (ds("rp1/lun0", [("a", 1), ("b", 2)], written=4096), True, "modified"),
    # written == 0: nothing to lose, plain incremental without -F
    (ds("rp1/lun0", [("a", 1), ("b", 2)], written=0), True, [("send-incremental", "b", "c", True)]),
    # an interrupted resumable receive
    (ds("rp1/lun0", [("a", 1)], token="1-abc"), True, [("resume",)]),
])
def test_plan(dest, intermediate, expect):
    if isinstance(expect, str):
        with pytest.raises(ReplicationConflict) as e:
            plan_dataset(SRC, dest, "rp1/lun0", intermediate=intermediate)
        assert e.value.kind == expect
        assert e.value.evidence["dataset"] == "rp1/lun0"
        assert e.value.hint
        return
    actions = plan_dataset(SRC, dest, "rp1/lun0", intermediate=intermediate)
    got = []
    for a in actions:
        if isinstance(a, SendFull):
            got.append((a.kind, a.source.name))
            assert not a.force
        elif isinstance(a, SendIncremental):
            got.append((a.kind, a.base.name, a.target.name, a.intermediate))
            assert not a.force
        elif isinstance(a, UpToDate):
            got.append((a.kind, a.snapshot.name))
        else:
            got.append((a.kind,))
        assert a.reason
    assert got == expect


def test_diverged_evidence_names_common_and_both_sides():
    dest = ds("rp1/lun0", [("a", 1), ("b", 2), ("x", 50), ("y", 51)])
    with pytest.raises(ReplicationConflict) as e:
        plan_dataset(SRC, dest, "rp1/lun0")
    ev = e.value.evidence
    assert ev["common"] == "b"
    assert ev["source_only"] == ["c"]
    assert ev["dr_only"] == ["x", "y"]
    assert "@b" in e.value.message


def test_rollback_dr_resolves_divergence_explicitly():
    dest = ds("rp1/lun0", [("a", 1), ("b", 2), ("x", 50)])
    actions = plan_dataset(SRC, dest, "rp1/lun0", allow_rollback_dr=True)
    assert isinstance(actions[0], RollbackDr)
    assert actions[0].to.name == "b" and actions[0].discards == ("@x",)
    assert isinstance(actions[1], SendIncremental) and actions[1].base.name == "b"


def test_rollback_dr_forces_receive_only_when_accepted():
    modified = ds("rp1/lun0", [("a", 1), ("b", 2)], written=10)
    (inc,) = plan_dataset(SRC, modified, "rp1/lun0", allow_rollback_dr=True)
    assert isinstance(inc, SendIncremental) and inc.force
    # pool-v23: no `written`, so -F only with the flag
    legacy = ds("rp1/lun0", [("a", 1), ("b", 2)], written=None)
    (inc,) = plan_dataset(SRC, legacy, "rp1/lun0")
    assert not inc.force
    (inc,) = plan_dataset(SRC, legacy, "rp1/lun0", allow_rollback_dr=True)
    assert inc.force


def test_rollback_dr_overwrites_unrelated_with_force():
    actions = plan_dataset(SRC, ds("rp1/lun0", [("q", 70)]), "rp1/lun0", allow_rollback_dr=True)
    assert isinstance(actions[0], SendFull) and actions[0].force


def test_common_snapshot_is_the_newest_shared_guid():
    dest = ds("rp1/lun0", [("a", 1), ("b", 2)])
    s, d = common_snapshot(SRC, dest)
    assert (s.name, d.name) == ("b", "b")


def test_source_without_snapshots_plans_nothing():
    assert plan_dataset(ds("sp1/x", []), None, "rp1/x") == []


@pytest.mark.parametrize("n,text", [(None, "?"), (0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                    (212 << 30, "212.0 GiB")])
def test_human_bytes(n, text):
    assert human_bytes(n) == text


def test_describe_reads_like_the_dry_run():
    (full, inc) = plan_dataset(SRC, None, "rp1/lun0")
    assert full.describe().startswith("send sp1/iscsi/lun0@a full → rp1/lun0")
    assert inc.describe().startswith("send -I @a sp1/iscsi/lun0@c → rp1/lun0 (2 snapshots)")
