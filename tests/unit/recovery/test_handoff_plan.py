"""Pull mode's planned failover, as data: production's hand-off runbook (esxdr failover --planned
--hand-off, on production) and DR's planned failover, which pulls exactly the snapshot production
handed off and refuses without it. The hand-off value is read from production, which may be
compromised: a forged or stale value is refused before anything changes."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from test_failover_plan import PROMOTES, TAIL, ids, inputs
from test_runbook import NAAS, group

from esxdr.errors import ConflictError, UsageError
from esxdr.model import Dataset, Snapshot
from esxdr.plan import runbook as rb

HANDED = "esxdr_core_20261203T200000Z"


def test_pull_planned_pulls_the_hand_off_and_never_touches_production():
    book = rb.plan_failover(inputs(mode="planned", pull=True, handoff=HANDED))
    # No shutdown and no unpresent from DR: the send-only key cannot; production did both.
    assert ids(book) == ["replicate", "stop-replication", "guard", *PROMOTES, *TAIL]
    assert book.snapshot == HANDED
    assert book.steps[0].params == {"pull": True, "handoff": HANDED}
    assert {s.params["snapshot"] for s in book.steps if s.kind == "promote"} == {HANDED}
    assert "hand-off" in book.steps[0].reason


def test_pull_planned_refuses_until_production_handed_off():
    with pytest.raises(ConflictError) as e:
        rb.plan_failover(inputs(mode="planned", pull=True, handoff=None))
    assert "has not handed core off" in e.value.message
    assert "--planned --hand-off" in e.value.hint and "--disaster" in e.value.hint


def test_pull_disaster_ignores_the_hand_off():
    push = rb.plan_failover(inputs(mode="disaster"))
    pull = rb.plan_failover(inputs(mode="disaster", pull=True, handoff=None))
    assert ids(pull) == ids(push) and pull.snapshot == push.snapshot


def test_push_planned_is_unchanged_by_a_published_hand_off():
    # A push-mode DR stops production itself; a hand-off value (stale, forged) plays no part.
    book = rb.plan_failover(inputs(mode="planned", handoff=HANDED))
    assert ids(book)[:4] == ["shutdown", "replicate", "stop-replication", "unpresent-production"]
    assert book.snapshot is None


def test_hand_off_runbook_stops_snapshots_unpresents_and_publishes_last():
    book = rb.plan_handoff(rb.HandOffInputs(group=group(), naas=sorted(NAAS), target="tgt"))
    assert book.kind == "hand-off"
    assert ids(book) == ["shutdown", "snapshot", "stop-replication", "unpresent-production", "publish-handoff"]
    by = {s.id: s for s in book.steps}
    assert by["shutdown"].params["vms"] == ["dc01", "sql01", "app01"]
    assert by["unpresent-production"].params == {"naas": sorted(NAAS)}
    assert rb.HANDOFF_PROP in by["publish-handoff"].title
    assert "nothing to remove" not in by["unpresent-production"].reason


def test_hand_off_without_a_production_target_says_so():
    book = rb.plan_handoff(rb.HandOffInputs(group=group(), naas=[], target=None))
    assert "nothing to remove" in next(s for s in book.steps if s.kind == "unpresent-production").reason


def test_hand_off_callouts_run_for_hand_off_runs_only():
    from esxdr.site.model import Callout

    g = replace(group(), callouts=(Callout(step="publish-handoff", post=("notify", "dr"), runs=("hand-off",)),
                                   Callout(step="shutdown", pre=("drain",), runs=("failover",))))
    book = rb.plan_handoff(rb.HandOffInputs(group=g, naas=sorted(NAAS), target="tgt"))
    by = {s.id: s for s in book.steps}
    assert by["publish-handoff"].params["callouts"]["post"][0]["argv"] == ["notify", "dr"]
    assert "callouts" not in by["shutdown"].params


# --------------------------------------------------------------------------- reading the hand-off
class _Side:
    def __init__(self, obs):
        self.zfs = SimpleNamespace(observe=lambda roots: obs)
        self.transport = SimpleNamespace(close=lambda: None)


def _source(value: str | None, *, on: tuple[str, ...] | None = None):
    g = group()
    obs = {g.source_root: Dataset(g.source_root, "filesystem", 1, props={rb.HANDOFF_PROP: value} if value else {})}
    for i, ds in enumerate(g.datasets):
        snaps = [Snapshot(ds, HANDED, 100 + i, 10, 1)] if on is None or ds in on else []
        obs[ds] = Dataset(ds, "filesystem", 10 + i, snapshots=snaps)
    return g, obs


def _read(monkeypatch, value, **kw):
    from esxdr import replication
    from esxdr.recovery import failover

    g, obs = _source(value, **kw)
    monkeypatch.setattr(replication.sides, "open_side", lambda site, name, **k: _Side(obs))
    d = failover.Failover.__new__(failover.Failover)
    d.site, d.g, d.original, d.reverse, d.kind = SimpleNamespace(), g, g, False, "failover"
    return failover.Failover._handoff(d)


def test_a_published_hand_off_is_read(monkeypatch):
    assert _read(monkeypatch, HANDED) == HANDED
    assert _read(monkeypatch, None) is None


@pytest.mark.parametrize("value", [
    "esxdr_other_20261203T200000Z",            # another group's snapshot
    "esxdr_core_20261203T200000Z@x",           # a snapshot path
    "esxdr_core_latest",                       # not one of esxdr's names
    "../esxdr_core_20261203T200000Z",
    "esxdr_core_20261203T200000Z -F",
    "x" * 300,
])
def test_a_forged_hand_off_is_refused_naming_the_property(monkeypatch, value):
    with pytest.raises(ConflictError) as e:
        _read(monkeypatch, value)
    assert rb.HANDOFF_PROP in e.value.message and "forged" in e.value.hint


def test_a_hand_off_some_dataset_lacks_is_refused(monkeypatch):
    with pytest.raises(ConflictError) as e:
        _read(monkeypatch, HANDED, on=("sp1/iscsi/lun0",))
    assert "sp1/iscsi/lun1" in e.value.message and "hand off again" in e.value.hint


def test_hand_off_on_a_push_mode_production_is_refused():
    from esxdr.recovery.handoff import HandOff

    g = group()
    site = SimpleNamespace(path="site.yaml", protection_groups={g.name: g}, state_dir="/nonexistent",
                           group=lambda n: g,
                           storage_server=lambda n: SimpleNamespace(pulls=False, behind_serve=False, name=n))
    with pytest.raises(UsageError) as e:
        HandOff(site, "core")
    assert "does not pull" in e.value.message and "esxdr failover core --planned" in e.value.hint


def test_a_snapshot_newer_than_the_hand_off_is_refused_before_pulling(monkeypatch):
    from esxdr import replication
    from esxdr.recovery import failover

    g, obs = _source(HANDED)
    lun1 = obs["sp1/iscsi/lun1"]
    lun1.snapshots.append(Snapshot(lun1.name, "manual", 999, 11, 2))
    monkeypatch.setattr(replication.sides, "open_side", lambda site, name, **k: _Side(obs))
    d = failover.Failover.__new__(failover.Failover)
    d.site, d.g, d.original, d.reverse, d.kind = SimpleNamespace(), g, g, False, "failover"
    with pytest.raises(ConflictError) as e:
        failover.Failover._handoff(d)
    assert "sp1/iscsi/lun1@manual" in e.value.message and f"newer than its hand-off @{HANDED}" in e.value.message


# --------------------------------------------------------------------------- the way home
def test_dr_hands_back_without_stopping_replication_and_seals_before_publishing():
    view = rb.reversed_group(group())
    book = rb.plan_handoff(rb.HandOffInputs(group=view, naas=sorted(NAAS), target="tgt", reverse=True))
    assert book.kind == "failback-hand-off"
    assert ids(book) == ["shutdown", "snapshot", "unpresent-production", "seal", "publish-handoff"]
    by = {s.id: s for s in book.steps}
    assert "DR VM(s)" in by["shutdown"].title and by["shutdown"].params["endpoint"] == view.vsphere_production
    assert "manifest" not in by["snapshot"].title  # the DR root keeps production's own manifest
    assert by["seal"].params["datasets"] == [f"rp1/iscsi/lun{i}" for i in range(3)]
    assert "esxdr failback core --planned" in by["publish-handoff"].reason


def test_failback_in_pull_mode_pulls_dr_s_hand_off_and_presents_at_home():
    from test_runbook import HOST, manifest, snap

    view = rb.reversed_group(group())
    m = manifest()  # production's own, its LUs on the DR datasets (as Failover._home_manifest renames them)
    for lu in m.logical_units:
        lu.backing = replace(lu.backing, dataset=group().dr_dataset(lu.backing.dataset))
    prod = {"sp1/iscsi": Dataset("sp1/iscsi", "filesystem", 1, mountpoint="/mnt/sp1/iscsi")}
    for i in range(3):
        prod[f"sp1/iscsi/lun{i}"] = Dataset(f"sp1/iscsi/lun{i}", "filesystem", 2, mountpoint=f"/mnt/sp1/iscsi/lun{i}",
                                            snapshots=[snap(f"sp1/iscsi/lun{i}", "esxdr_core_b", 20)])
    host = replace(HOST, name="esx-prod", port_groups={"Prod-LAN": ("vSwitch0", 10)})
    book = rb.plan_failover(inputs(group=view, manifest=m, dr_obs=prod, host=host, mode="planned", pull=True,
                                   handoff=HANDED, kind="failback"))
    # No shutdown and no unpresent from production: DR did both (and sealed itself) when it handed back.
    assert ids(book)[:3] == ["replicate", "stop-replication", "guard"]
    assert book.steps[0].params == {"pull": True, "handoff": HANDED}
    assert [(s.params["dataset"], s.params["snapshot"]) for s in book.steps if s.kind == "promote"] == \
        [(f"sp1/iscsi/lun{i}", HANDED) for i in range(3)]
    assert book.snapshot == HANDED and book.kind == "failback"


def _site(**servers):
    g = group()
    return SimpleNamespace(path="site.yaml", protection_groups={g.name: g}, state_dir="/nonexistent", group=lambda n: g,
                           storage_server=lambda n: servers[n])


def test_dr_hand_back_is_for_pull_mode_only():
    from esxdr.recovery.handoff import HandOff

    push = _site(ss1=SimpleNamespace(behind_serve=False, pulls=False, local=True, name="ss1"),
                 ss2=SimpleNamespace(behind_serve=False, pulls=False, local=True, name="ss2"))
    with pytest.raises(UsageError) as e:
        HandOff(push, "core", reverse=True)
    assert "failback in pull mode" in e.value.message and "esxdr failback core --planned" in e.value.hint


def test_reprotect_in_pull_mode_runs_on_production_only():
    from esxdr.recovery.reprotect import Reprotect

    dr_view = _site(ss1=SimpleNamespace(behind_serve=True, pulls=False, local=False, name="ss1"),
                    ss2=SimpleNamespace(behind_serve=True, pulls=False, local=False, name="ss2"))
    with pytest.raises(UsageError) as e:
        Reprotect(dr_view, "core", pull=True)
    assert "runs on production" in e.value.message


class _Sides:
    def __init__(self, src_obs, dst_obs):
        self.obs = {"ss1": src_obs, "ss2": dst_obs}
        self.inherited: list[tuple[str, str]] = []

    def open(self, site, name, **kw):
        obs, sides = self.obs[name], self

        class Z:
            def observe(self, roots):
                return obs

            def inherit(self, ds, prop):
                sides.inherited.append((ds, prop))

        return SimpleNamespace(zfs=Z(), transport=SimpleNamespace(close=lambda: None))


def _engine(tmp_path, monkeypatch, *, prod_has: bool, prod_live: bool, same_guid: bool = True):
    import json

    from esxdr import replication
    from esxdr.replication import Engine, Options, failover_marker

    g = group()
    dr = {g.dr_dataset(ds): Dataset(g.dr_dataset(ds), "filesystem", 1, readonly=True,
                                    snapshots=[Snapshot(g.dr_dataset(ds), HANDED, 500 + i, 10, 1)])
          for i, ds in enumerate(g.datasets)}
    prod = {ds: Dataset(ds, "filesystem", 2, readonly=not prod_live,
                        snapshots=[Snapshot(ds, HANDED, (500 if same_guid else 900) + i, 12, 1)] if prod_has else [])
            for i, ds in enumerate(g.datasets)}
    sides = _Sides(prod, dr)
    monkeypatch.setattr(replication.sides, "open_side", sides.open)
    marker = failover_marker(str(tmp_path), g.name)
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"group": g.name, "by": "failback-hand-off", "snapshot": HANDED}))
    e = Engine.__new__(Engine)
    e.site, e.group, e.opts = SimpleNamespace(state_dir=str(tmp_path)), g, Options(pull=True)
    return e, marker, sides


def test_dr_s_pull_resumes_by_itself_once_production_is_home(tmp_path, monkeypatch):
    e, marker, sides = _engine(tmp_path, monkeypatch, prod_has=True, prod_live=True)
    assert e._home_again(marker) is True
    assert not marker.exists() and sides.inherited == [("rp1/iscsi", rb.HANDOFF_PROP)]


@pytest.mark.parametrize("kw, why", [
    ({"prod_has": False, "prod_live": False}, "lacks that snapshot"),      # production has not pulled it yet
    ({"prod_has": True, "prod_live": False}, "is not live"),               # pulled, not promoted (reprotected only)
    ({"prod_has": True, "prod_live": True, "same_guid": False}, "lacks"),  # a snapshot of that name, not DR's
])
def test_dr_s_pull_stays_stopped_until_production_is_home(tmp_path, monkeypatch, kw, why):
    e, marker, sides = _engine(tmp_path, monkeypatch, **kw)
    with pytest.raises(ConflictError) as err:
        e._home_again(marker)
    assert "not completed its failback" in err.value.message and "esxdr failback core --planned" in err.value.hint
    assert marker.exists() and sides.inherited == []


def test_failback_in_pull_mode_refuses_until_dr_handed_back():
    view = rb.reversed_group(group())
    with pytest.raises(ConflictError) as e:
        rb.plan_failover(inputs(group=view, mode="planned", pull=True, handoff=None, kind="failback",
                                dr_obs={f"sp1/iscsi/lun{i}": Dataset(f"sp1/iscsi/lun{i}", "filesystem", 2)
                                        for i in range(3)}))
    assert "has not handed core back" in e.value.message and "failback core --planned --hand-off" in e.value.hint


def test_the_way_home_with_pull_needs_dr_behind_its_send_only_account():
    from esxdr.recovery import Failover, Reprotect

    local_dr = _site(ss1=SimpleNamespace(behind_serve=False, pulls=False, local=True, name="ss1"),
                     ss2=SimpleNamespace(behind_serve=False, pulls=False, local=True, name="ss2"))
    for make in (lambda: Failover(local_dr, "core", reverse=True, pull=True),
                 lambda: Reprotect(local_dr, "core", pull=True)):
        with pytest.raises(UsageError) as e:
            make()
        assert "send-only account" in e.value.message and "local: true" in e.value.message
        assert "authorized-line --home" in e.value.hint
    with pytest.raises(UsageError) as e:
        Failover(local_dr, "core", pull=True)  # a failover's pull mode follows from the site file
    assert "--pull is for the way home" in e.value.message


def test_a_pull_mode_summary_shows_the_outage_since_the_hand_off():
    from esxdr.recovery.failover import summary
    from esxdr.recovery.record import FailoverRecord

    rec = FailoverRecord(kind="failover", group="core", site="t", started=100.0, mode="planned",
                         snapshot=HANDED, snapshot_created=90, last_heartbeat=106.0, outage_at_least_seconds=16.0)
    text = summary(rec)
    assert "RTO 6s (outage since the hand-off ≥ 16s)" in text and "RPO 0s" in text
    assert rec.to_dict()["outage_at_least_seconds"] == 16.0
    push = FailoverRecord(kind="failover", group="core", site="t", started=100.0, mode="planned",
                          snapshot=HANDED, snapshot_created=90, last_heartbeat=106.0)
    assert "outage" not in summary(push) and push.to_dict()["outage_at_least_seconds"] is None
