"""A planned failover to a vCenter cluster: the drill lab with the DR side replaced by esxsim's
vCenter mode (esx-a and esx-b, DRS on, each host logging in to the lab's real DR tgtd by itself).

Checked on the real peers: production's VMs shut down cleanly; the DR datasets promoted and
served with the production NAAs; every datastore mounted as-is (production VMFS UUID, extent NAA =
production NAA) on BOTH hosts; each VM registered once in the whole cluster, running on a host of
the cluster with its production BIOS UUID ("I moved it") and its NICs on the failover port group
(DR-LAN) of the site file's mapping, not on the production or the test one.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from esxdr.site import load_site

pytestmark = pytest.mark.integration

pytest_plugins = ["drill_fixtures"]

VCENTER_HOSTS = ["esx-a", "esx-b"]  # drill_fixtures.VCENTER_HOSTS


@pytest.fixture(scope="module")
def vc_failover_lab():
    from drill_fixtures import make_drill_lab

    yield from make_drill_lab(f"f{os.getpid() % 100000}", vcenter=True, drs=True)


def cluster_vms(dl) -> list[dict]:
    """Every VM vCenter knows (duplicates included), as vCenter reports it: one read."""
    from pyVmomi import vim

    from esxdr.vsphere.session import connect

    with connect(load_site(dl.site).endpoint("vc-dr")) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        return [{"name": vm.name, "vmx": vm.config.files.vmPathName, "uuid": vm.config.uuid,
                 "power": str(vm.runtime.powerState), "heartbeat": str(vm.guestHeartbeatStatus),
                 "host": vm.runtime.host.name,
                 "networks": sorted(d.backing.deviceName for d in vm.config.hardware.device
                                    if isinstance(d, vim.vm.device.VirtualEthernetCard))}
                for vm in view.view]


def served(dl, server: str) -> set[str]:
    from esxdr.recovery.failover import probe_served

    # The DR presentation admits only the cluster's hosts (an explicit ACL, never every initiator), so
    # look as one of them; production's lab ACL admits the loopback network, esx-dr included.
    seen, _ = probe_served(load_site(dl.site).storage[server].target.portal,
                           ["iqn.1998-01.com.vmware:esx-dr", "iqn.1998-01.com.vmware:esx-a"])
    return set(seen)


def test_planned_failover_to_a_vcenter_cluster(vc_failover_lab):
    from drill_fixtures import cluster

    dl = vc_failover_lab
    seeded = dl.seed["datastores"]
    naas = {d["naa"].removeprefix("naa.") for d in seeded.values()}
    dl.power_on_production()
    prod = dl.vms("esx-prod")
    before = cluster(dl)
    assert set(before) == set(VCENTER_HOSTS) and not any(h["vms"] for h in before.values())
    assert all(h["port_groups"]["DR-LAN"] == ("vSwitch0", 10) for h in before.values())  # from host apply

    dry = dl.ok("failover", "core", "--planned", "--dry-run")
    assert "I moved it" in dry.stdout
    r = dl.ok("failover", "core", "--planned", timeout=240)
    assert "RTO" in r.stdout
    items = [i for i in json.loads(dl.ok("report", "list", "--json").stdout) if i["kind"] == "failover"]
    rep = json.loads(open(items[0]["json"]).read())
    assert rep["outcome"] == "ok" and rep["mode"] == "planned" and rep["rpo_seconds"] == 0

    # Production shut down cleanly first; the NAAs now come from the DR target only.
    assert all(p == "poweredOff" for p, _, _ in dl.vms("esx-prod").values())
    assert served(dl, "ss1") == set() and served(dl, "ss2") == naas
    for ds in seeded.values():
        dr_set = f"{dl.dr_pool}/iscsi/{ds['dataset'].rsplit('/', 1)[1]}"
        out = subprocess.run(["zfs", "get", "-H", "-o", "value", "readonly", dr_set], capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == "off", dr_set  # promoted: writable for the running VMs

    # Every datastore mounted as-is on BOTH hosts: the report's evidence and each host's own view.
    assert {d["name"] for d in rep["datastores"]} == set(seeded)
    for d in rep["datastores"]:
        assert d["uuid_unchanged"] and d["naa_matches_extent"] and d["vmfs_uuid"] == seeded[d["name"]]["uuid"]
        assert "naa." + d["naa"] == seeded[d["name"]]["naa"] and d["hosts"] == VCENTER_HOSTS
    now = cluster(dl)
    for h in now.values():
        for name, info in seeded.items():
            assert h["datastores"][name] == (info["uuid"], (info["naa"],))

    # Each VM registered once in the whole cluster, running on a cluster host (the one the report
    # names), with the production BIOS UUID and its NICs on the failover port group of the mapping.
    vms = cluster_vms(dl)
    names = {v["name"] for v in dl.seed["vms"]}
    assert sorted(v["name"] for v in vms) == sorted(names)
    by_report = {v["name"]: v for v in rep["vms"]}
    for v in vms:
        assert (v["power"], v["heartbeat"]) == ("poweredOn", "green"), v
        assert v["uuid"] == prod[v["name"]][2], v  # I moved it
        assert v["host"] in VCENTER_HOSTS and by_report[v["name"]]["host"] == v["host"]
        assert v["networks"] == ["DR-LAN"] and by_report[v["name"]]["networks"] == ["DR-LAN"]
    assert {v["host"] for v in vms} == set(VCENTER_HOSTS)  # DRS spread them over both hosts
    register = next(s for s in rep["steps"] if s["id"] == "register")
    assert "DRS places them" in " ".join(register["evidence"])
    assert "uuid.action = keep" in " ".join(register["evidence"])
    prios = sorted({v["priority"] for v in dl.seed["vms"]})
    assert [s["id"] for s in rep["steps"] if s["kind"] == "power"] == [f"power:{p}:1" for p in prios]

    # Idempotent: a second run finds everything done, and registers nothing twice.
    again = dl.ok("failover", "core", "--planned")
    assert "nothing left to do" in again.stderr
    assert sorted(v["name"] for v in cluster_vms(dl)) == sorted(names)

    # Reprotect, then failback: the cluster's part reversed (VMs off and unregistered on whichever
    # host they ran, the LUNs gone from every host), the VMs home on esx-prod with their UUIDs.
    dl.ok("reprotect", "core", "--yes")
    dl.ok("failback", "core", "--planned", timeout=240)
    home = dl.vms("esx-prod")
    assert {n: (p, b, u) for n, (p, b, u) in home.items()} == {n: ("poweredOn", "green", prod[n][2]) for n in names}
    assert cluster_vms(dl) == []
    assert served(dl, "ss1") == naas and served(dl, "ss2") == set()
    after = cluster(dl)
    assert all(not h["vms"] and not (set(h["datastores"]) & set(seeded)) for h in after.values())
    assert all(not ({"naa." + n for n in naas} & set(h["luns"])) for h in after.values())
    dl.ok("replicate", "core")
