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
    from esxdr import failover, replication

    g, obs = _source(value, **kw)
    monkeypatch.setattr(replication, "open_side", lambda site, name, **k: _Side(obs))
    d = failover.Failover.__new__(failover.Failover)
    d.site, d.g = SimpleNamespace(), g
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
    from esxdr.failover import HandOff

    g = group()
    site = SimpleNamespace(path="site.yaml", protection_groups={g.name: g}, state_dir="/nonexistent",
                           group=lambda n: g,
                           storage_server=lambda n: SimpleNamespace(pulls=False, behind_serve=False, name=n))
    with pytest.raises(UsageError) as e:
        HandOff(site, "core")
    assert "does not pull" in e.value.message and "esxdr failover core --planned" in e.value.hint


def test_a_snapshot_newer_than_the_hand_off_is_refused_before_pulling(monkeypatch):
    from esxdr import failover, replication

    g, obs = _source(HANDED)
    lun1 = obs["sp1/iscsi/lun1"]
    lun1.snapshots.append(Snapshot(lun1.name, "manual", 999, 11, 2))
    monkeypatch.setattr(replication, "open_side", lambda site, name, **k: _Side(obs))
    d = failover.Failover.__new__(failover.Failover)
    d.site, d.g = SimpleNamespace(), g
    with pytest.raises(ConflictError) as e:
        failover.Failover._handoff(d)
    assert "sp1/iscsi/lun1@manual" in e.value.message and f"newer than its hand-off @{HANDED}" in e.value.message
