"""The pure recovery runbook planner: DR datasets, target manifest and DR host in → steps out."""

from __future__ import annotations

from dataclasses import replace

import pytest

from esxdr.errors import ConflictError, IdentityConflict, UsageError
from esxdr.model import Dataset, Snapshot
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Target, View
from esxdr.plan import runbook as rb
from esxdr.site.model import HostNetwork, LunSpec, NetworkMap, PortGroupSpec, ProtectionGroup, VmSpec, VSwitch

PROD_IQN = "iqn.2010-08.org.esxdr.lab:ss1.core"
DR_IQN = "iqn.1998-01.com.vmware:esx-dr"
PORTAL = "127.0.0.2:3260"
NAAS = [f"600144f0614f6bd2e51f4fc511ec000{i + 1}" for i in range(3)]
UUIDS = [f"5b7ee5c9-0000000{i}-3151-000c29bb47a0" for i in range(3)]


def vm(name: str, prio: int, deps: tuple[str, ...] = (), test: str = "Prod-LAN") -> VmSpec:
    return VmSpec(name=name, priority=prio, depends_on=deps,
                  networks={"Prod-LAN": NetworkMap(failover="DR-LAN", test=test)})


def group(vms: tuple[VmSpec, ...] = (vm("dc01", 1), vm("sql01", 1, ("dc01",)), vm("app01", 2))) -> ProtectionGroup:
    ds = tuple(f"sp1/iscsi/lun{i}" for i in range(3))
    return ProtectionGroup(
        name="core", source="ss1", destination="ss2", source_root="sp1/iscsi", dr_root="rp1/iscsi", datasets=ds,
        vsphere_dr="esx-dr", vms=vms,
        luns={d: LunSpec(dataset=d, naa=f"naa.{NAAS[i]}", datastore=f"ds-lun{i}", vmfs_uuid=UUIDS[i])
              for i, d in enumerate(ds)})


def snap(ds: str, name: str, txg: int, held: int = 0) -> Snapshot:
    return Snapshot(dataset=ds, name=name, guid=txg * 7, createtxg=txg, creation=1_700_000_000 + txg, userrefs=held)


def dr_obs(snaps: dict[str, list[tuple[str, int]]] | None = None, extra: tuple[str, ...] = ()) -> dict[str, Dataset]:
    snaps = snaps if snaps is not None else {f"rp1/iscsi/lun{i}": [("esxdr_core_a", 10), ("esxdr_core_b", 20)]
                                             for i in range(3)}
    out = {"rp1/iscsi": Dataset("rp1/iscsi", "filesystem", 1, mountpoint="/mnt/rp1/iscsi")}
    for ds, items in snaps.items():
        out[ds] = Dataset(ds, "filesystem", 2, mountpoint=f"/mnt/{ds}",
                          snapshots=[snap(ds, n, t) for n, t in items])
    for ds in extra:
        out[ds] = Dataset(ds, "filesystem", 3, origin="rp1/iscsi/lun0@esxdr_core_b", mountpoint=f"/mnt/{ds}")
    return out


def manifest() -> Manifest:
    return Manifest(targets=[Target(iqn=PROD_IQN)], logical_units=[
        LogicalUnit(naa=Naa(NAAS[i]), backing=Backing("file", f"/mnt/sp1/iscsi/lun{i}/lun.img", f"sp1/iscsi/lun{i}"),
                    size_bytes=64 << 20, serial=NAAS[i][-12:], vendor_id="SUN", product_id="COMSTAR",
                    views=[View(lun=i + 1, target=PROD_IQN)]) for i in range(3)])


HOST = rb.HostView(name="esx-dr", iqn=DR_IQN, send_targets=(PORTAL,),
                   port_groups={"Prod-LAN": ("vSwitch1", 310), "DR-LAN": ("vSwitch0", 10)},
                   vswitches={"vSwitch0": ("vmnic0",), "vSwitch1": ("vmnic1",)})
NETWORK = HostNetwork(host="esx-dr", vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic1",))},
                      port_groups={"Prod-LAN": PortGroupSpec("Prod-LAN", "vSwitch1", 310, isolated=True)})


def inputs(**kw) -> rb.DrillInputs:
    base = dict(group=group(), manifest=manifest(), dr_obs=dr_obs(), host=HOST, dr_portal=PORTAL, dr_network=NETWORK)
    base.update(kw)
    return rb.DrillInputs(**base)


# --------------------------------------------------------------------------- the point
@pytest.mark.parametrize("snaps, point, want", [
    ({"a": [("s1", 1), ("s2", 2)], "b": [("s1", 1), ("s2", 2)]}, "latest", "s2"),
    ({"a": [("s1", 1), ("s2", 2)], "b": [("s1", 1)]}, "latest", "s1"),  # s2 not on b yet (replication mid-way)
    ({"a": [("s1", 1), ("s2", 2)], "b": [("s1", 1), ("s2", 2)]}, "s1", "s1"),
    ({"a": [("s1", 1), ("s2", 2)], "b": [("s1", 1), ("s2", 2)]}, "rp1/iscsi/a@s1", "s1"),
    ({"a": [("s1", 1)], "b": [("s2", 2)]}, "latest", UsageError),
    ({"a": [("s1", 1)], "b": [("s1", 1)]}, "s9", UsageError),
])
def test_choose_point(snaps, point, want):
    obs = {k: Dataset(k, "filesystem", 1, snapshots=[snap(k, n, t) for n, t in v]) for k, v in snaps.items()}
    if want is UsageError:
        with pytest.raises(UsageError):
            rb.choose_point(list(snaps), obs, point)
    else:
        assert rb.choose_point(list(snaps), obs, point).name == want


def test_choose_point_missing_dataset_says_replicate_first():
    with pytest.raises(UsageError) as e:
        rb.choose_point(["rp1/x"], {}, "latest")
    assert "replicate" in (e.value.hint or "")


# --------------------------------------------------------------------------- power order
@pytest.mark.parametrize("vms, want", [
    ((vm("a", 1), vm("b", 2), vm("c", 1)), [(1, 1, ["a", "c"]), (2, 1, ["b"])]),
    ((vm("dc", 1), vm("sql", 1, ("dc",)), vm("web", 1, ("sql",))), [(1, 1, ["dc"]), (1, 2, ["sql"]), (1, 3, ["web"])]),
    ((vm("dc", 1), vm("app", 3, ("dc",))), [(1, 1, ["dc"]), (3, 1, ["app"])]),  # earlier group: no extra wave
    ((), []),
])
def test_power_waves(vms, want):
    assert rb.power_waves(list(vms)) == want


@pytest.mark.parametrize("vms, words", [
    ((vm("a", 1, ("b",)), vm("b", 1, ("a",))), "cycle"),
    ((vm("a", 1, ("b",)), vm("b", 2)), "priority"),
    ((vm("a", 1, ("ghost",)),), "not in the protection group"),
])
def test_power_waves_refusals(vms, words):
    with pytest.raises(UsageError) as e:
        rb.power_waves(list(vms))
    assert words in e.value.message


# --------------------------------------------------------------------------- test start
def test_start_same_naa_full_runbook():
    plan = rb.plan_test_start(inputs())
    assert [s.kind for s in plan.steps] == ["hold", "container", "clone", "clone", "clone", "present", "rescan",
                                            "verify", "register", "nics", "power", "power", "power"]
    assert plan.snapshot == "esxdr_core_b"
    assert all(s.reason for s in plan.steps)
    present = next(s for s in plan.steps if s.kind == "present")
    luns = present.params["luns"]
    assert [d["naa"] for d in luns] == NAAS  # same NAA as production
    assert luns[0]["clone"] == "rp1/iscsi/esxdr-test-core/lun0"
    assert luns[0]["path"] == "/mnt/rp1/iscsi/esxdr-test-core/lun0/lun.img"
    m = present.params["manifest"]
    assert [t["iqn"] for t in m["targets"]] == [f"{PROD_IQN}.esxdr-test-core"]
    assert all(u["product_id"] == "COMSTAR" for u in m["logical_units"])  # part of the VMFS device id
    assert m["initiator_groups"][0]["members"] == [DR_IQN]
    verify = next(s for s in plan.steps if s.kind == "verify")
    assert verify.params["resolve"] is None
    assert [e["vmfs_uuid"] for e in verify.params["expected"]] == UUIDS
    power = [s for s in plan.steps if s.kind == "power"]
    assert [s.params["vms"] for s in power] == [["dc01"], ["sql01"], ["app01"]]
    assert [s.id for s in power] == ["power:1:1", "power:1:2", "power:2:1"]
    assert next(s for s in plan.steps if s.kind == "register").params["answer"] == "copied"


def test_step_ids_are_stable_across_replans():
    # The journal keys finished work by step id: re-planning the same drill must give the same ids.
    a = [s.id for s in rb.plan_test_start(inputs()).steps]
    b = [s.id for s in rb.plan_test_start(inputs(dr_obs=dr_obs(extra=("rp1/iscsi/esxdr-test-core",
                                                                       "rp1/iscsi/esxdr-test-core/lun0")))).steps]
    assert a == b


@pytest.mark.parametrize("served, host_luns, clash", [
    ([], {}, False),
    ([rb.ServedLun(NAAS[0], f"{PROD_IQN}.esxdr-test-core", 1, 1, "/x")], {}, False),  # our own drill target
    ([rb.ServedLun(NAAS[0], "iqn.2024-01.io.esxdr:failover", 2, 1, "/rp1/iscsi/lun0/lun.img")], {}, True),
    ([], {NAAS[1]: ("iqn.2010-08.org.esxdr.lab:ss1.core",)}, True),  # the host sees production itself
])
def test_identity_guard(served, host_luns, clash):
    host = replace(HOST, luns=host_luns)
    if clash:
        with pytest.raises(IdentityConflict) as e:
            rb.plan_test_start(inputs(served=served, host=host))
        assert "--new-naa" in (e.value.hint or "")
        plan = rb.plan_test_start(inputs(served=served, host=host, new_naa=True))  # the way out
        assert next(s for s in plan.steps if s.kind == "verify").params["resolve"] == "resignature"
    else:
        rb.plan_test_start(inputs(served=served, host=host))


def test_new_naa_changes_identity_and_resignatures():
    plan = rb.plan_test_start(inputs(new_naa=True))
    luns = next(s for s in plan.steps if s.kind == "present").params["luns"]
    assert all(d["naa"] != d["production_naa"] for d in luns)
    assert all(d["naa"][:7] == d["production_naa"][:7] for d in luns)  # same NAA type and company id
    again = next(s for s in rb.plan_test_start(inputs(new_naa=True)).steps if s.kind == "present").params["luns"]
    assert [d["naa"] for d in luns] == [d["naa"] for d in again]  # stable: a resumed drill presents the same


@pytest.mark.parametrize("host, error", [
    (replace(HOST, iqn=None), "software iSCSI adapter is off"),
    (replace(HOST, send_targets=()), "no send target"),
])
def test_host_must_be_prepared(host, error):
    with pytest.raises(ConflictError) as e:
        rb.plan_test_start(inputs(host=host))
    assert error in e.value.message and "esxdr host apply" in (e.value.hint or "")


def test_without_vsphere_only_storage_steps():
    # Without a DR host the initiators to admit must be named (an empty ACL would admit everyone).
    plan = rb.plan_test_start(inputs(host=None, initiators=(DR_IQN,)))
    assert [s.kind for s in plan.steps][-1] == "present"
    assert any("vsphere_dr" in n for n in plan.notes)


def test_manifest_without_group_luns_is_refused():
    with pytest.raises(UsageError):
        rb.plan_test_start(inputs(manifest=Manifest(targets=[Target(iqn=PROD_IQN)])))


def test_lu_found_by_site_naa_when_manifest_lacks_dataset():
    m = manifest()
    for lu in m.logical_units:
        lu.backing = Backing("file", f"/elsewhere/{lu.naa.hex}.img")
    luns = next(s for s in rb.plan_test_start(inputs(manifest=m)).steps if s.kind == "present").params["luns"]
    assert [d["dr_dataset"] for d in luns] == [f"rp1/iscsi/lun{i}" for i in range(3)]


# --------------------------------------------------------------------------- networks
@pytest.mark.parametrize("test_pg, host, network, want", [
    ("Prod-LAN", HOST, NETWORK, []),  # exists: nothing to create
    ("Drill-LAN", HOST, NETWORK, [{"name": "Drill-LAN", "vswitch": rb.DRILL_VSWITCH, "vlan": 0,
                                   "create_vswitch": True, "isolated": True}]),
    ("Drill-LAN", replace(HOST, vswitches={**HOST.vswitches, rb.DRILL_VSWITCH: ()}), NETWORK,
     [{"name": "Drill-LAN", "vswitch": rb.DRILL_VSWITCH, "vlan": 0, "create_vswitch": False, "isolated": True}]),
    ("Iso", HOST, replace(NETWORK, port_groups={"Iso": PortGroupSpec("Iso", "vSwitch1", 99, isolated=True)}),
     [{"name": "Iso", "vswitch": "vSwitch1", "vlan": 99, "create_vswitch": False, "isolated": True}]),
])
def test_test_networks(test_pg, host, network, want):
    mapping, create, _ = rb.test_networks([vm("a", 1, test=test_pg)], host, network)
    assert mapping == {"Prod-LAN": test_pg}
    assert create == want


def test_test_network_on_missing_vswitch_is_refused():
    net = replace(NETWORK, port_groups={"Iso": PortGroupSpec("Iso", "vSwitch9", 99, isolated=True)})
    with pytest.raises(ConflictError):
        rb.test_networks([vm("a", 1, test="Iso")], HOST, net)


def test_network_step_planned_for_missing_port_group():
    g = group((vm("a", 1, test="Drill-LAN"),))
    plan = rb.plan_test_start(inputs(group=g))
    net = next(s for s in plan.steps if s.kind == "network")
    assert "without uplinks" in net.reason
    assert next(s for s in plan.steps if s.kind == "nics").params["map"] == {"Prod-LAN": "Drill-LAN"}


# --------------------------------------------------------------------------- cleanup
TEST_IQN = f"{PROD_IQN}.esxdr-test-core"


def cleanup_inputs(**kw) -> rb.CleanupInputs:
    base = dict(group=group(), dr_obs=dr_obs(), host=replace(HOST))
    base.update(kw)
    return rb.CleanupInputs(**base)


def test_cleanup_nothing_left():
    assert rb.plan_test_cleanup(cleanup_inputs()).empty


def test_cleanup_everything_found_by_observation_alone():
    obs = dr_obs({f"rp1/iscsi/lun{i}": [("esxdr_core_b", 20)] for i in range(3)},
                 extra=("rp1/iscsi/esxdr-test-core", "rp1/iscsi/esxdr-test-core/lun0"))
    obs["rp1/iscsi/lun0"].snapshots[0] = snap("rp1/iscsi/lun0", "esxdr_core_b", 20, held=2)
    host = replace(HOST, luns={NAAS[0]: (TEST_IQN,)},
                   datastores={"ds-lun0": (UUIDS[0], (NAAS[0],)), "local": ("x", ("naa.other",))},
                   vms={"dc01": ("[ds-lun0] dc01/dc01.vmx", "poweredOn", None),
                        "sql01": ("[ds-lun0] sql01/sql01.vmx", "poweredOff", "q1"),
                        "other": ("[local] other/other.vmx", "poweredOn", None)})
    served = [rb.ServedLun(NAAS[0], TEST_IQN, 3, 1, "/mnt/rp1/iscsi/esxdr-test-core/lun0/lun.img")]
    plan = rb.plan_test_cleanup(cleanup_inputs(dr_obs=obs, host=host, served=served))
    kinds = [s.kind for s in plan.steps]
    assert kinds == ["poweroff", "unregister", "unpresent", "rescan", "destroy", "uncontainer", "release"]
    assert plan.steps[0].params["vms"] == ["dc01", "sql01"]  # sql01: a power-on stuck at its question
    assert "other" not in plan.steps[1].params["vms"]  # not on a drill datastore: never touched
    assert plan.steps[2].params["targets"] == [{"iqn": TEST_IQN, "tid": 3}]
    assert plan.steps[6].params["snapshots"] == ["rp1/iscsi/lun0@esxdr_core_b"]


def test_cleanup_removes_only_networks_the_drill_created():
    host = replace(HOST, port_groups={**HOST.port_groups, "Drill-LAN": (rb.DRILL_VSWITCH, 0)},
                   vswitches={**HOST.vswitches, rb.DRILL_VSWITCH: ()})
    j = {"created": {"port_groups": ["Drill-LAN", "Gone-LAN"], "vswitches": [rb.DRILL_VSWITCH]}}
    plan = rb.plan_test_cleanup(cleanup_inputs(host=host, journal=j))
    net = next(s for s in plan.steps if s.kind == "network")
    assert net.params == {"port_groups": ["Drill-LAN"], "vswitches": [rb.DRILL_VSWITCH]}


def test_cleanup_leaves_replication_holds_alone_when_no_drill():
    obs = dr_obs()
    obs["rp1/iscsi/lun0"].snapshots[-1] = snap("rp1/iscsi/lun0", "esxdr_core_b", 20, held=1)
    assert rb.plan_test_cleanup(cleanup_inputs(dr_obs=obs)).empty


@pytest.mark.parametrize("name, want", [("core", "core"), ("Core_DB", "core-db"), ("__", "group")])
def test_safe_name(name, want):
    assert rb.safe_name(name) == want
    assert rb.is_test_iqn(rb.test_iqn(PROD_IQN, name), name)
