"""A planned failover in pull mode and the way home, on the lab (issue #14): production hands off,
DR pulls and takes over, and nothing is lost; then DR hands back and production pulls it home.

DR reaches production only through the send-only account (`esxdr serve --send-only`), so it cannot
stop production's VMs, snapshot them or remove production's LUNs. Production does those itself
(`esxdr failover core --planned --hand-off` with production's own site file) and publishes the
final snapshot's name on its source root. DR's `esxdr failover core --planned` (the DR box's site
file) refuses until then, refuses a forged hand-off or one that production moved past, and
otherwise pulls exactly that snapshot, guards, promotes and boots the VMs: RPO 0.

The way home mirrors it. Production (`site-production-home.yaml`: DR behind its send-only account,
with production's home key) rolls itself back and pulls (`reprotect`); the DR box hands back
(`failback --planned --hand-off`: its VMs stopped, LUNs removed, datasets sealed); production
pulls DR's final snapshot and boots at home (`failback --planned`); DR's pull resumes by itself
once it sees production live at that snapshot. Production never holds a key that writes on DR.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_failover import props, served
from test_pull import production_site, snapshots, zfs

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pull_lab():
    import os

    from drill_fixtures import make_drill_lab

    yield from make_drill_lab(f"h{os.getpid() % 100000}", replicate=False)


def test_planned_failover_in_pull_mode_hands_off_then_pulls(pull_lab):
    dl = pull_lab
    src_root, dr_root = f"{dl.prod_pool}/iscsi", f"{dl.dr_pool}/iscsi"
    naas = {d["naa"].removeprefix("naa.") for d in dl.seed["datastores"].values()}
    datasets = sorted(d["dataset"].rsplit("/", 1)[1] for d in dl.seed["datastores"].values())
    prod_site = production_site(dl)
    dl.ok("replicate", "core", "--snapshot-only", site=prod_site)
    dl.ok("replicate", "core", "--pull", site=dl.dr_site)
    dl.power_on_production()
    prod = dl.vms("esx-prod")

    # Before production hands off, DR refuses, and changes nothing.
    before = snapshots(dr_root)
    r = dl.esxdr("failover", "core", "--planned", timeout=240, site=dl.dr_site)
    assert r.returncode == 3 and "has not handed core off" in r.stderr and "--hand-off" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr and snapshots(dr_root) == before

    # A forged hand-off (production's key writes the property) is refused naming it.
    zfs("set", "esxdr:handoff=esxdr_other_20261203T000000Z", src_root)
    r = dl.esxdr("failover", "core", "--planned", timeout=240, site=dl.dr_site)
    assert r.returncode == 3 and "esxdr:handoff='esxdr_other_20261203T000000Z'" in r.stderr, r.stderr
    assert snapshots(dr_root) == before
    zfs("inherit", "esxdr:handoff", src_root)

    # Production's half: the runbook, then the hand-off.
    dry = dl.ok("failover", "core", "--planned", "--hand-off", "--dry-run", site=prod_site)
    assert "because" in dry.stdout and "publish the hand-off" in dry.stdout
    assert all((p, b) == ("poweredOn", "green") for p, b, _ in dl.vms("esx-prod").values())  # a dry run
    r = dl.ok("failover", "core", "--planned", "--hand-off", timeout=240, site=prod_site)
    assert "handed off at @" in r.stdout and "esxdr failover core --planned" in r.stdout
    handed = zfs("get", "-H", "-o", "value", "esxdr:handoff", src_root).strip()
    assert all(f"{src_root}/{ds}@{handed}" in snapshots(src_root) for ds in datasets)
    assert all(p == "poweredOff" for p, _, _ in dl.vms("esx-prod").values())
    assert served(dl, "ss1") == set()  # production serves none of the NAAs any more
    r = dl.esxdr("replicate", "core", "--snapshot-only", site=prod_site)
    assert r.returncode == 3 and "failed over" in r.stderr  # production takes no snapshot after its hand-off
    again = dl.ok("failover", "core", "--planned", "--hand-off", site=prod_site)  # complete: nothing left
    assert "nothing left to do" in again.stderr

    # A snapshot newer than the hand-off: DR pulls nothing, names it; gone again, DR goes on.
    zfs("snapshot", "-r", f"{src_root}@stray")
    r = dl.esxdr("failover", "core", "--planned", timeout=240, site=dl.dr_site)
    assert r.returncode == 3 and f"newer than its hand-off @{handed}" in r.stderr and "@stray" in r.stderr, r.stderr
    assert snapshots(dr_root) == before
    zfs("destroy", "-r", f"{src_root}@stray")

    # DR's half: pull exactly the hand-off, guard, promote, present, boot.
    dry = dl.ok("failover", "core", "--planned", "--dry-run", timeout=240, site=dl.dr_site)
    assert f"pull production's hand-off snapshot @{handed}" in dry.stdout and "shut down" not in dry.stdout
    r = dl.ok("failover", "core", "--planned", timeout=300, site=dl.dr_site)
    assert "RPO 0s" in r.stdout or "RPO 0" in r.stdout, r.stdout
    items = [i for i in json.loads(dl.ok("report", "list", "--json", site=dl.dr_site).stdout) if i["kind"] == "failover"]
    rep = json.loads(Path(items[0]["json"]).read_text())
    assert rep["outcome"] == "ok" and rep["mode"] == "planned" and rep["rpo_seconds"] == 0
    assert rep["snapshot"] == handed
    # The VMs went down at the hand-off, before this run: the report says how long at least.
    assert rep["outage_at_least_seconds"] >= rep["rto_seconds"] > 0 and "outage since the hand-off" in r.stdout
    assert [s["id"] for s in rep["steps"]][:3] == ["replicate", "stop-replication", "guard"]

    # Nothing lost: DR went live at production's own final snapshot (the same guid: the same bytes)
    # and at nothing newer. (The LUN files themselves differ by now: both hosts write their VMFS.)
    dr_snaps, prod_snaps = snapshots(dr_root), snapshots(src_root)
    for ds in datasets:
        assert dr_snaps[f"{dr_root}/{ds}@{handed}"] == prod_snaps[f"{src_root}/{ds}@{handed}"], ds
        assert max((n for n in dr_snaps if n.startswith(f"{dr_root}/{ds}@")), key=lambda n: n.split("@")[1]) \
            == f"{dr_root}/{ds}@{handed}"
    up = dl.vms("esx-dr")
    assert set(up) == set(prod)
    for name, (power, beat, uuid) in up.items():
        assert (power, beat) == ("poweredOn", "green") and uuid == prod[name][2], name  # I moved it
    assert served(dl, "ss2") == naas and served(dl, "ss1") == set()
    r = dl.esxdr("replicate", "core", "--pull", site=dl.dr_site)
    assert r.returncode == 3 and "failed over" in r.stderr  # DR's copies are live now: no pull overwrites them

    # The way home. Before DR hands back, production's failback refuses.
    home_site = str(dl.lab.production_home_site_path)
    r = dl.esxdr("failback", "core", "--planned", "--pull", timeout=240, site=home_site)
    assert r.returncode == 3 and "has not handed core back" in r.stderr, r.stderr
    # A production back from a disaster has no hand-off marker: reprotect sets one, so that its
    # scheduled snapshots stop while it is DR's replica (they would make DR's next stream diverge).
    marker = dl.lab.dir / "state" / "failover" / "core.replication-stopped"  # production's state
    assert marker.exists()
    marker.unlink()
    dl.ok("reprotect", "core", "--pull", "--yes", timeout=240, site=home_site)  # production rolls back, pulls
    assert marker.exists()
    r = dl.esxdr("replicate", "core", "--snapshot-only", site=prod_site)
    assert r.returncode == 3 and "failed over" in r.stderr
    assert all(props(dl, f"{src_root}/{ds}") == ("on", "no") for ds in datasets)  # a sealed replica now
    dl.ok("failback", "core", "--planned", "--hand-off", timeout=300, site=dl.dr_site)
    back = zfs("get", "-H", "-o", "value", "esxdr:handoff", dr_root).strip()
    assert back.startswith("esxdr_core_") and back != handed
    assert dl.vms("esx-dr") == {} and served(dl, "ss2") == set()
    assert all(props(dl, f"{dr_root}/{ds}") == ("on", "no") for ds in datasets)
    r = dl.esxdr("replicate", "core", "--pull", site=dl.dr_site)
    assert r.returncode == 3 and "not completed its failback" in r.stderr, r.stderr  # DR waits for production

    r = dl.ok("failback", "core", "--planned", "--pull", timeout=300, site=home_site)
    assert "RPO" in r.stdout
    home = dl.vms("esx-prod")
    assert all((p, b) == ("poweredOn", "green") and u == prod[n][2] for n, (p, b, u) in home.items())
    assert served(dl, "ss1") == naas and served(dl, "ss2") == set()
    dr_snaps, prod_snaps = snapshots(dr_root), snapshots(src_root)
    for ds in datasets:  # production holds DR's final snapshot itself (same guid: what DR wrote came home)
        assert prod_snaps[f"{src_root}/{ds}@{back}"] == dr_snaps[f"{dr_root}/{ds}@{back}"]
    assert zfs("get", "-H", "-o", "value", "esxdr:handoff", src_root).strip() == "-"

    # Pull mode goes on: production snapshots itself again, and DR's pull resumes by itself.
    dl.ok("replicate", "core", "--snapshot-only", site=prod_site)
    r = dl.ok("replicate", "core", "--pull", site=dl.dr_site)
    assert "production is home" in r.stderr
    dr_snaps, prod_snaps = snapshots(dr_root), snapshots(src_root)
    newest = sorted(s for s in prod_snaps if s.startswith(f"{src_root}/{datasets[0]}@"))[-1].split("@")[1]
    assert all(prod_snaps[f"{src_root}/{ds}@{newest}"] == dr_snaps[f"{dr_root}/{ds}@{newest}"] for ds in datasets)
    assert zfs("get", "-H", "-o", "value", "esxdr:handoff", dr_root).strip() == "-"
