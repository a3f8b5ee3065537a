"""`esxdr guest` replayed from a cassette recorded against esxsim: customization events read through
an EventHistoryCollector, BootExecute read and rewritten through guest operations (StartProgramInGuest,
ListProcessesInGuest, file transfers over HTTP). Recording: scripts/record-cassettes."""

from __future__ import annotations

import os

import pytest
from vcr_kit import CASSETTES, GUEST_PASSWORD_ENV, RECORD, WIN, cassette, params, replay_url, session_for

pytest.importorskip("pyVmomi")


def test_guest_check_and_fix_boot_loop(guest_live):
    from esxdr.recovery import guest as G
    from esxdr.vsphere import guest as VG
    from esxdr.vsphere.guest import GuestCredentials

    p = params("guest_check_fix", url=guest_live.esx.url if guest_live else None)
    guest_password = os.environ[GUEST_PASSWORD_ENV] if RECORD else "replayed"
    creds = GuestCredentials("Administrator", guest_password)
    with cassette("guest_check_fix"):
        s = session_for(replay_url(p), guest_live.esx.password if guest_live else "replayed")
        status = G.customization_status(VG.customization_events(s))
        vms = VG.read_vms(s)
        entries, _ = G.read_boot_execute(VG.GuestOps(s, vms["win-stuck"], creds))
        dry = G.fix_boot_loop(s, "win-stuck", creds, dry_run=True)
        real = G.fix_boot_loop(s, "win-stuck", creds)
        again = G.fix_boot_loop(s, "win-stuck", creds, dry_run=True)
        s.close()
    assert {k: v.state for k, v in status.items()} == {"win-stuck": "stuck", "win-ok": "succeeded"}
    assert vms["win-stuck"].windows and not vms["lnx"].windows
    assert entries == ["autocheck autochk *", "sysprepDecrypter.exe", "MyBootTool.exe /scan"]
    assert dry.plan.after == ("autocheck autochk *", "MyBootTool.exe /scan") and dry.after_read is None
    assert real.after_read == ["autocheck autochk *", "MyBootTool.exe /scan"]
    assert not again.plan.changes
    if RECORD:
        text = (CASSETTES / "guest_check_fix.yaml").read_text()
        assert guest_password not in text, "the guest password was recorded"


def test_refusal_needs_no_guest_login():
    """Non-Windows and tools-not-running refusals are decided from inventory alone."""
    from esxdr.errors import ConflictError, UsageError
    from esxdr.vsphere.guest import GuestVm, require_guest_ops

    with pytest.raises(UsageError, match="not Windows"):
        require_guest_ops(GuestVm("lnx", "vm-1", guest_id="otherLinux64Guest", power_state="poweredOn",
                                  tools_running=True))
    with pytest.raises(ConflictError, match="VMware Tools are not running"):
        require_guest_ops(GuestVm("w", "vm-2", guest_id=WIN, power_state="poweredOn", tools_running=False))
