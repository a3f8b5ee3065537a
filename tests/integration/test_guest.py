"""`esxdr guest` against esxsim: customization events, BootExecute read and fixed for real through
guest operations (StartProgramInGuest + file transfers over SOAP/HTTP), and the refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_consistency import make_vm, start_prod_lab
from vsphere_fixtures import PASSWORD_ENV, ROOT

pytestmark = pytest.mark.integration
pytest.importorskip("pyVmomi")
pytest_plugins = ["conftest_esxsim"]

ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")
GUEST_PW = "Guest-pw-1"
WIN = "windows9Server64Guest"


@pytest.fixture(scope="module")
def world(esxsim_binary, tmp_path_factory):
    lab = start_prod_lab(esxsim_binary, tmp_path_factory.mktemp("guest"), luns=(1,))
    pw = {"esxsim.guestPassword": GUEST_PW}
    with lab.connect() as s:
        make_vm(s, "win-stuck", "ds1", guest_id=WIN, extra={
            **pw, "esxsim.customization": "stuck",
            "esxsim.bootExecute": "autocheck autochk *|sysprepDecrypter.exe|MyBootTool.exe /scan"})
        make_vm(s, "win-plain", "ds1", guest_id=WIN, extra={**pw, "esxsim.customization": "stuck"})
        make_vm(s, "win-ok", "ds1", guest_id=WIN, extra={**pw, "esxsim.customization": "succeeded"})
        make_vm(s, "lnx-stuck", "ds1", extra={**pw, "esxsim.customization": "stuck"})
        make_vm(s, "win-off", "ds1", guest_id=WIN, extra=pw, power_on=False)
    base = lab.esx.url.removesuffix("/sdk")
    # customization events are posted after power-on (succeeded after the heartbeat delay)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not guest_state(base, "win-ok")["customization_posted"]:
        time.sleep(0.1)
    time.sleep(0.5)
    yield lab, base
    lab.stop()


def guest_state(base: str, vm: str) -> dict:
    with urllib.request.urlopen(f"{base}/esxsim/guest?vm={vm}") as r:
        return json.loads(r.read())


def boot_execute(base: str, vm: str) -> list[str] | None:
    reg = guest_state(base, vm)["registry"]
    key = r"hkey_local_machine\system\currentcontrolset\control\session manager"
    v = (reg.get(key) or {}).get("bootexecute")
    return v["data"] if v else None


def esxdr(lab, *args, password: str | None = GUEST_PW):
    env = {**os.environ, PASSWORD_ENV: lab.esx.password}
    env.pop("ESXDR_GUEST_PASSWORD", None)
    if password is not None:
        env["ESXDR_GUEST_PASSWORD"] = password
    return subprocess.run([ESXDR, "--site", str(lab.site), *args], capture_output=True, text=True, timeout=120,
                          env=env)


def test_check_finds_the_stuck_vms_and_confirms_in_the_guest(world):
    lab, _ = world
    p = esxdr(lab, "guest", "check", "--json")
    assert p.returncode == 5, p.stdout + p.stderr
    out = json.loads(p.stdout)
    rows = {r["vm"]: r for r in out["vms"]}
    assert rows["win-ok"]["state"] == "succeeded"
    assert rows["win-stuck"]["state"] == "stuck"
    assert rows["win-stuck"]["sysprep_decrypter"] is True
    assert rows["win-stuck"]["boot_execute"] == ["autocheck autochk *", "sysprepDecrypter.exe", "MyBootTool.exe /scan"]
    assert rows["lnx-stuck"]["state"] == "stuck" and "not Windows" in rows["lnx-stuck"]["confirmation"]
    assert {"win-stuck", "lnx-stuck"} <= set(out["stuck"]) and "win-ok" not in out["stuck"]


def test_check_without_credentials_uses_events_only(world):
    lab, _ = world
    p = esxdr(lab, "guest", "check", password=None)
    assert p.returncode == 5
    assert "no guest credentials" in p.stdout and "win-stuck" in p.stdout


def test_fix_dry_run_shows_before_after_and_changes_nothing(world):
    lab, base = world
    before = boot_execute(base, "win-stuck")
    p = esxdr(lab, "guest", "fix-boot-loop", "win-stuck", "--dry-run")
    assert p.returncode == 0, p.stderr
    assert "BootExecute before:" in p.stdout and "sysprepDecrypter.exe" in p.stdout
    assert "dry run, not written" in p.stdout
    after_block = p.stdout.split("BootExecute after", 1)[1]
    assert "MyBootTool.exe /scan" in after_block and "sysprepDecrypter" not in after_block.split("removed:")[0]
    assert boot_execute(base, "win-stuck") == before
    assert not guest_state(base, "win-stuck")["files"], "temporary files left in the guest"


def test_fix_removes_only_the_decrypter_entry_and_reboots(world):
    lab, base = world
    boots = guest_state(base, "win-stuck")["boots"]
    p = esxdr(lab, "guest", "fix-boot-loop", "win-stuck", "--reboot", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["removed"] == ["sysprepDecrypter.exe"]
    assert out["after"] == ["autocheck autochk *", "MyBootTool.exe /scan"]
    assert out["verified"] == out["after"] and out["rebooted"] is True
    assert boot_execute(base, "win-stuck") == ["autocheck autochk *", "MyBootTool.exe /scan"]
    deadline = time.monotonic() + 5
    while guest_state(base, "win-stuck")["boots"] == boots and time.monotonic() < deadline:
        time.sleep(0.05)
    st = guest_state(base, "win-stuck")
    assert st["boots"] == boots + 1 and st["sysprep_decrypter_runs"] == 0
    assert not st["files"]
    # idempotent: a second run has nothing to change
    p2 = esxdr(lab, "guest", "fix-boot-loop", "win-stuck", "--json")
    assert json.loads(p2.stdout)["changes"] is False


def test_fix_with_only_the_decrypter_restores_the_default_and_runs_sysprep(world):
    lab, base = world
    assert boot_execute(base, "win-plain") == ["autocheck autochk *", "sysprepDecrypter.exe"]
    p = esxdr(lab, "guest", "fix-boot-loop", "win-plain", "--sysprep", "--json")
    assert p.returncode == 0, p.stderr
    assert boot_execute(base, "win-plain") == ["autocheck autochk *"]
    assert guest_state(base, "win-plain")["sysprep_runs"] == 1


def test_refuses_a_linux_guest(world):
    lab, _ = world
    p = esxdr(lab, "guest", "fix-boot-loop", "lnx-stuck")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "not Windows" in p.stderr


def test_refuses_without_running_tools(world):
    lab, _ = world
    p = esxdr(lab, "guest", "fix-boot-loop", "win-off")
    assert p.returncode == 3, p.stdout + p.stderr
    assert "poweredOff" in p.stderr


def test_wrong_guest_password_is_a_clear_error(world):
    lab, _ = world
    p = esxdr(lab, "guest", "fix-boot-loop", "win-ok", "--dry-run", password="wrong")
    assert p.returncode == 4, p.stdout + p.stderr
    assert "InvalidGuestLogin" in p.stderr and "wrong" not in p.stderr.replace("wrong user", "")


def test_unknown_vm_suggests_names(world):
    lab, _ = world
    p = esxdr(lab, "guest", "fix-boot-loop", "win-stuk")
    assert p.returncode == 2
    assert "win-stuck" in p.stderr
