"""The pause point: esxdr waits at a named checkpoint until the test lets it go on."""

from __future__ import annotations

import threading
import time

import pytest

from esxdr import faults


def test_a_pause_holds_the_run_at_its_point_until_the_file_goes(tmp_path, monkeypatch):
    monkeypatch.setattr(faults, "_paused", set())
    flag = tmp_path / "paused"
    monkeypatch.setenv("ESXDR_FAULT_PAUSE", "failover-after-replicate")
    monkeypatch.setenv("ESXDR_FAULT_PAUSE_FILE", str(flag))
    faults.checkpoint("failover-after-guard")  # another point: no pause, no file
    assert not flag.exists()
    passed = threading.Event()

    def run():
        faults.checkpoint("failover-after-replicate")
        passed.set()

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 5
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert flag.read_text() == "failover-after-replicate\n"
    assert not passed.wait(0.3)  # still held
    flag.unlink()
    assert passed.wait(5)
    t.join()
    faults.checkpoint("failover-after-replicate")  # the same point again (a step's kind and id): no pause
    assert not flag.exists()


def test_a_pause_nobody_releases_ends_as_a_failure(tmp_path):
    with pytest.raises(faults.InjectedFailure, match="never removed"):
        faults._pause("mid-stream", str(tmp_path / "paused"), timeout=0.2)
