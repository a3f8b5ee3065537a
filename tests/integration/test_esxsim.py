"""esxsim against real tgtd, driven with pyvmomi as esxdr drives ESXi."""

from __future__ import annotations

import shutil
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
pytest.register_assert_rewrite("conftest_esxsim")
from conftest_esxsim import connect, make_lun_file, write_vmfs_header  # noqa: E402

pytest_plugins = ["conftest_esxsim"]

pytestmark = pytest.mark.integration

pyVmomi = pytest.importorskip("pyVmomi")
from pyVmomi import vim, vmodl  # noqa: E402

NAA_PROD = "600144f0c0ffee000000000000000001"
NAA_OTHER = "600144f0c0ffee0000000000000000aa"


def host_of(si):
    content = si.RetrieveContent()
    return content.rootFolder.childEntity[0].hostFolder.childEntity[0].host[0]


def wait_task(task, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = task.info.state
        if state == vim.TaskInfo.State.success:
            return task.info.result
        if state == vim.TaskInfo.State.error:
            raise task.info.error
        time.sleep(0.05)
    raise TimeoutError(task)


def wait_for(fn, timeout=10.0, step=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(step)
    return fn()


def enable_iscsi(host, portal_host, port):
    ss = host.configManager.storageSystem
    ss.UpdateSoftwareInternetScsiEnabled(True)
    hba = next(a for a in ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba))
    ss.AddInternetScsiSendTargets(
        hba.device, [vim.host.InternetScsiHba.SendTarget(address=portal_host, port=port)]
    )
    return ss, hba


def canonical_names(ss):
    return sorted(
        lun.canonicalName for lun in ss.storageDeviceInfo.scsiLun if isinstance(lun, vim.host.ScsiDisk)
    )


def retrieve_all(si):
    content = si.RetrieveContent()
    pc = content.propertyCollector
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.ManagedEntity], True)
    ts = vmodl.query.PropertyCollector.TraversalSpec(
        name="t", path="view", skip=False, type=vim.view.ContainerView
    )
    spec = vmodl.query.PropertyCollector.FilterSpec(
        objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=view, skip=True, selectSet=[ts])],
        propSet=[vmodl.query.PropertyCollector.PropertySpec(type=vim.ManagedEntity, all=True)],
    )
    out = pc.RetrievePropertiesEx([spec], vmodl.query.PropertyCollector.RetrieveOptions())
    view.Destroy()
    return out.objects


def test_connect_and_read_everything(esxsim_factory):
    p = esxsim_factory("esx-a")
    si = connect(p)
    objs = retrieve_all(si)
    assert any(isinstance(o.obj, vim.HostSystem) for o in objs)
    host = host_of(si)
    assert host.name == "esx-a"
    cm = host.configManager
    assert cm.vsanSystem is None
    for name in ("networkSystem", "storageSystem", "datastoreSystem", "iscsiManager", "virtualNicManager"):
        mo = getattr(cm, name)
        assert mo is not None, name
        spec = vmodl.query.PropertyCollector.FilterSpec(
            objectSet=[vmodl.query.PropertyCollector.ObjectSpec(obj=mo)],
            propSet=[vmodl.query.PropertyCollector.PropertySpec(type=type(mo), all=True)],
        )
        si.RetrieveContent().propertyCollector.RetrievePropertiesEx(
            [spec], vmodl.query.PropertyCollector.RetrieveOptions()
        )
    assert [n.device for n in host.config.network.pnic] == ["vmnic0", "vmnic1", "vmnic2", "vmnic3"]


def test_wrong_password_refused(esxsim_factory):
    from pyVim.connect import SmartConnect

    p = esxsim_factory("esx-pw")
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(protocol="http", host=p.host, port=p.port, user="root", pwd="wrong")


def test_networking_like_esxi(esxsim_factory):
    si = connect(esxsim_factory("esx-net"))
    host = host_of(si)
    ns = host.configManager.networkSystem
    policy = vim.host.NetworkPolicy(
        nicTeaming=vim.host.NetworkPolicy.NicTeamingPolicy(
            policy="failover_explicit",
            nicOrder=vim.host.NetworkPolicy.NicOrderPolicy(activeNic=["vmnic1"], standbyNic=["vmnic2"]),
        )
    )
    spec = vim.host.VirtualSwitch.Specification(
        numPorts=64,
        mtu=9000,
        bridge=vim.host.VirtualSwitch.BondBridge(nicDevice=["vmnic1", "vmnic2"]),
        policy=policy,
    )
    ns.AddVirtualSwitch("vSwitch1", spec)
    for info in (host.config.network, ns.networkInfo):
        vs = next(v for v in info.vswitch if v.name == "vSwitch1")
        assert vs.mtu == 9000 and vs.spec.numPorts == 64
        assert list(vs.spec.bridge.nicDevice) == ["vmnic1", "vmnic2"]
        assert list(vs.spec.policy.nicTeaming.nicOrder.activeNic) == ["vmnic1"]
        assert list(vs.spec.policy.nicTeaming.nicOrder.standbyNic) == ["vmnic2"]
    with pytest.raises(vim.fault.AlreadyExists):
        ns.AddVirtualSwitch("vSwitch1", spec)
    with pytest.raises(vim.fault.ResourceInUse):
        ns.AddVirtualSwitch(
            "vSwitch2",
            vim.host.VirtualSwitch.Specification(
                numPorts=64, bridge=vim.host.VirtualSwitch.BondBridge(nicDevice=["vmnic1"])
            ),
        )

    ns.AddPortGroup(
        vim.host.PortGroup.Specification(
            name="iscsi-a", vlanId=0, vswitchName="vSwitch1", policy=vim.host.NetworkPolicy()
        )
    )
    pg = next(p for p in host.config.network.portgroup if p.spec.name == "iscsi-a")
    assert pg.spec.policy.security is not None  # empty, not missing
    assert pg.computedPolicy.nicTeaming.nicOrder.activeNic == ["vmnic1"]
    with pytest.raises(vim.fault.AlreadyExists):
        ns.AddPortGroup(
            vim.host.PortGroup.Specification(
                name="iscsi-a", vlanId=0, vswitchName="vSwitch1", policy=vim.host.NetworkPolicy()
            )
        )
    with pytest.raises(vim.fault.NotFound):
        ns.AddPortGroup(
            vim.host.PortGroup.Specification(
                name="x", vlanId=0, vswitchName="nope", policy=vim.host.NetworkPolicy()
            )
        )
    ns.UpdatePortGroup(
        "iscsi-a",
        vim.host.PortGroup.Specification(
            name="iscsi-a", vlanId=20, vswitchName="vSwitch1", policy=vim.host.NetworkPolicy()
        ),
    )
    assert next(p for p in ns.networkInfo.portgroup if p.spec.name == "iscsi-a").spec.vlanId == 20

    nic = vim.host.VirtualNic.Specification(
        ip=vim.host.IpConfig(dhcp=False, ipAddress="127.0.0.21", subnetMask="255.0.0.0"), mtu=9000
    )
    dev = ns.AddVirtualNic("iscsi-a", nic)
    assert dev == "vmk1"
    vmk = next(v for v in host.config.network.vnic if v.device == dev)
    assert vmk.spec.ip.ipAddress == "127.0.0.21" and vmk.spec.mtu == 9000
    ns.UpdateVirtualNic(dev, vim.host.VirtualNic.Specification(mtu=1500))
    assert next(v for v in ns.networkInfo.vnic if v.device == dev).spec.mtu == 1500
    with pytest.raises(vim.fault.ResourceInUse):
        ns.RemovePortGroup("iscsi-a")
    with pytest.raises(vim.fault.ResourceInUse):
        ns.RemoveVirtualSwitch("vSwitch1")
    with pytest.raises(vim.fault.NotFound):
        ns.RemoveVirtualSwitch("vSwitch9")
    with pytest.raises(vim.fault.NotFound):
        ns.RemovePortGroup("nope")

    vnm = host.configManager.virtualNicManager
    vnm.SelectVnicForNicType("vmotion", dev)
    cfg = next(c for c in vnm.info.netConfig if c.nicType == "vmotion")
    assert any(s.endswith(dev) for s in cfg.selectedVnic)

    ns.RemoveVirtualNic(dev)
    ns.RemovePortGroup("iscsi-a")
    ns.RemoveVirtualSwitch("vSwitch1")
    assert not any(v.name == "vSwitch1" for v in host.config.network.vswitch)


def test_bindvnic_needs_exactly_one_active_uplink(esxsim_factory):
    si = connect(esxsim_factory("esx-bind"))
    host = host_of(si)
    ns = host.configManager.networkSystem
    ns.AddVirtualSwitch(
        "vSwitch1",
        vim.host.VirtualSwitch.Specification(
            numPorts=64, bridge=vim.host.VirtualSwitch.BondBridge(nicDevice=["vmnic1", "vmnic2"])
        ),
    )
    ns.AddPortGroup(
        vim.host.PortGroup.Specification(
            name="iscsi", vlanId=0, vswitchName="vSwitch1", policy=vim.host.NetworkPolicy()
        )
    )
    dev = ns.AddVirtualNic(
        "iscsi",
        vim.host.VirtualNic.Specification(
            ip=vim.host.IpConfig(dhcp=False, ipAddress="127.0.0.31", subnetMask="255.0.0.0")
        ),
    )
    ss = host.configManager.storageSystem
    ss.UpdateSoftwareInternetScsiEnabled(True)
    im = host.configManager.iscsiManager
    with pytest.raises(vim.fault.IscsiFaultVnicHasMultipleUplinks) as e:
        im.BindVnic("vmhba65", dev)
    assert "exactly one active uplink" in e.value.msg
    ns.UpdatePortGroup(
        "iscsi",
        vim.host.PortGroup.Specification(
            name="iscsi",
            vlanId=0,
            vswitchName="vSwitch1",
            policy=vim.host.NetworkPolicy(
                nicTeaming=vim.host.NetworkPolicy.NicTeamingPolicy(
                    nicOrder=vim.host.NetworkPolicy.NicOrderPolicy(activeNic=["vmnic1"], standbyNic=[])
                )
            ),
        ),
    )
    assert any(p.vnicDevice == dev for p in im.QueryCandidateNics("vmhba65"))
    im.BindVnic("vmhba65", dev)
    assert [p.vnicDevice for p in im.QueryBoundVnics("vmhba65")] == [dev]
    with pytest.raises(vim.fault.IscsiFaultVnicAlreadyBound):
        im.BindVnic("vmhba65", dev)
    with pytest.raises(vim.fault.ResourceInUse):
        ns.RemoveVirtualNic(dev)
    im.UnbindVnic("vmhba65", dev, False)
    assert not im.QueryBoundVnics("vmhba65")


def test_rescan_names_lun_by_naa_and_drops_vanished(esxsim_factory, tgtd_factory, lab_dir):
    t = tgtd_factory()
    t.add_target(1, "iqn.2024-01.lab.esxsim:prod")
    t.add_lun(1, 1, make_lun_file(lab_dir / "lun1.img"), NAA_PROD, "SN-PROD-1")
    si = connect(esxsim_factory("esx-scan"))
    host = host_of(si)
    ss, hba = enable_iscsi(host, t.host, t.port)
    assert hba.device == "vmhba65" and hba.iScsiName == "iqn.1998-01.com.vmware:esx-scan"
    # a portal outside 127.0.0.0/8 is never contacted, and a dead one is harmless
    ss.AddInternetScsiSendTargets(
        hba.device, [vim.host.InternetScsiHba.SendTarget(address="127.0.0.1", port=1)]
    )
    ss.RescanAllHba()
    assert canonical_names(ss) == ["naa." + NAA_PROD]
    disk = next(lun for lun in ss.storageDeviceInfo.scsiLun if isinstance(lun, vim.host.ScsiDisk))
    assert disk.serialNumber == "SN-PROD-1"
    assert disk.vendor.strip() == "IET" and disk.model.strip() == "VIRTUAL-DISK"
    assert disk.capacity.block * disk.capacity.blockSize == 64 << 20
    iface = next(a for a in ss.storageDeviceInfo.scsiTopology.adapter if a.adapter == hba.key)
    assert iface.target[0].transport.iScsiName == "iqn.2024-01.lab.esxsim:prod"
    assert iface.target[0].lun[0].scsiLun == disk.key
    assert ss.storageDeviceInfo.multipathInfo.lun[0].lun == disk.key
    hba2 = next(a for a in ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba))
    assert any(st.discoveryMethod == "sendTargetMethod" for st in hba2.configuredStaticTarget)
    assert host.config.storageDevice.scsiLun[0].canonicalName == "naa." + NAA_PROD

    t.delete_lun(1, 1)
    ss.RescanAllHba()
    assert canonical_names(ss) == []


def test_chap_is_used_at_login(esxsim_factory, tgtd_factory, lab_dir):
    t = tgtd_factory()
    t.add_target(1, "iqn.2024-01.lab.esxsim:chap")
    t.add_lun(1, 1, make_lun_file(lab_dir / "lun-chap.img"), NAA_OTHER)
    t.require_chap(1, "esxuser", "s3cret-chap-12")
    si = connect(esxsim_factory("esx-chap"))
    ss, hba = enable_iscsi(host_of(si), t.host, t.port)
    ss.RescanAllHba()
    assert canonical_names(ss) == []
    ss.UpdateInternetScsiAuthenticationProperties(
        hba.device,
        vim.host.InternetScsiHba.AuthenticationProperties(
            chapAuthEnabled=True,
            chapName="esxuser",
            chapSecret="s3cret-chap-12",
            chapAuthenticationType="chapRequired",
        ),
    )
    ss.RescanAllHba()
    assert canonical_names(ss) == ["naa." + NAA_OTHER]
    hba = next(a for a in ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba))
    assert hba.authenticationProperties.chapName == "esxuser"
    assert not hba.authenticationProperties.chapSecret


def test_matching_header_mounts_and_new_naa_needs_resignature(esxsim_factory, tgtd_factory, lab_dir):
    lun = make_lun_file(lab_dir / "lun-vmfs.img")
    uuid = "5f1e2d3c-4b5a6978-8796-000c29aabbcc"
    write_vmfs_header(lun, NAA_PROD + "VIRTUA", uuid, "prod-ds1")
    t = tgtd_factory()
    t.add_target(1, "iqn.2024-01.lab.esxsim:vmfs")
    t.add_lun(1, 1, lun, NAA_PROD)
    si = connect(esxsim_factory("esx-vmfs"))
    host = host_of(si)
    ss, hba = enable_iscsi(host, t.host, t.port)
    ss.RescanAllHba()
    ss.RescanVmfs()
    ds = wait_for(lambda: [d for d in host.datastore if d.name == "prod-ds1"])
    assert ds, [d.name for d in host.datastore]
    ds = ds[0]
    assert ds.summary.url == f"ds:///vmfs/volumes/{uuid}/"
    assert ds.info.vmfs.uuid == uuid
    assert ds.info.vmfs.extent[0].diskName == "naa." + NAA_PROD
    assert ds.summary.type == "VMFS"
    assert not host.configManager.datastoreSystem.QueryUnresolvedVmfsVolumes()

    # re-export the same file under another NAA: a snapshot, no longer mounted
    t.delete_lun(1, 1)
    t.add_lun(1, 2, lun, NAA_OTHER)
    ss.RescanAllHba()
    assert not [d for d in host.datastore if d.name == "prod-ds1"]
    dss = host.configManager.datastoreSystem
    unresolved = dss.QueryUnresolvedVmfsVolumes()
    assert [u.vmfsUuid for u in unresolved] == [uuid]
    assert unresolved[0].vmfsLabel == "prod-ds1"
    assert unresolved[0].resolveStatus.resolvable
    assert unresolved[0].extent[0].device.diskName == "naa." + NAA_OTHER
    assert [u.vmfsUuid for u in ss.QueryUnresolvedVmfsVolume()] == [uuid]

    spec = vim.host.UnresolvedVmfsResignatureSpec(extentDevicePath=[unresolved[0].extent[0].devicePath])
    result = wait_task(dss.ResignatureUnresolvedVmfsVolume_Task(spec))
    snap = result.result
    assert snap.name.startswith("snap-") and snap.name.endswith("-prod-ds1")
    assert len(snap.name.split("-")[1]) == 8
    assert snap.info.vmfs.uuid != uuid
    assert not dss.QueryUnresolvedVmfsVolumes()


def test_force_mount_keeps_uuid(esxsim_factory, tgtd_factory, lab_dir):
    lun = make_lun_file(lab_dir / "lun-fm.img")
    uuid = "5f1e2d3c-00000001-8796-000c29aabbcc"
    write_vmfs_header(lun, NAA_PROD + "VIRTUA", uuid, "fm-ds")
    t = tgtd_factory()
    t.add_target(1, "iqn.2024-01.lab.esxsim:fm")
    t.add_lun(1, 1, lun, NAA_OTHER)
    si = connect(esxsim_factory("esx-fm"))
    host = host_of(si)
    ss, _ = enable_iscsi(host, t.host, t.port)
    ss.RescanAllHba()
    unresolved = ss.QueryUnresolvedVmfsVolume()
    assert [u.vmfsUuid for u in unresolved] == [uuid]
    res = ss.ResolveMultipleUnresolvedVmfsVolumes(
        [
            vim.host.UnresolvedVmfsResolutionSpec(
                extentDevicePath=[unresolved[0].extent[0].devicePath], uuidResolution="forceMount"
            )
        ]
    )
    assert res[0].fault is None and res[0].vmfs.uuid == uuid
    ds = next(d for d in host.datastore if d.name == "fm-ds")
    assert ds.info.vmfs.forceMountedInfo.mounted
    ss.UnmountForceMountedVmfsVolume(uuid)
    assert not [d for d in host.datastore if d.name == "fm-ds"]
    assert [u.vmfsUuid for u in ss.QueryUnresolvedVmfsVolume()] == [uuid]


def datastore_file(proc, ds_name, path):
    """GET a datastore file through the /folder endpoint."""
    import base64

    url = f"http://{proc.host}:{proc.port}/folder/{path}?dcPath=ha-datacenter&dsName={ds_name}"
    req = urllib.request.Request(url)
    token = base64.b64encode(f"{proc.username}:{proc.password}".encode()).decode()
    req.add_header("Authorization", "Basic " + token)
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.read().decode()


def create_vm(host, ds_name, name, network="VM Network"):
    dc = host.parent.parent.parent
    nic = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        device=vim.vm.device.VirtualVmxnet3(
            key=-1, backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName=network)
        ),
    )
    scsi = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        device=vim.vm.device.ParaVirtualSCSIController(key=-2, busNumber=0, sharedBus="noSharing"),
    )
    disk = vim.vm.device.VirtualDeviceSpec(
        operation="add",
        fileOperation="create",
        device=vim.vm.device.VirtualDisk(
            key=-3,
            controllerKey=-2,
            unitNumber=0,
            capacityInKB=1024,
            backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent"),
        ),
    )
    spec = vim.vm.ConfigSpec(
        name=name,
        guestId="otherLinux64Guest",
        memoryMB=256,
        numCPUs=2,
        files=vim.vm.FileInfo(vmPathName=f"[{ds_name}]"),
        deviceChange=[nic, scsi, disk],
    )
    return wait_task(dc.vmFolder.CreateVM_Task(spec, host.parent.resourcePool, host))


def test_create_vmfs_and_vm_replicate_to_dr(esxsim_factory, tgtd_factory, lab_dir):
    prod_lun = make_lun_file(lab_dir / "prod-lun0.img")
    prod_t = tgtd_factory("127.0.0.1")
    prod_t.add_target(1, "iqn.2024-01.lab.esxsim:prod-lun0")
    prod_t.add_lun(1, 1, prod_lun, NAA_PROD)
    prod = esxsim_factory("esx-prod")
    psi = connect(prod)
    phost = host_of(psi)
    pss, _ = enable_iscsi(phost, prod_t.host, prod_t.port)
    pss.RescanAllHba()
    dss = phost.configManager.datastoreSystem
    opts = dss.QueryVmfsDatastoreCreateOptions("/vmfs/devices/disks/naa." + NAA_PROD, 6)
    spec = opts[0].spec
    spec.vmfs.volumeName = "prod-ds1"
    ds = dss.CreateVmfsDatastore(spec)
    assert ds.name == "prod-ds1" and ds.info.vmfs.majorVersion == 6
    uuid = ds.info.vmfs.uuid

    with pytest.raises(vim.fault.InvalidDeviceBacking):
        create_vm(phost, "prod-ds1", "bad-net", network="no-such-pg")
    vm = create_vm(phost, "prod-ds1", "app01")
    vmx = datastore_file(prod, "prod-ds1", "app01/app01.vmx")
    assert 'displayName = "app01"' in vmx and 'ethernet0.networkName = "VM Network"' in vmx
    assert 'memsize = "256"' in vmx

    # replicate: copy the LUN file, export it at the DR portal with the same NAA
    dr_lun = lab_dir / "dr-lun0.img"
    shutil.copyfile(prod_lun, dr_lun)
    dr_t = tgtd_factory("127.0.0.2")
    dr_t.add_target(1, "iqn.2024-01.lab.esxsim:dr-lun0")
    dr_t.add_lun(1, 1, dr_lun, NAA_PROD)
    dr = esxsim_factory("esx-dr", host="127.0.0.2", heartbeat_delay=0.3)
    dsi = connect(dr)
    dhost = host_of(dsi)
    dss_dr, _ = enable_iscsi(dhost, dr_t.host, dr_t.port)
    dss_dr.RescanAllHba()
    dds = next(d for d in dhost.datastore if d.name == "prod-ds1")
    assert dds.info.vmfs.uuid == uuid
    vmx_dr = datastore_file(dr, "prod-ds1", "app01/app01.vmx")
    assert 'displayName = "app01"' in vmx_dr
    assert "RW 2048 VMFS" in datastore_file(dr, "prod-ds1", "app01/app01.vmdk")

    dc = dhost.parent.parent.parent
    dvm = wait_task(
        dc.vmFolder.RegisterVM_Task(
            "[prod-ds1] app01/app01.vmx", None, False, dhost.parent.resourcePool, dhost
        )
    )
    assert dvm.name == "app01"
    assert dvm.config.hardware.memoryMB == 256 and dvm.config.hardware.numCPU == 2
    assert dvm.config.uuid == vm.config.uuid
    nics = [d for d in dvm.config.hardware.device if isinstance(d, vim.vm.device.VirtualEthernetCard)]
    assert [n.backing.deviceName for n in nics] == ["VM Network"]

    task = dvm.PowerOnVM_Task()
    q = wait_for(lambda: dvm.runtime.question, timeout=5)
    # As a real host: an opaque id, the kind in message[].id, the labels vim-cmd lists
    assert q is not None and q.id == "_vmx1" and [m.id for m in q.message] == ["msg.uuid.altered"]
    labels = {c.key: c.label for c in q.choice.choiceInfo}
    assert labels == {"0": "button.uuid.cancel", "1": "button.uuid.movedTheVM", "2": "button.uuid.copiedTheVM"}
    assert task.info.state == vim.TaskInfo.State.running
    with pytest.raises(vmodl.fault.InvalidArgument):
        dvm.AnswerVM("msg.uuid.altered", "2")  # not this question's id
    dvm.AnswerVM(q.id, "2")
    wait_task(task)
    assert dvm.runtime.question is None
    assert dvm.runtime.powerState == "poweredOn"
    assert wait_for(lambda: dvm.guestHeartbeatStatus == "green", timeout=5)
    assert dvm.guest.toolsRunningStatus == "guestToolsRunning"
    assert dvm.config.uuid != vm.config.uuid  # "I copied it" gives a new BIOS UUID

    # quiesced snapshots
    snap = wait_task(dvm.CreateSnapshot_Task("q1", "", False, True))
    wait_task(snap.RemoveSnapshot_Task(False))
    wait_task(
        dvm.ReconfigVM_Task(
            vim.vm.ConfigSpec(extraConfig=[vim.option.OptionValue(key="esxsim.quiesceFail", value="TRUE")])
        )
    )
    with pytest.raises(vim.fault.ApplicationQuiesceFault):
        wait_task(dvm.CreateSnapshot_Task("q2", "", False, True))

    wait_task(dvm.PowerOffVM_Task())
    assert dvm.guestHeartbeatStatus == "gray"
    # a second power-on asks nothing
    wait_task(dvm.PowerOnVM_Task())
    assert dvm.runtime.question is None
    wait_task(dvm.PowerOffVM_Task())
    dvm.UnregisterVM()


def host_events(si):
    em = si.RetrieveContent().eventManager
    collector = em.CreateCollectorForEvents(vim.event.EventFilterSpec())
    collector.SetCollectorPageSize(1000)
    events = collector.latestPage
    collector.DestroyCollector()
    return [(e.fullFormattedMessage or "") + " " + (getattr(e, "message", "") or "") for e in events]


def test_double_mount_from_two_lun_identities_is_reported(esxsim_factory, tgtd_factory, lab_dir):
    lun = make_lun_file(lab_dir / "dm-prod.img")
    uuid = "5f1e2d3c-00000002-8796-000c29aabbcc"
    write_vmfs_header(lun, NAA_PROD + "VIRTUA", uuid, "dm-ds")
    copy = lab_dir / "dm-copy.img"
    shutil.copyfile(lun, copy)
    t1 = tgtd_factory("127.0.0.1")
    t1.add_target(1, "iqn.2024-01.lab.esxsim:dm1")
    t1.add_lun(1, 1, lun, NAA_PROD)
    t2 = tgtd_factory("127.0.0.2")
    t2.add_target(1, "iqn.2024-01.lab.esxsim:dm2")
    t2.add_lun(1, 1, copy, NAA_OTHER)
    a = connect(esxsim_factory("esx-dm-a"))
    ss_a, _ = enable_iscsi(host_of(a), t1.host, t1.port)
    ss_a.RescanAllHba()
    assert [d.name for d in host_of(a).datastore] == ["dm-ds"]
    b = connect(esxsim_factory("esx-dm-b", host="127.0.0.2"))
    ss_b, _ = enable_iscsi(host_of(b), t2.host, t2.port)
    ss_b.RescanAllHba()
    unresolved = ss_b.QueryUnresolvedVmfsVolume()
    res = ss_b.ResolveMultipleUnresolvedVmfsVolumes(
        [
            vim.host.UnresolvedVmfsResolutionSpec(
                extentDevicePath=[unresolved[0].extent[0].devicePath], uuidResolution="forceMount"
            )
        ]
    )
    assert res[0].vmfs.uuid == uuid
    assert any("DOUBLE MOUNT" in m and uuid in m for m in host_events(b))


def test_tls_thumbprint(esxsim_binary, lab_dir):
    import hashlib
    import ssl

    from conftest_esxsim import esxsim as launcher
    from conftest_esxsim import free_port

    p = launcher.start(
        "esx-tls", "127.0.0.1", free_port(), lab_dir / "tls", password="pw", tls=True, binary=esxsim_binary
    )
    try:
        assert p.url.startswith("https://")
        pem = ssl.get_server_certificate((p.host, p.port))
        der = ssl.PEM_cert_to_DER_cert(pem)
        thumb = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        assert p.thumbprint == thumb
        from pyVim.connect import SmartConnect

        ctx = ssl._create_unverified_context()
        si = SmartConnect(host=p.host, port=p.port, user="root", pwd="pw", sslContext=ctx)
        assert host_of(si).name == "esx-tls"
    finally:
        p.stop()
    assert not p.alive()


def test_esxdr_answers_the_uuid_question_of_an_unprepared_vmx(esxsim_factory, tgtd_factory, lab_dir):
    """The fallback when esxdr could not write uuid.action into a .vmx: the replicated .vmx is
    registered as it is, esxsim asks msg.uuid.altered at power-on (as ESXi does), and esxdr's boot
    step answers it: "I moved it" keeps the production BIOS UUID (failover), "I copied it" gives a
    new one (drill). Also a question left pending by a killed run (power-on issued, not answered)."""
    from esxdr.site.model import VsphereEndpoint
    from esxdr.vsphere import inventory
    from esxdr.vsphere import recovery as vr
    from esxdr.vsphere import vms as vv
    from esxdr.vsphere.session import connect as esxdr_connect

    prod_lun = make_lun_file(lab_dir / "q-prod.img")
    prod_t = tgtd_factory("127.0.0.1")
    prod_t.add_target(1, "iqn.2024-01.lab.esxsim:q-prod")
    prod_t.add_lun(1, 1, prod_lun, NAA_PROD)
    prod = esxsim_factory("esx-prod")
    phost = host_of(connect(prod))
    pss, _ = enable_iscsi(phost, prod_t.host, prod_t.port)
    pss.RescanAllHba()
    dss = phost.configManager.datastoreSystem
    spec = dss.QueryVmfsDatastoreCreateOptions("/vmfs/devices/disks/naa." + NAA_PROD, 6)[0].spec
    spec.vmfs.volumeName = "q-ds"
    dss.CreateVmfsDatastore(spec)
    prod_uuid = {n: create_vm(phost, "q-ds", n).config.uuid for n in ("app01", "app02", "app03")}

    dr_lun = lab_dir / "q-dr.img"
    shutil.copyfile(prod_lun, dr_lun)  # replicated: same bytes, same NAA at the DR portal
    dr_t = tgtd_factory("127.0.0.2")
    dr_t.add_target(1, "iqn.2024-01.lab.esxsim:q-dr")
    dr_t.add_lun(1, 1, dr_lun, NAA_PROD)
    dr = esxsim_factory("esx-dr", host="127.0.0.2", heartbeat_delay=0.2)
    dss_dr, _ = enable_iscsi(host_of(connect(dr)), dr_t.host, dr_t.port)
    dss_dr.RescanAllHba()

    ep = VsphereEndpoint(name="esx-dr", role="dr", url=dr.url, user=dr.username)
    with esxdr_connect(ep, password=dr.password) as s:
        paths = [f"[q-ds] {n}/{n}.vmx" for n in sorted(prod_uuid)]
        files = vv.DatastoreFiles(s)
        for p in paths:  # not prepared: nothing in the .vmx says moved or copied
            assert "uuid.action" not in files.get(p).decode()
        host = inventory.read_host(s, "esx-dr")
        # The search reports folders as ESXi does ("[ds] dir", the root "[ds]"); esxdr's paths are
        # the ones vSphere gives a registered VM.
        browser = s.ref("Datastore", host.datastores["q-ds"].moid).browser
        spec = vim.host.DatastoreBrowser.SearchSpec(matchPattern=["*.vmx"])
        found = wait_task(browser.SearchDatastoreSubFolders_Task("[q-ds]", spec))
        assert {f.folderPath for f in found} >= {"[q-ds]"} | {f"[q-ds] {n}" for n in prod_uuid}
        assert wait_task(browser.SearchDatastore_Task("[q-ds] app01", spec)).folderPath == "[q-ds] app01"
        assert vr.find_vmx(s, host, ["q-ds"]) == {n: f"[q-ds] {n}/{n}.vmx" for n in prod_uuid}
        refs = vv.register_vms(s, host, paths, timeout=30)
        ids = {r.name: r._moId for r in refs}
        by_name = dict(zip(sorted(prod_uuid), refs, strict=True))

        def uuids() -> dict[str, str]:
            return {n: r.config.uuid for n, r in by_name.items()}

        # Failover: "I moved it", answered on the way while the batch powers on.
        moved = [by_name["app01"], by_name["app02"]]
        assert vv.boot(s, moved, {}, uuid_answer="moved", timeout=30) == {ids["app01"]: "moved",
                                                                            ids["app02"]: "moved"}
        assert {n: u for n, u in uuids().items() if n != "app03"} == \
            {n: u for n, u in prod_uuid.items() if n != "app03"}  # the production BIOS UUIDs

        # Drill, killed after issuing the power-on: the question is pending; the rerun answers it.
        vm3 = by_name["app03"]
        task = vm3.PowerOnVM_Task()
        assert wait_for(lambda: vm3.runtime.question is not None, timeout=5)
        states = vv.vm_states(s, [vm3])
        assert states[ids["app03"]][1] == "_vmx1"  # opaque: boot looks at what the question asks
        assert vv.boot(s, [vm3], states, uuid_answer="copied", timeout=30) == {ids["app03"]: "copied"}
        wait_task(task)  # the killed run's own power-on task ends with the answer
        assert task.info.state == vim.TaskInfo.State.success
        assert uuids()["app03"] != prod_uuid["app03"]  # I copied it: a new BIOS UUID

        for n, r in by_name.items():
            assert (r.runtime.powerState, r.guestHeartbeatStatus, r.runtime.question) == ("poweredOn", "green", None), n
        # The answer stays with the VM: powered off and on again, nothing is asked.
        vv.power_off(s, moved)
        assert vv.boot(s, moved, {}, uuid_answer="moved", timeout=30) == {}

        # As on ESXi, a property spec asking a type for a path it does not have is refused as a
        # whole (a Task has no runtime.question), not answered with a silent missingSet.
        PC = vmodl.query.PropertyCollector
        pc = s.content.propertyCollector
        objs = [PC.ObjectSpec(obj=task), PC.ObjectSpec(obj=vm3)]
        ok = PC.FilterSpec(objectSet=objs, propSet=[PC.PropertySpec(type=vim.Task, pathSet=["info.state"]),
                                                    PC.PropertySpec(type=vim.VirtualMachine,
                                                                    pathSet=["runtime.question"])])
        assert len(pc.RetrievePropertiesEx([ok], PC.RetrieveOptions()).objects) == 2
        bad = PC.FilterSpec(objectSet=objs, propSet=[PC.PropertySpec(type=vim.Task,
                                                                     pathSet=["info.state", "runtime.question"])])
        with pytest.raises(vmodl.query.InvalidProperty) as e:
            pc.RetrievePropertiesEx([bad], PC.RetrieveOptions())
        assert e.value.name == "runtime.question"
        with pytest.raises(vmodl.query.InvalidProperty):
            pc.CreateFilter(bad, partialUpdates=False)
