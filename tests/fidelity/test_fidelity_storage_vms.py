"""verify-storage, the consistency group's VM lookup and VM state reads on real recorded data.

The expected values are read by hand from tests/fidelity/data/pyvmomi-6.7.3: datastore1 is VMFS
6.82, UUID 5b7ee5c9-4e8f1921-93b3-90b11c51ac73, one extent (partition 3) on the PERC H710P LUN
naa.6b8ca3a0e65228002312a2e3098048bf, path vmhba1:C2:T0:L0; vm-22 is the vCenter appliance
(poweredOn, tools running, heartbeat green) on it; vm-227 is Jenkins02 on "datastore1 (1)" of
another host.
"""

from __future__ import annotations

import pytest
from fidelity_replay import session

from esxdr.plan.storage import ExpectedLun, check_storage
from esxdr.replication import consistency
from esxdr.vsphere import inventory, storage, vms

NAA = "6b8ca3a0e65228002312a2e3098048bf"
DS1_UUID = "5b7ee5c9-4e8f1921-93b3-90b11c51ac73"
VCSA = "VMware vCenter Server Appliance"


@pytest.fixture()
def replay():
    s = session()
    yield s
    s.close()


def _calls(s, before):
    after = s.by_method()
    return {m: n - before.get(m, 0) for m, n in after.items() if n != before.get(m, 0)}


def test_verify_storage_finds_the_mounted_vmfs_by_naa_and_uuid(replay):
    before = replay.by_method()
    result = storage.verify_storage(replay, "10.0.0.5",
                                    [ExpectedLun(naa=NAA, datastore="datastore1", vmfs_uuid=DS1_UUID)],
                                    rescan_mode="never")
    assert _calls(replay, before) == {"CreateContainerView": 1, "RetrievePropertiesEx": 1}
    r = result.report
    assert r.ok and r.host == "10.0.0.5"
    [c] = r.checks
    assert (c.status, c.datastore, c.vmfs_uuid, c.paths) == ("ok", "datastore1", DS1_UUID, ("vmhba1:C2:T0:L0",))
    assert c.message == f"datastore datastore1 mounted, VMFS {DS1_UUID}"
    assert c.notes == []
    assert result.rescans == 0


def test_verify_storage_by_naa_alone_takes_the_datastore_on_that_extent(replay):
    # No UUID given (nothing read from a header): the datastore whose extent is the LUN.
    result = storage.verify_storage(replay, "10.0.0.5", [ExpectedLun(naa=NAA)], rescan_mode="never")
    assert [(c.status, c.datastore, c.vmfs_uuid) for c in result.report.checks] == [("ok", "datastore1", DS1_UUID)]


def test_a_lun_this_host_lacks_is_missing_with_the_adapters_reason(replay):
    host = inventory.read_host(replay, "10.0.0.5", with_vms=False)
    report = check_storage([ExpectedLun(naa="600144f0a1b2c3d4e5f60718293a4b5c", datastore="DS-PROD")], host)
    [c] = report.checks
    assert c.status == "missing"
    assert c.message == "not seen by 10.0.0.5 (DS-PROD): the software iSCSI adapter is off"


def test_the_expected_uuid_on_another_lun_is_reported_as_an_identity_change(replay):
    host = inventory.read_host(replay, "10.0.0.5", with_vms=False)
    report = check_storage([ExpectedLun(naa="600144f0a1b2c3d4e5f60718293a4b5c", vmfs_uuid=DS1_UUID)], host)
    [c] = report.checks
    assert (c.status, c.datastore) == ("ok", "datastore1")
    assert c.notes == [f"mounted from naa.{NAA}, not naa.600144f0a1b2c3d4e5f60718293a4b5c: the LUN identity changed"]


def test_consistency_finds_the_group_vms_by_datastore_name_or_naa(replay):
    before = replay.by_method()
    matched, found = consistency.find_group_vms(replay, {"datastore1"}, set())
    assert _calls(replay, before) == {"CreateContainerView": 1, "RetrievePropertiesEx": 1}
    assert matched == ["datastore1"]
    # datastore-15's `vm` lists seven VMs; every one is in the group. The cassettes describe vm-22
    # alone, so only its values can be checked (the others are what find_group_vms makes of a VM
    # the collector did not return, which the recorded data cannot speak to).
    by_moid = {v["moid"]: v for v in found}
    assert set(by_moid) == {f"vm-{n}" for n in (20, 849, 1638, 36, 69, 32, 22)}
    assert by_moid["vm-22"] == {"moid": "vm-22", "name": VCSA, "power_state": "poweredOn", "tools_running": True,
                                "datastores": {"datastore1"}}
    assert replay.stub.unrecorded == {f"VirtualMachine:vm-{n}" for n in (20, 849, 1638, 36, 69, 32)}
    assert consistency.find_group_vms(replay, set(), {NAA})[0] == ["datastore1"]
    assert consistency.find_group_vms(replay, {"datastore2"}, {"600144f0a1b2c3d4e5f60718293a4b5c"}) == ([], [])


def test_vm_states_read_power_and_no_pending_question(replay):
    refs = [replay.ref("VirtualMachine", "vm-22"), replay.ref("VirtualMachine", "vm-227")]
    before = replay.by_method()
    assert vms.vm_states(replay, refs) == {"vm-22": ("poweredOn", None), "vm-227": ("poweredOn", None)}
    assert _calls(replay, before) == {"RetrievePropertiesEx": 1}


def test_real_vmx_paths_become_datastore_http_urls(replay):
    # Real vmPathName values: a directory with spaces, and vCenter's "datastore1 (1)" for the
    # second local datastore called datastore1.
    files = vms.DatastoreFiles(replay)
    vcsa = inventory.read_host(replay, "10.0.0.5").vms[VCSA].vmx_path
    assert files._url(vcsa) == ("/folder/VMware%20vCenter%20Server%20Appliance/VMware%20vCenter%20Server%20"
                                "Appliance.vmx?dcPath=ha-datacenter&dsName=datastore1")
    assert files._url("[datastore1 (1)] Jenkins02/Jenkins02.vmx") == \
        "/folder/Jenkins02/Jenkins02.vmx?dcPath=ha-datacenter&dsName=datastore1%20%281%29"
