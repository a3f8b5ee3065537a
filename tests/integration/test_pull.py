"""Pull mode on the lab (issue #14): production holds no key to DR.

Production snapshots itself and publishes its target manifest (`esxdr replicate --snapshot-only`
with production's site file). The DR box pulls (`replicate --pull` with the lab's site-dr.yaml: ss2
local, ss1 reached through the lab's real sshd with DR's own key, whose forced command on
production is `esxdr serve --send-only`). Then, from the DR box alone: a drill, and the bad-day
failover. Through the pull key nothing on production can be written, removed or rewound.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from replica import replica_mounted

pytestmark = pytest.mark.integration
ZFS_TIMEOUT = 120


@pytest.fixture(scope="module")
def pull_lab():
    import os

    from drill_fixtures import make_drill_lab

    # No push replication first: everything DR has, it pulled.
    yield from make_drill_lab(f"u{os.getpid() % 100000}", replicate=False)


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=True, timeout=ZFS_TIMEOUT).stdout


def snapshots(root: str) -> dict[str, str]:
    """snapshot -> guid under a root, production's or DR's (one `zfs get`)."""
    out = zfs("get", "-rHp", "-o", "name,value", "guid", root)  # pool v23's get has no -t
    return dict(line.split("\t") for line in out.splitlines() if "@" in line.split("\t")[0])


def holds(snapshot: str) -> int:
    return int(zfs("get", "-Hp", "-o", "value", "userrefs", snapshot).strip())


def production_site(dl) -> str:
    """Production's own site file in pull mode (the lab writes it): ss2 pulls, no key to it."""
    return str(dl.lab.production_pull_site_path)


def through_pull_key(dl, command: str) -> subprocess.CompletedProcess:
    s = dl.lab.state()["sshd"]
    return subprocess.run(
        ["ssh", "-F", "none", "-i", s["pull_key"], "-p", str(s["port"]), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
         f"{s['account']}@{s['address']}", command], capture_output=True, text=True, timeout=ZFS_TIMEOUT)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def production_file(dl, ds: str) -> Path:
    return Path(dl.lab.state()["pools"]["mountpoint_root"]) / ds / "lun.img"


def test_pull_replicates_with_production_holding_no_dr_key(pull_lab, tmp_path):
    dl = pull_lab
    src_root, dr_root = f"{dl.prod_pool}/iscsi", f"{dl.dr_pool}/iscsi"
    # The DR view reaches production only through the send-only line, with a key of its own.
    dr_view = Path(dl.dr_site).read_text()
    assert f"serve_prefix: {src_root}" in dr_view and "pull_ed25519" in dr_view
    assert "--send-only" in dl.lab.state()["sshd"]["pull_line"]

    # Production: its snapshot, its manifest published on the source root; nothing reaches DR.
    prod_site = production_site(dl)
    assert "key:" not in Path(prod_site).read_text().split("  ss2:", 1)[1].split("vsphere:", 1)[0]
    took = json.loads(dl.ok("--json", "replicate", "core", "--snapshot-only", site=prod_site).stdout)
    assert took["mode"] == "snapshot-only" and took["manifest"] and took["datasets"] == []
    assert zfs("get", "-Hp", "-o", "value", "esxdr:manifest-sha", src_root).strip() == took["manifest"]
    first = took["snapshot"]

    def dr_exists() -> bool:
        return subprocess.run(["zfs", "list", dr_root], capture_output=True, timeout=ZFS_TIMEOUT).returncode == 0

    assert not dr_exists()

    # DR pulls: full streams, the manifest copied (validated), the cursor held on both sides.
    dry = json.loads(dl.ok("--json", "replicate", "core", "--pull", "--dry-run", site=dl.dr_site).stdout)
    assert [a["kind"] for d in dry["datasets"] for a in d["actions"]] == ["send-full", "send-full"]
    assert not dr_exists()  # a dry run changes nothing
    pulled = json.loads(dl.ok("--json", "replicate", "core", "--pull", site=dl.dr_site).stdout)
    assert pulled["mode"] == "pull" and pulled["snapshot"] == first and pulled["manifest"] == took["manifest"]
    assert pulled["pruned"].get("ss1") is None  # production prunes itself
    luns = sorted(d["dest"] for d in pulled["datasets"])
    assert luns == [f"{dr_root}/lun0", f"{dr_root}/lun1"]
    prod, dr = snapshots(src_root), snapshots(dr_root)
    for lun in luns:
        src_snap = f"{src_root}/{lun.rsplit('/', 1)[1]}@{first}"
        assert dr[f"{lun}@{first}"] == prod[src_snap]  # the same snapshot, by guid
        assert holds(src_snap) == 1 and holds(f"{lun}@{first}") == 1  # the cursor, on each side
    assert zfs("get", "-Hp", "-o", "value", "esxdr:manifest-sha", dr_root).strip() == took["manifest"]
    # The consistency level production recorded on its snapshot is on DR's copies too.
    level = took["consistency"]["level"]
    for lun in luns:
        prod_level = zfs("get", "-Hp", "-o", "value", "esxdr:consistency",
                         f"{src_root}/{lun.rsplit('/', 1)[1]}@{first}").strip()
        assert prod_level == level
        assert zfs("get", "-Hp", "-o", "value", "esxdr:consistency", f"{lun}@{first}").strip() == \
            (level if level != "crash" else "-")  # crash is the default, never written
    # The DR box's status reads production through the same account: RPO from what it pulled.
    st = json.loads(dl.ok("--json", "status", "core", site=dl.dr_site).stdout)
    row = st[0] if isinstance(st, list) else st
    assert row["last_snapshot"] == first and row["last_run"]["bytes"] > 0
    # Every request of the pull came through serve --send-only and was run; nothing was refused.
    log = (Path(dl.lab.cfg.dir) / "serve.log").read_text()
    assert "zfs send" in log and "REFUSED" not in log

    # A second cycle: new data, production's snapshot, DR's incremental pull; the cursor moves.
    for lun in ("lun0", "lun1"):
        with open(production_file(dl, f"{src_root}/{lun}"), "r+b") as f:
            f.seek(40 << 20)
            f.write(hashlib.sha256(lun.encode()).digest() * 4096)
    second = json.loads(dl.ok("--json", "replicate", "core", "--snapshot-only", site=prod_site).stdout)["snapshot"]
    again = json.loads(dl.ok("--json", "replicate", "core", "--pull", site=dl.dr_site).stdout)
    assert again["snapshot"] == second
    assert [a["kind"] for d in again["datasets"] for a in d["actions"]] == ["send-incremental"] * 2
    for lun in ("lun0", "lun1"):
        assert holds(f"{src_root}/{lun}@{second}") == 1 and holds(f"{src_root}/{lun}@{first}") == 0
        with replica_mounted(f"{dr_root}/{lun}", tmp_path / lun) as where:
            assert sha(where / "lun.img") == sha(production_file(dl, f"{src_root}/{lun}"))


@pytest.mark.parametrize(("command", "reason"), [
    ("zfs destroy -r {src}", "this key only reads and sends"),
    ("zfs destroy {src}/lun0@{snap}", "this key only reads and sends"),
    ("zfs snapshot -r {src}@evil", "this key only reads and sends"),
    ("zfs rollback -r {src}/lun0@{snap}", "this key only reads and sends"),
    ("zfs set esxdr:manifest-sha=forged {src}", "this key only reads and sends"),
    ("zfs receive -F {src}/lun0", "this key only reads and sends"),
    ("zfs release esxdr-test-core {src}/lun0@{snap}", "only esxdr's replication tag"),
    ("zfs send -R {src}@{snap}", "flag -R is not allowed"),
    ("zfs send {dr}/lun0@{snap}", "not under the allowed prefix"),
])
def test_the_pull_key_cannot_change_production(pull_lab, command, reason):
    dl = pull_lab
    src_root = f"{dl.prod_pool}/iscsi"
    before = zfs("get", "-rHp", "-o", "name,property,value", "guid,userrefs,referenced,esxdr:manifest-sha", src_root)
    snap = sorted(s for s in snapshots(src_root) if s.startswith(f"{src_root}/lun0@"))[-1].split("@")[1]
    r = through_pull_key(dl, command.format(src=src_root, dr=f"{dl.dr_pool}/iscsi", snap=snap))
    assert r.returncode == 126 and reason in r.stderr, r.stderr
    after = zfs("get", "-rHp", "-o", "name,property,value", "guid,userrefs,referenced,esxdr:manifest-sha", src_root)
    assert after == before


def test_holds_the_pull_key_adds_go_at_productions_next_snapshot(pull_lab):
    """The pull key may hold with replication's tag (its cursor), so a compromised DR could hold
    every production snapshot and fill the pool. Production keeps the newest such hold only."""
    dl = pull_lab
    src_root = f"{dl.prod_pool}/iscsi"
    lun0 = sorted(s for s in snapshots(src_root) if s.startswith(f"{src_root}/lun0@esxdr_core_"))
    held = [x for x in lun0 if holds(x)]
    assert held and lun0[0] != held[-1], (lun0, held)  # DR's cursor, and an older snapshot
    cursor, older = held[-1], lun0[0]
    r = through_pull_key(dl, f"zfs hold esxdr_core {older}")
    assert r.returncode == 0 and holds(older) == 1, r.stderr
    dl.ok("replicate", "core", "--snapshot-only", site=production_site(dl))
    assert holds(cursor) == 1  # the cursor stays: DR's next pull sends from it
    assert older not in snapshots(src_root) or holds(older) == 0


def test_drill_and_disaster_failover_from_the_dr_box(pull_lab):
    """The DR box alone, with its own site file: a drill while production runs, then the bad day."""
    dl = pull_lab
    dl.ok("replicate", "core", "--snapshot-only", site=production_site(dl))
    dl.ok("replicate", "core", "--pull", site=dl.dr_site)
    dl.ok("test", "start", "core", timeout=240, site=dl.dr_site)
    drilled = dl.vms("esx-dr")
    assert len(drilled) == len(dl.seed["vms"])
    assert all((p, b) == ("poweredOn", "green") for p, b, _ in drilled.values())
    dl.ok("replicate", "core", "--pull", site=dl.dr_site)  # the pull goes on during the drill
    dl.ok("test", "cleanup", "core", site=dl.dr_site)
    assert dl.vms("esx-dr") == {}

    dl.kill_production_target()
    r = dl.ok("failover", "core", "--disaster", timeout=240, site=dl.dr_site)
    assert "RTO" in r.stdout and "RPO" in r.stdout
    up = dl.vms("esx-dr")
    assert len(up) == len(dl.seed["vms"]) and all((p, b) == ("poweredOn", "green") for p, b, _ in up.values())
