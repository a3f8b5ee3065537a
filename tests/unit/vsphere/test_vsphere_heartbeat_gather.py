"""How a power-on batch gathers guest heartbeats: few WaitForUpdatesEx for a wave of guests that
come up over time, the last one still seen promptly (esxdr.vsphere.vms.heartbeat_gather).

The host is the fake pyVmomi stub of test_vsphere_questions with one change: each guest's
heartbeat turns green a given time after its power-on, as a real guest's does when its tools
start, instead of at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from test_vsphere_questions import FakeHost, FakeVm, session_on

from esxdr.vsphere import vms as vv


@dataclass
class SlowGuests(FakeHost):
    """Guest i's heartbeat turns green ``delays[i]`` seconds after its power-on."""

    delays: dict[str, float] = field(default_factory=dict)
    powered_at: dict[str, float] = field(default_factory=dict)
    green_at: dict[str, float] = field(default_factory=dict)  # when each was first reported green

    def _boot(self, vm: FakeVm) -> None:
        super()._boot(vm)
        vm.heartbeat = "gray"
        self.powered_at[vm.moid] = time.monotonic()

    def _value(self, obj: Any, path: str) -> Any:
        if path == "guestHeartbeatStatus" and obj._moId in self.powered_at:
            if time.monotonic() - self.powered_at[obj._moId] >= self.delays[obj._moId]:
                self.green_at.setdefault(obj._moId, time.monotonic())
                return "green"
            return "gray"
        return super()._value(obj, path)


def boot_wave(delays: list[float], settle: float) -> tuple[SlowGuests, float, float]:
    host = SlowGuests()
    vms = []
    for i, d in enumerate(delays):
        vms.append(host.add(FakeVm(f"vm-{i}")))
        host.delays[f"vm-{i}"] = d
    t0 = time.monotonic()
    vv.boot(session_on(host), vms, {}, uuid_answer="moved", timeout=10, settle=settle)
    done = time.monotonic()
    return host, done - t0, done - t0 - max(delays)


def test_the_gather_is_a_quarter_of_what_the_wave_still_needs_within_bounds():
    g = vv.heartbeat_gather
    assert g(0.2, 30, 0, 0.0) == 0.4  # no guest green yet: the first arrivals may be a burst
    assert g(0.2, 20, 10, 0.0) == 0.4  # the first greens, just seen: no rate yet
    assert g(0.2, 20, 10, 2.0) == 1.0  # 5 guests/s, 20 to go: 4 s still, a quarter of it
    assert g(0.2, 60, 7, 10.0) == 0.2 * vv.HEARTBEAT_GATHER_MAX  # a long wave: capped at 2 s
    assert g(0.2, 1, 29, 3.0) == 0.4  # its end: the last heartbeat is seen promptly
    assert g(0, 20, 10, 2.0) == 0.0  # settle 0 (tests, power_on without heartbeats): no sleeping


def test_a_wave_of_guests_costs_fewer_waits_and_its_end_is_still_seen_promptly():
    """40 guests green one after another over 1.2 s: a fixed gather of 2 x settle (0.04 s) wakes
    18 times here; gathering by what the wave still needs wakes about 11 times, and the
    last heartbeat is seen well within one longest gather."""
    settle = 0.02
    host, _took, late = boot_wave([i * 0.03 for i in range(40)], settle)
    assert len(host.green_at) == 40
    assert host.waits <= 14, host.waits
    assert late <= settle * vv.HEARTBEAT_GATHER_MAX + 0.15, late


def test_a_burst_of_heartbeats_ends_the_batch_at_once():
    """Every guest green at the same moment: no rate seen before, so no long gather."""
    settle = 0.02
    host, _took, late = boot_wave([0.1] * 30, settle)
    assert len(host.green_at) == 30
    assert late <= settle * 2 + 0.15, late
