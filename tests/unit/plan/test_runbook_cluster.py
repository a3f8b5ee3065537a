"""Pure parts of recovery on a vCenter cluster: the spread esxdr does when DRS is off, and the
planner's cluster view (per-host checks, port groups per host, every host's initiator admitted)."""

from __future__ import annotations

import pytest

from esxdr.errors import ConflictError
from esxdr.plan.runbook import HostView, cluster_view, spread_vms
from esxdr.plan.runbook import test_networks as plan_networks


def test_spread_balances_each_priority_group_over_the_hosts():
    vms = [("db", 1, "ds0"), ("app1", 2, "ds0"), ("app2", 2, "ds1"), ("web1", 3, "ds1"), ("web2", 3, "ds0")]
    hosts = {"esx-a": ({"ds0", "ds1"}, 0), "esx-b": ({"ds0", "ds1"}, 0)}
    out = spread_vms(vms, hosts)
    assert out == {"db": "esx-a", "app1": "esx-b", "app2": "esx-a", "web1": "esx-b", "web2": "esx-a"}
    for prio in (2, 3):  # each priority batch boots on both hosts
        assert {out[n] for n, p, _ in vms if p == prio} == {"esx-a", "esx-b"}


def test_spread_is_deterministic_whatever_the_input_order():
    vms = [(f"vm{i}", i % 3, "ds0") for i in range(12)]
    hosts = {"a": ({"ds0"}, 0), "b": ({"ds0"}, 0), "c": ({"ds0"}, 0)}
    first = spread_vms(vms, hosts)
    assert spread_vms(list(reversed(vms)), hosts) == first
    assert sorted(list(first.values()).count(h) for h in hosts) == [4, 4, 4]


def test_spread_counts_vms_already_running_and_respects_datastore_mounts():
    hosts = {"esx-a": ({"ds0"}, 5), "esx-b": ({"ds0", "ds1"}, 0), "esx-c": ({"ds0"}, 1)}
    out = spread_vms([("x", 1, "ds1"), ("y", 2, "ds0"), ("z", 2, "ds0")], hosts)
    assert out["x"] == "esx-b"  # the only host that mounts ds1
    assert out["y"] == "esx-b" and out["z"] == "esx-c"  # fewest in the group, then fewest in all
    with pytest.raises(ConflictError, match="no host of the cluster mounts datastore ds9"):
        spread_vms([("lost", 1, "ds9")], hosts)


def _host(name: str, pgs: dict, luns: dict | None = None, send=("127.0.0.1:3260",)) -> HostView:
    return HostView(name=name, iqn=f"iqn.1998-01.com.vmware:{name}", send_targets=send, port_groups=pgs,
                    vswitches={"vSwitch1": ("vmnic1",)}, luns=luns or {})


def test_cluster_view_keeps_common_port_groups_and_unions_luns():
    a = _host("esx-a", {"DR-LAN": ("vSwitch1", 10), "Only-A": ("vSwitch1", 5)}, {"n1": ("iqn.t",)})
    b = _host("esx-b", {"DR-LAN": ("vSwitch1", 10)}, {"n2": ("iqn.t",)})
    v = cluster_view("vc-dr", [a, b])
    assert v.hosts == (a, b) and v.label == "esx-a, esx-b"
    assert set(v.port_groups) == {"DR-LAN"} and set(v.luns) == {"n1", "n2"}


def test_test_networks_plans_each_host_of_a_cluster_from_its_own_dr_network():
    from esxdr.site.model import NetworkMap, PortGroupSpec, VmSpec

    vm = VmSpec(name="app", networks={"Prod-LAN": NetworkMap(failover="DR-LAN", test="Drill-LAN")})
    a = _host("esx-a", {"Drill-LAN": ("vSwitch1", 311)})
    b = _host("esx-b", {})
    spec = type("Net", (), {"port_groups": {"Drill-LAN": PortGroupSpec(name="Drill-LAN", vswitch="vSwitch1", vlan=311,
                                                                        isolated=True)}})()
    mapping, create, _notes = plan_networks([vm], cluster_view("vc", [a, b]), {"esx-a": spec, "esx-b": spec})
    assert mapping == {"Prod-LAN": "Drill-LAN"}
    assert [(c["host"], c["name"], c["vlan"]) for c in create] == [("esx-b", "Drill-LAN", 311)]
