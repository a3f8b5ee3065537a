"""The pure failover planner, the reversed view of a group, reprotect's evidence and the
replication stop marker: observations in, steps (or a typed refusal with evidence) out."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_runbook import DR_IQN, HOST, NAAS, PORTAL, PROD_IQN, dr_obs, group, manifest, snap

from esxdr.errors import ConflictError, IdentityConflict, UsageError
from esxdr.model import Dataset
from esxdr.plan import runbook as rb
from esxdr.recovery.reprotect import plan_reprotect
from esxdr.replication import Engine, Options, failover_marker

PROD_PORTAL = "127.0.0.1:3260"


def inputs(**kw) -> rb.FailoverInputs:
    base = dict(group=group(), manifest=manifest(), dr_obs=dr_obs(), host=HOST, dr_portal=PORTAL,
                production_portal=PROD_PORTAL)
    base.update(kw)
    return rb.FailoverInputs(**base)


def ids(book: rb.Runbook) -> list[str]:
    return [s.id for s in book.steps]


PROMOTES = [f"promote:rp1/iscsi/lun{i}" for i in range(3)]
TAIL = ["present", "rescan", "verify", "register", "nics", "power:1:1", "power:1:2", "power:2:1"]


# --------------------------------------------------------------------------- order of the steps
def test_disaster_guards_before_anything_and_recovers_latest():
    book = rb.plan_failover(inputs(mode="disaster"))
    assert ids(book) == ["guard", "stop-replication", *PROMOTES, *TAIL]
    assert book.snapshot == "esxdr_core_b" and book.kind == "failover"
    guard = book.steps[0]
    assert guard.params == {"portal": PROD_PORTAL, "naas": sorted(NAAS), "force": False, "initiator": DR_IQN}


def test_planned_stops_production_first_and_recovers_the_final_snapshot():
    book = rb.plan_failover(inputs(mode="planned"))
    assert ids(book) == ["shutdown", "replicate", "stop-replication", "unpresent-production", "guard", *PROMOTES,
                         *TAIL]
    assert book.snapshot is None  # named by the final replication, at run time
    assert all(s.params["snapshot"] is None for s in book.steps if s.kind == "promote")
    assert book.steps[0].params["vms"] == ["dc01", "sql01", "app01"]


def test_step_ids_are_stable_across_replans():
    assert ids(rb.plan_failover(inputs(mode="planned"))) == ids(rb.plan_failover(inputs(mode="planned")))


def test_vms_boot_with_i_moved_it_on_failover_port_groups():
    book = rb.plan_failover(inputs(mode="disaster"))
    by = {s.id: s for s in book.steps}
    assert by["register"].params["answer"] == "moved"
    assert all(s.params["answer"] == "moved" for s in book.steps if s.kind == "power")
    assert by["nics"].params["map"] == {"Prod-LAN": "DR-LAN"}
    assert by["verify"].params["resolve"] is None  # never resignature a failover
    assert [e["vmfs_uuid"] for e in by["verify"].params["expected"]] == [f"5b7ee5c9-0000000{i}-3151-000c29bb47a0"
                                                                         for i in range(3)]


def test_without_a_dr_host_only_storage_is_planned():
    # Without a DR host the initiators to admit must be named (an empty ACL would admit everyone).
    book = rb.plan_failover(inputs(mode="disaster", host=None, initiators=(DR_IQN,)))
    assert ids(book)[-1] == "present" and any("only the storage part" in n for n in book.notes)


# --------------------------------------------------------------------------- identities
def test_failover_manifest_keeps_iqn_and_naas_on_the_dr_datasets():
    book = rb.plan_failover(inputs(mode="disaster"))
    present = next(s for s in book.steps if s.id == "present")
    m = present.params["manifest"]
    assert present.params["iqns"] == [PROD_IQN]
    lus = m["logical_units"]
    assert [lu["naa"].removeprefix("naa.") for lu in lus] == NAAS
    assert [lu["backing"]["path"] for lu in lus] == [f"/mnt/rp1/iscsi/lun{i}/lun.img" for i in range(3)]
    assert all(lu.get("product_id") == "COMSTAR" and not lu.get("read_only") for lu in lus)
    assert DR_IQN in str(m["initiator_groups"])


def test_drill_still_presenting_the_naas_is_refused():
    served = [rb.ServedLun(naa=NAAS[0], target=rb.test_iqn(PROD_IQN, "core"), tid=2, lun=1, path="/x")]
    with pytest.raises(IdentityConflict, match="already served by the DR target") as e:
        rb.plan_failover(inputs(mode="disaster", served=served))
    assert "esxdr test cleanup core" in e.value.hint


def test_failover_target_already_serving_is_a_resume_not_a_clash():
    served = [rb.ServedLun(naa=n, target=PROD_IQN, tid=1, lun=i + 1, path="/x") for i, n in enumerate(NAAS)]
    host = replace(HOST, luns={n: (PROD_IQN,) for n in NAAS})
    assert ids(rb.plan_failover(inputs(mode="disaster", served=served, host=host)))[0] == "guard"


def test_drill_container_is_refused():
    obs = dr_obs()
    obs["rp1/iscsi/esxdr-test-core"] = Dataset("rp1/iscsi/esxdr-test-core", "filesystem", 9)
    with pytest.raises(ConflictError, match="a drill of core is set up") as e:
        rb.plan_failover(inputs(mode="disaster", dr_obs=obs))
    assert e.value.hint == "esxdr test cleanup core"


def test_missing_failover_port_group_is_refused():
    host = replace(HOST, port_groups={"Prod-LAN": ("vSwitch1", 310)})
    with pytest.raises(ConflictError, match="DR-LAN"):
        rb.plan_failover(inputs(mode="disaster", host=host))


def test_split_brain_lines_name_naa_and_where():
    seen = {NAAS[1]: "127.0.0.1:3260 iqn.x LUN 2"}
    assert rb.split_brain(seen, NAAS) == [f"naa.{NAAS[1]} is still served by production at 127.0.0.1:3260 iqn.x LUN 2"]
    assert rb.split_brain({}, NAAS) == []


# --------------------------------------------------------------------------- rollback evidence
def partial() -> dict:
    snaps = {f"rp1/iscsi/lun{i}": [("esxdr_core_a", 10), ("esxdr_core_b", 20)] for i in range(3)}
    snaps["rp1/iscsi/lun0"].append(("esxdr_core_c", 30))  # replication cut after the first dataset
    return dr_obs(snaps)


def test_latest_discards_only_a_partial_point():
    book = rb.plan_failover(inputs(mode="disaster", dr_obs=partial()))
    p0 = next(s for s in book.steps if s.id == "promote:rp1/iscsi/lun0")
    assert book.snapshot == "esxdr_core_b" and p0.params["discards"] == ["esxdr_core_c"]
    assert "discards partial @esxdr_core_c" in p0.reason


def test_an_older_point_needs_force():
    with pytest.raises(ConflictError, match="discard newer replicated snapshots") as e:
        rb.plan_failover(inputs(mode="disaster", point="esxdr_core_a"))
    assert "rp1/iscsi/lun0@esxdr_core_b" in e.value.message and "--force" in e.value.hint
    book = rb.plan_failover(inputs(mode="disaster", point="esxdr_core_a", force=True))
    assert book.snapshot == "esxdr_core_a"
    assert next(s for s in book.steps if s.kind == "promote").params["discards"] == ["esxdr_core_b"]


def test_held_newer_snapshot_is_released_only_with_force():
    obs = partial()
    ds = obs["rp1/iscsi/lun0"]
    obs["rp1/iscsi/lun0"] = replace(ds, snapshots=[*ds.snapshots[:2], snap("rp1/iscsi/lun0", "esxdr_core_c", 30, 1)])
    with pytest.raises(ConflictError, match="held") as e:
        rb.plan_failover(inputs(mode="disaster", dr_obs=obs))
    assert "--force" in e.value.hint
    book = rb.plan_failover(inputs(mode="disaster", dr_obs=obs, force=True))
    assert next(s for s in book.steps if s.id == "promote:rp1/iscsi/lun0").params["release"] == ["esxdr_core_c"]


def test_planned_takes_no_point():
    with pytest.raises(UsageError, match="--point"):
        rb.plan_failover(inputs(mode="planned", point="esxdr_core_a"))
    with pytest.raises(UsageError):
        rb.plan_failover(inputs(mode="sideways"))


# --------------------------------------------------------------------------- the way back
def test_reversed_group_swaps_sides_and_networks():
    g = group()
    r = rb.reversed_group(g)
    assert (r.source, r.destination, r.source_root, r.dr_root) == ("ss2", "ss1", "rp1/iscsi", "sp1/iscsi")
    assert r.datasets == g.dr_datasets and r.dr_datasets == g.datasets
    assert (r.vsphere_production, r.vsphere_dr) == (g.vsphere_dr, g.vsphere_production)
    assert r.vms[0].networks["DR-LAN"].failover == "Prod-LAN"
    assert r.luns["rp1/iscsi/lun0"].naa == g.luns["sp1/iscsi/lun0"].naa
    assert rb.reversed_group(r).datasets == g.datasets


def test_failback_is_a_planned_failover_of_the_reversed_view():
    g = rb.reversed_group(group())
    m = manifest()
    for lu in m.logical_units:
        lu.backing = replace(lu.backing, dataset=group().dr_dataset(lu.backing.dataset))
    prod = {"sp1/iscsi": Dataset("sp1/iscsi", "filesystem", 1, mountpoint="/mnt/sp1/iscsi")}
    for i in range(3):
        prod[f"sp1/iscsi/lun{i}"] = Dataset(f"sp1/iscsi/lun{i}", "filesystem", 2, mountpoint=f"/mnt/sp1/iscsi/lun{i}",
                                            snapshots=[snap(f"sp1/iscsi/lun{i}", "esxdr_core_b", 20)])
    host = replace(HOST, name="esx-prod", port_groups={"Prod-LAN": ("vSwitch0", 10)})
    book = rb.plan_failover(inputs(group=g, manifest=m, dr_obs=prod, mode="planned", host=host, kind="failback"))
    assert book.kind == "failback" and "promote:sp1/iscsi/lun0" in ids(book)
    present = next(s for s in book.steps if s.id == "present")
    assert [lu["backing"]["path"] for lu in present.params["manifest"]["logical_units"]][0] == \
        "/mnt/sp1/iscsi/lun0/lun.img"
    assert next(s for s in book.steps if s.id == "nics").params["map"] == {"DR-LAN": "Prod-LAN"}


def test_reprotect_evidence_names_the_common_snapshot_and_what_goes():
    g = group()
    dr = dr_obs({f"rp1/iscsi/lun{i}": [("esxdr_core_a", 10), ("esxdr_core_b", 20), ("esxdr_core_x", 40)]
                 for i in range(3)})
    prod = {f"sp1/iscsi/lun{i}": Dataset(f"sp1/iscsi/lun{i}", "filesystem", 2, written=4096, snapshots=[
        snap(f"sp1/iscsi/lun{i}", "esxdr_core_a", 10), snap(f"sp1/iscsi/lun{i}", "esxdr_core_b", 20),
        replace(snap(f"sp1/iscsi/lun{i}", "esxdr_core_p", 30), guid=999)]) for i in range(3)}
    p = plan_reprotect(g, prod, dr)
    assert [(r["dataset"], r["common"], r["discards"]) for r in p.rollbacks] == [
        (f"sp1/iscsi/lun{i}", "esxdr_core_b", ["esxdr_core_p"]) for i in range(3)]
    assert "discards @esxdr_core_p" in p.render() and "4.0 KiB" in p.render()
    prod["sp1/iscsi/lun2"] = Dataset("sp1/iscsi/lun2", "filesystem", 2, snapshots=[snap("sp1/iscsi/lun2", "other", 5)])
    prod["sp1/iscsi/lun2"].snapshots[0] = replace(prod["sp1/iscsi/lun2"].snapshots[0], guid=12345)
    with pytest.raises(ConflictError, match="no snapshot in common"):
        plan_reprotect(g, prod, dr)


# --------------------------------------------------------------------------- replication stops
def test_replicate_refuses_while_failed_over(tmp_path):
    site = replace(_example_site(), state_dir=str(tmp_path))
    marker = failover_marker(str(tmp_path), "core")
    marker.parent.mkdir(parents=True)
    marker.write_text("{}")
    with pytest.raises(ConflictError, match="failed over") as e:
        Engine(site, "core", Options()).run()
    assert "esxdr reprotect core" in (e.value.hint or "")


# --------------------------------------------------------------------------- where failback runs
def _example_site():
    from esxdr.site import load_site

    return load_site(Path(__file__).resolve().parents[3] / "examples" / "site.yaml", check_files=False)


def test_failback_runs_on_the_dr_box_and_reaches_production_as_the_site_file_says():
    from esxdr.recovery.failover import Failover

    site = _example_site()
    # the DR box's own site file: ss2 (DR) is local there, ss1 (production) a remote box
    on_dr = replace(site, storage={**site.storage,
                                   "ss1": replace(site.storage["ss1"], local=False, address="ss1.example.com",
                                                  user="esxdr-admin", zfs_command=("zfs",)),
                                   "ss2": replace(site.storage["ss2"], local=True)})
    f = Failover(on_dr, "core", reverse=True)
    assert f.kind == "failback"
    # the reversed view sends from DR (local here) to production, which it then promotes
    assert (f.g.source, f.g.destination) == ("ss2", "ss1")
    assert f.site.storage["ss2"].local and not f.site.storage["ss1"].local
    assert f.server.name == "ss1"
    assert f.journal.path.parent == Path(on_dr.state_dir) / "failover"


def test_failback_from_the_production_box_is_refused_with_where_to_run_it():
    from esxdr.recovery.failover import Failover

    site = _example_site()  # ss1 local: the production box's site file; ss2 remote behind esxdr serve
    with pytest.raises(UsageError) as e:
        Failover(site, "core", reverse=True)
    assert "ss2" in str(e.value) and "local: true" in (e.value.hint or "")
