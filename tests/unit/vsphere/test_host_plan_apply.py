"""`host apply` end to end on a fake host: plan, apply, observe again, plan empty; what esxdr
created is recorded, and --prune removes only that.

The host is a fake pyVmomi stub (HostNetworkSystem, HostStorageSystem and IscsiManager calls
change an in-memory model), so :func:`esxdr.vsphere.host.apply_plan` and its executors run
unchanged. It starts as pyvmomi 6.7.3's recorded Dell host shows it: vmk1 at 169.254.0.2 on
"iDRAC Network", a port group that config.network.portgroup does not list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any

import pytest
from pyVmomi import vim, vmodl
from test_host_plan import DESIRED

from esxdr.model.host import (
    Created,
    HostState,
    ObservedIscsi,
    ObservedPortGroup,
    ObservedVnic,
    ObservedVSwitch,
)
from esxdr.plan.host import plan_host
from esxdr.site.model import PortGroupSpec
from esxdr.vsphere.host import CreatedRecords, apply_plan
from esxdr.vsphere.session import Session


@dataclass
class FakeEsx:
    """The network and software iSCSI of one host, changed by the calls apply makes."""

    pnics: tuple[str, ...] = ("vmnic0", "vmnic1", "vmnic2", "vmnic3", "vusb0")
    vswitches: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "vSwitch0": {"uplinks": ("vmnic0",), "mtu": 1500, "active": ("vmnic0",), "standby": (), "ports": 128}})
    port_groups: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "Management Network": {"vswitch": "vSwitch0", "vlan": 0, "active": None, "standby": None},
        "VM Network": {"vswitch": "vSwitch0", "vlan": 0, "active": None, "standby": None}})
    # vmk1: the iDRAC OS-passthrough NIC on a port group the host does not list
    vnics: dict[str, dict[str, Any]] = field(default_factory=lambda: {
        "vmk0": {"pg": "Management Network", "ip": "10.0.0.5", "mask": "255.255.0.0", "mtu": 1500},
        "vmk1": {"pg": "iDRAC Network", "ip": "169.254.0.2", "mask": "255.255.255.0", "mtu": 1500}})
    bound: list[str] = field(default_factory=list)
    send_targets: list[tuple[str, int]] = field(default_factory=list)
    calls: list[tuple[str, tuple[Any, ...]]] = field(default_factory=list)
    requests: int = 0
    socket_timeout: float = 30.0
    by_method: dict[str, int] = field(default_factory=dict)
    relogin: Any = None
    cookie: str = ""

    def InvokeMethod(self, mo: Any, info: Any, args: list[Any]) -> Any:  # noqa: N802 - pyVmomi's stub interface
        self.requests += 1
        name = info.wsdlName
        if name == "AddVirtualSwitch":
            vs, spec = args
            if vs in self.vswitches:
                raise vim.fault.AlreadyExists(name=vs)
            self.vswitches[vs] = self._vs(spec)
        elif name == "UpdateVirtualSwitch":
            self.vswitches[args[0]] = self._vs(args[1])
        elif name == "RemoveVirtualSwitch":
            if any(v["pg"] in self.port_groups and self.port_groups[v["pg"]]["vswitch"] == args[0]
                   for v in self.vnics.values()):
                raise vim.fault.ResourceInUse(name=args[0])
            del self.vswitches[args[0]]
            self.port_groups = {n: p for n, p in self.port_groups.items() if p["vswitch"] != args[0]}
        elif name in ("AddPortGroup", "UpdatePortGroup"):
            spec = args[-1]
            team = spec.policy.nicTeaming
            order = team.nicOrder if team is not None else None
            self.port_groups[spec.name] = {"vswitch": spec.vswitchName, "vlan": spec.vlanId,
                                           "active": tuple(order.activeNic) if order else None,
                                           "standby": tuple(order.standbyNic or ()) if order else None}
        elif name == "RemovePortGroup":
            if any(v["pg"] == args[0] for v in self.vnics.values()):
                raise vim.fault.ResourceInUse(name=args[0])
            del self.port_groups[args[0]]
        elif name == "AddVirtualNic":
            pg, nic = args
            if pg not in self.port_groups:
                raise vim.fault.NotFound()
            dev = next(f"vmk{i}" for i in range(100) if f"vmk{i}" not in self.vnics)  # ESXi picks the number
            self.vnics[dev] = {"pg": pg, "ip": nic.ip.ipAddress, "mask": nic.ip.subnetMask, "mtu": nic.mtu}
            self.calls.append((name, (pg,)))
            return dev
        elif name == "UpdateVirtualNic":
            dev, nic = args
            v = self.vnics[dev]
            v.update(ip=nic.ip.ipAddress, mask=nic.ip.subnetMask, mtu=nic.mtu or v["mtu"], pg=nic.portgroup or v["pg"])
        elif name == "RemoveVirtualNic":
            if args[0] in self.bound:
                raise vim.fault.ResourceInUse(name=args[0])
            del self.vnics[args[0]]
        elif name == "BindVnic":
            self.bound.append(args[1])
        elif name == "UnbindVnic":
            self.bound.remove(args[1])
        elif name == "AddInternetScsiSendTargets":
            self.send_targets += [(t.address, t.port) for t in args[1]]
        elif name in ("RescanAllHba", "RescanVmfs"):
            pass
        else:
            raise AssertionError(f"unexpected call {name}")
        if name != "AddVirtualNic":
            self.calls.append((name, tuple(a for a in args if isinstance(a, str))))
        return None

    @staticmethod
    def _vs(spec: Any) -> dict[str, Any]:
        uplinks = tuple(spec.bridge.nicDevice) if spec.bridge else ()
        order = spec.policy.nicTeaming.nicOrder if spec.policy and spec.policy.nicTeaming else None
        return {"uplinks": uplinks, "mtu": spec.mtu, "ports": spec.numPorts,
                "active": tuple(order.activeNic) if order else uplinks,
                "standby": tuple(order.standbyNic or ()) if order else ()}

    def observed(self) -> HostState:
        """What esxdr's inventory would read: config.network lists no iDRAC port group."""
        vswitches = {n: ObservedVSwitch(n, v["uplinks"], v["mtu"], v["active"], v["standby"], v["ports"])
                     for n, v in self.vswitches.items()}
        pgs = {}
        for n, p in self.port_groups.items():
            vs = self.vswitches[p["vswitch"]]
            eff_a, eff_s = (p["active"], p["standby"]) if p["active"] is not None else (vs["active"], vs["standby"])
            pgs[n] = ObservedPortGroup(n, p["vswitch"], p["vlan"], p["active"], p["standby"], eff_a, eff_s)
        vnics = {d: ObservedVnic(d, v["pg"], False, v["ip"], v["mask"], v["mtu"]) for d, v in self.vnics.items()}
        return HostState(name="esx-dr", moid="ha-host",
                         refs={"networkSystem": "networkSystem", "storageSystem": "storageSystem",
                               "iscsiManager": "iscsiManager"},
                         pnics=self.pnics, vswitches=vswitches, port_groups=pgs, vnics=vnics,
                         software_iscsi_enabled=True,
                         iscsi=ObservedIscsi("vmhba65", "iqn.1998-01.com.vmware:esx-dr",
                                             send_targets=tuple(self.send_targets), bound=tuple(self.bound)))


def session_on(host: FakeEsx) -> Session:
    s = Session(SimpleNamespace(name="esx-dr", url="https://esx-dr/sdk", user="root"), host, "pw")  # type: ignore[arg-type]
    s.content = SimpleNamespace(propertyCollector=vmodl.query.PropertyCollector("propertyCollector", host))
    return s


def apply(host: FakeEsx, desired: Any, records: CreatedRecords, *, prune: bool = False) -> Any:
    """What `esxdr host apply` does: observe, plan with the record, apply, record."""
    state = host.observed()
    plan = plan_host(desired, state, prune=prune, created=records.forget_absent(desired.host, state))
    return apply_plan(session_on(host), state, plan, records=records)


def test_apply_beside_the_idrac_nic_then_the_plan_is_empty(tmp_path):
    host = FakeEsx()
    records = CreatedRecords(tmp_path, "esx-dr")
    result = apply(host, DESIRED, records)
    # the site file's vmk1 became vmk2 (vmk1 is the iDRAC's), and vmk2 is what got bound
    assert ("AddVirtualNic", ("iSCSI-A",)) in host.calls
    assert host.bound == ["vmk2"] and ("BindVnic", ("vmhba65", "vmk2")) in host.calls
    assert [s.detail for s in result.steps if s.action.kind == "add_vnic"] == ["ESXi named it vmk2"]
    assert host.vnics["vmk1"] == {"pg": "iDRAC Network", "ip": "169.254.0.2", "mask": "255.255.255.0", "mtu": 1500}
    assert not any(c[0] in ("UpdateVirtualNic", "RemoveVirtualNic") for c in host.calls)

    again = plan_host(DESIRED, host.observed(), created=records.load("esx-dr"))
    assert again.empty, again.render()
    assert plan_host(DESIRED, host.observed(), prune=True, created=records.load("esx-dr")).empty

    saved = json.loads((tmp_path / "vsphere" / "created" / "esx-dr--esx-dr.json").read_text())
    assert saved["vswitches"] == ["vSwitch1"]
    assert saved["port_groups"] == [["Prod-LAN", "vSwitch1"], ["Repl", "vSwitch1"], ["iSCSI-A", "vSwitch1"]]
    assert saved["vnics"] == [["vmk2", "iSCSI-A"]]  # the device ESXi named, not the desired name


def test_prune_removes_only_what_apply_created(tmp_path):
    host = FakeEsx()
    records = CreatedRecords(tmp_path, "esx-dr")
    more = replace(DESIRED, port_groups={**DESIRED.port_groups, "Extra": PortGroupSpec("Extra", "vSwitch1", 40)})
    apply(host, more, records)
    assert "Extra" in host.port_groups
    host.calls.clear()

    pruned = apply(host, DESIRED, records, prune=True)  # Extra left the site file
    assert [(s.action.kind, s.action.target) for s in pruned.steps] == [("remove_port_group", "Extra")]
    assert "Extra" not in host.port_groups
    # ESXi's VM Network and the iDRAC NIC were never esxdr's: still there, untouched
    assert "VM Network" in host.port_groups and host.vnics["vmk1"]["pg"] == "iDRAC Network"
    assert ["Extra", "vSwitch1"] not in json.loads(
        (tmp_path / "vsphere" / "created" / "esx-dr--esx-dr.json").read_text())["port_groups"]
    assert plan_host(DESIRED, host.observed(), prune=True, created=records.load("esx-dr")).empty


def test_a_record_of_something_removed_by_hand_is_dropped(tmp_path):
    """esxdr's Extra was removed by hand and someone made their own Extra: not esxdr's to prune."""
    host = FakeEsx()
    records = CreatedRecords(tmp_path, "esx-dr")
    apply(host, replace(DESIRED, port_groups={**DESIRED.port_groups,
                                              "Extra": PortGroupSpec("Extra", "vSwitch1", 40)}), records)
    del host.port_groups["Extra"]
    records.forget_absent("esx-dr", host.observed())
    host.port_groups["Extra"] = {"vswitch": "vSwitch1", "vlan": 41, "active": None, "standby": None}
    assert records.load("esx-dr").port_groups == Created(
        port_groups=frozenset({("iSCSI-A", "vSwitch1"), ("Repl", "vSwitch1"), ("Prod-LAN", "vSwitch1")})).port_groups
    plan = plan_host(DESIRED, host.observed(), prune=True, created=records.load("esx-dr"))
    assert not any(a.target == "Extra" for a in plan.actions)


def test_a_dry_run_records_nothing(tmp_path):
    host = FakeEsx()
    records = CreatedRecords(tmp_path, "esx-dr")
    state = host.observed()
    apply_plan(session_on(host), state, plan_host(DESIRED, state), dry_run=True, records=records)
    assert host.calls == [] and records.load("esx-dr") == Created()
    assert not (tmp_path / "vsphere").exists()


@pytest.mark.parametrize("bad", ["", "{not json"])
def test_an_unreadable_record_counts_as_nothing_created(tmp_path, bad):
    path = tmp_path / "vsphere" / "created"
    path.mkdir(parents=True)
    (path / "esx-dr--esx-dr.json").write_text(bad)
    assert CreatedRecords(tmp_path, "esx-dr").load("esx-dr") == Created()
