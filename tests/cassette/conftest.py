"""The live labs the cassettes are recorded from (recording only; a replay gets None).

The helpers every cassette test uses are in vcr_kit.py (a module, so tests import them by name).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import pytest
from vcr_kit import CHAP_NAME, GUEST_PASSWORD_ENV, RECORD, ROOT, WIN, chap_secret, note_secret


@pytest.fixture(scope="module")
def live():
    """A DR lab (tgtd + esxsim) with two VMFS LUNs behind a target that demands CHAP."""
    if not RECORD:
        yield None
        return
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from vsphere_fixtures import start_lab

    from esxdr.lab import esxsim

    lab = start_lab(Path(tempfile.mkdtemp(prefix="esxdr-cassettes-")), binary=esxsim.build(ROOT))
    try:
        note_secret(lab.esx.password)
        lab.add_lun(1)
        lab.add_lun(2, label="prod-ds2")
        # The LUNs are only seen when the host logs in with the secret esxdr set.
        lab.tgtd.require_chap(1, CHAP_NAME, chap_secret())
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="module")
def guest_live():
    """esxsim with a datastore and VMs whose customization got stuck."""
    if not RECORD:
        yield None
        return
    import os

    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    from test_consistency import make_vm, start_prod_lab

    from esxdr.lab import esxsim

    password = os.environ.get(GUEST_PASSWORD_ENV) or os.urandom(8).hex()
    os.environ[GUEST_PASSWORD_ENV] = password
    note_secret(password)
    lab = start_prod_lab(esxsim.build(ROOT), Path(tempfile.mkdtemp(prefix="esxdr-guest-cassettes-")), luns=(1,))
    try:
        note_secret(lab.esx.password)
        pw = {"esxsim.guestPassword": password}
        with lab.connect() as s:
            make_vm(s, "win-stuck", "ds1", guest_id=WIN, extra={
                **pw, "esxsim.customization": "stuck",
                "esxsim.bootExecute": "autocheck autochk *|sysprepDecrypter.exe|MyBootTool.exe /scan"})
            make_vm(s, "win-ok", "ds1", guest_id=WIN, extra={**pw, "esxsim.customization": "succeeded"})
            make_vm(s, "lnx", "ds1", extra=pw)
        time.sleep(1.0)  # the succeeded event follows the heartbeat delay
        yield lab
    finally:
        lab.stop()
