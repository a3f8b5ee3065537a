"""Replication's hold (esxdr_<group>) is a cursor: one held snapshot per dataset. Older holds of the
tag are released before retention decides, on DR (`prune --side dr`) and on production in pull mode
(`replicate --snapshot-only`), where a compromised DR could otherwise hold every snapshot through
its send-only account and fill production's pool."""

from __future__ import annotations

from types import SimpleNamespace

from esxdr.model import Dataset, Snapshot
from esxdr.replication.prune import newest_held, release_stale_holds


def ds(name: str, held: set[str], names=("a", "b", "c", "d")) -> Dataset:
    return Dataset(name=name, type="filesystem", guid=hash(name) & 0xFFFF, snapshots=[
        Snapshot(dataset=name, name=f"esxdr_core_{n}", guid=100 + i, createtxg=10 + i, creation=1000 + i,
                 userrefs=1 if n in held else 0) for i, n in enumerate(names)])


class FakeZfs:
    def __init__(self, obs: dict[str, Dataset]):
        self.obs, self.released = obs, []

    def release_one(self, tag: str, snapshot: str) -> bool:
        self.released.append((tag, snapshot))
        dataset, _, name = snapshot.partition("@")
        d = self.obs[dataset]
        d.snapshots = [Snapshot(**{**x.__dict__, "userrefs": 0}) if x.name == name else x for x in d.snapshots]
        return True

    def observe(self, roots: list[str]) -> dict[str, Dataset]:
        return dict(self.obs)


def side(obs):
    return SimpleNamespace(zfs=FakeZfs(obs))


def test_production_keeps_only_drs_newest_hold():
    obs = {"sp1/lun0": ds("sp1/lun0", {"a", "b", "c"}), "sp1/lun1": ds("sp1/lun1", {"b"}),
           "sp1/other": ds("sp1/other", {"a", "b"})}
    s = side(obs)
    after = release_stale_holds(s, "core", obs, ("sp1/lun0", "sp1/lun1"), "sp1", keep=newest_held, dry_run=False)
    assert s.zfs.released == [("esxdr_core", "sp1/lun0@esxdr_core_a"), ("esxdr_core", "sp1/lun0@esxdr_core_b")]
    assert [x.name for x in after["sp1/lun0"].snapshots if x.held] == ["esxdr_core_c"]
    assert [x.name for x in after["sp1/lun1"].snapshots if x.held] == ["esxdr_core_b"]
    # a dataset outside the group is not touched
    assert [x.name for x in after["sp1/other"].snapshots if x.held] == ["esxdr_core_a", "esxdr_core_b"]


def test_a_dry_run_releases_nothing_and_decides_as_if_it_had():
    obs = {"sp1/lun0": ds("sp1/lun0", {"a", "b", "c", "d"})}
    s = side(obs)
    after = release_stale_holds(s, "core", obs, ("sp1/lun0",), "sp1", keep=newest_held, dry_run=True)
    assert s.zfs.released == []
    assert [x.name for x in after["sp1/lun0"].snapshots if x.held] == ["esxdr_core_d"]
    assert [x.name for x in obs["sp1/lun0"].snapshots if x.held] == ["esxdr_core_a", "esxdr_core_b",
                                                                     "esxdr_core_c", "esxdr_core_d"]


def test_dr_keeps_the_hold_on_the_newest_snapshot_the_next_base():
    obs = {"rp1/lun0": ds("rp1/lun0", {"a", "c"})}
    s = side(obs)
    newest = lambda d: max(d.snapshots, key=lambda x: x.createtxg)  # noqa: E731
    after = release_stale_holds(s, "core", obs, ("rp1/lun0",), "rp1", keep=newest, dry_run=False)
    # DR's newest (d) is not held here: both older holds go, the replica keeps its base by retention
    assert [t for _, t in s.zfs.released] == ["rp1/lun0@esxdr_core_a", "rp1/lun0@esxdr_core_c"]
    assert not any(x.held for x in after["rp1/lun0"].snapshots)


def test_nothing_held_costs_no_call():
    obs = {"sp1/lun0": ds("sp1/lun0", set())}
    s = side(obs)
    assert release_stale_holds(s, "core", obs, ("sp1/lun0",), "sp1", keep=newest_held, dry_run=False) is obs
    assert s.zfs.released == [] and newest_held(obs["sp1/lun0"]) is None
