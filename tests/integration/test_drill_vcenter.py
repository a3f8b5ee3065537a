"""The drill on a vCenter cluster: esxsim's vCenter mode (esx-a, esx-b; each host its own iSCSI
initiator logging in to the lab's real DR tgtd) as the group's vsphere_dr.

DRS on: the VMs go into the cluster's resource pool and vCenter places them. DRS off: esxdr
spreads them itself. Either way: the test port groups on every host, the LUNs verified on every
host (NAA served = extent NAA, production UUID), the VMs running on the isolated port groups,
and a cleanup that leaves every host as it was.
"""

from __future__ import annotations

import json
import os

import pytest

pytestmark = pytest.mark.integration

pytest_plugins = ["drill_fixtures"]


@pytest.fixture(scope="module")
def vc_lab():
    from drill_fixtures import make_drill_lab

    yield from make_drill_lab(f"v{os.getpid() % 100000}", vcenter=True, drs=True)


def last_report(dl, kind: str = "test-start") -> dict:
    items = [i for i in json.loads(dl.ok("report", "list", "--json").stdout) if i["kind"] == kind]
    return json.loads(open(items[0]["json"]).read())


def drill_and_check(dl, *, drs: bool, prepared: bool) -> dict:
    """``prepared``: the test port group is in every host's dr_network (host apply made it), so the
    drill finds it; else the drill creates it on each host and cleanup removes it again."""
    from drill_fixtures import cluster

    before = cluster(dl)
    assert set(before) == {"esx-a", "esx-b"} and not any(h["vms"] for h in before.values())
    assert all(("Drill-LAN" in h["port_groups"]) == prepared for h in before.values())

    r = dl.ok("test", "start", "core", timeout=240)
    assert "RTO" in r.stdout
    rep = last_report(dl)
    assert rep["outcome"] == "ok"
    now = cluster(dl)
    seeded = dl.seed["datastores"]
    names = {v["name"] for v in dl.seed["vms"]}

    # NAA evidence, and every datastore mounted as-is on BOTH hosts (a VM may run on either).
    assert {d["name"] for d in rep["datastores"]} == set(seeded)
    for d in rep["datastores"]:
        assert d["uuid_unchanged"] and d["naa_matches_extent"] and "naa." + d["naa"] == seeded[d["name"]]["naa"]
        assert d["hosts"] == ["esx-a", "esx-b"]
    for h in now.values():
        for ds, info in seeded.items():
            assert h["datastores"][ds] == (info["uuid"], (info["naa"],))

    # The test port group (isolated VLAN of the site file) on each host, created by the drill.
    for h in now.values():
        assert h["port_groups"]["Drill-LAN"] == ("vSwitch1", 311)

    # Every VM once, running with a green heartbeat, on the host the report names, spread over both.
    where = {v: n for n, h in now.items() for v in h["vms"]}
    assert set(where) == names and sum(len(h["vms"]) for h in now.values()) == len(names)
    assert all(x[1] == "poweredOn" and x[2] == "green" for h in now.values() for x in h["vms"].values())
    by_report = {v["name"]: v for v in rep["vms"]}
    assert {n: by_report[n]["host"] for n in names} == where
    assert set(where.values()) == {"esx-a", "esx-b"}
    assert all(v["networks"] == ["Drill-LAN"] for v in rep["vms"])
    register = next(s for s in rep["steps"] if s["id"] == "register")
    text = " ".join(register["evidence"])
    if drs:
        assert "DRS places them" in text
    else:
        assert "DRS is off: esxdr spreads" in text and all(f"{n} → {where[n]}" in text for n in names)
    # One batch per priority group across the cluster.
    prios = sorted({v["priority"] for v in dl.seed["vms"]})
    assert [s["id"] for s in rep["steps"] if s["kind"] == "power"] == [f"power:{p}:1" for p in prios]

    out = dl.ok("test", "cleanup", "core", timeout=240)
    assert "cleaned up" in out.stdout
    assert cluster(dl) == before  # no trace on any host
    assert "no drill left" in dl.ok("test", "cleanup", "core").stdout
    return rep


def test_drill_on_a_vcenter_cluster_with_drs(vc_lab):
    dl = vc_lab
    dl.use_test_network("Drill-LAN")  # not on the hosts: the drill creates it on each, and removes it
    rep = drill_and_check(dl, drs=True, prepared=False)
    network = next(s for s in rep["steps"] if s["id"] == "network")
    assert network["evidence"] == ["esx-a: port group Drill-LAN on vSwitch1 VLAN 311",
                                   "esx-b: port group Drill-LAN on vSwitch1 VLAN 311"]
    # One read serves all hosts: the SOAP budget does not grow per VM.
    assert rep["requests"]["vsphere"] < 60, rep["requests_by_method"]


def test_drill_on_a_cluster_without_drs_spreads_the_vms_itself(vc_lab):
    from drill_fixtures import use_vcenter

    dl = vc_lab
    use_vcenter(dl, drs=False)  # a fresh vCenter, DRS off: vCenter refuses a registration without a host
    if "Drill-LAN" not in open(dl.site).read():
        dl.use_test_network("Drill-LAN")
    dl.ok("host", "apply", "vc-dr")  # Drill-LAN is in each host's dr_network now: host apply makes it
    rep = drill_and_check(dl, drs=False, prepared=True)
    assert not any(s["id"] == "network" for s in rep["steps"])
