"""`esxdr host` against esxsim and a real tgtd: bootstrap, idempotency, refusals, verify-storage."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vsphere_fixtures import ESXDR, esxdr_on, naa_for, start_lab, vmfs_uuid_for

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi")
pytest_plugins = ["conftest_esxsim", "vsphere_fixtures"]  # the latter gives the `lab` fixture
esxdr = esxdr_on


def test_plan_apply_from_empty_then_second_plan_is_empty(lab):
    lab.add_lun(1)
    plan = json.loads(esxdr(lab, "host", "plan", "esx-dr", "--json", check=0).stdout)
    kinds = [a["kind"] for a in plan["actions"]]
    assert kinds[:5] == ["add_vswitch", "add_port_group", "add_port_group", "add_port_group", "add_vnic"]
    assert kinds[-2:] == ["rescan_all_hba", "rescan_vmfs"]
    assert all(a["reason"] for a in plan["actions"])

    dry = json.loads(esxdr(lab, "host", "apply", "--dry-run", "--json", check=0).stdout)
    assert [s["kind"] for s in dry["steps"]] == kinds and {s["status"] for s in dry["steps"]} == {"would do"}
    # dry run changed nothing
    assert [a["kind"] for a in json.loads(esxdr(lab, "host", "plan", "--json", check=0).stdout)["actions"]] == kinds

    done = json.loads(esxdr(lab, "host", "apply", "--json", check=0).stdout)
    assert [s["kind"] for s in done["steps"]] == kinds and {s["status"] for s in done["steps"]} == {"done"}
    assert done["requests"] <= 30

    again = json.loads(esxdr(lab, "host", "plan", "--json", check=0).stdout)
    assert again["actions"] == [] and again["refusals"] == []
    assert again["requests"] <= 8
    text = esxdr(lab, "host", "plan", check=0).stdout
    assert "up to date" in text

    # the LUN came in through the rescans of apply, bound through vmk1
    with lab.connect() as s:
        from esxdr.vsphere import inventory

        st = inventory.with_bindings(s, inventory.read_host(s))
        assert st.iscsi.bound == ("vmk1",)
        assert f"naa.{naa_for(1)}" in st.luns and "ds1" in st.datastores


def test_a_dell_host_keeps_its_idrac_vmk1_through_apply_and_prune(esxsim_binary, tmp_path):
    """esxsim -dell-idrac: vmk1 at 169.254.0.2 on "iDRAC Network", a port group the host does
    not list, as pyvmomi's recorded Dell host shows it. The site file's vmk1 becomes a new NIC
    (ESXi names it vmk2), which is what gets bound; the iDRAC NIC is never rewritten, --prune
    leaves it alone, and a second plan is empty."""
    from esxdr.model.host import ObservedVnic
    from esxdr.vsphere import inventory

    lab = start_lab(tmp_path / "lab", binary=esxsim_binary, dell_idrac=True)
    try:
        naa = lab.add_lun(1)
        plan = json.loads(esxdr(lab, "host", "plan", "--json", check=0).stdout)
        assert not [a for a in plan["actions"] if a["target"] == "vmk1" and a["kind"] in ("update_vnic", "remove_vnic")]
        assert any("vmk1 on esx-dr is another NIC" in n and "iDRAC Network" in n for n in plan["notes"])
        done = json.loads(esxdr(lab, "host", "apply", "--json", check=0).stdout)
        assert [s["detail"] for s in done["steps"] if s["kind"] == "add_vnic"] == ["ESXi named it vmk2"]
        again = json.loads(esxdr(lab, "host", "plan", "--prune", "--json", check=0).stdout)
        assert again["actions"] == [] and again["refusals"] == []
        assert any("VMkernel NIC vmk1 (on 'iDRAC Network'" in n for n in again["notes"])
        pruned = json.loads(esxdr(lab, "host", "apply", "--prune", "--json", check=0).stdout)
        assert pruned["steps"] == []
        with lab.connect() as s:
            st = inventory.with_bindings(s, inventory.read_host(s))
            assert st.vnics["vmk1"] == ObservedVnic("vmk1", "iDRAC Network", False, "169.254.0.2", "255.255.255.0", 1500)
            assert st.vnics["vmk2"].port_group == "iSCSI-A" and st.iscsi.bound == ("vmk2",)
            assert "iDRAC Network" not in st.port_groups and "vusb0" in st.pnics
            assert f"naa.{naa}" in st.luns  # logged in through the bound vmk2
    finally:
        lab.stop()


def test_drift_is_corrected_and_prune_removes_only_what_esxdr_created(lab):
    from esxdr.site.model import PortGroupSpec
    from esxdr.vsphere import host as H

    records = H.CreatedRecords(lab.dir / "state", "esx-dr")
    desired = lab.desired()
    more = replace(desired, port_groups={**desired.port_groups, "Extra": PortGroupSpec("Extra", "vSwitch1", 40)})
    with lab.connect() as s:
        H.ensure(s, more, records=records)
        ns = s.ref("host.NetworkSystem", H.observe(s, None).refs["networkSystem"])
        from pyVmomi import vim

        ns.UpdatePortGroup("Repl", vim.host.PortGroup.Specification(name="Repl", vlanId=99, vswitchName="vSwitch1",
                                                                    policy=vim.host.NetworkPolicy()))
        plan, _ = H.plan(s, desired)
        assert [(a.kind, a.reason) for a in plan.actions] == [("update_port_group", "VLAN 99 → 30")]
        H.ensure(s, desired, records=records)
        assert H.plan(s, desired)[0].empty
        # Extra left the site file: esxdr made it, so --prune removes it; ESXi's own VM Network stays
        pruned = H.ensure(s, desired, prune=True, records=records)
        assert [st.action.target for st in pruned.steps] == ["Extra"]
        plan, state = H.plan(s, desired, prune=True, created=records.load("esx-dr"))
        assert plan.empty and "Management Network" in state.port_groups and "vmk0" in state.vnics
        assert "VM Network" in state.port_groups and "Extra" not in state.port_groups
        assert any("not created by esxdr" in n and "VM Network" in n for n in plan.notes)


def test_bind_refused_with_explanation_before_anything_changes(lab):
    from esxdr.errors import ConflictError, VsphereError
    from esxdr.site.model import PortGroupSpec
    from esxdr.vsphere import host as H

    desired = lab.desired()
    bad = replace(desired, port_groups={**desired.port_groups,
                                        "iSCSI-A": PortGroupSpec("iSCSI-A", "vSwitch1", 20)})  # inherits 1+1 standby
    with lab.connect() as s:
        with pytest.raises(ConflictError) as e:
            H.ensure(s, bad)
        assert "exactly one active uplink" in e.value.message and "standby vmnic2" in e.value.message
        assert "active_uplinks: [vmnic1]" in e.value.hint
        assert "vSwitch1" not in H.observe(s, None).vswitches  # nothing was done

        # the host's own refusal (BindVnic fault) is translated with the same advice
        H.ensure(s, replace(bad, iscsi=replace(bad.iscsi, bind=())))
        im = s.ref("host.IscsiManager", H.observe(s, None).refs["iscsiManager"])
        with pytest.raises(VsphereError) as e, s.errors("binding vmk1 on esx-dr"):
            im.BindVnic("vmhba65", "vmk1")
        assert "IscsiFaultVnicHasMultipleUplinks" in e.value.message
        assert "exactly one active uplink" in e.value.hint


def test_uplink_in_use_names_the_vswitch(lab):
    from esxdr.errors import ConflictError, VsphereError
    from esxdr.site.model import VSwitch
    from esxdr.vsphere import host as H

    desired = lab.desired()
    bad = replace(desired, vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic0",), 1500, ("vmnic0",))},
                  port_groups={}, vmkernel={}, iscsi=None)
    with lab.connect() as s:
        with pytest.raises(ConflictError) as e:
            H.ensure(s, bad)
        assert "vmnic0 is already an uplink of vSwitch0" in e.value.message
        # the fault path, as a planner-less caller would meet it
        state = H.observe(s, None)
        from esxdr.plan.host import Action

        act = Action("add_vswitch", "vSwitch1", "test", {"uplinks": ("vmnic0",), "mtu": 1500,
                                                          "active": ("vmnic0",), "standby": (), "ports": 128})
        with pytest.raises(VsphereError) as e:
            H.apply_plan(s, state, H.HostPlan("esx-dr", [act]))
        assert "ResourceInUse" in e.value.message and "vmnic0 is an uplink of vSwitch0" in e.value.message


def test_verify_storage_ok_and_missing_lun_explained(lab):
    lab.add_lun(1)
    lab.add_lun(2, label="prod-ds2")
    esxdr(lab, "host", "apply", check=0)
    manifest = lab.manifest()
    out = json.loads(esxdr(lab, "host", "verify-storage", "--manifest", str(manifest), "--json", check=0).stdout)
    assert out["ok"] and [c["datastore"] for c in out["luns"]] == ["ds1", "prod-ds2"]
    assert out["luns"][0]["vmfs_uuid"] == vmfs_uuid_for(1)
    assert out["requests"] <= 10

    # a LUN the target does not offer: explained with the initiator and an ACL hint
    from conftest_esxsim import make_lun_file

    lab.luns[naa_for(7)] = make_lun_file(lab.dir / "blank7.img", 1)
    manifest = lab.manifest([naa_for(1), naa_for(7)])
    p = esxdr(lab, "host", "verify-storage", "--manifest", str(manifest), "--timeout", "1", check=4)
    assert f"naa.{naa_for(7)}" in p.stderr and "offered 2 LUNs (" in p.stderr
    assert "to initiator iqn.1998-01.com.vmware:esx-dr" in p.stderr
    assert "--allow-initiator" in p.stderr


def test_unresolved_explained_then_resignature_renames_back(lab):
    served = naa_for(9)
    lab.add_lun(1, served_naa=served)  # header written for naa 1, served as naa 9
    esxdr(lab, "host", "apply", check=0)
    manifest = lab.manifest([served])
    # the manifest says the LU should be naa 1 (production identity)
    text = manifest.read_text().replace(served, naa_for(1))
    manifest.write_text(text)
    p = esxdr(lab, "host", "verify-storage", "--manifest", str(manifest), check=3)
    assert "unresolved" in p.stderr and f"naa.{naa_for(1)}" in p.stderr and f"naa.{served}" in p.stderr
    assert "--resolve keep-uuid" in p.stderr and "--resolve resignature" in p.stderr
    with lab.connect() as s:
        from esxdr.vsphere import inventory

        assert not inventory.read_host(s).datastores  # never resolved silently

    out = json.loads(esxdr(lab, "host", "verify-storage", "--manifest", str(manifest), "--resolve", "resignature",
                           "--json", check=0).stdout)
    assert [a["kind"] for a in out["resolved"]] == ["resignature"]
    [c] = out["luns"]
    assert c["datastore"] == "ds1" and c["vmfs_uuid"] != vmfs_uuid_for(1)
    assert any("resignatured" in n for n in c["notes"])


def test_unresolved_keep_uuid_force_mounts(lab):
    served = naa_for(8)
    lab.add_lun(2, served_naa=served)
    esxdr(lab, "host", "apply", check=0)
    manifest = lab.manifest([served])
    manifest.write_text(manifest.read_text().replace(served, naa_for(2)))
    out = json.loads(esxdr(lab, "host", "verify-storage", "--manifest", str(manifest), "--resolve", "keep-uuid",
                           "--json", check=0).stdout)
    [c] = out["luns"]
    assert c["vmfs_uuid"] == vmfs_uuid_for(2) and c["datastore"] == "ds2"
    assert any("force-mounted" in n for n in c["notes"])


def test_session_relogin_counter_and_runbook_vm_steps(lab):
    from pyVmomi import vim

    from esxdr.vsphere import host as H
    from esxdr.vsphere import inventory, vms
    from esxdr.vsphere.tasks import wait_task

    lab.add_lun(1)
    with lab.connect() as s:
        H.ensure(s, lab.desired())
        # an expired session is logged in again transparently
        s.stub.relogin, saved = None, s.stub.relogin
        s.content.sessionManager.Logout()
        s.stub.relogin = saved
        state = inventory.read_host(s)
        assert s.stub.relogins == 1 and "ds1" in state.datastores

        # create a VM, unregister it, then register + power on + heartbeat as a runbook would
        href = s.ref("HostSystem", state.moid)
        folder, pool, _ = vms.placement(s, state)
        spec = vim.vm.ConfigSpec(name="app01", guestId="otherLinux64Guest", memoryMB=128, numCPUs=1,
                                 files=vim.vm.FileInfo(vmPathName="[ds1]"))
        vm = wait_task(s, folder.CreateVM_Task(spec, pool, href))
        vm.UnregisterVM()
        [vm2] = vms.register_vms(s, state, ["[ds1] app01/app01.vmx"])
        before = s.requests
        vms.power_on(s, [vm2], uuid_answer="moved")
        vms.wait_heartbeats(s, [vm2], timeout=30)
        assert s.requests - before <= 10
        state = inventory.read_host(s)
        assert state.vms["app01"].power_state == "poweredOn" and state.vms["app01"].heartbeat == "green"
        vms.power_off(s, [vm2])


def test_thumbprint_command(esxsim_binary, tmp_path):
    from conftest_esxsim import free_port

    from esxdr.lab import esxsim

    p = esxsim.start("esx-tls", "127.0.0.1", free_port(), tmp_path / "tls", password="pw", tls=True,
                     binary=esxsim_binary)
    try:
        r = subprocess.run([ESXDR, "host", "thumbprint", f"127.0.0.1:{p.port}", "--json"], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["thumbprint"] == p.thumbprint

        # pinned: connects; wrong pin: refused with a hint
        from esxdr.errors import VsphereError
        from esxdr.site.model import VsphereEndpoint
        from esxdr.vsphere.session import connect

        ep = VsphereEndpoint("esx-tls", "dr", p.url, "root", thumbprint=p.thumbprint)
        with connect(ep, password="pw") as s:
            assert s.requests == 2
        wrong = replace(ep, thumbprint="00:" * 31 + "00")
        with pytest.raises(VsphereError) as e:
            connect(wrong, password="pw")
        assert "TLS" in e.value.message and "thumbprint" in e.value.hint
    finally:
        p.stop()


def test_chap_rotation_static_target_and_prune_through_the_cli(lab):
    """CHAP against a tgtd that demands it: set, then the secret file rotated (ESXi never shows
    the secret; esxdr's recorded fingerprint notices), a static target, and --prune from the CLI."""
    from vsphere_fixtures import TARGET_IQN

    naa = lab.add_lun(1)
    secret = lab.dir / "chap-secret"

    def set_secret(value: str) -> None:
        secret.write_text(value + "\n")
        secret.chmod(0o600)
        lab.tgtd.adm("--op", "delete", "--mode", "account", "--user", "esxi-dr", check=False)
        lab.tgtd.adm("--op", "new", "--mode", "account", "--user", "esxi-dr", "--password", value)
        lab.tgtd.adm("--op", "bind", "--mode", "account", "--tid", "1", "--user", "esxi-dr")

    set_secret("first-secret-12")
    text = lab.site.read_text().replace(
        f"      send_targets: [{lab.portal}]\n",
        f"      static_targets: [{{address: {lab.tgtd.host}, port: {lab.tgtd.port}, iqn: {TARGET_IQN}}}]\n"
        f"      chap: {{name: esxi-dr, secret_file: {secret}}}\n")
    assert text != lab.site.read_text()
    lab.site.write_text(text)

    done = json.loads(esxdr(lab, "host", "apply", "--json", check=0).stdout)
    kinds = [s["kind"] for s in done["steps"]]
    assert "set_chap" in kinds and "add_static_target" in kinds
    assert json.loads(esxdr(lab, "host", "plan", "--json", check=0).stdout)["actions"] == []
    with lab.connect() as s:
        from esxdr.vsphere import inventory

        assert f"naa.{naa}" in inventory.read_host(s).luns  # logged in with CHAP through the static target
    fingerprint = (lab.dir / "state" / "vsphere" / "chap").glob("*.json")
    assert "first-secret" not in "".join(p.read_text() for p in fingerprint)

    set_secret("second-secret-34")
    plan = json.loads(esxdr(lab, "host", "plan", "--json", check=0).stdout)
    [chap] = [a for a in plan["actions"] if a["kind"] == "set_chap"]
    assert "changed since esxdr set it" in chap["reason"]
    esxdr(lab, "host", "apply", check=0)
    assert json.loads(esxdr(lab, "host", "plan", "--json", check=0).stdout)["actions"] == []

    # --prune removes only what esxdr created and the site file no longer lists: nothing here.
    # ESXi's VM Network, vmk0 and its port group stay; the record names what apply created.
    out = esxdr(lab, "host", "plan", "--prune", check=0).stdout
    assert "VM Network" in out and "not created by esxdr" in out
    pruned = json.loads(esxdr(lab, "host", "apply", "--prune", "--json", check=0).stdout)
    assert [s for s in pruned["steps"] if s["kind"].startswith(("remove_", "unbind_"))] == []
    assert json.loads(esxdr(lab, "host", "plan", "--prune", "--json", check=0).stdout)["actions"] == []
    created = json.loads((lab.dir / "state" / "vsphere" / "created" / "esx-dr--esx-dr.json").read_text())
    assert created["vswitches"] == ["vSwitch1"] and created["vnics"] == [["vmk1", "iSCSI-A"]]
    with lab.connect() as s:
        from esxdr.vsphere import inventory

        st = inventory.read_host(s)
        assert "Management Network" in st.port_groups and "vmk0" in st.vnics and "VM Network" in st.port_groups
        assert f"naa.{naa}" in st.luns  # the rescans of the new secret's apply still log in
