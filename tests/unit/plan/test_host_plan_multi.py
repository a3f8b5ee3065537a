"""The pure multi-host planning of a vCenter endpoint: per-host plans, host selection, grouping."""

from __future__ import annotations

from dataclasses import replace

import pytest
from test_host_plan import APPLIED, DESIRED, FRESH

from esxdr.errors import UsageError
from esxdr.plan.host import plan_host, plan_hosts, select_hosts
from esxdr.plan.storage import ExpectedLun, HostsStorageReport, check_storage

A, B = "esx-a", "esx-b"


def per_host(state, name):
    return replace(state, name=name, moid=f"host-{name}")


def desired(name):
    return replace(DESIRED, host=name)


def test_each_host_is_planned_against_its_own_state():
    plan = plan_hosts("vc-dr", {A: desired(A), B: desired(B)}, {A: per_host(APPLIED, A), B: per_host(FRESH, B)})
    assert [p.host for p in plan.plans] == [A, B]
    assert plan.plans[0].empty and not plan.plans[1].empty
    # the same actions a single-host plan gives
    assert plan.plans[1].actions == plan_host(desired(B), per_host(FRESH, B)).actions
    assert not plan.empty and plan.refusals == []


def test_all_applied_is_empty_and_renders_grouped():
    plan = plan_hosts("vc-dr", {A: desired(A), B: desired(B)}, {A: per_host(APPLIED, A), B: per_host(APPLIED, B)})
    assert plan.empty
    text = plan.render()
    assert text.index("== esx-a ==") < text.index("== esx-b ==") and text.count("up to date") == 2
    d = plan.to_dict()
    assert d["endpoint"] == "vc-dr" and d["empty"] and [h["host"] for h in d["hosts"]] == [A, B]


def test_a_host_the_vcenter_does_not_have_is_refused_by_name():
    plan = plan_hosts("vc-dr", {A: desired(A), "esx-z": desired("esx-z")}, {A: per_host(FRESH, A)})
    assert [(h, r.target) for h, r in plan.refusals] == [("esx-z", "esx-z")]
    assert "not managed by vc-dr" in plan.refusals[0][1].message


def test_refusal_on_one_host_is_kept_with_its_host():
    # ESXi cannot move a port group between vSwitches: esx-b's plan is refused, esx-a's is not
    moved = replace(DESIRED.port_groups["Repl"], name="Management Network")
    bad = replace(desired(B), port_groups={**DESIRED.port_groups, "Management Network": moved})
    plan = plan_hosts("vc-dr", {A: desired(A), B: bad}, {A: per_host(FRESH, A), B: per_host(FRESH, B)})
    assert {h for h, _ in plan.refusals} == {B}
    assert "exists on vSwitch0" in plan.refusals[0][1].message


@pytest.mark.parametrize("hosts, network, only, need, want", [
    ((A, B), [A, B], None, True, [A, B]),
    ((B, A), [A, B], None, True, [B, A]),  # site order of hosts:
    ((A, B), [B], None, True, [B]),  # only hosts with a dr_network entry
    ((A, B), [], None, False, [A, B]),  # verify-storage needs no network
    ((A, B), [A, B], B, True, [B]),  # --host narrows
])
def test_select_hosts(hosts, network, only, need, want):
    assert select_hosts("vc-dr", hosts, network, only, need_network=need) == want


@pytest.mark.parametrize("hosts, network, only, need, text", [
    ((A, B), [A, B], "esx-z", True, "--host esx-z: not one of the hosts of vc-dr (esx-a, esx-b)"),
    ((A, B), [A], B, True, "--host esx-b: no dr_network entry"),
    ((), [A], None, True, "lists no hosts"),
    ((A, B), [], None, True, "none of the hosts of vc-dr (esx-a, esx-b) has a dr_network entry"),
])
def test_select_hosts_refuses_with_the_names(hosts, network, only, need, text):
    with pytest.raises(UsageError) as e:
        select_hosts("vc-dr", hosts, network, only, need_network=need)
    assert text in e.value.message and e.value.hint


def test_storage_report_per_host():
    from esxdr.model.host import ObservedDatastore, ObservedLun

    naa = "600144f0c0ffee000000000000000001"
    seen = replace(APPLIED, name=A, luns={f"naa.{naa}": ObservedLun(f"naa.{naa}")},
                   datastores={"ds1": ObservedDatastore("ds1", "u1", "u1", (f"naa.{naa}",))})
    exp = [ExpectedLun(naa=naa, vmfs_uuid="u1", datastore="ds1")]
    rep = HostsStorageReport("vc-dr", [check_storage(exp, seen), check_storage(exp, replace(FRESH, name=B))])
    assert not rep.ok
    d = rep.to_dict()
    assert [(h["host"], h["ok"]) for h in d["hosts"]] == [(A, True), (B, False)]
    assert d["hosts"][1]["luns"][0]["status"] == "missing"
    text = rep.render()
    assert "== esx-a ==" in text and "vc-dr: 1/2 hosts verified" in text
