"""The storage part of the one-read inventory, on pyVmomi data objects shaped as a host sends
them: which targets a LUN is reached through, for the missing-LUN diagnosis of the planner.

A real host lists one scsiTopology target per (portal, IQN): a LUN seen through two portals of
one iSCSI target appears under both (esxsim does the same). Its local SAS/SATA disks sit under
targets whose transport has no iScsiName (pyvmomi 6.7.3's recorded Dell host: a PERC disk on
vmhba1 behind a SerialAttachedTargetTransport).
"""

from __future__ import annotations

from pyVmomi import vim

from esxdr.model.host import HostState
from esxdr.plan.storage import ExpectedLun, check_storage
from esxdr.vsphere.inventory import parse_storage

IQN = "iqn.2024-01.lab.esxdr:dr"
ISCSI_NAA = "600144f0c0ffee000000000000000001"
OTHER_NAA = "600144f0c0ffee0000000000000000aa"
LOCAL = "naa.6b8ca3a0e65228002312a2e3098048bf"


def disk(canonical: str, key: str) -> object:
    return vim.host.ScsiDisk(key=key, canonicalName=canonical, uuid=key, vendor="IET", model="VIRTUAL-DISK",
                             capacity=vim.host.DiskDimensions.Lba(block=131072, blockSize=512))


def iscsi_target(key: str, portal: str, lun_key: str) -> object:
    return vim.host.ScsiTopology.Target(
        key=key, target=0, transport=vim.host.InternetScsiTargetTransport(iScsiName=IQN, address=[portal]),
        lun=[vim.host.ScsiTopology.Lun(key=key + "-l1", lun=1, scsiLun=lun_key)])


def storage() -> object:
    hba = vim.host.InternetScsiHba(key="key-vim.host.InternetScsiHba-vmhba65", device="vmhba65",
                                   iScsiName="iqn.1998-01.com.vmware:esx-dr", isSoftwareBased=True,
                                   configuredSendTarget=[vim.host.InternetScsiHba.SendTarget(address="127.0.0.1",
                                                                                              port=3260)],
                                   configuredStaticTarget=[vim.host.InternetScsiHba.StaticTarget(
                                       address="127.0.0.1", port=3260, iScsiName=IQN,
                                       discoveryMethod="sendTargetMethod")])
    sas = vim.host.SerialAttachedHba(key="key-vim.host.SerialAttachedHba-vmhba1", device="vmhba1")
    topo = vim.host.ScsiTopology(adapter=[
        vim.host.ScsiTopology.Interface(key="if-65", adapter=hba.key, target=[
            iscsi_target("t0", "127.0.0.1:3260", "lun-iscsi"),
            iscsi_target("t1", "127.0.0.3:3260", "lun-iscsi")]),  # the same target through a second portal
        vim.host.ScsiTopology.Interface(key="if-1", adapter=sas.key, target=[
            vim.host.ScsiTopology.Target(key="t-sas", target=0,
                                         transport=vim.host.SerialAttachedTargetTransport(),
                                         lun=[vim.host.ScsiTopology.Lun(key="l-sas", lun=0, scsiLun="lun-local")])]),
    ])
    mp = vim.host.MultipathInfo(lun=[
        vim.host.MultipathInfo.LogicalUnit(key="m1", id="lun-iscsi", lun="lun-iscsi", path=[
            vim.host.MultipathInfo.Path(key="p0", name="vmhba65:C0:T0:L1", adapter=hba.key, lun="m1"),
            vim.host.MultipathInfo.Path(key="p1", name="vmhba65:C1:T0:L1", adapter=hba.key, lun="m1")]),
        vim.host.MultipathInfo.LogicalUnit(key="m2", id="lun-local", lun="lun-local", path=[
            vim.host.MultipathInfo.Path(key="p2", name="vmhba1:C2:T0:L0", adapter=sas.key, lun="m2")])])
    return vim.host.StorageDeviceInfo(hostBusAdapter=[hba, sas], softwareInternetScsiEnabled=True,
                                      scsiLun=[disk("naa." + ISCSI_NAA, "lun-iscsi"), disk(LOCAL, "lun-local")],
                                      scsiTopology=topo, multipathInfo=mp)


def test_each_lun_lists_each_target_once_and_a_local_disk_none():
    enabled, iscsi, luns = parse_storage(storage())
    assert enabled and iscsi is not None and iscsi.discovered == (("127.0.0.1", 3260, IQN),)
    lun = luns["naa." + ISCSI_NAA]
    assert lun.targets == (IQN,)  # two portals, one target
    assert lun.paths == ("vmhba65:C0:T0:L1", "vmhba65:C1:T0:L1") and lun.adapters == ("vmhba65",)
    assert luns[LOCAL].targets == () and luns[LOCAL].adapters == ("vmhba1",)


def test_a_missing_lun_is_diagnosed_with_what_the_target_really_offered():
    """The target offers one LUN (seen through two portals): "offered 1 LUN", not 2."""
    enabled, iscsi, luns = parse_storage(storage())
    host = HostState(name="esx-dr", moid="ha-host", software_iscsi_enabled=enabled, iscsi=iscsi, luns=luns)
    [check] = check_storage([ExpectedLun(naa=OTHER_NAA, target=IQN)], host).checks
    assert check.status == "missing"
    assert f"target {IQN} offered 1 LUN (naa.{ISCSI_NAA}) to initiator iqn.1998-01.com.vmware:esx-dr" \
        in check.message
