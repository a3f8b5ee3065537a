"""A compromised production box cannot destroy, roll back, mount or open anything on DR (issue #14).

Through the lab's real sshd, as the DR service account whose forced command is `esxdr serve`
(with --sudo: zfs-fuse, so serve is the only guard), every destructive sequence is tried with
production's key after two real replications. After each, DR is what it was: the same datasets,
snapshots (by guid), holds, properties and mounts; at the end the replicas still hold production's
bytes (sha256) and replication goes on. Streams are real ones, sent by zfs-fuse from production.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from replica import replica_mounted
from resume_tokens import TOKEN_RPOOL_RAW

pytestmark = pytest.mark.integration
ZFS_TIMEOUT = 120


def zfs(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["zfs", *args], capture_output=True, timeout=ZFS_TIMEOUT, **kw)


def dr_state(root: str) -> list[tuple[str, ...]]:
    """Everything under the DR root that a destructive request could change (one `zfs get`)."""
    out = zfs("get", "-rHp", "-o", "name,property,value",
              "guid,userrefs,referenced,readonly,canmount,mountpoint,mounted,type", root, check=True).stdout
    return sorted(tuple(line.split("\t")) for line in out.decode().splitlines())


def through_key(g, command: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    s = g.lab.state()["sshd"]
    return subprocess.run(
        ["ssh", "-F", "none", "-i", s["key"], "-p", str(s["port"]), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
         f"{s['account']}@{s['address']}", command],
        input=stdin, capture_output=True, timeout=ZFS_TIMEOUT)


def send(*args: str) -> bytes:
    """A real stream from production's zfs."""
    return subprocess.run(["zfs", "send", *args], capture_output=True, check=True, timeout=ZFS_TIMEOUT).stdout


@pytest.fixture
def replicated(group_factory):
    """Two replications of a two-LUN group: DR holds @first and @second of each (both held: DR prunes itself)."""
    g = group_factory(2)
    names = []
    for i in range(2):
        for ds in g.datasets:
            g.write(ds, 1 << 20, offset=i << 20)
        r = g.esxdr("--json", "replicate", g.name)
        assert r.returncode == 0, r.stderr
        names.append(json.loads(r.stdout)["snapshot"])
    g.first, g.second = names
    g.dr = [g.dr_root + ds[len(g.source_root):] for ds in g.datasets]
    return g


def hostile(g) -> list[tuple[str, str, bytes]]:
    """(why, command, stdin): every way the key could remove, rewind, open or mount DR data."""
    lun, other = g.dr
    src = g.datasets[0]
    first, second, tag = f"{lun}@{g.first}", f"{lun}@{g.second}", f"esxdr_{g.name}"
    full = send(f"{src}@{g.second}")
    older_inc = send("-i", f"{src}@{g.first}", f"{src}@{g.second}")
    older_series = send("-I", f"{src}@{g.first}", f"{src}@{g.second}")
    compound = send("-R", f"{src}@{g.second}")
    cases = [
        # destruction: holds, snapshots, datasets
        ("release replication's hold", f"zfs release {tag} {first}", b""),
        ("release the newest hold", f"zfs release {tag} {second} {other}@{g.second}", b""),
        ("destroy a snapshot", f"zfs destroy {first}", b""),
        ("destroy the newest snapshot", f"zfs destroy {second}", b""),
        ("destroy snapshots deferred", f"zfs destroy -d {first}", b""),
        ("destroy a list of snapshots", f"zfs destroy {lun}@{g.first},{g.second}", b""),
        ("destroy a replica", f"zfs destroy {lun}", b""),
        ("destroy the DR root recursively", f"zfs destroy -r {g.dr_root}", b""),
        ("destroy with dependents", f"zfs destroy -R {first}", b""),
        ("destroy forced", f"zfs destroy -f {first}", b""),
        ("roll back, destroying newer", f"zfs rollback -r {first}", b""),
        ("roll back to the newest", f"zfs rollback {second}", b""),
        # adding: a DR-only snapshot would stop the next replication (diverged)
        ("add a snapshot to a replica", f"zfs snapshot {lun}@evil", b""),
        ("add snapshots under the DR root", f"zfs snapshot -r {g.dr_root}@evil", b""),
        # receive -F: rewinds or replaces
        ("a full stream forced over a replica", f"zfs receive -F {lun}", full),
        ("a full stream forced over the DR root", f"zfs receive -F {g.dr_root}", full),
        ("an incremental from an older base, forced", f"zfs receive -F {lun}", older_inc),
        ("a series (send -I) from an older base, forced", f"zfs receive -F {lun}", older_series),
        ("a compound stream (send -R) forced", f"zfs receive -F {lun}", compound),
        ("a compound stream into a new dataset", f"zfs receive {g.dr_root}/evil", compound),
        ("garbage forced over a replica", f"zfs receive -F {lun}", b"\0" * 4096),
        ("an empty stream forced", f"zfs receive -F {lun}", b""),
        ("abort a resumable receive", f"zfs receive -A {lun}", b""),
        ("forced through a decompressor", f"zstd -dc | zfs receive -F {lun}",
         subprocess.run(["zstd", "-c", "-q"], input=full, capture_output=True, check=True).stdout),
        # opening a replica: writable, mountable, mounted, shared
        ("make a replica writable", f"zfs set readonly=off {lun}", b""),
        ("make a replica mountable", f"zfs set canmount=on {lun}", b""),
        ("give a replica a mountpoint", f"zfs set mountpoint=/tmp/esxdr-evil {lun}", b""),
        ("share a replica", f"zfs set sharenfs=on {lun}", b""),
        ("mount a replica", f"zfs mount {lun}", b""),
        ("force a replica's unmount", f"zfs unmount -f {lun}", b""),
        ("inherit readonly", f"zfs inherit readonly {lun}", b""),
        ("rename a replica", f"zfs rename {lun} {g.dr_root}/moved", b""),
        ("promote", f"zfs promote {lun}", b""),
        ("clone outside a drill's container", f"zfs clone {first} {g.dr_root}/copy", b""),
        ("clone with a chosen mountpoint", f"zfs clone -o mountpoint=/tmp/esxdr-evil {first} "
                                           f"{g.dr_root}/esxdr-test-x/y", b""),
        ("create with a mountpoint", f"zfs create -o mountpoint=/tmp/esxdr-evil {g.dr_root}/y", b""),
        ("delegate rights", f"zfs allow everyone destroy {g.dr_root}", b""),
        ("the pool", "zpool destroy " + g.dr_root.split("/")[0], b""),
        ("read another snapshot by resume token", f"zfs send -t {TOKEN_RPOOL_RAW}", b""),
        ("a shell", f"sh -c 'zfs destroy {first}'", b""),
        ("chained commands", f"zfs get name {lun}; zfs destroy {first}", b""),
        ("a substitution", f"zfs destroy $(echo {first})", b""),
        ("path tricks", f"zfs destroy {g.dr_root}/../{lun.split('/', 1)[1]}@{g.first}", b""),
        ("a second zfs in a pipeline", f"zfs send {second} | zfs receive -F {lun}", b""),
        ("mbuffer asking for all memory", f"mbuffer -m 90% | zfs receive -F {lun}", full),
    ]
    return cases


def test_every_destructive_request_is_refused_and_dr_is_unchanged(replicated):
    g = replicated
    cases = hostile(g)
    assert len(cases) >= 40
    before = dr_state(g.dr_root)
    outcomes = []
    for why, command, stdin in cases:
        r = through_key(g, command, stdin)
        after = dr_state(g.dr_root)
        outcomes.append((why, r.returncode, r.stderr.decode(errors="replace").strip()[:300], after == before))
    bad = [o for o in outcomes if o[1] != 126 or not o[3]]
    assert bad == [], bad
    assert all("esxdr serve: refused:" in err for _, _, err, _ in outcomes)
    # the data itself: production's bytes on DR, and replication goes on through the same key
    for ds in g.datasets:
        g.write(ds, 1 << 20, offset=2 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    for ds, dr in zip(g.datasets, g.dr, strict=True):
        with replica_mounted(dr, g.lun_file(ds, "dr").parent):
            assert hashlib.sha256(g.lun_file(ds, "dr").read_bytes()).digest() == \
                hashlib.sha256(g.lun_file(ds).read_bytes()).digest(), ds


def test_what_the_key_may_do_to_a_replica_loses_nothing(replicated):
    """The two forced receives serve lets through: an incremental from the replica's newest
    snapshot (only unsnapshotted writes could go, and a replica has none), and a full stream into
    a new dataset, which mounts nowhere (it inherits the DR root's mountpoint=none)."""
    g = replicated
    src, lun = g.datasets[0], g.dr[0]
    zfs("snapshot", f"{src}@extra", check=True)
    r = through_key(g, f"zfs receive -F {lun}", send("-i", f"{src}@{g.second}", f"{src}@extra"))
    assert r.returncode == 0, r.stderr
    names = [line.split("\t")[0].split("@")[1] for line in
             zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-r", lun,
                 check=True).stdout.decode().split()]
    assert names == [g.first, g.second, "extra"]
    r = through_key(g, f"zfs receive -F {g.dr_root}/fresh", send(f"{src}@{g.first}"))
    assert r.returncode == 0, r.stderr
    assert zfs("get", "-H", "-o", "value", "mounted", f"{g.dr_root}/fresh", check=True).stdout.strip() == b"no"
    zfs("destroy", f"{src}@extra", check=True)


def test_dr_prunes_itself_releasing_only_its_own_holds(replicated):
    """Replication through the key keeps its DR holds; `esxdr prune --side dr`, run with DR's own
    privileges, counts replication's own hold as no reason to keep a snapshot, releases it (and only
    that tag) from what goes, and keeps each replica's newest snapshot, the base of the next
    incremental. A snapshot a drill also holds stays, with the drill's hold."""
    g = replicated
    lun, other = g.dr

    def userrefs() -> dict[str, str]:
        out = zfs("get", "-rHp", "-o", "name,value", "userrefs", g.dr_root, check=True).stdout.decode()
        return {n: v for n, v in (line.split("\t") for line in out.splitlines()) if "@" in n}

    assert userrefs() == {f"{d}@{s}": "1" for d in g.dr for s in (g.first, g.second)}
    zfs("hold", f"esxdr-test-{g.name}", f"{other}@{g.first}", check=True)  # a drill's, on one of them
    r = g.esxdr("--json", "prune", g.name, "--side", "dr")
    assert r.returncode == 0, r.stderr
    decisions = {d["snapshot"]: d for d in json.loads(r.stdout)}
    assert {n for n, d in decisions.items() if not d["keep"]} == {f"{lun}@{g.first}"}
    assert any("held" in reason for reason in decisions[f"{other}@{g.first}"]["reasons"])
    # replication's hold moved to the newest; the drill's stays (zfs-fuse has no `zfs holds`: a
    # release of a tag that is not there fails, one that is there succeeds)
    assert userrefs() == {f"{lun}@{g.second}": "1", f"{other}@{g.first}": "1", f"{other}@{g.second}": "1"}
    assert zfs("release", f"esxdr_{g.name}", f"{other}@{g.first}").returncode != 0
    zfs("release", f"esxdr-test-{g.name}", f"{other}@{g.first}", check=True)
    # once the drill is gone, the next DR prune takes it too
    r = g.esxdr("--json", "prune", g.name, "--side", "dr")
    assert r.returncode == 0, r.stderr
    assert userrefs() == {f"{lun}@{g.second}": "1", f"{other}@{g.second}": "1"}
