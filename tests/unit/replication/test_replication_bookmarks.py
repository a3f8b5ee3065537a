"""Bookmarks as incremental bases (bookmarks: true), the preflight refusals and the status directions.

Table-driven like test_replication_plan.py: guids decide what is common, a source bookmark
stands in for a source snapshot that is gone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from esxdr.errors import ReplicationConflict, UsageError
from esxdr.model import LEGACY, OPENZFS, Bookmark, Dataset, Snapshot
from esxdr.plan.replication import SendIncremental, common_bookmark, plan_dataset
from esxdr.zfs import parse_get
from esxdr.zfs.compat import DirectionRefused, group_directions, preflight


def ds(name: str, snaps: list[tuple[str, int]], marks: list[tuple[str, int]] = (), written: int | None = None,
       txg: dict[int, int] | None = None) -> Dataset:
    """snaps/marks: (name, guid); createtxg = 10 x guid unless ``txg`` says otherwise (a bookmark keeps its
    snapshot's createtxg, so the same guid gives the same txg on the source)."""
    t = txg or {}
    return Dataset(name=name, type="volume", guid=1, written=written,
                   snapshots=[Snapshot(dataset=name, name=n, guid=g, createtxg=t.get(g, 10 * g), creation=1000 + g,
                                       written=4096)
                              for n, g in snaps],
                   bookmarks=[Bookmark(dataset=name, name=n, guid=g, createtxg=t.get(g, 10 * g), creation=1000 + g)
                              for n, g in marks])


def shape(actions) -> list[tuple]:
    out = []
    for a in actions:
        if isinstance(a, SendIncremental):
            out.append((a.kind, a.base.full_name.split("/")[-1], a.target.name, a.intermediate, a.count))
        else:
            out.append((a.kind,))
    return out


DR_AT_B = ds("rp1/lun0", [("a", 1), ("b", 2)])


@pytest.mark.parametrize("source,dest,intermediate,bookmarks,expect", [
    # the common snapshot b is gone on the source, its bookmark is there: -i #b → c, then -I c → d
    (ds("sp1/lun0", [("c", 3), ("d", 4)], [("b", 2)]), DR_AT_B, True, True,
     [("send-incremental", "lun0#b", "c", False, 1), ("send-incremental", "lun0@c", "d", True, 1)]),
    # three newer snapshots: the -I carries the two after the first
    (ds("sp1/lun0", [("c", 3), ("d", 4), ("e", 5)], [("b", 2)]), DR_AT_B, True, True,
     [("send-incremental", "lun0#b", "c", False, 1), ("send-incremental", "lun0@c", "e", True, 2)]),
    # incremental: direct → one -i straight from the bookmark to the newest
    (ds("sp1/lun0", [("c", 3), ("d", 4)], [("b", 2)]), DR_AT_B, False, True,
     [("send-incremental", "lun0#b", "d", False, 1)]),
    # only one newer snapshot: a single -i from the bookmark
    (ds("sp1/lun0", [("c", 3)], [("b", 2)]), DR_AT_B, True, True,
     [("send-incremental", "lun0#b", "c", False, 1)]),
    # the snapshot still exists: it is used (-I), the bookmark of the same guid changes nothing
    (ds("sp1/lun0", [("b", 2), ("c", 3)], [("b", 2)]), DR_AT_B, True, True,
     [("send-incremental", "lun0@b", "c", True, 1)]),
    # a newer bookmark beats an older common snapshot: DR at b, source has snapshot a and bookmark b
    (ds("sp1/lun0", [("a", 1), ("c", 3)], [("b", 2)]), DR_AT_B, True, True,
     [("send-incremental", "lun0#b", "c", False, 1)]),
    # an older bookmark loses to a newer common snapshot
    (ds("sp1/lun0", [("b", 2), ("c", 3)], [("a", 1)]), DR_AT_B, True, True,
     [("send-incremental", "lun0@b", "c", True, 1)]),
    # bookmark and DR snapshot share the name but not the guid: not common
    (ds("sp1/lun0", [("c", 3)], [("b", 77)]), DR_AT_B, True, True, "no-common"),
    # bookmarks not configured: the bookmark is ignored, as before
    (ds("sp1/lun0", [("c", 3), ("d", 4)], [("b", 2)]), DR_AT_B, True, False, "no-common"),
    # up to date at the bookmark: nothing newer on the source
    (ds("sp1/lun0", [], [("b", 2)]), DR_AT_B, True, True, []),
    # DR wrote after the common snapshot: still refused before any stream
    (ds("sp1/lun0", [("c", 3)], [("b", 2)]), ds("rp1/lun0", [("a", 1), ("b", 2)], written=8192), True, True,
     "modified"),
    # DR diverged after the common snapshot (x only on DR)
    (ds("sp1/lun0", [("c", 3)], [("b", 2)]), ds("rp1/lun0", [("a", 1), ("b", 2), ("x", 50)]), True, True,
     "diverged"),
])
def test_plan_with_bookmarks(source, dest, intermediate, bookmarks, expect):
    if isinstance(expect, str):
        with pytest.raises(ReplicationConflict) as e:
            plan_dataset(source, dest, "rp1/lun0", intermediate=intermediate, bookmarks=bookmarks)
        assert e.value.kind == expect
        return
    actions = plan_dataset(source, dest, "rp1/lun0", intermediate=intermediate, bookmarks=bookmarks)
    if not expect:
        assert [a.kind for a in actions] in ([], ["up-to-date"])
        return
    assert shape(actions) == expect


def test_bookmark_plan_with_rollback_dr_forces_only_the_first_stream():
    source = ds("sp1/lun0", [("c", 3), ("d", 4)], [("b", 2)])
    actions = plan_dataset(source, ds("rp1/lun0", [("a", 1), ("b", 2)], written=8192), "rp1/lun0",
                           allow_rollback_dr=True, bookmarks=True)
    assert [getattr(a, "force", None) for a in actions] == [True, False]
    assert "#b" in actions[0].describe() and "-i" in actions[0].describe()
    assert actions[0].to_dict()["base"] == "sp1/lun0#b"


def test_common_bookmark_is_newest_by_guid():
    source = ds("sp1/lun0", [], [("a", 1), ("b", 2), ("z", 9)])
    assert common_bookmark(source, DR_AT_B)[0].name == "b"
    assert common_bookmark(ds("sp1/lun0", [], []), DR_AT_B) is None


def test_parse_get_keeps_bookmarks_apart():
    # What `zfs get -rHp` prints on OpenZFS 2.1 for a zvol with a snapshot and a bookmark.
    text = "\n".join([
        "sp1/lun0\ttype\tvolume", "sp1/lun0\tguid\t111", "sp1/lun0\tcreatetxg\t5",
        "sp1/lun0@b\ttype\tsnapshot", "sp1/lun0@b\tguid\t18446744073709551000", "sp1/lun0@b\tcreatetxg\t40",
        "sp1/lun0@b\tcreation\t1700000000",
        "sp1/lun0#a\ttype\tbookmark", "sp1/lun0#a\tguid\t222", "sp1/lun0#a\tcreatetxg\t30",
        "sp1/lun0#a\tcreation\t1690000000", "sp1/lun0#a\tused\t-",
    ])
    d = parse_get(text)["sp1/lun0"]
    assert [s.name for s in d.snapshots] == ["b"] and d.snapshots[0].guid == 18446744073709551000
    assert [(b.name, b.guid, b.createtxg, b.full_name) for b in d.bookmarks] == [("a", 222, 30, "sp1/lun0#a")]


# -- preflight: what the two sides' zfs cannot do, refused before anything changes -------------

@dataclass
class FakeZfs:
    versions: dict[str, int]
    calls: list = field(default_factory=list)

    def run(self, *args, dataset=None):
        self.calls.append(args)
        names = args[5:]
        return SimpleNamespace(stdout="".join(f"{n}\t{self.versions[n]}\n" for n in names if n in self.versions))


def side(name, caps, versions=None):
    return SimpleNamespace(name=name, caps=caps, zfs=FakeZfs(versions or {}))


def group(bookmarks=False, datasets=("sp1/lun0",)):
    return SimpleNamespace(name="core", line=12, bookmarks=bookmarks, datasets=datasets,
                           dr_dataset=lambda d: "rp1/" + d.split("/", 1)[1])


SITE = {"site_path": "/etc/esxdr/site.yaml", "source_is_replica": False}
# The reversed view (reprotect / failback): the DR server is the source, its datasets are replicas.
REVERSED = {**SITE, "source_is_replica": True}


def obs(kind="filesystem", names=("sp1/lun0",)):
    return {n: Dataset(name=n, type=kind, guid=1) for n in names}


def test_preflight_refuses_bookmarks_on_pool_v23_with_file_and_line():
    with pytest.raises(UsageError) as e:
        preflight(group(bookmarks=True), side("ss1", LEGACY), side("ss2", OPENZFS), obs(), **SITE)
    assert e.value.message.startswith("/etc/esxdr/site.yaml:12: protection group core sets bookmarks: true")
    assert "pool-version-23" in e.value.message and e.value.exit_code == 2


@pytest.mark.parametrize("site,src,dst,kind,versions,refused", [
    (SITE, LEGACY, OPENZFS, "filesystem", {}, False),        # old → new works
    (SITE, OPENZFS, OPENZFS, "filesystem", {}, False),
    (SITE, LEGACY, LEGACY, "filesystem", {}, False),
    (SITE, OPENZFS, LEGACY, "filesystem", {"sp1/lun0": 5}, True),   # ZPL 5 cannot go to pool v23
    # created on OpenZFS at version 4: received but unreadable by zfs-fuse (measured), refused
    (SITE, OPENZFS, LEGACY, "filesystem", {"sp1/lun0": 4}, True),
    # a replica going back (reversed view: the source is the DR server) at version 4 works
    (REVERSED, OPENZFS, LEGACY, "filesystem", {"sp1/lun0": 4}, False),
    (REVERSED, OPENZFS, LEGACY, "filesystem", {"sp1/lun0": 5}, True),
    (SITE, OPENZFS, LEGACY, "filesystem", {}, True),                # unknown version: judged as OpenZFS's 5
    (SITE, OPENZFS, LEGACY, "volume", {}, False),                   # zvols are received
])
def test_preflight_directions(site, src, dst, kind, versions, refused):
    s = side("ss1", src, versions)
    if refused:
        with pytest.raises(DirectionRefused) as e:
            preflight(group(), s, side("ss2", dst), obs(kind), **site)
        assert e.value.exit_code == 3 and "nothing was sent" in e.value.message
        assert "pool-version-23" in e.value.to_dict()["evidence"]["datasets"]["sp1/lun0"]
        assert e.value.hint and "pool-version-23 → OpenZFS works" in e.value.hint
    else:
        preflight(group(), s, side("ss2", dst), obs(kind), **site)
    # the version is asked (one call) only for OpenZFS filesystems going to pool v23
    assert bool(s.zfs.calls) == (src is OPENZFS and dst is LEGACY and kind == "filesystem")


def test_group_directions_both_ways():
    d = group_directions(group(), LEGACY, OPENZFS, {"sp1/lun0": "filesystem"}, {"sp1/lun0": 4})
    assert d["replication"]["possible"] and d["failback"]["possible"]
    d = group_directions(group(), LEGACY, OPENZFS, {"sp1/lun0": "filesystem"}, {"sp1/lun0": 5})
    assert d["replication"]["possible"] and not d["failback"]["possible"]
    assert d["failback"]["refused"] == ["sp1/lun0"] and "SA_SPILL" in d["failback"]["reason"]
    # OpenZFS production, pool-v23 DR: a version-4 production filesystem still cannot go (created on
    # OpenZFS), the DR copy could come back
    d = group_directions(group(), OPENZFS, LEGACY, {"sp1/lun0": "filesystem"}, {"sp1/lun0": 4})
    assert not d["replication"]["possible"] and d["failback"]["possible"]
    d = group_directions(group(), OPENZFS, OPENZFS)
    assert d["replication"]["possible"] and d["failback"]["possible"]


def test_site_file_bookmarks_option(tmp_path):
    from esxdr.site.loader import load_site

    text = (__import__("pathlib").Path(__file__).parents[1] / "site" / "site_corpus" / "bandwidth-size.yaml").read_text()
    base = text.replace("    bandwidth_limit: 50 megs\n", "")
    (tmp_path / "site.yaml").write_text(base)
    assert load_site(tmp_path / "site.yaml", check_files=False).group("core").bookmarks is False  # default off
    (tmp_path / "site.yaml").write_text(base + "    bookmarks: true\n")
    assert load_site(tmp_path / "site.yaml", check_files=False).group("core").bookmarks is True
