"""A transient failure is retried after re-observing DR; a re-observation that fails over a network
still down is one more attempt, not the end of the run."""

from __future__ import annotations

import types

import pytest

from esxdr.errors import TransientError
from esxdr.model import Dataset, Snapshot
from esxdr.plan.replication import SendFull
from esxdr.replication import engine as eng
from esxdr.replication.result import DatasetResult, Options


def _snap(name: str, guid: int, txg: int) -> Snapshot:
    return Snapshot(dataset="sp1/iscsi/lun0", name=name, guid=guid, createtxg=txg, creation=txg, referenced=1 << 20)


def _engine(observe, apply_results, retries: int = 5):
    e = eng.Engine.__new__(eng.Engine)
    e.opts = Options(retries=retries, backoff=0.0)
    e.group = types.SimpleNamespace(incremental="intermediate", bookmarks=False)
    e.src = types.SimpleNamespace(zfs=types.SimpleNamespace(observe=lambda names: {}))
    e.dst = types.SimpleNamespace(zfs=types.SimpleNamespace(observe=observe))
    applied = []

    def apply(action, r, compression):
        outcome = apply_results.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        applied.append(action)
        return outcome

    e._apply = apply
    return e, applied


def test_a_reobservation_over_a_dead_network_is_one_more_attempt():
    s1 = _snap("a", 11, 1)
    source = Dataset(name="sp1/iscsi/lun0", type="filesystem", guid=1, snapshots=[s1])
    calls = {"n": 0}

    def observe(names):
        calls["n"] += 1
        if calls["n"] <= 2:  # the network is still down for the first two re-observations
            raise TransientError("ss2: cannot reach 198.18.0.2:22 over SSH: Network is unreachable")
        return {}  # DR has nothing yet: the full stream again

    e, applied = _engine(observe, [TransientError("stream cut"), 4096])
    r = DatasetResult(source=source.name, dest="rp1/iscsi/lun0", actions=[SendFull("send-full", "rp1/iscsi/lun0", "no DR copy", source=s1)])
    e._replicate_one(r, source, None)
    assert r.retries == 3 and r.bytes == 4096 and r.error is None
    assert len(applied) == 1 and isinstance(applied[0], SendFull)


def test_the_run_gives_up_after_its_retries():
    s1 = _snap("a", 11, 1)
    source = Dataset(name="sp1/iscsi/lun0", type="filesystem", guid=1, snapshots=[s1])

    def observe(names):
        raise TransientError("ss2: cannot reach 198.18.0.2:22 over SSH: Network is unreachable")

    e, _ = _engine(observe, [TransientError("stream cut")], retries=2)
    r = DatasetResult(source=source.name, dest="rp1/iscsi/lun0", actions=[SendFull("send-full", "rp1/iscsi/lun0", "no DR copy", source=s1)])
    with pytest.raises(TransientError, match="unreachable"):
        e._replicate_one(r, source, None)
    assert r.retries == 3 and r.error and "unreachable" in r.error
