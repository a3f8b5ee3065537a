"""`esxdr lab up|status|down`: everything up, then nothing left — twice in a row."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import tempfile
from pathlib import Path

import pytest

from esxdr.lab import Lab, LabConfig
from esxdr.site import load_site
from esxdr.util import pid_running

pytestmark = pytest.mark.integration
ESXDR = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "esxdr")


def pools() -> set[str]:
    return set(subprocess.run(["zpool", "list", "-H", "-o", "name"], capture_output=True, text=True).stdout.split())


def test_lab_up_down_twice_leaves_the_machine_clean():
    tag = f"l{os.getpid() % 100000}"
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    cfg = LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", account=f"esxdr-{tag}", luns=2,
                    lun_size=32 << 20)
    before = pools()
    try:
        _up_down_twice(cfg, before, d)
    finally:
        Lab(cfg).down()  # whatever failed above, leave nothing behind


def _up_down_twice(cfg: LabConfig, before: set[str], d: str) -> None:
    for _round in range(2):
        lab = Lab(cfg)
        plan = lab.up_plan()  # --dry-run: everything is to be started, nothing is
        assert "create pool " + cfg.prod_pool in plan and "start tgtd for DR" in plan, plan
        assert pools() == before
        st = lab.up()
        assert lab.up_plan() == []
        kinds = sorted(c["kind"] for c in st["components"])
        assert kinds == ["esxsim", "esxsim", "pool", "pool", "sshd", "tgtd", "tgtd"]
        assert all(c["up"] for c in st["components"]), st
        # idempotent: a second `up` changes nothing and keeps the same processes
        pids = {k: v for k, v in lab.state().get("tgtd", {}).items()}
        assert lab.up()["components"] and lab.state()["tgtd"] == pids
        site = load_site(str(lab.site_path))
        assert set(site.storage) == {"ss1", "ss2"} and set(site.vsphere) == {"esx-prod", "esx-dr"}
        g = site.protection_groups["core"]
        assert len(g.luns) == 2 and all(lu.naa.startswith("naa.600144f0") for lu in g.luns.values())
        assert len(g.vms) == 4
        if _round == 0:
            check_debugvmfs6_reads_the_seeded_luns(lab, g)
            check_replication_ships_identities(lab, g)
        state = lab.state()
        procs = [state["sshd"]["pid"], *(t["pid"] for t in state["tgtd"].values()),
                 *(e["pid"] for e in state["esxsim"].values())]
        r = subprocess.run([ESXDR, "--json", "lab", "down", "--dry-run", "--dir", d], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        said = json.loads(r.stdout)["actions"]
        assert f"destroy pool {cfg.dr_pool}" in said and f"remove {d}" in said, said
        assert all(pid_running(p) for p in procs) and Path(d).exists()  # the dry run changed nothing
        lab.down()
        assert pools() == before
        assert not any(pid_running(p) for p in procs)
        with pytest.raises(KeyError):
            pwd.getpwnam(cfg.account)
        assert not Path(d).exists()
        assert not Path(f"/etc/sudoers.d/{cfg.account}").exists()


def check_debugvmfs6_reads_the_seeded_luns(lab, g) -> None:
    """debugvmfs6 (Debian vmfs6-tools), a VMFS reader no one here wrote, opens every volume esxsim
    created on the lab's production LUNs and prints the UUID and label the site file records.
    It reads a partition, not a GPT LUN: it gets the partition, as `losetup -o` would give it."""
    import re
    import shutil

    from esxdr import vmfs

    tool = shutil.which("debugvmfs6") or "/usr/sbin/debugvmfs6"
    assert Path(tool).exists(), "debugvmfs6 is missing: scripts/setup installs vmfs6-tools"
    for spec in g.luns.values():
        mountpoint = subprocess.run(["zfs", "get", "-H", "-o", "value", "mountpoint", spec.dataset],
                                    capture_output=True, text=True, check=True).stdout.strip()
        image = Path(mountpoint) / "lun.img"
        h = vmfs.inspect(image)
        part = Path(lab.cfg.dir) / "partition.img"
        size = image.stat().st_size - h.partition_offset - 34 * 512
        with open(image, "rb") as src, open(part, "wb") as dst:
            src.seek(h.partition_offset)
            dst.write(src.read(size))
        r = subprocess.run([tool, str(part), "show"], capture_output=True, text=True, timeout=60)
        part.unlink()
        assert r.returncode == 0, f"debugvmfs6 on {image}: {r.stderr}"
        shown = {m[1].strip(): m[2].strip() for m in re.finditer(r"^\s*([^:\n]+):\s*(.*)$", r.stdout, re.M)}
        assert (shown["UUID"], shown["Label"]) == (spec.vmfs_uuid, spec.datastore), (image, shown)


def check_replication_ships_identities(lab, g) -> None:
    """Replicate the seeded lab; DR then knows every LUN's NAA, and production serves it on the wire."""
    import json

    site = str(lab.site_path)
    r = subprocess.run([ESXDR, "--site", site, "--json", "replicate", "core"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["manifest"]
    r = subprocess.run([ESXDR, "--site", site, "--json", "target", "shipped", "core"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    shipped = json.loads(r.stdout)
    assert sorted("naa." + u["naa"] for u in shipped["logical_units"]) == sorted(lu.naa for lu in g.luns.values())
    assert {u["product_id"] for u in shipped["logical_units"]} == {"COMSTAR"}
    manifest = Path(lab.cfg.dir) / "shipped.json"
    manifest.write_text(json.dumps(shipped))
    r = subprocess.run([ESXDR, "--site", site, "target", "verify", str(manifest), "--server", "ss1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("will mount as-is") == len(g.luns)

    # the lab's group is application-consistent through esx-prod: the level is on both sides' snapshots
    assert g.consistency == "application"
    r = subprocess.run([ESXDR, "--site", site, "--json", "replicate", "core"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["consistency"]["level"] in ("application", "mixed", "crash")
    assert {v["vm"] for v in run["consistency"]["vms"]} == {v.name for v in g.vms}
    r = subprocess.run([ESXDR, "--site", site, "--json", "snapshots", "core"], capture_output=True, text=True)
    rows = json.loads(r.stdout)
    assert all(x["consistency"].get(run["snapshot"]) == run["consistency"]["level"] for x in rows)
