"""Failover, reprotect and failback on a lab of their own, every claim checked on the real peers:
esx-prod and esx-dr (one property read each), the pools (zfs get) and both tgtds (an iSCSI login).

Planned: production VMs shut down cleanly, final replication, production unpresented, the DR
datasets promoted and presented with the production NAAs, VMs running on esx-dr with the
production BIOS UUIDs ("I moved it"); killed half-way and re-run. The split-brain guard refuses
while production serves the NAAs. Reprotect and failback bring everything home. Disaster: the
production tgtd is killed and the newest DR snapshot is recovered.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from esxdr.site import load_site

pytestmark = pytest.mark.integration

pytest_plugins = ["drill_fixtures"]


def served(dl, server: str) -> set[str]:
    """NAAs a lab target serves on the wire (what an initiator at either site would find)."""
    from esxdr.recovery.failover import probe_served

    site = load_site(dl.site)
    seen, _ = probe_served(site.storage[server].target.portal, ["iqn.1998-01.com.vmware:esx-dr"])
    return set(seen)


def props(dl, ds: str) -> tuple[str, str]:
    out = subprocess.run(["zfs", "get", "-H", "-o", "value", "readonly,mounted", ds], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], out[1]


def last_report(dl, kind: str) -> dict:
    items = [i for i in json.loads(dl.ok("report", "list", "--json").stdout) if i["kind"] == kind]
    return json.loads(open(items[0]["json"]).read())


def test_planned_failover_reprotect_failback(drill_lab):
    from drill_fixtures import all_vms, kill_chain

    dl = drill_lab
    naas = {d["naa"].removeprefix("naa.") for d in dl.seed["datastores"].values()}
    dr_sets = [f"{dl.dr_pool}/iscsi/{d['dataset'].rsplit('/', 1)[1]}" for d in dl.seed["datastores"].values()]
    dl.power_on_production()
    prod = dl.vms("esx-prod")
    assert all(p == "poweredOn" for p, _, _ in prod.values())

    # Split-brain guard: production still serves the NAAs → exit 3, naming NAA and portal; nothing changed.
    r = dl.esxdr("failover", "core", "--disaster")
    assert r.returncode == 3, r.stderr
    portal = load_site(dl.site).storage["ss1"].target.portal
    assert "split-brain" in r.stderr and portal in r.stderr and all(f"naa.{n}" in r.stderr for n in naas)
    assert all(props(dl, ds) == ("on", "no") for ds in dr_sets)
    assert dl.esxdr("replicate", "core").returncode == 0  # no marker left behind by the refusal

    # Planned, SIGKILLed after every step and inside each promotion, registration and power batch
    # (one run per kill, each resuming the last), then re-run to the end.
    dry = dl.ok("failover", "core", "--planned", "--dry-run")
    assert "I moved it" in dry.stdout and "because" in dry.stdout

    def check(point: str) -> None:
        if point == "failover-after-stop-replication":
            assert dl.esxdr("replicate", "core").returncode == 3  # replication is stopped from the marker on

    points = kill_chain(dl, ("failover", "core", "--planned"), "failover", ("promote", "register", "power"), check)
    assert "failover-after-stop-replication" in points
    assert len(points) >= 17
    r = dl.ok("failover", "core", "--planned")
    assert "resuming" in r.stderr and "RTO" in r.stdout

    rep = last_report(dl, "failover")
    assert rep["outcome"] == "ok" and rep["resumed"] and rep["mode"] == "planned" and rep["rpo_seconds"] == 0
    assert {s["outcome"] for s in rep["steps"]} == {"done earlier"}
    assert len(all_vms(dl, "esx-dr")) == len(dl.seed["vms"])  # registered once each, despite the kills
    for d in rep["datastores"]:
        seeded = dl.seed["datastores"][d["name"]]
        assert d["uuid_unchanged"] and d["vmfs_uuid"] == seeded["uuid"] and "naa." + d["naa"] == seeded["naa"]
    dr = dl.vms("esx-dr")
    assert set(dr) == set(prod)
    for name, (power, beat, uuid) in dr.items():
        assert (power, beat) == ("poweredOn", "green") and uuid == prod[name][2], name  # I moved it: same UUID
    assert all(v["networks"] == ["DR-LAN"] for v in rep["vms"])
    assert all(p == "poweredOff" for p, _, _ in dl.vms("esx-prod").values())  # shut down cleanly first
    assert served(dl, "ss1") == set() and served(dl, "ss2") == naas
    # The production NAAs on the DR portal as a third-party initiator (libiscsi) reads them from VPD 0x83.
    import libiscsi

    libiscsi.assert_served(load_site(dl.site).storage["ss2"].target.portal, naas,
                           initiator="iqn.1998-01.com.vmware:esx-dr")
    assert all(props(dl, ds) == ("off", "yes") for ds in dr_sets)

    # Reprotect: evidence first, --yes to act; then DR → production.
    r = dl.esxdr("reprotect", "core")
    assert r.returncode == 2 and "roll back to @" in r.stderr and "--yes" in r.stderr
    dl.ok("reprotect", "core", "--yes")
    assert dl.esxdr("replicate", "core").returncode == 3

    # Failback: the same machinery reversed; VMs home, DR sealed again, replication resumes.
    dl.ok("failback", "core", "--planned")
    home = dl.vms("esx-prod")
    assert all((p, b) == ("poweredOn", "green") and u == prod[n][2] for n, (p, b, u) in home.items())
    assert dl.vms("esx-dr") == {}
    # Home without duplicates: the VMs esx-prod had are reused, not registered a second time.
    assert [n for n, _ in all_vms(dl, "esx-prod")] == sorted(prod)
    assert served(dl, "ss1") == naas and served(dl, "ss2") == set()
    libiscsi.assert_served(load_site(dl.site).storage["ss1"].target.portal, naas,
                           initiator="iqn.1998-01.com.vmware:esx-dr")
    assert all(props(dl, ds) == ("on", "no") for ds in dr_sets)
    dl.ok("replicate", "core")


def test_disaster_failover_with_production_target_dead(drill_lab):
    dl = drill_lab
    dl.ok("replicate", "core")
    dl.kill_production_target()
    r = dl.ok("failover", "core", "--disaster")
    assert "RTO" in r.stdout and "RPO" in r.stdout
    rep = last_report(dl, "failover")
    assert rep["mode"] == "disaster" and rep["outcome"] == "ok" and not rep["resumed"]
    guard = next(s for s in rep["steps"] if s["id"] == "guard")
    assert "serves none" in guard["evidence"][0]
    assert all((p, b) == ("poweredOn", "green") for p, b, _ in dl.vms("esx-dr").values())
    assert len(dl.vms("esx-dr")) == len(dl.seed["vms"])
    again = dl.ok("failover", "core", "--disaster")  # idempotent: everything done earlier
    assert "nothing left to do" in again.stderr
