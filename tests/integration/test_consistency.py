"""Application-consistent group snapshots against esxsim: quiesced VMware snapshots around the
ZFS snapshot, the per-VM fallback, and the rule that every VMware snapshot taken is removed."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vsphere_fixtures import PASSWORD_ENV, naa_for, start_lab

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi")
pytest_plugins = ["conftest_esxsim"]


# --------------------------------------------------------------------------- helpers (test_guest uses them)
def mount_datastores(session) -> None:
    """Software iSCSI on, the lab's portal as send target, rescan: ds1/ds2… mount from the LUNs."""
    from pyVmomi import vim

    host = host_of(session)
    ss = host.configManager.storageSystem
    ss.UpdateSoftwareInternetScsiEnabled(True)
    hba = next(a for a in ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba))
    return hba, ss


def host_of(session):
    return session.content.rootFolder.childEntity[0].hostFolder.childEntity[0].host[0]


def start_prod_lab(binary, dir: Path, luns=(1, 2)):
    """tgtd + esxsim with VMFS datastores ds<i> mounted (esxsim's host plays production)."""
    from pyVmomi import vim

    lab = start_lab(dir, binary=binary, heartbeat_delay=0.2)
    try:
        for i in luns:
            lab.add_lun(i)
        with lab.connect() as s:
            hba, ss = mount_datastores(s)
            ss.AddInternetScsiSendTargets(hba.device, [vim.host.InternetScsiHba.SendTarget(
                address=lab.tgtd.host, port=lab.tgtd.port)])
            ss.RescanAllHba()
            names = {d.name for d in host_of(s).datastore}
            assert {f"ds{i}" for i in luns} <= names, names
    except Exception:
        lab.stop()
        raise
    return lab


def wait_task(task, timeout=30):
    from pyVmomi import vim

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if task.info.state == vim.TaskInfo.State.success:
            return task.info.result
        if task.info.state == vim.TaskInfo.State.error:
            raise task.info.error
        time.sleep(0.05)
    raise TimeoutError(task)


def make_vm(session, name: str, datastore: str, *, guest_id: str = "otherLinux64Guest",
            extra: dict[str, str] | None = None, power_on: bool = True):
    from pyVmomi import vim

    host = host_of(session)
    dc = session.content.rootFolder.childEntity[0]
    spec = vim.vm.ConfigSpec(name=name, guestId=guest_id, memoryMB=256, numCPUs=1,
                             files=vim.vm.FileInfo(vmPathName=f"[{datastore}]"),
                             extraConfig=[vim.option.OptionValue(key=k, value=v) for k, v in (extra or {}).items()])
    vm = wait_task(dc.vmFolder.CreateVM_Task(spec, host.parent.resourcePool, host))
    if power_on:
        wait_task(vm.PowerOnVM_Task())
        deadline = time.monotonic() + 10
        while vm.guest.toolsRunningStatus != "guestToolsRunning" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert vm.guest.toolsRunningStatus == "guestToolsRunning"
    return vm


def snapshots_of(vm) -> list[str]:
    snap = vm.snapshot
    out = []
    stack = list(snap.rootSnapshotList) if snap else []
    while stack:
        t = stack.pop()
        out.append(t.name)
        stack.extend(t.childSnapshotList or [])
    return out


def site_and_group(lab, *, luns=(1,), by: str = "naa"):
    from esxdr.site.model import LunSpec, ProtectionGroup, VsphereEndpoint

    datasets = tuple(f"sp1/iscsi/lun{i}" for i in luns)
    specs = {ds: LunSpec(dataset=ds, naa=f"naa.{naa_for(i)}" if by == "naa" else None,
                         datastore=f"ds{i}" if by == "datastore" else None) for ds, i in zip(datasets, luns, strict=True)}
    group = ProtectionGroup(name="core", source="ss1", destination="ss2", source_root="sp1/iscsi",
                            dr_root="rp1/iscsi", datasets=datasets, consistency="application",
                            vsphere_production="esx-prod", luns=specs)
    ep = VsphereEndpoint(name="esx-prod", role="production", url=lab.esx.url, user="root", password_env=PASSWORD_ENV)
    return SimpleNamespace(vsphere={"esx-prod": ep}, path="site.yaml"), group


@pytest.fixture(scope="module")
def prod(esxsim_binary, tmp_path_factory):
    lab = start_prod_lab(esxsim_binary, tmp_path_factory.mktemp("consistency"))
    with lab.connect() as s:
        vms = {
            "web1": make_vm(s, "web1", "ds1"),
            "db1": make_vm(s, "db1", "ds1"),
            "off1": make_vm(s, "off1", "ds1", power_on=False),
            "other": make_vm(s, "other", "ds2"),
            "badq": make_vm(s, "badq", "ds2", extra={"esxsim.quiesceFail": "TRUE"}),
        }
        names = {n: v._moId for n, v in vms.items()}
    yield lab, names
    lab.stop()


def _vm(s, moid):
    return s.ref("VirtualMachine", moid)


# --------------------------------------------------------------------------- tests
def test_all_running_vms_quiesced_then_snapshots_removed(prod):
    from esxdr.replication.consistency import quiesced

    lab, ids = prod
    site, group = site_and_group(lab, luns=(1,), by="naa")
    said: list[str] = []
    with lab.connect() as s:
        with quiesced(site, group, say=said.append, password=lab.esx.password) as c:
            inside = {n: snapshots_of(_vm(s, ids[n])) for n in ("web1", "db1", "off1", "other")}
        after = {n: snapshots_of(_vm(s, ids[n])) for n in ids}
    assert c.level == "application"
    d = c.to_dict()
    assert d["datastores"] == ["ds1"]
    assert sorted(d["quiesced"]) == ["db1", "web1"]
    outcomes = {v["vm"]: v["outcome"] for v in d["vms"]}
    assert outcomes == {"web1": "quiesced", "db1": "quiesced", "off1": "skipped-powered-off"}
    assert inside["web1"] and inside["db1"] and not inside["off1"] and not inside["other"]
    assert all(not snaps for snaps in after.values()), after
    assert all(v["snapshot_removed"] for v in d["vms"] if v["outcome"] == "quiesced")


def test_quiesce_failure_falls_back_to_crash_for_that_vm_only(prod):
    from esxdr.replication.consistency import quiesced

    lab, ids = prod
    site, group = site_and_group(lab, luns=(1, 2), by="datastore")
    said: list[str] = []
    with quiesced(site, group, say=said.append, password=lab.esx.password) as c:
        pass
    d = c.to_dict()
    assert c.level == "mixed"
    assert d["crash_consistent"] == ["badq"]
    bad = next(v for v in d["vms"] if v["vm"] == "badq")
    assert bad["outcome"] == "crash-fallback" and "quiesc" in bad["reason"].lower()
    assert any("badq" in w for w in d["warnings"])
    assert any("badq" in line for line in said)
    with lab.connect() as s:
        assert all(not snapshots_of(_vm(s, m)) for m in ids.values())


def test_snapshots_removed_when_the_body_raises(prod):
    from esxdr.replication.consistency import quiesced

    lab, ids = prod
    site, group = site_and_group(lab, luns=(1,))
    with lab.connect() as s:
        with pytest.raises(RuntimeError, match="zfs snapshot failed"):
            with quiesced(site, group, password=lab.esx.password):
                assert snapshots_of(_vm(s, ids["web1"]))
                raise RuntimeError("zfs snapshot failed")
        assert not snapshots_of(_vm(s, ids["web1"])) and not snapshots_of(_vm(s, ids["db1"]))


def test_unreachable_vsphere_is_crash_with_warning(prod):
    from dataclasses import replace

    from esxdr.replication.consistency import quiesced

    lab, _ = prod
    site, group = site_and_group(lab)
    site.vsphere["esx-prod"] = replace(site.vsphere["esx-prod"], url="http://127.0.0.1:9/sdk")
    with quiesced(site, group, password="x") as c:
        pass
    assert c.level == "crash"
    assert "failed" in c.to_dict()["reason"]


def test_level_recorded_on_the_zfs_snapshot_property_name():
    from esxdr.replication.consistency import PROPERTY
    from esxdr.zfs import USER_PROPS

    assert PROPERTY in USER_PROPS  # observed with every `zfs get`, so `esxdr snapshots` can show it
