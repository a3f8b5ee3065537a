"""Parsers for real zfs output: OpenZFS 2.x `-H -p` and zfs-fuse (pool v23), and stderr typing."""

from __future__ import annotations

import pytest

from esxdr.errors import CommandFailed, ReplicationConflict, TransientError
from esxdr.zfs import capabilities_from_probe, parse_get, parse_send_estimate
from esxdr.zfs.errors import AlreadyExists, DatasetMissing, NotMounted, translate

# `zfs get -rHp -o name,property,value type,guid,createtxg,creation,used,referenced,userrefs,...` as OpenZFS 2.1
OPENZFS_GET = """\
rp1/iscsi\ttype\tfilesystem
rp1/iscsi\tguid\t12136318773376329246
rp1/iscsi\tcreatetxg\t1
rp1/iscsi\tcreation\t1795636400
rp1/iscsi\tused\t548864
rp1/iscsi\treferenced\t114688
rp1/iscsi\tuserrefs\t-
rp1/iscsi\twritten\t0
rp1/iscsi\treceive_resume_token\t-
rp1/iscsi/lun0\ttype\tvolume
rp1/iscsi/lun0\tguid\t8159235507601469409
rp1/iscsi/lun0\tcreatetxg\t7
rp1/iscsi/lun0\tcreation\t1795636400
rp1/iscsi/lun0\tused\t21474836480
rp1/iscsi/lun0\treferenced\t114688
rp1/iscsi/lun0\tuserrefs\t-
rp1/iscsi/lun0\twritten\t8192
rp1/iscsi/lun0\treceive_resume_token\t1-e604ea4bf-e0-789c63a2
rp1/iscsi/lun0\tesxdr:group\tcore
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\ttype\tsnapshot
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\tguid\t9299928230876914126
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\tcreatetxg\t40
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\tcreation\t1795700000
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\tused\t0
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\treferenced\t114688
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\tuserrefs\t1
rp1/iscsi/lun0@esxdr_core_20261126T030000Z\twritten\t4096
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\ttype\tsnapshot
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\tguid\t10299928230876914126
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\tcreatetxg\t12
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\tcreation\t1795636403
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\tused\t0
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\treferenced\t114688
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\tuserrefs\t0
rp1/iscsi/lun0@esxdr_core_20261126T020000Z\twritten\t114688
"""


def test_parse_get_openzfs():
    d = parse_get(OPENZFS_GET)
    assert set(d) == {"rp1/iscsi", "rp1/iscsi/lun0"}
    lun = d["rp1/iscsi/lun0"]
    assert lun.type == "volume"
    assert lun.guid == 8159235507601469409  # exact: -p, never "7.08E"
    assert lun.written == 8192
    assert lun.resume_token == "1-e604ea4bf-e0-789c63a2"
    assert lun.props == {"esxdr:group": "core"}
    # sorted by createtxg, whatever order zfs printed them in
    assert [s.name for s in lun.snapshots] == ["esxdr_core_20261126T020000Z", "esxdr_core_20261126T030000Z"]
    assert lun.snapshots[1].held and not lun.snapshots[0].held
    assert lun.snapshots[1].written == 4096
    assert d["rp1/iscsi"].resume_token is None and d["rp1/iscsi"].written == 0


def test_parse_get_legacy_without_openzfs_props():
    text = "sp1/a\ttype\tfilesystem\nsp1/a\tguid\t7\nsp1/a@s\ttype\tsnapshot\nsp1/a@s\tguid\t8\nsp1/a@s\tuserrefs\t-\n"
    d = parse_get(text)
    assert d["sp1/a"].written is None
    assert d["sp1/a"].snapshots[0].userrefs is None
    assert not d["sp1/a"].snapshots[0].held


def test_parse_get_ignores_snapshots_of_unlisted_datasets_and_junk():
    d = parse_get("x@s\ttype\tsnapshot\ngarbage line\n\n")
    assert d == {}


@pytest.mark.parametrize("text,total", [
    ("full\tsp1/a@s1\t21474836480\nsize\t21474836480\n", 21474836480),
    ("incremental\tsp1/a@s1\tsp1/a@s2\t4096\nincremental\tsp1/a@s2\tsp1/a@s3\t8192\nsize\t12288\n", 12288),
    ("", None),
])
def test_send_estimate(text, total):
    assert parse_send_estimate(text) == total


def failed(stderr: str) -> CommandFailed:
    return CommandFailed("x", argv=["zfs", "receive"], returncode=1, stderr=stderr, host="ss2")


@pytest.mark.parametrize("stderr,kind", [
    ("cannot receive incremental stream: destination rp1/iscsi/lun0 has been modified\nsince most recent snapshot\n",
     "modified"),
    ("cannot receive incremental stream: most recent snapshot of rp1/iscsi/lun0 does not\nmatch incremental source\n",
     "diverged"),
    ("cannot receive new filesystem stream: destination 'rp1/iscsi/lun0' exists\nmust specify -F to overwrite it\n",
     "unrelated"),
])
def test_two_line_receive_errors_become_typed_conflicts(stderr, kind):
    e = translate(failed(stderr))
    assert isinstance(e, ReplicationConflict)
    assert e.kind == kind
    assert e.evidence["dataset"] == "rp1/iscsi/lun0"
    assert e.exit_code == 3


@pytest.mark.parametrize("stderr,cls", [
    ("cannot open 'rp1/x@y': dataset does not exist\n", DatasetMissing),
    ("cannot create snapshot 'sp1/a@s1': dataset already exists\n", AlreadyExists),
    ("cannot unmount 'rp1/iscsi/lun0': not currently mounted\n", NotMounted),
    ("cannot destroy 'rp1/x': dataset is busy\n", TransientError),
    ("cannot receive incremental stream: failed to read from stream\n", TransientError),
    ("internal error: Invalid argument\n", CommandFailed),
])
def test_other_errors(stderr, cls):
    assert type(translate(failed(stderr))) is cls


def test_capabilities_from_probe():
    c = capabilities_from_probe({"openzfs": True, "compressors": ["zstd"], "mbuffer": True})
    assert c.flavour == "openzfs" and c.resume and c.written and c.compressors == ("zstd",)
    c = capabilities_from_probe({"openzfs": False})
    assert c.flavour == "legacy" and not c.resume and not c.send_estimate
