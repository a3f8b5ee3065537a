"""`esxdr guest` replayed from a cassette recorded against esxsim: customization events read through
an EventHistoryCollector, BootExecute read and rewritten through guest operations (StartProgramInGuest,
ListProcessesInGuest, file transfers over HTTP). Recording: scripts/record-cassettes."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_vsphere_cassettes import CASSETTES, RECORD, ROOT, cassette, params, session_for  # noqa: E402

pytest.importorskip("pyVmomi")

# The guest password of the recording; scripts/record-cassettes sets a random one and checks that
# it appears nowhere in cassettes/ afterwards.
GUEST_PASSWORD = os.environ.get("ESXDR_RECORD_GUEST_PASSWORD", "guest-recording-pw")
WIN = "windows9Server64Guest"


@pytest.fixture(scope="module")
def guest_live():
    """Recording only: esxsim with a datastore and VMs whose customization got stuck."""
    if not RECORD:
        yield None
        return
    import tempfile

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from test_consistency import make_vm, start_prod_lab

    from esxdr.lab import esxsim

    lab = start_prod_lab(esxsim.build(ROOT), Path(tempfile.mkdtemp(prefix="esxdr-guest-cassettes-")), luns=(1,))
    pw = {"esxsim.guestPassword": GUEST_PASSWORD}
    with lab.connect() as s:
        make_vm(s, "win-stuck", "ds1", guest_id=WIN, extra={
            **pw, "esxsim.customization": "stuck",
            "esxsim.bootExecute": "autocheck autochk *|sysprepDecrypter.exe|MyBootTool.exe /scan"})
        make_vm(s, "win-ok", "ds1", guest_id=WIN, extra={**pw, "esxsim.customization": "succeeded"})
        make_vm(s, "lnx", "ds1", extra=pw)
    import time

    time.sleep(1.0)  # the succeeded event follows the heartbeat delay
    yield lab
    lab.stop()


def test_guest_check_and_fix_boot_loop(guest_live):
    from esxdr import guest as G
    from esxdr.vsphere import guest as VG
    from esxdr.vsphere.guest import GuestCredentials

    p = params("guest_check_fix", guest_live, url=guest_live.esx.url if guest_live else None)
    url = p["url"] if RECORD else "http://127.0.0.1:9/sdk"
    creds = GuestCredentials("Administrator", GUEST_PASSWORD if RECORD else "replayed")
    with cassette("guest_check_fix"):
        s = session_for(url, guest_live.esx.password if guest_live else "replayed")
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
        assert GUEST_PASSWORD not in text, "the guest password was recorded"


def test_refusal_needs_no_guest_login():
    """Non-Windows and tools-not-running refusals are decided from inventory alone."""
    from esxdr.errors import ConflictError, UsageError
    from esxdr.vsphere.guest import GuestVm, require_guest_ops

    with pytest.raises(UsageError, match="not Windows"):
        require_guest_ops(GuestVm("lnx", "vm-1", guest_id="otherLinux64Guest", power_state="poweredOn",
                                  tools_running=True))
    with pytest.raises(ConflictError, match="VMware Tools are not running"):
        require_guest_ops(GuestVm("w", "vm-2", guest_id=WIN, power_state="poweredOn", tools_running=False))
