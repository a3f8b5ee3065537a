"""Seed the lab's production site like the classic setup.

The production tgtd exports sp1/iscsi/lun0..N with COMSTAR-style NAAs
(600144f0…, product id COMSTAR) through esxdr's own tgt backend; esx-prod logs
in with software iSCSI, creates a VMFS6 datastore on each LUN and a few VMs on
each. Everything goes through the real paths: the VMFS headers and the VMs'
files land on the LUN files on ZFS, so replication carries them to DR.
Idempotent: what exists is kept.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from esxdr.model import manifest as mf
from esxdr.targets import tgt
from esxdr.transport import LocalTransport

LAB_IQN = "iqn.2010-08.org.esxdr.lab:ss1.core"
PROD_INITIATOR = "iqn.1998-01.com.vmware:esx-prod"
DR_INITIATOR = "iqn.1998-01.com.vmware:esx-dr"
LAB_ACL = "lab-loopback"
VMS_PER_DATASTORE = 2


def comstar_naa(lab_id: str, index: int) -> str:
    """600144f0 + 6 bytes standing for the host + 4 bytes of time + a 2-byte counter, as COMSTAR does."""
    host = hashlib.sha256(lab_id.encode()).hexdigest()[:12]
    return f"600144f0{host}4fc511ec{index + 1:04x}"


def production_manifest(lab_dir: str, pool: str, luns: int, lun_size: int, portal: str,
                        initiators: str = "127.0.0.0/8") -> mf.Manifest:
    mnt = Path(lab_dir) / "mnt" / pool / "iscsi"
    addr, _, port = portal.rpartition(":")
    units = []
    for i in range(luns):
        naa = comstar_naa(lab_dir, i)
        units.append(mf.LogicalUnit(
            naa=mf.Naa.parse(naa),
            backing=mf.Backing(kind="file", path=str(mnt / f"lun{i}" / "lun.img"), dataset=f"{pool}/iscsi/lun{i}"),
            size_bytes=lun_size, block_size=512, serial=naa[-12:], vendor_id="SUN", product_id="COMSTAR",
            revision="1.0", alias=f"lun{i}", views=[mf.View(lun=i + 1, target=LAB_IQN)],
        ))
    # Every peer of the lab (esx-prod, esxdr's probes, the split-brain guard, the tests) logs in from
    # loopback, or from the two-box lab's link: production admits that network by name, since esxdr
    # never binds tgt's "ALL".
    return mf.Manifest(
        targets=[mf.Target(iqn=LAB_IQN, alias="ss1 core", tpgs=[mf.Tpg(tag=1, portals=[mf.Portal(addr, int(port))])],
                           acl=[LAB_ACL])],
        initiator_groups=[mf.InitiatorGroup(name=LAB_ACL, members=[initiators])],
        logical_units=units,
        source=mf.Source(stack="tgt", host="ss1"),
    )


def export_production(state: dict, lab_dir: str, pool: str, luns: int, lun_size: int,
                      initiators: str = "127.0.0.0/8") -> mf.Manifest:
    t = state["tgtd"]["production"]
    m = production_manifest(lab_dir, pool, luns, lun_size, t["portal"], initiators)
    tgt.apply(LocalTransport("ss1"), m, control_port=t["control_port"])
    return m


def _wait_task(task, timeout: float = 60.0):
    from pyVmomi import vim

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = task.info.state
        if state == vim.TaskInfo.State.success:
            return task.info.result
        if state == vim.TaskInfo.State.error:
            raise task.info.error
        time.sleep(0.05)
    raise TimeoutError(f"task {task} did not finish in {timeout}s")


def connect(url: str, user: str, password: str):
    from urllib.parse import urlparse

    from pyVim.connect import SmartConnect

    u = urlparse(url)
    # The lab's own esxsim, just started: its self-signed certificate is the one it printed.
    return SmartConnect(protocol=u.scheme, host=u.hostname, port=u.port, user=user, pwd=password,
                        disableSslCertValidation=u.scheme == "https")


def seed_esx_prod(esx: dict, portal: str, m: mf.Manifest, say) -> dict:
    """Datastores ds-lunK on each LUN and VMs on each, through esx-prod's real iSCSI path."""
    from pyVim.connect import Disconnect
    from pyVmomi import vim

    si = connect(esx["url"], esx["username"], esx["password"])
    try:
        content = si.RetrieveContent()
        dc = content.rootFolder.childEntity[0]
        host = dc.hostFolder.childEntity[0].host[0]
        net = host.configManager.networkSystem
        if not any(pg.spec.name == "Prod-LAN" for pg in net.networkInfo.portgroup):
            net.AddPortGroup(vim.host.PortGroup.Specification(
                name="Prod-LAN", vlanId=10, vswitchName="vSwitch0", policy=vim.host.NetworkPolicy()))
        ss = host.configManager.storageSystem
        ss.UpdateSoftwareInternetScsiEnabled(True)
        hba = next(a for a in ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba))
        addr, _, port = portal.rpartition(":")
        if not any(t.address == addr and t.port == int(port) for t in (hba.configuredSendTarget or [])):
            ss.AddInternetScsiSendTargets(hba.device, [vim.host.InternetScsiHba.SendTarget(address=addr,
                                                                                           port=int(port))])
        ss.RescanAllHba()
        ss.RescanVmfs()
        dss = host.configManager.datastoreSystem
        existing = {d.name: d for d in host.datastore}
        out: dict[str, Any] = {"datastores": {}, "vms": []}
        for i, lu in enumerate(m.logical_units):
            name = f"ds-lun{i}"
            ds = existing.get(name)
            if ds is None:
                opts = dss.QueryVmfsDatastoreCreateOptions(f"/vmfs/devices/disks/{lu.esxi_name}", 6)
                spec = opts[0].spec
                spec.vmfs.volumeName = name
                ds = dss.CreateVmfsDatastore(spec)
                say(f"esx-prod: VMFS6 datastore {name} on {lu.esxi_name}")
            out["datastores"][name] = {"naa": lu.esxi_name, "uuid": ds.info.vmfs.uuid,
                                       "dataset": lu.backing.dataset}
            vm_names = {v.name for v in ds.vm}
            for j in range(VMS_PER_DATASTORE):
                vm_name = f"app{i}{chr(ord('a') + j)}"
                if vm_name not in vm_names:
                    _create_vm(dc, host, name, vm_name)
                    say(f"esx-prod: VM {vm_name} on {name}")
                out["vms"].append({"name": vm_name, "datastore": name, "priority": 1 + (i + j) % 3})
        return out
    finally:
        Disconnect(si)


def _create_vm(dc, host, ds_name: str, name: str) -> None:
    from pyVmomi import vim

    nic = vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.VirtualVmxnet3(
        key=-1, backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="Prod-LAN")))
    scsi = vim.vm.device.VirtualDeviceSpec(operation="add", device=vim.vm.device.ParaVirtualSCSIController(
        key=-2, busNumber=0, sharedBus="noSharing"))
    disk = vim.vm.device.VirtualDeviceSpec(operation="add", fileOperation="create", device=vim.vm.device.VirtualDisk(
        key=-3, controllerKey=-2, unitNumber=0, capacityInKB=1024,
        backing=vim.vm.device.VirtualDisk.FlatVer2BackingInfo(diskMode="persistent")))
    spec = vim.vm.ConfigSpec(name=name, guestId="otherLinux64Guest", memoryMB=256, numCPUs=1,
                             files=vim.vm.FileInfo(vmPathName=f"[{ds_name}]"), deviceChange=[nic, scsi, disk])
    _wait_task(dc.vmFolder.CreateVM_Task(spec, host.parent.resourcePool, host))
