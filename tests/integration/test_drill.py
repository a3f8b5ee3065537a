"""The monthly drill on a lab of its own: replicate, `test start`, replicate during the drill,
`test cleanup`, SIGKILL half-way and recover. Every claim is checked on the real peers:
esx-dr's inventory (one property read), the DR pool (zfs list) and the DR tgtd (tgtadm).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from esxdr.site import load_site

pytestmark = pytest.mark.integration

pytest_plugins = ["drill_fixtures"]


def esx_dr(dl) -> dict:
    """What a drill may touch on esx-dr, comparable before/after."""
    from esxdr.vsphere import inventory
    from esxdr.vsphere.session import connect

    site = load_site(dl.site)
    with connect(site.endpoint("esx-dr")) as s:
        h = inventory.read_host(s, "esx-dr")
    return {"port_groups": {n: (p.vswitch, p.vlan) for n, p in h.port_groups.items()},
            "vswitches": {n: v.uplinks for n, v in h.vswitches.items()},
            "datastores": {n: (d.vmfs_uuid, d.extents) for n, d in h.datastores.items()},
            "vms": {n: (v.vmx_path, v.power_state, v.heartbeat) for n, v in h.vms.items()},
            "luns": sorted(h.luns)}


def dr_pool(dl) -> dict:
    """DR datasets (not snapshots: replication goes on) and every hold (the drill's must be gone)."""
    out = subprocess.run(["zfs", "list", "-H", "-t", "all", "-o", "name,userrefs", "-r", dl.dr_pool],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    return {"datasets": sorted(n for n, _ in rows if "@" not in n),
            "held": sorted(n for n, refs in rows if "@" in n and refs not in ("0", "-"))}


def dr_targets(dl) -> str:
    port = load_site(dl.site).storage["ss2"].target.control_port
    return subprocess.run(["tgtadm", "-C", str(port), "--lld", "iscsi", "--op", "show", "--mode", "target"],
                          capture_output=True, text=True, check=True).stdout


def last_report(dl, kind: str = "test-start") -> dict:
    r = dl.ok("report", "list", "--json")
    items = [i for i in json.loads(r.stdout) if i["kind"] == kind]
    return json.loads(open(items[0]["json"]).read())


def test_drill_end_to_end(drill_lab):
    dl = drill_lab
    dl.use_test_network("Drill-LAN")  # not on esx-dr: the drill creates it, isolated, and removes it
    before_esx, before_pool, before_tgt = esx_dr(dl), dr_pool(dl), dr_targets(dl)
    assert not before_esx["vms"] and "Drill-LAN" not in before_esx["port_groups"]

    dry = dl.ok("test", "start", "core", "--dry-run")
    assert "because" in dry.stdout and "I copied it" in dry.stdout
    assert esx_dr(dl) == before_esx and dr_pool(dl) == before_pool  # dry-run changes nothing

    # Killed right after the VMs were registered: the re-run continues from there.
    killed = dl.esxdr("test", "start", "core", env={"ESXDR_FAULT_KILL": "drill-after-register"})
    assert killed.returncode == -9, killed.stderr
    r = dl.ok("test", "start", "core")
    assert "resuming" in r.stderr and "RTO" in r.stdout and "report:" in r.stdout

    rep = last_report(dl)
    assert rep["outcome"] == "ok" and rep["resumed"]
    assert [s["outcome"] for s in rep["steps"]].count("done earlier") >= 6
    seeded = dl.seed["datastores"]
    assert {d["name"] for d in rep["datastores"]} == set(seeded)
    for d in rep["datastores"]:
        # Evidence: mounted as-is with the production UUID, from the LUN with the production NAA.
        assert d["vmfs_uuid"] == seeded[d["name"]]["uuid"] and d["uuid_unchanged"]
        assert d["naa_matches_extent"] and "naa." + d["naa"] == seeded[d["name"]]["naa"]
    assert rep["rto_seconds"] is not None and rep["rpo_seconds"] is not None
    assert open(rep["report"]["html"]).read().count("<rect") == len(rep["steps"])

    esx = esx_dr(dl)
    vms = {v["name"] for v in dl.seed["vms"]}
    assert set(esx["vms"]) == vms
    assert all(v[1] == "poweredOn" and v[2] == "green" for v in esx["vms"].values())
    assert esx["port_groups"]["Drill-LAN"] == ("vSwitch1", 311)  # the isolated VLAN of the site file
    assert all(v["networks"] == ["Drill-LAN"] for v in rep["vms"])
    for name, (uuid, extents) in seeded_view(esx, seeded).items():
        assert (uuid, extents) == (seeded[name]["uuid"], (seeded[name]["naa"],))

    # Replication keeps running during the drill: the clones are datasets of their own.
    dl.ok("replicate", "core")
    assert len(dr_pool(dl)["datasets"]) == len(before_pool["datasets"]) + 1 + len(seeded)  # container + clones

    dl.ok("test", "cleanup", "core")
    assert esx_dr(dl) == before_esx
    assert dr_pool(dl)["datasets"] == before_pool["datasets"]
    assert dr_targets(dl) == before_tgt
    again = dl.ok("test", "cleanup", "core")
    assert "no drill left" in again.stdout

    # Killed right after presenting the clones: cleanup alone removes every trace.
    killed = dl.esxdr("test", "start", "core", env={"ESXDR_FAULT_KILL": "drill-after-present"})
    assert killed.returncode == -9
    assert "esxdr-test-core" in dr_targets(dl)
    dl.ok("test", "cleanup", "core")
    assert esx_dr(dl) == before_esx
    assert dr_pool(dl)["datasets"] == before_pool["datasets"]
    assert dr_targets(dl) == before_tgt
    # Only replication's own hold is left: on the newest snapshot of each replica.
    names = subprocess.run(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-r", dl.dr_pool],
                           capture_output=True, text=True, check=True).stdout.split()
    newest = {max(n for n in names if n.startswith(ds + "@")) for ds in {n.split("@")[0] for n in names}}
    assert set(dr_pool(dl)["held"]) <= newest


def seeded_view(esx: dict, seeded: dict) -> dict:
    return {n: (u, tuple(x for x in ex)) for n, (u, ex) in esx["datastores"].items() if n in seeded}
