"""The vSphere adapter replayed from cassettes recorded against esxsim (no Go, no tgtd needed).

Recording (scripts/record-cassettes sets ESXDR_RECORD_CASSETTES=1) starts tgtd + esxsim, runs each
scenario once into a fresh cassettes/<name>.yaml plus cassettes/<name>.json (the inputs the
scenario needs to replay: portal, expected LUNs). Replay is strict (vcr_kit.cassette): a request
the cassette does not hold fails, and so does a recorded interaction left unplayed — re-record,
never hand-edit.
"""

from __future__ import annotations

import pytest
from vcr_kit import RECORD, cassette, desired_for, host_bootstrap, params, replay_url, session_for

pytest.importorskip("pyVmomi")


def test_host_bootstrap_then_noop(live):
    host_bootstrap(live)


def test_verify_storage(live):
    from esxdr.plan.storage import ExpectedLun
    from esxdr.vsphere import host as H
    from esxdr.vsphere import storage as ST

    expected = None
    if RECORD:
        from esxdr.model import manifest as mf

        with session_for(live.esx.url, live.esx.password) as s:  # not recorded: bring the host up
            H.ensure(s, desired_for(live.portal))
        expected = [e.__dict__ for e in ST.expected_luns(mf.load(live.manifest()))]
    p = params("verify_storage", url=live.esx.url if live else None, expected=expected)
    with cassette("verify_storage"):
        s = session_for(replay_url(p), live.esx.password if live else "replayed")
        result = ST.verify_storage(s, None, [ExpectedLun(**e) for e in p["expected"]])
        s.close()
    assert result.report.ok, result.report.render()
    assert [c.datastore for c in result.report.checks] == ["ds1", "prod-ds2"]
    assert s.requests <= 10
