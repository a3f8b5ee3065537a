"""When production and DR disagree, the refusal names a next step, and that step works (issue #14, item 7).

The scenarios come from what syncoid's, zrepl's and zfs_autobackup's test suites put a replicator
through: the newest common snapshot lost on the source, every common snapshot lost (re-seed), an
unrelated dataset where the replica should go. Each first run is refused (exit 3) with evidence
and DR unchanged; then the step the hint names, `esxdr replicate --rollback-dr` (with DR's own
privileges: the lab's DR is this machine), succeeds and leaves DR byte-identical to production.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import pytest
from replica import replica_mounted

pytestmark = pytest.mark.integration
ZFS_TIMEOUT = 120


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=True, timeout=ZFS_TIMEOUT).stdout


def snapshots(ds: str) -> list[str]:
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg", "-r", ds)
    return [n.split("@", 1)[1] for n in out.split() if n.startswith(ds + "@")]


def drop_on_production(g, ds: str, names: list[str]) -> None:
    """What another tool or an admin does on production: release esxdr's hold and destroy."""
    for n in names:
        subprocess.run(["zfs", "release", f"esxdr_{g.name}", f"{ds}@{n}"], capture_output=True, timeout=ZFS_TIMEOUT)
        zfs("destroy", f"{ds}@{n}")


def same_bytes(g) -> None:
    for ds in g.datasets:
        dr = g.dr_root + ds[len(g.source_root):]
        with replica_mounted(dr, g.lun_file(ds, "dr").parent):
            assert hashlib.sha256(g.lun_file(ds, "dr").read_bytes()).digest() == \
                hashlib.sha256(g.lun_file(ds).read_bytes()).digest(), ds


def replicate(g, *args: str) -> subprocess.CompletedProcess:
    time.sleep(1.1)  # snapshot names are per second
    return g.esxdr("--json", "replicate", g.name, *args)


def replicated_twice(g, ds: str) -> str:
    """Two ordinary replications of the group; the newest snapshot's name."""
    for i in range(2):
        g.write(ds, 1 << 20, offset=i << 20)
        assert replicate(g).returncode == 0
    return snapshots(ds)[-1]


def refused_then_resolved(g, kind: str) -> dict:
    dr_before = {d: snapshots(g.dr_root + d[len(g.source_root):]) for d in g.datasets}
    r = replicate(g)
    assert r.returncode == 3, r.stderr
    err = json.loads(r.stdout)
    assert err["kind"] == kind, err
    assert "--rollback-dr" in r.stderr
    assert {d: snapshots(g.dr_root + d[len(g.source_root):]) for d in g.datasets} == dr_before  # nothing changed
    r = replicate(g, "--rollback-dr")
    assert r.returncode == 0, r.stderr
    same_bytes(g)
    # and the next ordinary run through the key goes on from there
    g.write(g.datasets[0], 1 << 20, offset=3 << 20)
    r2 = replicate(g)
    assert r2.returncode == 0, r2.stderr
    same_bytes(g)
    return json.loads(r.stdout)


def test_lost_newest_common_snapshot(group_factory):
    """Production loses its newest snapshot, the one DR holds (still with esxdr's hold): DR-only now."""
    g = group_factory(1)
    ds = g.datasets[0]
    newest = replicated_twice(g, ds)
    drop_on_production(g, ds, [newest])
    g.write(ds, 1 << 20, offset=2 << 20)
    done = refused_then_resolved(g, "diverged")
    kinds = [a["kind"] for a in done["datasets"][0]["actions"]]
    assert kinds == ["rollback-dr", "send-incremental"], kinds
    assert newest not in snapshots(g.dr_root + ds[len(g.source_root):])


def test_every_common_snapshot_gone_reseeds(group_factory):
    """Production has none of DR's snapshots any more: a full stream must replace the replica."""
    g = group_factory(2)
    for ds in g.datasets:
        g.write(ds, 2 << 20)
    assert replicate(g).returncode == 0
    for ds in g.datasets:
        drop_on_production(g, ds, snapshots(ds))
        g.write(ds, 1 << 20)
    zfs("snapshot", "-r", f"{g.source_root}@by-hand")  # production's own, unknown to DR
    done = refused_then_resolved(g, "no-common")
    assert all(d["actions"][0]["kind"] == "send-full" for d in done["datasets"]), done


def test_unrelated_dataset_on_dr(group_factory):
    """A dataset made by hand where a replica should go, with no snapshots."""
    g = group_factory(1)
    ds = g.datasets[0]
    g.write(ds, 2 << 20)
    dr = g.dr_root + ds[len(g.source_root):]
    zfs("create", "-p", "-o", "mountpoint=none", dr)
    done = refused_then_resolved(g, "unrelated")
    assert done["datasets"][0]["actions"][0]["kind"] == "send-full"


def test_a_drill_hold_stops_the_rollback_as_a_conflict_not_a_retry(group_factory):
    """Another tag's hold on what --rollback-dr would destroy: exit 3 (held), at once, DR unchanged."""
    g = group_factory(1)
    ds = g.datasets[0]
    newest = replicated_twice(g, ds)
    dr = g.dr_root + ds[len(g.source_root):]
    zfs("hold", f"esxdr-test-{g.name}", f"{dr}@{newest}")
    drop_on_production(g, ds, [newest])
    started = time.monotonic()
    r = replicate(g, "--rollback-dr")
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["kind"] == "held"
    assert time.monotonic() - started < 60  # no transient retries with backoff
    assert newest in snapshots(dr)
    zfs("release", f"esxdr-test-{g.name}", f"{dr}@{newest}")
    assert replicate(g, "--rollback-dr").returncode == 0
    same_bytes(g)
