"""Rewrites on import: data moves, identities never do."""

from __future__ import annotations

import pytest

from esxdr.errors import UsageError
from esxdr.model.manifest import (
    Backing,
    InitiatorGroup,
    LogicalUnit,
    Manifest,
    Naa,
    Portal,
    Target,
    Tpg,
    View,
)
from esxdr.plan import rewrite

T = "iqn.2010-09.org.openindiana:02:prod"


def manifest() -> Manifest:
    return Manifest(
        targets=[Target(iqn=T, tpgs=[Tpg(tag=2, portals=[Portal("10.0.0.5")])], acl=["esx-prod"])],
        initiator_groups=[InitiatorGroup("esx-prod", ["iqn.1998-01.com.vmware:esx01"])],
        logical_units=[
            LogicalUnit(Naa("600144f0b6a1c6b0000051a4d5e20001"),
                        Backing("zvol", "/dev/zvol/rdsk/sp2/iscsi/lun0", "sp2/iscsi/lun0"), 1 << 30,
                        views=[View(0, initiator_group="esx-prod")]),
            LogicalUnit(Naa("600144f0b6a1c6b0000051a4d5e20002"),
                        Backing("zvol", "/dev/zvol/rdsk/sp22/lun1", "sp22/lun1"), 1 << 30, views=[View(1)]),
            LogicalUnit(Naa("600144f0b6a1c6b0000051a4d5e20003"), Backing("file", "/sp2/files/a.img"), 1 << 20,
                        views=[View(2)]),
        ])


def naas(m: Manifest) -> list[str]:
    return [lu.naa.hex for lu in m.logical_units]


@pytest.mark.parametrize("mapping, paths", [
    ({"sp2": "sp1"}, ["/dev/zvol/rdsk/sp1/iscsi/lun0", "/dev/zvol/rdsk/sp22/lun1", "/sp1/files/a.img"]),
    ({"sp2/iscsi": "tank/dr/iscsi", "sp22": "tank/dr22"},
     ["/dev/zvol/rdsk/tank/dr/iscsi/lun0", "/dev/zvol/rdsk/tank/dr22/lun1", "/sp2/files/a.img"]),
])
def test_rename_datasets(mapping, paths):
    m0 = manifest()
    m = rewrite.rename_datasets(m0, mapping)
    assert [lu.backing.path for lu in m.logical_units] == paths
    assert naas(m) == naas(m0)
    assert m0.logical_units[0].backing.path == "/dev/zvol/rdsk/sp2/iscsi/lun0"  # pure: input untouched


@pytest.mark.parametrize("platform, path", [("linux", "/dev/zvol/sp2/iscsi/lun0"),
                                            ("freebsd", "/dev/zvol/sp2/iscsi/lun0"),
                                            ("illumos", "/dev/zvol/rdsk/sp2/iscsi/lun0")])
def test_zvol_style(platform, path):
    m = rewrite.zvol_style(manifest(), platform)
    assert m.logical_units[0].backing.path == path
    back = rewrite.zvol_style(m, "illumos")
    assert back.logical_units[0].backing.path == "/dev/zvol/rdsk/sp2/iscsi/lun0"


def test_zvols_to_files_and_paths():
    m = rewrite.zvols_to_files(manifest(), "/tank/lab/{name}.img")
    assert [lu.backing.path for lu in m.logical_units[:2]] == ["/tank/lab/lun0.img", "/tank/lab/lun1.img"]
    assert m.logical_units[0].backing.kind == "file"
    m = rewrite.map_paths(m, {"/tank/lab": "/srv/lab"})
    assert m.logical_units[0].backing.path == "/srv/lab/lun0.img"
    with pytest.raises(UsageError):
        rewrite.zvols_to_files(manifest(), "/tank/lab/fixed.img")


def test_portals_initiators_chap():
    m = rewrite.set_portals(manifest(), [Portal("127.0.0.2", 3261)], tag=7)
    assert [(g.tag, str(g.portals[0])) for g in m.targets[0].tpgs] == [(7, "127.0.0.2:3261")]
    m = rewrite.allow_initiators(m, ["iqn.1998-01.com.vmware:esxi-dr"])
    assert m.targets[0].acl == ["esx-prod", "esxdr-dr"]
    assert m.group("esxdr-dr").members == ["iqn.1998-01.com.vmware:esxi-dr"]
    lu0 = m.logical_units[0]
    assert {(v.lun, v.initiator_group) for v in lu0.views} == {(0, "esx-prod"), (0, "esxdr-dr")}
    m.validate()
    m = rewrite.set_chap(m, "dr", "secrets:dr")
    assert m.targets[0].auth.mode == "chap" and m.targets[0].auth.secret_ref == "secrets:dr"
    with pytest.raises(UsageError):
        rewrite.allow_initiators(m, ["esxi-dr"])


@pytest.mark.parametrize("items", [["sp2"], ["=sp1"], ["sp2="]])
def test_bad_mapping(items):
    with pytest.raises(UsageError, match="OLD=NEW"):
        rewrite.parse_mapping(items, "--map-dataset")


def test_clone_naa():
    n = Naa("600144f0b6a1c6b0000051a4d5e20001")
    a = rewrite.clone_naa(n, "sp1/iscsi/lun0@daily-2024-05-01")
    assert a != n and a.hex[:7] == n.hex[:7] and len(a.hex) == 32
    assert rewrite.clone_naa(n, "sp1/iscsi/lun0@daily-2024-05-01") == a
    assert rewrite.clone_naa(n, "sp1/iscsi/lun0@daily-2024-05-02") != a
    assert rewrite.clone_naa(Naa("5000c5001234abcd"), "x").naa_type == 5


def test_diff():
    desired = manifest()
    observed = manifest()
    observed.logical_units = observed.logical_units[1:]
    observed.logical_units[0].serial = "OLD"
    desired.logical_units[1].serial = "NEW"
    observed.logical_units[1].backing.path = "/elsewhere.img"
    changes = {c["naa"]: c for c in rewrite.diff(observed, desired) if "naa" in c}
    assert changes["naa.600144f0b6a1c6b0000051a4d5e20001"]["change"] == "add"
    assert changes["naa.600144f0b6a1c6b0000051a4d5e20002"]["fields"]["serial"] == ["OLD", "NEW"]
    assert changes["naa.600144f0b6a1c6b0000051a4d5e20003"]["fields"]["backing"][0] == "/elsewhere.img"
    assert rewrite.diff(manifest(), manifest()) == []
