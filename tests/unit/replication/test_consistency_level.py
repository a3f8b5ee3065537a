"""The consistency level of a group snapshot, the datastore filter, and reading the level back."""

from __future__ import annotations

import pytest

from esxdr.model import Dataset, Snapshot
from esxdr.replication import consistency as C
from esxdr.site.model import LunSpec, ProtectionGroup


def vm(outcome: str) -> C.VmOutcome:
    return C.VmOutcome(name=outcome, moid="vm-1", outcome=outcome)


@pytest.mark.parametrize("outcomes,level", [
    ([C.QUIESCED, C.QUIESCED], "application"),
    ([C.QUIESCED, C.SKIPPED_OFF], "application"),  # powered off: consistent by rule
    ([C.SKIPPED_OFF], "application"),  # nothing running: disks at rest
    ([], "application"),
    ([C.QUIESCED, C.FALLBACK], "mixed"),
    ([C.QUIESCED, C.SKIPPED_NO_TOOLS], "mixed"),  # no tools: crash, stated
    ([C.FALLBACK, C.SKIPPED_NO_TOOLS, C.SKIPPED_OFF], "crash"),
    ([C.FALLBACK], "crash"),
])
def test_level(outcomes, level):
    assert C.level_of([vm(o) for o in outcomes]) == level


def test_forced_level_and_summary():
    q = C.Quiesced(group="core", vms=[vm(C.QUIESCED), vm(C.FALLBACK)])
    assert q.level == "mixed"
    d = q.to_dict()
    assert d["quiesced"] == [C.QUIESCED] and d["crash_consistent"] == [C.FALLBACK]
    q._level = "crash"
    assert q.level == "crash"
    lines = C.describe(q.to_dict())
    assert lines[0] == "consistency: crash"


def test_datastore_filter_from_site_luns():
    g = ProtectionGroup(name="core", source="ss1", destination="ss2", source_root="sp1/iscsi", dr_root="rp1/iscsi",
                        datasets=("sp1/iscsi/lun0", "sp1/iscsi/lun1", "sp1/iscsi/lun2"),
                        luns={"sp1/iscsi/lun0": LunSpec("sp1/iscsi/lun0", naa="naa.600144F0AA", datastore="ds-lun0"),
                              "sp1/iscsi/lun1": LunSpec("sp1/iscsi/lun1", naa="naa.600144f0bb")})
    names, naas = C.group_datastore_filter(g)
    assert names == {"ds-lun0"} and naas == {"600144f0aa", "600144f0bb"}
    assert C.matches_group("ds-lun0", [], names, naas)
    assert C.matches_group("renamed", ["naa.600144f0bb"], names, naas)
    assert not C.matches_group("other", ["naa.600144f0cc"], names, naas)


def snap(name: str, level: str | None) -> Snapshot:
    return Snapshot(dataset="sp1/iscsi/lun0", name=name, guid=1, createtxg=1, creation=0,
                    props=((C.PROPERTY, level),) if level else ())


def test_level_read_back_from_snapshots():
    assert C.snapshot_consistency(snap("a", "mixed")) == "mixed"
    assert C.snapshot_consistency(snap("a", None)) is None
    assert C.snapshot_consistency(snap("a", "bogus")) is None
    d0 = Dataset(name="sp1/iscsi/lun0", type="filesystem", guid=1, createtxg=1,
                 snapshots=[snap("s1", "application"), snap("s2", None)])
    d1 = Dataset(name="sp1/iscsi/lun1", type="filesystem", guid=2, createtxg=1,
                 snapshots=[snap("s2", "crash")])
    assert C.consistency_by_snapshot({d0.name: d0, d1.name: d1}) == {"s1": "application", "s2": "crash"}
    assert C.consistency_by_snapshot({d0.name: d0, d1.name: d1}, ["sp1/iscsi/lun0"]) == {"s1": "application"}
