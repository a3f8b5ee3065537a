"""The pure host planner: desired (site dr_network) vs observed → actions, refusals, notes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from esxdr.model.host import (
    Created,
    HostState,
    ObservedDatastore,
    ObservedIscsi,
    ObservedLun,
    ObservedPortGroup,
    ObservedVnic,
    ObservedVSwitch,
    UnresolvedVolume,
)
from esxdr.plan.host import plan_host, split_ip
from esxdr.plan.storage import ExpectedLun, check_storage, plan_resolution
from esxdr.site.model import (
    ChapSpec,
    HostNetwork,
    IscsiSpec,
    Portal,
    PortGroupSpec,
    StaticTarget,
    VmkernelNic,
    VSwitch,
)

FRESH = HostState(
    name="esx-dr", moid="ha-host", pnics=("vmnic0", "vmnic1", "vmnic2", "vmnic3"),
    vswitches={"vSwitch0": ObservedVSwitch("vSwitch0", ("vmnic0",), 1500, ("vmnic0",), (), 128)},
    port_groups={"Management Network": ObservedPortGroup("Management Network", "vSwitch0", 0, None, None, ("vmnic0",)),
                 "VM Network": ObservedPortGroup("VM Network", "vSwitch0", 0, None, None, ("vmnic0",))},
    vnics={"vmk0": ObservedVnic("vmk0", "Management Network", False, "127.0.0.2", "255.0.0.0", 1500)},
)

DESIRED = HostNetwork(
    host="esx-dr",
    vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic1", "vmnic2"), 9000, ("vmnic1",), ("vmnic2",))},
    port_groups={"iSCSI-A": PortGroupSpec("iSCSI-A", "vSwitch1", 20, ("vmnic1",), ()),
                 "Repl": PortGroupSpec("Repl", "vSwitch1", 30),
                 "Prod-LAN": PortGroupSpec("Prod-LAN", "vSwitch1", 310, isolated=True)},
    vmkernel={"vmk1": VmkernelNic("vmk1", "iSCSI-A", "10.20.0.11/24", 9000)},
    iscsi=IscsiSpec(bind=("vmk1",), send_targets=(Portal("10.20.0.5"),)),
)

# What the host looks like after applying DESIRED.
APPLIED = replace(
    FRESH,
    vswitches={**FRESH.vswitches,
               "vSwitch1": ObservedVSwitch("vSwitch1", ("vmnic1", "vmnic2"), 9000, ("vmnic1",), ("vmnic2",), 128)},
    port_groups={**FRESH.port_groups,
                 "iSCSI-A": ObservedPortGroup("iSCSI-A", "vSwitch1", 20, ("vmnic1",), (), ("vmnic1",), ()),
                 "Repl": ObservedPortGroup("Repl", "vSwitch1", 30, None, None, ("vmnic1",), ("vmnic2",)),
                 "Prod-LAN": ObservedPortGroup("Prod-LAN", "vSwitch1", 310, None, None, ("vmnic1",), ("vmnic2",))},
    vnics={**FRESH.vnics, "vmk1": ObservedVnic("vmk1", "iSCSI-A", False, "10.20.0.11", "255.255.255.0", 9000)},
    software_iscsi_enabled=True,
    iscsi=ObservedIscsi("vmhba65", "iqn.1998-01.com.vmware:esx-dr", send_targets=(("10.20.0.5", 3260),),
                        bound=("vmk1",)),
)


def kinds(plan):
    return [(a.kind, a.target) for a in plan.actions]


def test_bootstrap_from_empty_in_order_with_reasons():
    plan = plan_host(DESIRED, FRESH)
    assert kinds(plan) == [
        ("add_vswitch", "vSwitch1"), ("add_port_group", "iSCSI-A"), ("add_port_group", "Repl"),
        ("add_port_group", "Prod-LAN"), ("add_vnic", "vmk1"), ("enable_software_iscsi", "software iSCSI"),
        ("bind_vnic", "vmk1"), ("add_send_target", "10.20.0.5:3260"), ("rescan_all_hba", "esx-dr"),
        ("rescan_vmfs", "esx-dr"),
    ]
    assert all(a.reason for a in plan.actions)
    assert not plan.refusals
    vs = plan.actions[0].params
    assert vs["active"] == ("vmnic1",) and vs["standby"] == ("vmnic2",) and vs["mtu"] == 9000
    vmk = plan.actions[4].params
    assert (vmk["ip"], vmk["netmask"], vmk["mtu"]) == ("10.20.0.11", "255.255.255.0", 9000)
    assert any("VM Network" in n and "--prune" in n for n in plan.notes)


def test_second_plan_after_apply_is_empty():
    plan = plan_host(DESIRED, APPLIED)
    assert plan.empty, plan.render()


@pytest.mark.parametrize("change, expected_kind, reason_part", [
    (lambda s: replace(s, vswitches={**s.vswitches, "vSwitch1": replace(s.vswitches["vSwitch1"], mtu=1500)}),
     "update_vswitch", "MTU 1500 → 9000"),
    (lambda s: replace(s, vswitches={**s.vswitches, "vSwitch1": replace(s.vswitches["vSwitch1"],
                                                                        active=("vmnic2",), standby=("vmnic1",))}),
     "update_vswitch", "failover order"),
    (lambda s: replace(s, port_groups={**s.port_groups, "Repl": replace(s.port_groups["Repl"], vlan=31)}),
     "update_port_group", "VLAN 31 → 30"),
    (lambda s: replace(s, port_groups={**s.port_groups, "iSCSI-A": replace(s.port_groups["iSCSI-A"],
                                                                          active=None, standby=None)}),
     "update_port_group", "inherited from the vSwitch → active [vmnic1]"),
    (lambda s: replace(s, vnics={**s.vnics, "vmk1": replace(s.vnics["vmk1"], ip="10.20.0.99")}),
     "update_vnic", "10.20.0.99/255.255.255.0 → 10.20.0.11/255.255.255.0"),
    (lambda s: replace(s, vnics={**s.vnics, "vmk1": replace(s.vnics["vmk1"], mtu=1500)}),
     "update_vnic", "MTU 1500 → 9000"),
    (lambda s: replace(s, iscsi=replace(s.iscsi, bound=())), "bind_vnic", "not bound"),
    (lambda s: replace(s, iscsi=replace(s.iscsi, send_targets=())), "add_send_target", "not configured"),
    (lambda s: replace(s, software_iscsi_enabled=False, iscsi=None), "enable_software_iscsi", "it is off"),
])
def test_single_drift_gives_one_action_and_rescans_only_for_storage(change, expected_kind, reason_part):
    plan = plan_host(DESIRED, change(APPLIED))
    main = [a for a in plan.actions if not a.kind.startswith("rescan")]
    assert main[0].kind == expected_kind, plan.render()
    assert reason_part in main[0].reason
    rescans = [a.kind for a in plan.actions if a.kind.startswith("rescan")]
    assert rescans == (["rescan_all_hba", "rescan_vmfs"] if main[0].changes_storage else [])


def test_vmk_numbered_differently_by_esxi_is_matched_by_port_group():
    other = replace(APPLIED, vnics={"vmk0": APPLIED.vnics["vmk0"],
                                    "vmk2": replace(APPLIED.vnics["vmk1"], device="vmk2")},
                    iscsi=replace(APPLIED.iscsi, bound=("vmk2",)))
    plan = plan_host(DESIRED, other)
    assert plan.actions == []
    assert any("vmk1 is vmk2" in n for n in plan.notes)


@pytest.mark.parametrize("pg, message", [
    (PortGroupSpec("iSCSI-A", "vSwitch1", 20), "has 1 active uplink (vmnic1) and standby vmnic2"),
    (PortGroupSpec("iSCSI-A", "vSwitch1", 20, ("vmnic1", "vmnic2"), ()), "has 2 active uplinks (vmnic1, vmnic2)"),
    (PortGroupSpec("iSCSI-A", "vSwitch1", 20, (), ()), "has 0 active uplinks"),
])
def test_binding_refused_unless_exactly_one_active_uplink(pg, message):
    desired = replace(DESIRED, port_groups={**DESIRED.port_groups, "iSCSI-A": pg})
    plan = plan_host(desired, FRESH)
    assert not any(a.kind == "bind_vnic" for a in plan.actions)
    [r] = plan.refusals
    assert r.target == "vmk1" and message in r.message and "exactly one active uplink" in r.message
    assert "active_uplinks: [" in r.hint and "iSCSI-A" in r.hint


def test_uplink_held_by_another_vswitch_is_refused_naming_it():
    desired = replace(DESIRED, vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic0",), 1500, ("vmnic0",))},
                      iscsi=None, vmkernel={}, port_groups={})
    plan = plan_host(desired, FRESH)
    [r] = plan.refusals
    assert "vmnic0 is already an uplink of vSwitch0" in r.message
    assert "esxdr did not create vSwitch0, so --prune leaves it alone" in r.hint
    plan = plan_host(desired, replace(FRESH, vswitches={**FRESH.vswitches}), prune=True)
    # vSwitch0 carries the management vmk0: never pruned, so still refused
    assert plan.refusals and any("vSwitch0 carries the management network" in n for n in plan.notes)


def test_unknown_pnic_refused():
    desired = replace(DESIRED, vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic9",), 1500, ("vmnic9",))},
                      iscsi=None, vmkernel={}, port_groups={})
    assert "vmnic9 does not exist" in plan_host(desired, FRESH).refusals[0].message


EXTRA = replace(
    APPLIED,
    vswitches={**APPLIED.vswitches, "vSwitch9": ObservedVSwitch("vSwitch9", ("vmnic3",), 1500, ("vmnic3",))},
    port_groups={**APPLIED.port_groups, "Old": ObservedPortGroup("Old", "vSwitch9", 5)},
    vnics={**APPLIED.vnics, "vmk5": ObservedVnic("vmk5", "Old")},
    iscsi=replace(APPLIED.iscsi, send_targets=APPLIED.iscsi.send_targets + (("10.9.9.9", 3260),),
                  static_targets=(("10.9.9.9", 3260, "iqn.x:old"),), bound=("vmk1", "vmk5")),
)
# What esxdr's apply recorded when it created them (the site file listed them then).
ESXDR_MADE = Created(vswitches=frozenset({"vSwitch1", "vSwitch9"}),
                     port_groups=frozenset({("iSCSI-A", "vSwitch1"), ("Repl", "vSwitch1"), ("Prod-LAN", "vSwitch1"),
                                            ("Old", "vSwitch9")}),
                     vnics=frozenset({("vmk1", "iSCSI-A"), ("vmk5", "Old")}))


def test_prune_removes_what_esxdr_created_in_dependency_order_but_keeps_management():
    keep = plan_host(DESIRED, EXTRA, created=ESXDR_MADE)
    assert keep.actions == []
    assert any("created by esxdr" in n and "vSwitch9" in n and "--prune removes them" in n for n in keep.notes)
    plan = plan_host(DESIRED, EXTRA, prune=True, created=ESXDR_MADE)
    assert kinds(plan) == [
        ("unbind_vnic", "vmk5"), ("remove_static_target", "iqn.x:old at 10.9.9.9:3260"),
        ("remove_send_target", "10.9.9.9:3260"), ("remove_vnic", "vmk5"),
        ("remove_port_group", "Old"), ("remove_vswitch", "vSwitch9"), ("rescan_all_hba", "esx-dr"),
        ("rescan_vmfs", "esx-dr"),
    ]
    # ESXi's own VM Network was never esxdr's: named in a note, not removed
    assert not any(a.target in ("vmk0", "Management Network", "vSwitch0", "VM Network") for a in plan.actions)
    assert any("not created by esxdr" in n and "port group VM Network" in n for n in plan.notes)


def test_prune_without_a_record_removes_no_network_object():
    """No record (a fresh state dir, or objects someone else made): --prune touches no vSwitch,
    port group or VMkernel NIC, nor the iSCSI binding of a NIC esxdr did not create."""
    plan = plan_host(DESIRED, EXTRA, prune=True)
    assert not any(a.kind in ("remove_vnic", "remove_port_group", "remove_vswitch", "unbind_vnic")
                   for a in plan.actions), plan.render()
    [kept] = [n for n in plan.notes if "not created by esxdr" in n]
    assert all(x in kept for x in ("vSwitch vSwitch9", "port group Old", "port group VM Network", "VMkernel NIC vmk5"))
    assert any("iSCSI binding of vmk5" in n for n in plan.notes)


def test_prune_keeps_what_esxdr_created_while_something_not_esxdrs_depends_on_it():
    """A port group someone added to esxdr's vSwitch would go with RemoveVirtualSwitch, and a
    NIC someone put on esxdr's port group makes RemovePortGroup fail: both stay, with why."""
    added = replace(EXTRA, port_groups={**EXTRA.port_groups, "Theirs": ObservedPortGroup("Theirs", "vSwitch9", 7)},
                    vnics={**EXTRA.vnics, "vmk5": ObservedVnic("vmk5", "Old"), "vmk6": ObservedVnic("vmk6", "Old")},
                    iscsi=replace(EXTRA.iscsi, bound=("vmk1",)))
    plan = plan_host(DESIRED, added, prune=True, created=ESXDR_MADE)
    assert [a for a in kinds(plan) if a[0].startswith("remove_v") or a[0] == "remove_port_group"] == \
        [("remove_vnic", "vmk5")]
    [kept] = [n for n in plan.notes if "not created by esxdr" in n]
    assert "port group Old (still carries vmk6)" in kept and "vSwitch vSwitch9 (still carries port group Old, Theirs)" in kept
    # a recorded NIC that now sits on another port group is not the one esxdr made
    moved = replace(EXTRA, port_groups={**EXTRA.port_groups, "Other": ObservedPortGroup("Other", "vSwitch9", 8)},
                    vnics={**EXTRA.vnics, "vmk5": ObservedVnic("vmk5", "Other")}, iscsi=replace(EXTRA.iscsi, bound=()))
    assert not any(a.target == "vmk5" for a in plan_host(DESIRED, moved, prune=True, created=ESXDR_MADE).actions)


# A Dell host as pyvmomi 6.7.3's recorded one shows it (tests/fidelity/data, host-14): vmk1 at
# 169.254.0.2/24 on "iDRAC Network", a port group config.network.portgroup does not list (the
# hidden vSwitchiDRACvusb behind the iDRAC USB NIC vusb0).
IDRAC_VMK1 = ObservedVnic("vmk1", "iDRAC Network", False, "169.254.0.2", "255.255.255.0", 1500)
DELL = replace(FRESH, pnics=FRESH.pnics + ("vusb0",), vnics={**FRESH.vnics, "vmk1": IDRAC_VMK1})


@pytest.mark.parametrize("prune", [False, True])
def test_a_desired_vmk1_never_takes_the_hidden_idrac_vmk1(prune):
    plan = plan_host(DESIRED, DELL, prune=prune, created=ESXDR_MADE)
    assert not plan.refusals
    assert not any(a.target == "vmk1" and a.kind in ("update_vnic", "remove_vnic", "unbind_vnic") for a in plan.actions)
    [add] = [a for a in plan.actions if a.kind == "add_vnic"]
    assert (add.target, add.params["port_group"], add.params["ip"]) == ("vmk1", "iSCSI-A", "10.20.0.11")
    [bind] = [a for a in plan.actions if a.kind == "bind_vnic"]
    assert bind.params["device"] is None  # the NIC ESXi names at apply, never the host's vmk1
    assert any("vmk1 on esx-dr is another NIC" in n and "iDRAC Network" in n for n in plan.notes)
    assert any("VMkernel NIC vmk1 (on 'iDRAC Network'" in n for n in plan.notes)


def test_after_adding_beside_the_idrac_nic_the_plan_is_empty():
    """ESXi named the new NIC vmk2 (vmk1 is taken): matched by its port group from then on."""
    applied = replace(APPLIED, pnics=DELL.pnics,
                      vnics={**FRESH.vnics, "vmk1": IDRAC_VMK1, "vmk2": replace(APPLIED.vnics["vmk1"], device="vmk2")},
                      iscsi=replace(APPLIED.iscsi, bound=("vmk2",)))
    made = replace(ESXDR_MADE, vnics=frozenset({("vmk2", "iSCSI-A")}))
    for prune in (False, True):
        plan = plan_host(DESIRED, applied, prune=prune, created=made)
        assert plan.empty, plan.render()
        assert any("vmk1 is vmk2" in n for n in plan.notes)
    assert plan_host(DESIRED, applied).notes == [
        "vmk1 is vmk2 on esx-dr (ESXi chose the number)",
        "not in the site file and not created by esxdr: left alone, --prune too leaves them: port group VM Network, "
        "VMkernel NIC vmk1 (on 'iDRAC Network', a port group the host does not list: a system NIC such as the "
        "iDRAC passthrough)"]


def test_a_bound_nic_must_be_the_site_files_own():
    """bind names a NIC by the site file's name: one it does not describe is refused, never
    looked up on the host by that name (vmk1 there may be the iDRAC NIC)."""
    desired = replace(DESIRED, iscsi=IscsiSpec(bind=("vmk1", "vmk3"), send_targets=(Portal("10.20.0.5"),)))
    plan = plan_host(desired, replace(DELL, vnics={**DELL.vnics, "vmk3": ObservedVnic("vmk3", "VM Network")}))
    [r] = plan.refusals
    assert r.target == "vmk3" and "does not describe it" in r.message


def test_chap_and_static_targets():
    desired = replace(DESIRED, iscsi=IscsiSpec(
        bind=("vmk1",), send_targets=(Portal("10.20.0.5"),),
        static_targets=(StaticTarget("10.20.0.6", 3260, "iqn.2024-01.x:t"),),
        chap=ChapSpec("esxi-dr", secret_file="/etc/esxdr/chap")))
    plan = plan_host(desired, APPLIED)
    assert kinds(plan) == [("set_chap", "esxi-dr"), ("add_static_target", "iqn.2024-01.x:t at 10.20.0.6:3260"),
                           ("rescan_all_hba", "esx-dr"), ("rescan_vmfs", "esx-dr")]
    assert "secret" not in str(plan.actions[0].params.get("name"))
    done = replace(APPLIED, iscsi=replace(APPLIED.iscsi, chap_name="esxi-dr", chap_enabled=True,
                                          static_targets=(("10.20.0.6", 3260, "iqn.2024-01.x:t"),)))
    assert plan_host(desired, done).empty


def test_chap_secret_change_is_seen_through_the_recorded_fingerprint():
    desired = replace(DESIRED, iscsi=IscsiSpec(bind=("vmk1",), send_targets=(Portal("10.20.0.5"),),
                                               chap=ChapSpec("esxi-dr", secret_file="/etc/esxdr/chap")))
    on = replace(APPLIED, iscsi=replace(APPLIED.iscsi, chap_name="esxi-dr", chap_enabled=True))

    def chap_reasons(state):
        return [a.reason for a in plan_host(desired, on, chap_secret=state).actions if a.kind == "set_chap"]

    assert chap_reasons((None, None)) == []  # nothing known either way: name and state match
    assert chap_reasons(("fp1", "fp1")) == []
    assert chap_reasons(("fp1", None)) == []  # secret unreadable now: apply reports it, plan does not guess
    [changed] = chap_reasons(("fp1", "fp2"))
    assert "changed since esxdr set it" in changed and "/etc/esxdr/chap" in changed
    [unknown] = chap_reasons((None, "unrecorded"))
    assert "not with a secret esxdr set" in unknown
    # a wrong name is reported as such whatever the fingerprints say
    off_name = replace(on, iscsi=replace(on.iscsi, chap_name="other"))
    [a] = [a for a in plan_host(desired, off_name, chap_secret=("fp1", "fp1")).actions if a.kind == "set_chap"]
    assert a.reason == "CHAP name is other, the site file says esxi-dr"


def test_dhcp_and_split_ip():
    assert split_ip("10.20.0.11/24") == ("10.20.0.11", "255.255.255.0", 24)
    assert split_ip(None) == (None, None, None)
    desired = replace(DESIRED, vmkernel={"vmk1": VmkernelNic("vmk1", "iSCSI-A", None, 9000)})
    [a] = [a for a in plan_host(desired, APPLIED).actions if a.kind == "update_vnic"]
    assert "→ DHCP" in a.reason


def test_dry_run_text_and_json_are_the_same_list():
    plan = plan_host(DESIRED, FRESH)
    d = plan.to_dict()
    assert [x["kind"] for x in d["actions"]] == [a.kind for a in plan.actions]
    assert all(x["description"] in plan.render() for x in d["actions"])


# --------------------------------------------------------------------------- storage
NAA1 = "600144f0c0ffee000000000000000001"
NAA2 = "600144f0c0ffee0000000000000000aa"
UUID1 = "5f1e2d3c-00000001-8796-000c29aabbcc"
ISCSI = ObservedIscsi("vmhba65", "iqn.1998-01.com.vmware:esx-dr", send_targets=(("10.20.0.5", 3260),),
                      discovered=(("10.20.0.5", 3260, "iqn.t:dr"),))


def host_with(luns=(), datastores=(), iscsi=ISCSI):
    return replace(FRESH, software_iscsi_enabled=iscsi is not None, iscsi=iscsi,
                   luns={f"naa.{n}": ObservedLun(f"naa.{n}", paths=("vmhba65:C0:T0:L1",), adapters=("vmhba65",),
                                                 targets=("iqn.t:dr",)) for n in luns},
                   datastores={d.name: d for d in datastores})


EXP = ExpectedLun(NAA1, "iqn.t:dr", "ds1", UUID1, "ds1")


def test_storage_ok_when_lun_seen_and_volume_mounted():
    ds = ObservedDatastore("ds1", UUID1, UUID1, (f"naa.{NAA1}",))
    r = check_storage([EXP], host_with([NAA1], [ds]))
    assert r.ok and r.checks[0].paths == ("vmhba65:C0:T0:L1",)


@pytest.mark.parametrize("host, status, words", [
    (host_with(iscsi=None), "missing", ["software iSCSI adapter is off", "esxdr host apply"]),
    (host_with(iscsi=replace(ISCSI, send_targets=(), discovered=())), "missing", ["no send or static targets"]),
    (host_with(iscsi=replace(ISCSI, discovered=())), "missing", ["no iSCSI session", "VLAN", "binding", "ACL"]),
    (host_with(), "missing", ["target iqn.t:dr offered 0 LUNs to initiator iqn.1998-01.com.vmware:esx-dr",
                              "--allow-initiator"]),
    (host_with([NAA1]), "no-volume", ["no VMFS volume"]),
])
def test_storage_problems_are_explained(host, status, words):
    r = check_storage([EXP], host)
    c = r.checks[0]
    assert c.status == status
    text = c.message + " " + c.hint
    for w in words:
        assert w in text, text


def test_unresolved_on_other_naa_names_expected_and_served_and_offers_resolve():
    u = UnresolvedVolume(UUID1, "ds1", (f"naa.{NAA2}",), (f"/vmfs/devices/disks/naa.{NAA2}:1",), "diskIdMismatch")
    r = check_storage([EXP], host_with([NAA2]), [u])
    c = r.checks[0]
    assert c.status == "unresolved" and not r.ok
    assert f"naa.{NAA1}" in c.message and f"naa.{NAA2}" in c.message
    assert "--resolve keep-uuid" in c.hint and "--resolve resignature" in c.hint
    [fm] = plan_resolution(r, "keep-uuid")
    assert fm.kind == "force_mount" and fm.params["device_paths"] == u.device_paths
    [rs] = plan_resolution(r, "resignature")
    assert rs.kind == "resignature" and rs.params["rename_to"] == "ds1"


def test_unresolved_with_same_naa_blames_the_product_id():
    u = UnresolvedVolume(UUID1, "ds1", (f"naa.{NAA1}",), (f"/vmfs/devices/disks/naa.{NAA1}:1",), "diskIdMismatch")
    c = check_storage([EXP], host_with([NAA1]), [u]).checks[0]
    assert c.status == "unresolved" and "product id" in c.message


def test_force_mounted_and_renamed_are_ok_with_notes():
    ds = ObservedDatastore("snap-1234abcd-ds1", UUID1, UUID1, (f"naa.{NAA1}",), force_mounted=True)
    c = check_storage([EXP], host_with([NAA1], [ds])).checks[0]
    assert c.ok and any("force-mounted" in n for n in c.notes) and any("expected ds1" in n for n in c.notes)
