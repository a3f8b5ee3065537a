"""esxdr's one-read inventory on a real vCenter 6.7 and a real Dell ESXi 6.7 host.

Every expected value below was read by hand from the recorded responses in
tests/fidelity/data/pyvmomi-6.7.3 (see data/README.md), not from esxdr or esxsim. The host is a
Dell PowerEdge with a PERC H710P, a SATA CD-ROM, four Broadcom ports, the iDRAC USB NIC ``vusb0``
and the iDRAC OS-passthrough VMkernel NIC ``vmk1`` on a port group that ESXi does not list.
"""

from __future__ import annotations

import pytest
from fidelity_replay import ReplayMiss, session

from esxdr.errors import UsageError, VsphereError
from esxdr.model.host import (
    ObservedDatastore,
    ObservedPortGroup,
    ObservedVm,
    ObservedVnic,
    ObservedVSwitch,
)
from esxdr.vsphere import inventory

DELL_NAA = "naa.6b8ca3a0e65228002312a2e3098048bf"
DS1_UUID = "5b7ee5c9-4e8f1921-93b3-90b11c51ac73"
VCSA = "VMware vCenter Server Appliance"

# The host lists six VMs and two datastores; the cassettes describe one of each. The replay
# leaves the others out, and says so: exactly these.
NOT_RECORDED = {"VirtualMachine:vm-1731", "VirtualMachine:vm-20", "VirtualMachine:vm-1638",
                "VirtualMachine:vm-36", "VirtualMachine:vm-32", "Datastore:datastore-1639"}


@pytest.fixture()
def replay():
    s = session()
    yield s
    s.close()


@pytest.fixture()
def dell(replay):
    before = replay.by_method()
    hosts = inventory.read_hosts(replay)
    after = replay.by_method()
    replay.read_calls = {m: after[m] - before.get(m, 0) for m in after if after[m] != before.get(m, 0)}
    assert list(hosts) == ["10.0.0.5"]
    return hosts["10.0.0.5"]


def test_the_session_starts_on_the_real_vcenters_answers(replay):
    about = replay.content.about
    assert (about.fullName, about.apiVersion, about.apiType) == \
        ("VMware vCenter Server 6.7.0 build-9433931", "6.7", "VirtualCenter")
    assert replay.by_method() == {"RetrieveServiceContent": 1, "Login": 1}
    assert replay.content.propertyCollector._moId == "propertyCollector"
    assert replay.content.viewManager._moId == "ViewManager"


def test_the_whole_host_is_one_property_read(replay, dell):
    # A view (once per session) and ONE RetrievePropertiesEx for host, datastores and VMs.
    assert replay.read_calls == {"CreateContainerView": 1, "RetrievePropertiesEx": 1}
    assert replay.stub.unrecorded == NOT_RECORDED


def test_host_identity_and_config_managers(dell):
    assert (dell.name, dell.moid) == ("10.0.0.5", "host-14")
    assert dell.refs == {"networkSystem": "networkSystem-14", "storageSystem": "storageSystem-14",
                         "datastoreSystem": "datastoreSystem-14", "iscsiManager": "iscsiManager-14"}


def test_physical_nics_include_the_idrac_usb_nic(dell):
    assert dell.pnics == ("vmnic0", "vmnic1", "vmnic2", "vmnic3", "vusb0")
    assert dell.uplink_owner("vmnic0") == "vSwitch0"
    assert dell.uplink_owner("vusb0") is None  # it backs the hidden iDRAC switch, not a listed vSwitch


def test_vswitch_spec_values_not_runtime_ones(dell):
    # config.network.vswitch[0]: numPorts 6656 (runtime) but spec.numPorts 128 (what was set).
    assert dell.vswitches == {"vSwitch0": ObservedVSwitch(
        name="vSwitch0", uplinks=("vmnic0",), mtu=1500, active=("vmnic0",), standby=(), ports=128)}


def test_port_groups_inherit_or_override_teaming(dell):
    # "VM Network" has nicTeaming without nicOrder in its spec (inherits); "Management Network"
    # names vmnic0 itself. computedPolicy gives vmnic0 active for both.
    assert dell.port_groups == {
        "VM Network": ObservedPortGroup(name="VM Network", vswitch="vSwitch0", vlan=0, active=None, standby=None,
                                        effective_active=("vmnic0",), effective_standby=()),
        "Management Network": ObservedPortGroup(name="Management Network", vswitch="vSwitch0", vlan=0,
                                                active=("vmnic0",), standby=(), effective_active=("vmnic0",),
                                                effective_standby=()),
    }


def test_vmkernel_nics_include_the_idrac_passthrough_nic_on_an_unlisted_port_group(dell):
    assert dell.vnics == {
        "vmk0": ObservedVnic(device="vmk0", port_group="Management Network", dhcp=False, ip="10.0.0.5",
                             netmask="255.255.0.0", mtu=1500),
        "vmk1": ObservedVnic(device="vmk1", port_group="iDRAC Network", dhcp=False, ip="169.254.0.2",
                             netmask="255.255.255.0", mtu=1500),
    }
    # The real-host fact behind issue 13's "VMkernel NIC adopted by name": vmk1's port group and
    # its switch are hidden from config.network.portgroup / vswitch.
    assert "iDRAC Network" not in dell.port_groups
    assert dell.vnic_on("iDRAC Network") == dell.vnics["vmk1"]


def test_no_software_iscsi_on_this_host(dell):
    assert dell.software_iscsi_enabled is False
    assert dell.iscsi is None


def test_luns_only_disks_with_their_paths(dell):
    # The CD-ROM (mpx.vmhba0:C0:T4:L0) is a plain ScsiLun, not a ScsiDisk: not a LUN for esxdr.
    assert list(dell.luns) == [DELL_NAA]
    lun = dell.luns[DELL_NAA]
    assert lun.uuid == "02000000006b8ca3a0e65228002312a2e3098048bf504552432048"
    assert (lun.vendor, lun.model) == ("DELL", "PERC H710P")
    assert lun.serial == "unavailable"  # what ESXi reports when the device gives no serial
    assert lun.capacity_bytes == 1169686528 * 512
    assert lun.paths == ("vmhba1:C2:T0:L0",)
    assert lun.adapters == ("vmhba1",)  # the multipath adapter key resolved to the HBA's device


def test_a_lun_behind_a_non_iscsi_adapter_names_no_target(dell):
    # The PERC's target transport is HostSerialAttachedTargetTransport: it has no iScsiName.
    # An empty-string "target" would be counted as a target named "" by the missing-LUN diagnosis.
    assert dell.luns[DELL_NAA].targets == ()


def test_datastores_with_vmfs_uuid_and_extents(dell):
    assert dell.datastores == {"datastore1": ObservedDatastore(
        name="datastore1", moid="datastore-15", vmfs_uuid=DS1_UUID, extents=(DELL_NAA,), accessible=True,
        force_mounted=False, url=f"ds:///vmfs/volumes/{DS1_UUID}/")}
    assert dell.datastore_by_uuid(DS1_UUID).name == "datastore1"


def test_vms_with_power_heartbeat_and_tools(dell):
    assert dell.vms == {VCSA: ObservedVm(
        name=VCSA, moid="vm-22", vmx_path=f"[datastore1] {VCSA}/{VCSA}.vmx", power_state="poweredOn",
        question_id=None, question_text="", heartbeat="green", tools_running=True)}


def test_without_vms_the_read_asks_no_vm(replay):
    host = inventory.read_hosts(replay, with_vms=False)["10.0.0.5"]
    assert host.vms == {}
    assert list(host.datastores) == ["datastore1"]
    assert not any(u.startswith("VirtualMachine:") for u in replay.stub.unrecorded)


def test_read_host_by_name_and_standalone_fallback(replay):
    assert inventory.read_host(replay, "10.0.0.5").moid == "host-14"
    with pytest.raises(UsageError) as e:
        inventory.read_named_hosts(replay, ["esx-dr.example.com"])
    assert e.value.message == "host esx-dr.example.com not found on recorded-vc67"
    assert "hosts there: 10.0.0.5" in e.value.hint


def test_the_replay_refuses_what_the_recording_cannot_answer(replay, dell):
    # The guards behind every test here: a path no server knows is refused as a real collector
    # refuses it (InvalidProperty), and a call the recordings cannot answer fails the test; the
    # replay never makes an answer up.
    from pyVmomi import vim, vmodl

    PC = vmodl.query.PropertyCollector
    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=replay.ref("VirtualMachine", "vm-22"))],
                         propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=["runtime.powerStat"])])
    with pytest.raises(VsphereError, match="InvalidProperty"):
        inventory.retrieve(replay, spec)
    with pytest.raises(ReplayMiss, match="QueryUnresolvedVmfsVolumes"):
        inventory.unresolved_volumes(replay, dell)
