"""A hung zfs-fuse daemon is told from a stopped one and restarted with its pools.

The daemon is made to hang by SIGSTOP, which looks to every zfs command exactly like the real
hangs seen on pool v23: they wait forever. Last in the integration suite on purpose, since it
restarts the daemon every other test shares.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess

import pytest

from esxdr.lab import ensure_zfs_fuse, zfsfuse

pytestmark = pytest.mark.integration


def test_a_hung_daemon_is_restarted_with_its_pools_and_mounts(group_factory):
    g = group_factory(1)
    ds = g.datasets[0]
    g.write(ds, 1 << 20)
    assert g.esxdr("replicate", g.name).returncode == 0
    before = hashlib.sha256(g.lun_file(ds).read_bytes()).hexdigest()
    pools = set(zfsfuse.pool_names() or [])
    assert {g.prod_pool, g.dr_pool} <= pools

    pid = zfsfuse.daemon_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        # a zfs command now waits, as it would on a hung daemon
        with pytest.raises(subprocess.TimeoutExpired):
            subprocess.run(["zfs", "list", "-H", g.source_root], capture_output=True, timeout=3)
        assert zfsfuse.state(timeout=3) == "hung"
        ensure_zfs_fuse()  # what `esxdr lab up` and scripts/test do
    finally:
        try:
            os.kill(pid, signal.SIGCONT)  # only if the restart did not happen
        except OSError:
            pass

    assert zfsfuse.daemon_pid() not in (None, pid)
    assert zfsfuse.state() == "up"
    # the restarted daemon took the lab's ARC ceiling, whatever /etc/zfs/zfsrc says
    assert int((zfsfuse.ARCSTATS / "c_max").read_text()) == zfsfuse.arc_max_mib() << 20
    assert pools <= set(zfsfuse.pool_names() or [])
    # the source is mounted again with its data; the replica stays unmounted (canmount=noauto)
    assert hashlib.sha256(g.lun_file(ds).read_bytes()).hexdigest() == before
    dr = g.dr_root + ds[len(g.source_root):]
    mounted = subprocess.run(["zfs", "get", "-H", "-o", "value", "mounted", dr], capture_output=True, text=True,
                             check=True).stdout.strip()
    assert mounted == "no"
    # and replication goes on incrementally
    g.write(ds, 1 << 20, offset=1 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    assert [a["kind"] for d in json.loads(r.stdout)["datasets"] for a in d["actions"]] == ["send-incremental"]
