"""The quick no-op (replication/quick.py) on real OpenZFS: on 2.2 and newer an unchanged group costs
one targeted read per side; before 2.2 (Debian 12's 2.1) every run lists in full. Either way a
snapshot taken by hand on production is found and sent by the next no-op."""

from __future__ import annotations

import json
import time

import pytest

from esxdr.replication import quick
from esxdr.zfs import openzfs_version

pytestmark = pytest.mark.openzfs


def _noop(g) -> dict:
    r = g.esxdr("--json", "replicate", g.name, "--no-snapshot", "--no-prune")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_an_unchanged_group_is_read_not_listed_where_snapshots_changed_exists(group_factory, lane):
    g = group_factory(3)
    for ds in g.datasets:
        g.write(ds, 1 << 20)
    r = g.esxdr("--json", "replicate", g.name)
    assert r.returncode == 0, r.stderr
    newest = json.loads(r.stdout)["snapshot"]
    version = openzfs_version(*lane.out("zfs version").splitlines())
    assert version is not None
    has = version >= (2, 2)
    time.sleep(quick.MATURITY + 1)  # the run just created and held snapshots: not yet trusted
    first = _noop(g)
    assert first["observation"] == "full" and first["snapshot"] == newest
    record = quick.record_path(str(g.state_dir), g.name)
    assert record.exists() is has, f"OpenZFS {version}: snapshots_changed {'exists' if has else 'does not exist'}"
    second = _noop(g)
    assert second["snapshot"] == newest and second["bytes"] == 0
    assert all(a["kind"] == "up-to-date" for d in second["datasets"] for a in d["actions"])
    if has:
        assert second["observation"] == "quick"
        assert second["commands"] == {"ss1": 1, "ss2": 1}
        log = lane.out("cat /var/log/esxdr-serve.log").splitlines()
        assert any(" get -Hp " in line and g.dr(g.datasets[0]) in line for line in log[-5:]), log[-5:]
    else:
        assert second["observation"] == "full"

    # A snapshot taken by hand: snapshots_changed moves, the next no-op lists and sends it.
    lane.run(f"zfs snapshot -r {g.source_root}@byhand")
    third = _noop(g)
    assert third["observation"] == "full" and third["snapshot"] == "byhand"
    for ds in g.datasets:
        assert g.get("guid", f"{ds}@byhand") == g.get("guid", f"{g.dr(ds)}@byhand")
        assert g.sha(ds) == g.sha(ds, "dr")
    assert not record.exists()  # the run sent something: the record went with it
