"""The host planner on the real Dell host: the iDRAC passthrough NIC is not esxdr's to take.

The recorded host (tests/fidelity/data/pyvmomi-6.7.3, host-14) has ``vmk1`` at 169.254.0.2 on the
port group "iDRAC Network", which config.network.portgroup does not list (Dell's hidden
vSwitchiDRACvusb behind the iDRAC USB NIC vusb0). A site file that wants its iSCSI NIC called
``vmk1`` must get a new VMkernel NIC, never that one rewritten (issue 13, defect 3).
"""

from __future__ import annotations

import pytest
from fidelity_replay import session

from esxdr.plan.host import plan_host
from esxdr.site.model import HostNetwork, IscsiSpec, Portal, PortGroupSpec, VmkernelNic, VSwitch
from esxdr.vsphere import inventory

DESIRED = HostNetwork(
    host="10.0.0.5",
    vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic1",), 1500, ("vmnic1",), ())},
    port_groups={"iSCSI-A": PortGroupSpec("iSCSI-A", "vSwitch1", 0, ("vmnic1",), ())},
    vmkernel={"vmk1": VmkernelNic("vmk1", "iSCSI-A", "10.20.0.11/24", 1500)},
    iscsi=IscsiSpec(bind=("vmk1",), send_targets=(Portal("10.20.0.5"),)),
)


@pytest.fixture(scope="module")
def dell():
    s = session()
    try:
        return inventory.read_host(s, "10.0.0.5", with_vms=False)
    finally:
        s.close()


@pytest.mark.parametrize("prune", [False, True])
def test_the_idrac_vmknic_is_never_adopted_or_changed(dell, prune):
    plan = plan_host(DESIRED, dell, prune=prune)
    assert plan.refusals == []
    # The whole network and iSCSI setup, then whatever rescans the planner orders. The existing
    # vmk1 (169.254.0.2, "iDRAC Network") is not updated to the iSCSI port group and address: a
    # new NIC is added for iSCSI-A.
    configured = [(a.kind, a.target) for a in plan.actions if not a.kind.startswith("rescan")]
    assert configured == [("add_vswitch", "vSwitch1"), ("add_port_group", "iSCSI-A"), ("add_vnic", "vmk1"),
                          ("enable_software_iscsi", "software iSCSI"), ("bind_vnic", "vmk1"),
                          ("add_send_target", "10.20.0.5:3260")]
    assert plan.actions[configured.index(("add_vnic", "vmk1"))].params["port_group"] == "iSCSI-A"
    # Nothing on this host was created by esxdr, so even --prune removes nothing: not the iDRAC
    # NIC, not ESXi's own VM Network.
    assert not [a for a in plan.actions if a.kind.startswith("remove_") or a.kind == "update_vnic"]
    assert any("169.254.0.2" in n and "iDRAC Network" in n for n in plan.notes)
