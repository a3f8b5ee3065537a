"""Every drill and failover presentation admits named initiators only (issue #14, item 3).

tgt reads a target without ACL as closed and `ALL` as open to everyone; esxdr used to turn an
empty ACL into `ALL`, and the drill and failover manifests kept production's empty ACL empty.
Also: `lu_relative_file` used to pass `..` through into the DR backing path.
"""

from __future__ import annotations

import copy

import pytest
from test_runbook import DR_IQN, HOST, NAAS, PORTAL, PROD_IQN, dr_obs, group, inputs, manifest

from esxdr.errors import ManifestError, UsageError
from esxdr.model.manifest import Backing, InitiatorGroup, View
from esxdr.plan import rewrite
from esxdr.plan import runbook as rb
from esxdr.targets import tgt

PROD_HOST_IQN = "iqn.1998-01.com.vmware:esx-prod"


def binds(m) -> list[list[str]]:
    cmds, _ = tgt.plan(m, [], None)
    return [c.argv[c.argv.index("--tid") + 2:] for c in cmds if "bind" in c.argv and "target" in c.argv]


def present(book: rb.Runbook):
    from esxdr.model.manifest import manifest_from_dict

    step = next(s for s in book.steps if s.kind == "present")
    return manifest_from_dict(step.params["manifest"], origin="present step")


def production_with_acl():
    """Production masks by ACL and host-group views (as COMSTAR does)."""
    m = manifest()
    m.initiator_groups = [InitiatorGroup("esx-prod", [PROD_HOST_IQN]), InitiatorGroup("lab", ["10.0.0.0/24"])]
    m.targets[0].acl = ["esx-prod", "lab"]
    for lu in m.logical_units:
        lu.views = [View(lun=lu.views[0].lun, target=PROD_IQN, initiator_group="esx-prod")]
    return m


# --------------------------------------------------------------------------- drill and failover manifests
@pytest.mark.parametrize("plan", ["drill", "failover"])
def test_the_presentation_admits_only_the_dr_host(plan):
    book = rb.plan_test_start(inputs()) if plan == "drill" else \
        rb.plan_failover(rb.FailoverInputs(group=group(), manifest=manifest(), dr_obs=dr_obs(), host=HOST,
                                           dr_portal=PORTAL))
    m = present(book)
    assert m.targets and all(len(t.acl) == 1 for t in m.targets)
    assert [g.members for g in m.initiator_groups] == [[DR_IQN]]
    assert binds(m) == [["-Q", DR_IQN]]  # never "-I ALL"


@pytest.mark.parametrize("build", [rb.drill_manifest, rb.failover_manifest])
@pytest.mark.parametrize("initiator", [None, [], ""])
def test_no_known_initiator_is_refused_with_a_hint(build, initiator):
    luns = rb.failover_luns(group(), manifest(), dr_obs())
    with pytest.raises(UsageError) as e:
        build(manifest(), luns, "core", PORTAL, initiator)
    assert "never presents LUNs to every initiator" in e.value.message
    assert "vsphere_dr" in e.value.hint and "esxdr host apply" in e.value.hint and "--allow-initiator" in e.value.hint


def test_without_a_dr_host_the_plans_refuse_unless_initiators_are_named():
    with pytest.raises(UsageError, match="initiator name is unknown"):
        rb.plan_test_start(inputs(host=None))
    with pytest.raises(UsageError, match="initiator name is unknown"):
        rb.plan_failover(rb.FailoverInputs(group=group(), manifest=manifest(), dr_obs=dr_obs(), host=None,
                                           dr_portal=PORTAL))
    m = present(rb.plan_test_start(inputs(host=None, initiators=("iqn.2024-01.lab.esxdr:checker",))))
    assert binds(m) == [["-Q", "iqn.2024-01.lab.esxdr:checker"]]


def test_named_initiators_join_the_dr_hosts_once():
    m = present(rb.plan_test_start(inputs(initiators=(DR_IQN, "iqn.2024-01.lab.esxdr:checker"))))
    assert binds(m) == [["-Q", DR_IQN], ["-Q", "iqn.2024-01.lab.esxdr:checker"]]


def test_a_bad_initiator_name_is_refused():
    with pytest.raises(UsageError, match="not an initiator IQN"):
        rb.plan_test_start(inputs(host=None, initiators=("ALL",)))


def test_failover_does_not_carry_productions_acl_to_dr():
    """Production's own ACL and host-group views: DR admits its own host only. (This used to fail
    validation outright: the groups were dropped and the ACL still named them.)"""
    luns = rb.failover_luns(group(), production_with_acl(), dr_obs())
    m = rb.failover_manifest(production_with_acl(), luns, "core", PORTAL, [DR_IQN])
    assert [g.name for g in m.initiator_groups] == ["esxdr-failover-core"]
    assert m.targets[0].acl == ["esxdr-failover-core"]
    assert all(v.initiator_group is None for lu in m.logical_units for v in lu.views)
    assert binds(m) == [["-Q", DR_IQN]]


def test_failback_keeps_productions_acl_and_adds_the_hosts_it_returns_to():
    luns = rb.failover_luns(group(), production_with_acl(), dr_obs())
    m = rb.failover_manifest(production_with_acl(), luns, "core", PORTAL, [PROD_HOST_IQN], keep_acl=True)
    assert m.targets[0].acl == ["esx-prod", "lab", "esxdr-failover-core"]
    assert m.initiator_groups[0].members == [PROD_HOST_IQN]  # the present step logs in as this one
    assert binds(m) == [["-I", "10.0.0.0/24"], ["-Q", PROD_HOST_IQN]]  # one rule each, though named twice


def test_drill_manifest_admits_only_its_group_whatever_production_said():
    luns = rb.drill_luns(group(), production_with_acl(), "/mnt/rp1/iscsi", "esxdr_core_b", False)
    m = rb.drill_manifest(production_with_acl(), luns, "core", PORTAL, DR_IQN)
    assert [t.acl for t in m.targets] == [["esxdr-test-core"]]
    assert binds(m) == [["-Q", DR_IQN]]


# --------------------------------------------------------------------------- tgt applies explicit ACLs only
def test_tgt_refuses_a_target_whose_acl_admits_no_initiator():
    m = manifest()  # production's: no ACL
    with pytest.raises(ManifestError) as e:
        tgt.plan(m, [], None)
    assert PROD_IQN in e.value.message and "admits no initiator" in e.value.message
    assert "--allow-initiator" in e.value.hint
    m.initiator_groups = [InitiatorGroup("empty", [])]
    m.targets[0].acl = ["empty"]
    with pytest.raises(ManifestError, match="admits no initiator"):
        tgt.plan(m, [], None)


def test_tgt_unbinds_an_all_left_by_an_older_esxdr():
    m = rewrite.allow_initiators(manifest(), [DR_IQN])
    pl = tgt.place(m)
    shown = tgt.TgtTarget(pl.tids[PROD_IQN], PROD_IQN, acl=["ALL"])
    for n, lu in pl.luns[PROD_IQN]:
        shown.luns[n] = tgt.TgtLu(n, lu.naa.hex, lu.serial or "", lu.backing.path, lu.block_size, 0, lu.read_only)
    cmds, _ = tgt.plan(m, [shown], None)
    assert [c.argv[-3:] for c in cmds] == [["1", "-Q", DR_IQN], ["1", "-I", "ALL"]]
    assert [c.argv[c.argv.index("--op") + 1] for c in cmds] == ["bind", "unbind"]


def test_allow_initiators_makes_an_empty_acl_explicit():
    m = rewrite.allow_initiators(manifest(), [DR_IQN])
    assert m.targets[0].acl == ["esxdr-dr"]
    assert binds(m) == [["-Q", DR_IQN]]


def test_import_with_allow_initiator_binds_only_that_initiator():
    from esxdr.cli.target import _apply_rewrites

    m = _apply_rewrites(manifest(), (), None, None, (), (), None, (DR_IQN,), None, None)
    assert binds(m) == [["-Q", DR_IQN]]


# --------------------------------------------------------------------------- the LUN file stays in its dataset
@pytest.mark.parametrize("path", [
    "/sp1/iscsi/lun0/../../../../etc/shadow",
    "/mnt/sp1/iscsi/lun0/../../lun1/lun.img",
    "/mnt/sp1/iscsi/lun0/sub/lun.img",
    "/mnt/sp1/iscsi/lun0/..",
    "/mnt/sp1/iscsi/lun0/-b",
])
def test_relative_file_refuses_instead_of_passing_dotdot_through(path):
    """Defence in depth: even a manifest that skipped validation cannot make a DR path leave its dataset."""
    m = copy.deepcopy(manifest())
    m.logical_units[0].backing = Backing("file", path, "sp1/iscsi/lun0")
    with pytest.raises(ManifestError) as e:
        rb.failover_luns(group(), m, dr_obs())
    assert f"naa.{NAAS[0]}" in e.value.message and repr(path) in e.value.message
    with pytest.raises(ManifestError):
        rb.drill_luns(group(), m, "/mnt/rp1/iscsi", "esxdr_core_b", False)


def test_relative_file_keeps_a_plain_name():
    luns = rb.failover_luns(group(), manifest(), dr_obs())
    assert [d.path for d in luns] == [f"/mnt/rp1/iscsi/lun{i}/lun.img" for i in range(3)]
