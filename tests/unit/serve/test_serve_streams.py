"""`esxdr serve` reads what zfs is about to act on: a receive's stream and its target, a resume
token's snapshot, a create's mount. The whole forced command runs here in a child process (as
sshd starts it), with a logging fake `zfs` first on PATH: it answers `zfs get` from a scripted
DR and records every other call with the sha256 of what it read on stdin.

The stream heads are written field by field from the layout of ``dmu_replay_record`` in OpenZFS
``sys/zfs_ioctl.h``; tests/integration/test_dr_immutability.py sends real streams from zfs-fuse
through the lab's sshd and serve.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from resume_tokens import TOKEN_RPOOL_RAW

from esxdr.sendstream import BEGIN_BYTES, COMPOUND, DRR_END, MAGIC, SUBSTREAM, BadStream, parse_begin

ROOT = Path(__file__).resolve().parents[3]
LUN = "rp1/iscsi/lun0"
NEWEST, OLDER = 0x1111_2222_3333_4444, 0x5555_6666_7777_8888


def begin(*, fromguid: int = 0, toguid: int = 0x9999, header: int = SUBSTREAM, order: str = "<",
          toname: str = "sp1/iscsi/lun0@esxdr_core_b", payload: int = 0) -> bytes:
    """A BEGIN record: drr_type 0, payloadlen, magic, versioninfo, creation, objset type, flags,
    toguid, fromguid, toname[256]."""
    head = struct.pack(order + "IIQQQIIQQ", 0, payload, MAGIC, header | (4 << 2), 1_700_000_000, 2, 0, toguid,
                       fromguid)
    return head + toname.encode().ljust(256, b"\0")


def end(order: str = "<") -> bytes:
    return struct.pack(order + "II", DRR_END, 0) + b"\0" * (BEGIN_BYTES - 8)


def series(fromguid: int, order: str = "<") -> bytes:
    """The head of `zfs send -I base snap`: a compound BEGIN without payload, its END, then the
    first substream (from the series' base)."""
    return begin(header=COMPOUND, order=order) + end(order) + begin(fromguid=fromguid, order=order)


def stream(head: bytes, body: int = 3 << 20) -> bytes:
    return head + os.urandom(body)


FAKE_ZFS = textwrap.dedent('''\
    #!/usr/bin/env python3
    import hashlib, json, os, sys
    state = json.load(open(os.environ["FAKE_ZFS_STATE"]))
    args = sys.argv[1:]
    def log(entry):
        with open(os.environ["FAKE_ZFS_LOG"], "a") as f:
            f.write(json.dumps(entry) + "\\n")
    if args[0] == "get":
        ds, props = args[-1], args[-2].split(",")
        recursive = "-r" in args
        if ds not in state:
            sys.stderr.write(f"cannot open '{ds}': dataset does not exist\\n")
            sys.exit(1)
        rows = []
        for p in props:
            if p in state[ds]:
                rows.append((ds, p, state[ds][p]))
        if recursive:
            for name, guid, txg in state[ds].get("snapshots", []):
                rows += [(f"{ds}@{name}", "guid", str(guid)), (f"{ds}@{name}", "createtxg", str(txg)),
                         (f"{ds}@{name}", "mountpoint", "-")]
        for r in rows:
            print("\\t".join(r) if "name,property,value" in args else r[2])
        sys.exit(0)
    if args[0] in ("receive", "recv") and os.environ.get("FAKE_ZFS_KILLED"):
        sys.stdin.buffer.read(1 << 16)
        os.kill(os.getpid(), 9)
    data = sys.stdin.buffer.read() if args[0] in ("receive", "recv") else b""
    log({"argv": args, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})
''')


@pytest.fixture
def dr(tmp_path):
    """A scripted DR: {dataset: {property: value, "snapshots": [[name, guid, createtxg], ...]}}."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    zfs = bindir / "zfs"
    zfs.write_text(FAKE_ZFS)
    zfs.chmod(0o755)
    # --sudo runs `sudo -n zfs`: this sudo runs the fake zfs above, never the machine's own
    sudo = bindir / "sudo"
    sudo.write_text('#!/bin/sh\n[ "$1" = -n ] && shift\nexec "$@"\n')
    sudo.chmod(0o755)
    state = {
        "rp1": {"mountpoint": "/rp1"},
        "rp1/iscsi": {"mountpoint": "none"},
        LUN: {"mountpoint": "none", "snapshots": [["a", OLDER, 10], ["b", NEWEST, 20]]},
        "rp1/mounted": {"mountpoint": "/rp1/mounted"},
    }

    class Dr:
        log = tmp_path / "zfs.log"
        serve_log = tmp_path / "serve.log"

        def set(self, ds: str, **props) -> None:
            state.setdefault(ds, {}).update(props)

        env_extra: dict[str, str] = {}

        def serve(self, command: str, data: bytes = b"", *extra: str) -> subprocess.CompletedProcess:
            (tmp_path / "state.json").write_text(json.dumps(state))
            env = {**os.environ, **self.env_extra, "PATH": f"{bindir}:{os.environ['PATH']}",
                   "SSH_ORIGINAL_COMMAND": command,
                   "FAKE_ZFS_STATE": str(tmp_path / "state.json"), "FAKE_ZFS_LOG": str(self.log),
                   "PYTHONPATH": str(ROOT)}
            code = "import sys; from esxdr.serve import main; sys.exit(main(sys.argv[1:]))"
            return subprocess.run([sys.executable, "-c", code, "--allow-prefix", "rp1/iscsi", "--log",
                                   str(self.serve_log), *extra], input=data, capture_output=True, env=env,
                                  timeout=60)

        def calls(self) -> list[dict]:
            return [json.loads(line) for line in self.log.read_text().splitlines()] if self.log.exists() else []

    return Dr()


def _accepted(dr, r, data: bytes, argv: list[str]) -> None:
    assert r.returncode == 0, r.stderr.decode()
    assert dr.calls() == [{"argv": argv, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}]


def _refused(dr, r, reason: str) -> None:
    assert r.returncode == 126, r.stderr.decode()
    assert reason in r.stderr.decode()
    assert dr.calls() == []  # zfs never ran
    assert "REFUSED" in dr.serve_log.read_text()


# -- receive -F ----------------------------------------------------------------------------------

def test_incremental_from_the_newest_snapshot_may_force(dr):
    data = stream(begin(fromguid=NEWEST))
    r = dr.serve(f"zfs receive -F {LUN}", data)
    _accepted(dr, r, data, ["receive", "-F", LUN])


def test_incremental_from_an_older_snapshot_may_not_force(dr):
    r = dr.serve(f"zfs receive -F {LUN}", stream(begin(fromguid=OLDER)))
    _refused(dr, r, f"receive -F would roll '{LUN}' back past its newest snapshot 'rp1/iscsi/lun0@b': "
                    "the stream starts at 'rp1/iscsi/lun0@a'")


def test_incremental_from_an_unknown_base_may_not_force(dr):
    r = dr.serve(f"zfs receive -F {LUN}", stream(begin(fromguid=0xABCDEF)))
    _refused(dr, r, f"starts at guid {0xABCDEF}, not a snapshot of it")


def test_a_full_stream_may_not_force_over_an_existing_replica(dr):
    r = dr.serve(f"zfs receive -F {LUN}", stream(begin()))
    _refused(dr, r, f"receive -F of a full stream would replace '{LUN}', which exists on DR")


def test_a_full_stream_may_force_into_a_new_dataset(dr):
    data = stream(begin())
    r = dr.serve("zfs receive -F rp1/iscsi/new", data)
    _accepted(dr, r, data, ["receive", "-F", "rp1/iscsi/new"])


def test_without_force_any_substream_is_zfs_business(dr):
    data = stream(begin(fromguid=OLDER))  # zfs itself refuses it: its base is not the newest
    r = dr.serve(f"zfs receive -u -s {LUN}", data)
    _accepted(dr, r, data, ["receive", "-u", "-s", LUN])


def test_big_endian_streams_are_read_too(dr):
    r = dr.serve(f"zfs receive -F {LUN}", stream(begin(fromguid=OLDER, order=">")))
    _refused(dr, r, "past its newest snapshot")


def test_a_killed_receive_kills_serve_with_the_same_signal(dr):
    """As an exec'd zfs would: sshd reports the signal, ssh exits 255, esxdr retries the cut stream."""
    dr.env_extra = {"FAKE_ZFS_KILLED": "1"}
    r = dr.serve(f"zfs receive -u {LUN}", stream(begin(fromguid=NEWEST)))
    assert r.returncode == -9, r.stderr.decode()


# -- what a stream may carry --------------------------------------------------------------------

@pytest.mark.parametrize("flags", ["", "-u ", "-F "])
def test_a_compound_stream_with_a_payload_is_refused(dr, flags):
    nvlist = os.urandom(600)  # send -R/-p: the tree and properties, as a packed nvlist
    r = dr.serve(f"zfs receive {flags}{LUN}", stream(begin(header=COMPOUND, payload=len(nvlist)) + nvlist))
    _refused(dr, r, "carries properties or a dataset tree (zfs send -p/-R)")


def test_a_series_from_the_newest_snapshot_may_force(dr):
    data = stream(series(NEWEST))  # zfs send -I: what esxdr sends by default
    _accepted(dr, dr.serve(f"zfs receive -F {LUN}", data), data, ["receive", "-F", LUN])


@pytest.mark.parametrize("order", ["<", ">"])
def test_a_series_from_an_older_snapshot_may_not_force(dr, order):
    r = dr.serve(f"zfs receive -F {LUN}", stream(series(OLDER, order)))
    _refused(dr, r, "past its newest snapshot")


def test_a_compound_header_must_end_before_its_substreams(dr):
    r = dr.serve(f"zfs receive -u {LUN}", stream(begin(header=COMPOUND)))
    _refused(dr, r, "not followed by its END record")


@pytest.mark.parametrize(("data", "reason"), [
    (b"", "the stream ends after 0 bytes"),
    (b"x" * 100, "the stream ends after 100 bytes"),
    (b"\0" * 4096, "not a zfs send stream"),
    (struct.pack("<IIQ", 5, 0, MAGIC) + b"\0" * 400, "first record is of type 5, not BEGIN"),
])
def test_what_is_no_stream_is_refused(dr, data, reason):
    _refused(dr, dr.serve(f"zfs receive -u {LUN}", data), reason)


def test_the_check_reads_the_stream_after_decompression(dr):
    zstd = shutil.which("zstd")
    if not zstd:
        pytest.skip("this machine has no zstd (the stream decompressor serve allows)")
    good = stream(begin(fromguid=NEWEST))
    packed = subprocess.run([zstd, "-c", "-q"], input=good, capture_output=True, check=True).stdout
    _accepted(dr, dr.serve(f"zstd -dc | zfs receive -F {LUN}", packed), good, ["receive", "-F", LUN])
    bad = subprocess.run([zstd, "-c", "-q"], input=stream(begin(fromguid=OLDER)), capture_output=True,
                         check=True).stdout
    dr.log.unlink()
    _refused(dr, dr.serve(f"zstd -dc | zfs receive -F {LUN}", bad), "past its newest snapshot")


# -- receive without -u mounts -----------------------------------------------------------------

def test_receive_without_u_only_where_it_inherits_no_mountpoint(dr):
    data = stream(begin(fromguid=NEWEST))
    _accepted(dr, dr.serve(f"zfs receive {LUN}", data), data, ["receive", LUN])
    dr.log.unlink()
    dr.set(LUN, mountpoint="/rp1/iscsi/lun0")
    _refused(dr, dr.serve(f"zfs receive {LUN}", data), f"receive into '{LUN}' would mount it at /rp1/iscsi/lun0")


def test_a_new_dataset_inherits_its_parents_mountpoint(dr):
    dr.set("rp1/iscsi", mountpoint="/rp1/iscsi")
    _refused(dr, dr.serve("zfs receive rp1/iscsi/new", stream(begin())), "would mount it at /rp1/iscsi")


# -- send -t: the token's snapshot is the one it names ------------------------------------------

def test_a_token_whose_guid_is_its_snapshots_is_sent(dr):
    dr.set("rpool/home/cs@manual_20190808_091825_UTC", guid=str(0x95D6358451844F3C))
    env_prefix = ("--allow-prefix", "rpool/home")
    r = dr.serve(f"zfs send -t {TOKEN_RPOOL_RAW}", b"", *env_prefix)
    assert r.returncode == 0, r.stderr.decode()
    assert dr.calls() == [{"argv": ["send", "-t", TOKEN_RPOOL_RAW], "sha256": hashlib.sha256(b"").hexdigest(),
                           "bytes": 0}]


def test_a_token_naming_one_snapshot_by_anothers_guid_is_refused(dr):
    dr.set("rpool/home/cs@manual_20190808_091825_UTC", guid="12345")
    r = dr.serve(f"zfs send -t {TOKEN_RPOOL_RAW}", b"", "--allow-prefix", "rpool/home")
    _refused(dr, r, f"the resume token's guid {0x95D6358451844F3C} is not that of "
                    "'rpool/home/cs@manual_20190808_091825_UTC'")


# -- create mounts --------------------------------------------------------------------------------

def test_create_as_root_only_where_it_mounts_nothing(dr):
    r = dr.serve("zfs create -p rp1/iscsi/grp", b"", "--sudo")
    assert r.returncode != 126, r.stderr.decode()  # under rp1/iscsi (mountpoint=none): sudo zfs ran
    assert [c["argv"] for c in dr.calls()] == [["create", "-p", "rp1/iscsi/grp"]]
    dr.log.unlink()
    dr.set("rp1/iscsi", mountpoint="/rp1/iscsi")
    _refused(dr, dr.serve("zfs create -p rp1/iscsi/grp", b"", "--sudo"), "would mount it")
    r = dr.serve("zfs create -p -o mountpoint=none rp1/iscsi/grp2", b"", "--sudo")
    assert r.returncode != 126, r.stderr.decode()
    assert [c["argv"] for c in dr.calls()] == [["create", "-p", "-o", "mountpoint=none", "rp1/iscsi/grp2"]]


# -- the parser alone ---------------------------------------------------------------------------

def test_parse_begin_fields():
    b = parse_begin(begin(fromguid=OLDER, toguid=NEWEST, toname="sp1/x@y"))
    assert (b.fromguid, b.toguid, b.toname, b.full, b.compound) == (OLDER, NEWEST, "sp1/x@y", False, False)
    assert len(begin()) == BEGIN_BYTES
    with pytest.raises(BadStream):
        parse_begin(begin()[:-1])
