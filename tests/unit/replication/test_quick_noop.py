"""The no-op that costs O(datasets): a targeted read per side replaces the listing while
snapshots_changed (OpenZFS >= 2.2), the guids and the newest common snapshot are what the last
full observation saw; anything else observes in full. The engine runs against a fake zfs that
answers `zfs get` as OpenZFS does (a missing name is "dataset does not exist")."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from esxdr.errors import EsxdrError
from esxdr.model import LEGACY, OPENZFS
from esxdr.replication import engine as eng
from esxdr.replication import quick
from esxdr.replication.result import Options
from esxdr.replication.sides import Side
from esxdr.site import load_site
from esxdr.transport.base import CommandResult, Stats
from esxdr.zfs import Zfs, capabilities_from_probe, openzfs_version

ZFS22 = dataclasses.replace(OPENZFS, snapshots_changed=True)
OLD = int(time.time()) - 3600  # a snapshots_changed well past the maturity window


class World:
    """One host's datasets: {name: {"guid", "changed", "written", "readonly", "snaps": [(name, guid)]}}."""

    def __init__(self, name: str, datasets: dict[str, dict]):
        self.name, self.ds, self.stats, self.argvs = name, datasets, Stats(), []

    def close(self) -> None:
        pass

    def run(self, argv, *, input=None, timeout=300, check=True):
        self.stats.record(argv, 0.0)
        self.argvs.append(argv)
        if argv[:2] != ["zfs", "get"]:  # the fake host only answers reads
            return CommandResult(argv, 1, "", "fake host: read only\n", 0.0)
        recursive = argv[2] == "-rHp"
        props, names = argv[5].split(","), argv[6:]
        rows, missing = [], []
        for n in names:
            ds, _, snap = n.partition("@")
            if recursive:
                ds_names = [d for d in self.ds if d.startswith(n + "/") or d == n]
            else:
                ds_names = [ds] if ds in self.ds else []
            if not ds_names:
                missing.append(n)
            for d in ds_names:
                rows += self._rows(d, snap, props, recursive)
        if missing and not recursive:
            return CommandResult(argv, 1, "", f"cannot open '{missing[0]}': dataset does not exist\n", 0.0)
        return CommandResult(argv, 0, "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows), "", 0.0)

    def _rows(self, d, snap, props, recursive):
        info = self.ds[d]
        out = []
        snaps = {s: (i + 1, g) for i, (s, g) in enumerate(info["snaps"])}
        if not snap:
            values = {"type": "filesystem", "guid": info["guid"], "createtxg": 1, "creation": OLD,
                      "snapshots_changed": info["changed"], "written": info.get("written", 0),
                      "receive_resume_token": "-", "readonly": info.get("readonly", "on"), "mountpoint": "none"}
            out += [(d, p, values.get(p, "-")) for p in props]
        for s, (txg, guid) in snaps.items():
            if recursive or s == snap:
                values = {"type": "snapshot", "guid": guid, "createtxg": txg + 1, "creation": OLD + txg,
                          "snapshots_changed": "-"}
                out += [(f"{d}@{s}", p, values.get(p, "-")) for p in props]
        if snap and snap not in snaps:
            out = []
        return out


def _site(tmp_path: Path):
    p = tmp_path / "site.yaml"
    p.write_text(f"""version: 1
name: t
state_dir: {tmp_path}/state
storage:
  ss1: {{role: production, local: true}}
  ss2: {{role: dr, local: true}}
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0, lun1]
    rpo: 1h
    retention: {{source: "48h", destination: "48h"}}
""")
    return load_site(p, check_files=False)


def _worlds(changed=OLD):
    snaps = [("a", 101), ("b", 102)]
    src = World("ss1", {f"sp1/iscsi/lun{i}": {"guid": 10 + i, "changed": changed, "snaps": list(snaps),
                                                "readonly": "off"} for i in range(2)})
    dst = World("ss2", {"rp1/iscsi": {"guid": 5, "changed": changed, "snaps": []}} |
                {f"rp1/iscsi/lun{i}": {"guid": 20 + i, "changed": changed, "snaps": list(snaps)} for i in range(2)})
    return src, dst


@pytest.fixture
def world(tmp_path, monkeypatch):
    site = _site(tmp_path)
    src, dst = _worlds()
    caps = {"ss1": ZFS22, "ss2": ZFS22}

    def open_side(site_, name, prewarm=False):
        t = src if name == "ss1" else dst
        t.stats = Stats()
        return Side(name=name, transport=t, zfs=Zfs(t, caps[name]), caps=caps[name], local=False)  # type: ignore[arg-type]

    monkeypatch.setattr(eng.sides, "open_side", open_side)
    monkeypatch.setattr(quick, "open_side", open_side)
    monkeypatch.setattr(quick, "reached_via", lambda t: f"fake@{t.name}")
    return site, src, dst, caps


def _replicate(site):
    return eng.Engine(site, "core", Options(take_snapshot=False, prune=False, progress=False)).run()


def test_a_no_op_after_a_no_op_reads_one_command_per_side_and_lists_nothing(world):
    site, src, dst, _ = world
    first = _replicate(site)
    assert first.observation == "full" and first.snapshot == "b"
    assert quick.record_path(site.state_dir, "core").exists()
    second = _replicate(site)
    assert second.observation == "quick" and second.snapshot == "b"
    assert second.remote_commands == {"ss1": 1, "ss2": 1}
    # the targeted read names each dataset and its newest common snapshot, and never descends
    for w, root in ((src, "sp1/iscsi"), (dst, "rp1/iscsi")):
        argv = w.argvs[-1]
        assert argv[2] == "-Hp" and argv[6:] == [f"{root}/lun0", f"{root}/lun1", f"{root}/lun0@b", f"{root}/lun1@b"]
    assert [a.kind for d in second.datasets for a in d.actions] == ["up-to-date", "up-to-date"]


@pytest.mark.parametrize("change", [
    "new source snapshot", "destroyed DR snapshot", "dataset re-created", "DR written", "resume token",
    "replica left writable", "common snapshot re-created"])
def test_anything_the_record_cannot_vouch_for_observes_in_full(world, change, monkeypatch):
    site, src, dst, _ = world
    _replicate(site)
    lun0, dr0 = src.ds["sp1/iscsi/lun0"], dst.ds["rp1/iscsi/lun0"]
    if change == "new source snapshot":
        lun0["snaps"].append(("c", 103))
        lun0["changed"] = OLD + 60
    elif change == "destroyed DR snapshot":
        dr0["snaps"].pop(0)
        dr0["changed"] = OLD + 60
    elif change == "dataset re-created":
        dr0["guid"] = 99
    elif change == "DR written":
        dr0["written"] = 4096
    elif change == "resume token":
        monkeypatch.setattr(World, "_rows", _with({"receive_resume_token": "1-abc"}, World._rows))
    elif change == "replica left writable":
        dr0["readonly"] = "off"
    elif change == "common snapshot re-created":
        lun0["snaps"][-1] = ("b", 999)
    before = len(src.argvs)
    try:
        second = _replicate(site)
    # a conflict the full observation found is its to report; the fake host cannot stream
    except (EsxdrError, AttributeError):
        second = None
    assert second is None or second.observation == "full"
    # the targeted read first, then the full listing decided
    assert [a[2] for a in src.argvs[before:before + 2]] == ["-Hp", "-rHp"]
    if change == "new source snapshot":  # the full path went on to send it (-nvP: the estimate)
        assert second is None and ["zfs", "send", "-nvP"] == src.argvs[-1][:3]


def _with(extra, rows):
    def patched(self, d, snap, props, recursive):
        return [(a, b, extra.get(b, c) if "@" not in a else c) for a, b, c in rows(self, d, snap, props, recursive)]
    return patched


def test_no_record_without_snapshots_changed_on_both_sides(world):
    site, _, _, caps = world
    caps["ss2"] = dataclasses.replace(OPENZFS, snapshots_changed=False)
    _replicate(site)
    assert not quick.record_path(site.state_dir, "core").exists()
    assert _replicate(site).observation == "full"


def test_a_value_too_fresh_to_trust_is_not_recorded(world):
    """One-second resolution: a snapshot taken later in the second the observation read would not
    change the value. Recorded only once the observation started MATURITY seconds after it."""
    site, src, _, _ = world
    src.ds["sp1/iscsi/lun1"]["changed"] = int(time.time())
    _replicate(site)
    assert not quick.record_path(site.state_dir, "core").exists()
    src.ds["sp1/iscsi/lun1"]["changed"] = OLD
    _replicate(site)
    assert quick.record_path(site.state_dir, "core").exists()


def test_a_record_is_for_the_datasets_and_accounts_it_saw(world, monkeypatch):
    site, _, _, _ = world
    _replicate(site)
    record = quick.load(site.state_dir, site.group("core"))
    assert record is not None
    monkeypatch.setattr(quick, "reached_via", lambda t: f"other@{t.name}")
    assert _replicate(site).observation == "full"
    narrower = dataclasses.replace(site.group("core"), datasets=["sp1/iscsi/lun0"])
    assert quick.load(site.state_dir, narrower) is None


@pytest.mark.parametrize(("probe", "has"), [
    ({"openzfs": True, "zfs_version": "zfs-2.2.2-1", "zfs_kmod_version": "zfs-kmod-2.2.2-1"}, True),
    ({"openzfs": True, "zfs_version": "zfs-2.3.1-1~bpo12+1", "zfs_kmod_version": "zfs-kmod-2.3.1-1~bpo12+1"}, True),
    ({"openzfs": True, "zfs_version": "zfs-2.1.11-1", "zfs_kmod_version": "zfs-kmod-2.1.11-1"}, False),
    # userland upgraded, module not yet reloaded: the property comes from the module
    ({"openzfs": True, "zfs_version": "zfs-2.2.2-1", "zfs_kmod_version": "zfs-kmod-2.1.11-1"}, False),
    ({"openzfs": True, "zfs_version": "zfs-2.2.0-1"}, True),
    ({"openzfs": True}, False),
    ({"openzfs": False, "zfs_version": None}, False),
])
def test_snapshots_changed_is_known_from_openzfs_2_2(probe, has):
    assert capabilities_from_probe(probe).snapshots_changed is has
    assert LEGACY.snapshots_changed is False


def test_openzfs_version_takes_the_oldest_line():
    assert openzfs_version("zfs-2.2.4-1", "zfs-kmod-2.1.5-1") == (2, 1)
    assert openzfs_version(None, "garbage") is None
