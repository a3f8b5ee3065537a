"""`esxdr host` through a vCenter: esxsim in vCenter mode (cluster of esx-a, esx-b) and a real tgtd.

Each simulated host has its own software iSCSI initiator (its own IQN) and logs in to the
tgtd by itself, so "the LUN is seen on both hosts" means two independent iSCSI logins.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest_esxsim import Tgtd, free_port, make_lun_file
from vsphere_fixtures import PRODUCT, TARGET_IQN, naa_for, run_esxdr, vmfs_uuid_for

from esxdr.lab import esxsim
from esxdr.model import manifest as mf

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi")
pytest_plugins = ["conftest_esxsim"]

PASSWORD_ENV = "ESXDR_TEST_VCENTER_PASSWORD"
HOSTS = ["esx-a", "esx-b"]

SITE = """version: 1
name: vcenter-test
state_dir: {dir}/state
storage:
  ss2: {{role: dr, local: true}}
vsphere:
  vc-dr:
    role: dr
    kind: vcenter
    url: {url}
    user: root
    password_env: {env}
    hosts: [esx-a, esx-b]
dr_network:
{networks}
"""

NETWORK = """  {host}:
    vswitches:
      vSwitch1: {{uplinks: [vmnic1], mtu: 9000}}
    port_groups:
      iSCSI-A: {{vswitch: vSwitch1, vlan: 20}}
      DR-LAN: {{vswitch: vSwitch1, vlan: 10}}
    vmkernel:
      vmk1: {{port_group: iSCSI-A, ip: {ip}/8, mtu: 9000}}
    iscsi:
      bind: [vmk1]
      send_targets: [{portal}]
"""


class VcLab:
    def __init__(self, dir: Path, binary: Path):
        self.dir = dir
        dir.mkdir(parents=True, exist_ok=True)
        self.tgtd = Tgtd("127.0.0.1", free_port("127.0.0.1"), random.randint(2000, 32000), dir / "tgtd.log")
        self.tgtd.start()
        try:
            self.vc = esxsim.start("vc-dr", "127.0.0.2", free_port("127.0.0.2"), dir / "vc-dr", password="pw-vc",
                                   heartbeat_delay=0.3, log_path=dir / "vc-dr.log", mount_registry=dir / "mounts",
                                   binary=binary, vcenter_hosts=HOSTS, drs=True)
        except Exception:
            self.tgtd.stop()
            raise
        networks = "".join(NETWORK.format(host=h, ip=f"127.0.0.{31 + i}", portal=self.tgtd.portal)
                           for i, h in enumerate(HOSTS))
        self.site = dir / "site.yaml"
        self.site.write_text(SITE.format(dir=dir, url=self.vc.url, env=PASSWORD_ENV, networks=networks))
        self.luns: dict[str, Path] = {}

    def add_lun(self, i: int) -> str:
        from esxdr import vmfs

        naa = naa_for(i)
        path = make_lun_file(self.dir / f"lun{i}.img", 64)
        vmfs.write_vmfs(path, uuid=vmfs_uuid_for(i), label=f"ds{i}", naa=naa, product_id=PRODUCT)
        if 1 not in self.tgtd.targets:
            self.tgtd.add_target(1, TARGET_IQN)
        self.tgtd.add_lun(1, len(self.luns) + 1, path, naa)
        self.luns[naa] = path
        return naa

    def manifest(self) -> Path:
        lus = [mf.LogicalUnit(naa=mf.Naa(naa), backing=mf.Backing("file", str(path)), size_bytes=path.stat().st_size,
                              product_id=PRODUCT, vendor_id="IET", views=[mf.View(lun=i + 1, target=TARGET_IQN)])
               for i, (naa, path) in enumerate(self.luns.items())]
        m = mf.Manifest(targets=[mf.Target(iqn=TARGET_IQN, tpgs=[mf.Tpg(1, [mf.Portal(self.tgtd.host, self.tgtd.port)])])],
                        logical_units=lus, source=mf.Source(stack="tgt"))
        out = self.dir / "manifest.yaml"
        mf.save(m, out)
        return out

    def connect(self):
        from esxdr.site import load_site
        from esxdr.vsphere.session import connect

        return connect(load_site(str(self.site)).vsphere["vc-dr"], password=self.vc.password)

    def stop(self) -> None:
        self.vc.stop()
        self.tgtd.stop()


@pytest.fixture
def vc(esxsim_binary, tmp_path):
    lab = VcLab(tmp_path / "vc", esxsim_binary)
    yield lab
    lab.stop()


def esxdr(lab: VcLab, *args: str, check: int | None = None) -> subprocess.CompletedProcess:
    return run_esxdr(lab.site, lab.vc.password, *args, check=check, env_name=PASSWORD_ENV, timeout=180)


def test_vcenter_mode_serves_a_cluster_of_independent_hosts(vc):
    from pyVmomi import vim

    assert vc.vc.vcenter and [h["name"] for h in vc.vc.hosts] == HOSTS
    assert {h["iqn"] for h in vc.vc.hosts} == {f"iqn.1998-01.com.vmware:{h}" for h in HOSTS}
    with vc.connect() as s:
        assert s.content.about.apiType == "VirtualCenter"
        view = s.container_view("HostSystem")
        hosts = {h.name: h for h in view.view}
        assert sorted(hosts) == HOSTS
        cms = [hosts[n].configManager for n in HOSTS]
        for role in ("networkSystem", "storageSystem", "datastoreSystem", "iscsiManager", "virtualNicManager"):
            ids = {getattr(cm, role)._moId for cm in cms}
            assert len(ids) == 2, f"{role} shared between hosts: {ids}"
        cluster = hosts["esx-a"].parent
        assert isinstance(cluster, vim.ClusterComputeResource) and cluster.configurationEx.drsConfig.enabled
        assert {h._moId for h in cluster.host} == {h._moId for h in hosts.values()}


def test_plan_apply_both_hosts_then_plan_is_empty_and_lun_seen_on_both(vc):
    naa = vc.add_lun(1)
    plan = json.loads(esxdr(vc, "host", "plan", "vc-dr", "--json", check=0).stdout)
    assert [h["host"] for h in plan["hosts"]] == HOSTS and not plan["empty"]
    for h in plan["hosts"]:
        kinds = [a["kind"] for a in h["actions"]]
        assert kinds[0] == "add_vswitch" and kinds[-2:] == ["rescan_all_hba", "rescan_vmfs"]
        assert "bind_vnic" in kinds and all(a["reason"] for a in h["actions"])
    # one read for both hosts: session (2) + view + RetrievePropertiesEx (+ Logout)
    assert plan["requests"] <= 5

    done = json.loads(esxdr(vc, "host", "apply", "vc-dr", "--json", check=0).stdout)
    assert [h["host"] for h in done["hosts"]] == HOSTS
    for h, p in zip(done["hosts"], plan["hosts"], strict=True):
        assert [s["kind"] for s in h["steps"]] == [a["kind"] for a in p["actions"]]
        assert {s["status"] for s in h["steps"]} == {"done"}
    assert done["requests"] <= 2 * 16 + 4

    again = json.loads(esxdr(vc, "host", "plan", "vc-dr", "--json", check=0).stdout)
    assert again["empty"] and all(h["actions"] == [] and h["refusals"] == [] for h in again["hosts"])
    assert again["requests"] <= 4 + len(HOSTS) + 1  # + QueryBoundVnics per host
    text = esxdr(vc, "host", "plan", "vc-dr", check=0).stdout
    assert "== esx-a ==" in text and "== esx-b ==" in text and text.count("up to date") == 2

    # each host logged in with its own initiator and sees the LUN and its datastore
    with vc.connect() as s:
        from esxdr.vsphere import inventory

        states = inventory.read_named_hosts(s, HOSTS)
        for name, st in states.items():
            assert st.iscsi is not None and st.iscsi.iqn == f"iqn.1998-01.com.vmware:{name}"
            assert f"naa.{naa}" in st.luns and "ds1" in st.datastores
            assert st.datastores["ds1"].vmfs_uuid == vmfs_uuid_for(1)

    vs = json.loads(esxdr(vc, "host", "verify-storage", "vc-dr", "--manifest", str(vc.manifest()), "--json",
                          check=0).stdout)
    assert vs["ok"] and [h["host"] for h in vs["hosts"]] == HOSTS
    for h in vs["hosts"]:
        assert h["ok"] and [c["datastore"] for c in h["luns"]] == ["ds1"]
    assert vs["rescans"] == 0 and vs["requests"] <= 5


def test_host_option_narrows_to_one_host(vc):
    vc.add_lun(1)
    plan = json.loads(esxdr(vc, "host", "plan", "vc-dr", "--host", "esx-b", "--json", check=0).stdout)
    assert [h["host"] for h in plan["hosts"]] == ["esx-b"]
    esxdr(vc, "host", "apply", "vc-dr", "--host", "esx-b", check=0)
    both = json.loads(esxdr(vc, "host", "plan", "vc-dr", "--json", check=0).stdout)
    by_host = {h["host"]: h for h in both["hosts"]}
    assert by_host["esx-b"]["actions"] == [] and by_host["esx-a"]["actions"]

    # verify-storage: esx-b sees the LUN, esx-a (no iSCSI yet) does not, and says why
    p = esxdr(vc, "host", "verify-storage", "vc-dr", "--manifest", str(vc.manifest()), "--rescan", "never", "--json")
    assert p.returncode == 4, p.stdout + p.stderr
    # --json prints the report, then the error as a second JSON document
    out = {h["host"]: h for h in json.JSONDecoder().raw_decode(p.stdout)[0]["hosts"]}
    assert out["esx-b"]["ok"] and not out["esx-a"]["ok"]
    assert "software iSCSI adapter is off" in out["esx-a"]["luns"][0]["message"]
    assert "esx-a" in p.stderr and "Traceback" not in p.stderr

    only_b = json.loads(esxdr(vc, "host", "verify-storage", "vc-dr", "--host", "esx-b", "--manifest",
                              str(vc.manifest()), "--json", check=0).stdout)
    assert [h["host"] for h in only_b["hosts"]] == ["esx-b"] and only_b["ok"]


def test_bad_host_names_are_usage_errors(vc):
    p = esxdr(vc, "host", "plan", "vc-dr", "--host", "esx-z")
    assert p.returncode != 0 and "esx-z" in p.stderr and "esx-a, esx-b" in p.stderr and "Traceback" not in p.stderr
    # the site lists a host the vCenter does not have: named, with the hosts it does have
    vc.site.write_text(vc.site.read_text().replace("hosts: [esx-a, esx-b]", "hosts: [esx-a, esx-b, esx-c]")
                       + NETWORK.format(host="esx-c", ip="127.0.0.33", portal=vc.tgtd.portal))
    p = esxdr(vc, "host", "plan", "vc-dr")
    assert p.returncode != 0 and "esx-c not found on vc-dr" in p.stderr and "Traceback" not in p.stderr


def test_register_vm_placement_by_drs_and_refused_without_drs(vc, esxsim_binary, tmp_path):
    """RegisterVM_Task on the cluster: DRS places on the least-loaded host; without DRS a host is needed."""
    from pyVmomi import vim

    from esxdr.vsphere.tasks import wait_task

    vc.add_lun(1)
    esxdr(vc, "host", "apply", "vc-dr", check=0)
    with vc.connect() as s:
        dc = s.content.rootFolder.childEntity[0]
        hosts = {h.name: h for h in s.container_view("HostSystem").view}
        pool = hosts["esx-a"].parent.resourcePool
        # a VM on esx-a, so esx-b is the least loaded
        spec = vim.vm.ConfigSpec(name="vm1", guestId="otherGuest", memoryMB=64, numCPUs=1,
                                 files=vim.vm.FileInfo(vmPathName="[ds1]"))
        wait_task(s, dc.vmFolder.CreateVM_Task(spec, pool, hosts["esx-a"]))
        vm1 = next(v for v in hosts["esx-a"].vm if v.name == "vm1")
        path = vm1.config.files.vmPathName
        vm1.UnregisterVM()
        placed = wait_task(s, dc.vmFolder.RegisterVM_Task(path, "vm1", False, pool, None))
        assert placed.runtime.host.name == "esx-a"  # both empty again: ties go to the first by name
        wait_task(s, dc.vmFolder.CreateVM_Task(vim.vm.ConfigSpec(name="vm2", guestId="otherGuest", memoryMB=64,
                                                                 numCPUs=1, files=vim.vm.FileInfo(vmPathName="[ds1]")),
                                               pool, hosts["esx-a"]))
        vm2 = next(v for v in hosts["esx-a"].vm if v.name == "vm2")
        path2 = vm2.config.files.vmPathName
        vm2.UnregisterVM()
        # esx-a now runs vm1, so DRS puts vm2 on esx-b
        placed2 = wait_task(s, dc.vmFolder.RegisterVM_Task(path2, "vm2", False, pool, None))
        assert placed2.runtime.host.name == "esx-b"
        # an explicit host wins, pool may be left out
        placed2.UnregisterVM()
        placed3 = wait_task(s, dc.vmFolder.RegisterVM_Task(path2, "vm2", False, None, hosts["esx-a"]))
        assert placed3.runtime.host.name == "esx-a"

    # DRS off: registering with the pool alone is refused, naming the cluster
    vc.vc.stop()
    off = esxsim.start("vc-off", "127.0.0.2", free_port("127.0.0.2"), tmp_path / "vc-off", password="pw",
                       log_path=tmp_path / "vc-off.log", mount_registry=tmp_path / "mounts2", binary=esxsim_binary,
                       vcenter_hosts=HOSTS, drs=False)
    try:
        from esxdr.errors import VsphereError
        from esxdr.site.model import VsphereEndpoint
        from esxdr.vsphere.session import connect

        ep = VsphereEndpoint(name="vc-off", role="dr", url=off.url, user="root", password_env=PASSWORD_ENV,
                             kind="vcenter", hosts=tuple(HOSTS))
        with connect(ep, password="pw") as s:
            dc = s.content.rootFolder.childEntity[0]
            cluster = dc.hostFolder.childEntity[0]
            assert cluster.configurationEx.drsConfig.enabled is False
            with pytest.raises(VsphereError) as e:
                wait_task(s, dc.vmFolder.RegisterVM_Task("[ds1] vm1/vm1.vmx", "vm1", False, cluster.resourcePool, None))
            assert "DRS is disabled on cluster cluster0" in e.value.message
    finally:
        off.stop()
