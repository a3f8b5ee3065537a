"""BootExecute parsing and editing, customization status from events, sysprep dirs, credentials."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from esxdr.errors import UsageError
from esxdr.recovery import guest as G

KEY = r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Control\Session Manager"


def reg_out(row: str) -> str:
    return f"\r\n{KEY}\r\n    {row}\r\n\r\n"


@pytest.mark.parametrize("text,expected", [
    (reg_out(r"BootExecute    REG_MULTI_SZ    autocheck autochk *"), ["autocheck autochk *"]),
    (reg_out(r"BootExecute    REG_MULTI_SZ    autocheck autochk *\0sysprepDecrypter.exe"),
     ["autocheck autochk *", "sysprepDecrypter.exe"]),
    (reg_out(r"BootExecute    REG_MULTI_SZ    autocheck autochk *\0sysprepDecrypter.exe\0MyTool.exe /a"),
     ["autocheck autochk *", "sysprepDecrypter.exe", "MyTool.exe /a"]),
    (reg_out(r"bootexecute    REG_MULTI_SZ    autocheck autochk *\0\0"), ["autocheck autochk *"]),  # case, trailing \0
    (reg_out("BootExecute    REG_MULTI_SZ    "), []),  # present but empty
    (reg_out("BootExecute    REG_MULTI_SZ"), []),
    (reg_out("BootExecute    REG_SZ    autocheck autochk *"), ["autocheck autochk *"]),
    ("ERROR: The system was unable to find the specified registry key or value.\r\n", None),
    (reg_out("PendingFileRenameOperations    REG_MULTI_SZ    x"), None),  # another value only
    ("", None),
])
def test_parse_reg_query(text, expected):
    assert G.parse_reg_query(text) == expected


@pytest.mark.parametrize("entry,expected", [
    ("sysprepDecrypter.exe", True),
    ("SYSPREPDECRYPTER.EXE", True),
    ("sysprepDecrypter", True),
    (r"C:\sysprep\sysprepDecrypter.exe /x", True),
    ("autocheck autochk *", False),
    ("sysprepDecrypterHelper.exe", False),
    ("autocheck sysprepDecrypter.exe", False),  # an argument, not the program
    ("", False),
])
def test_is_decrypter(entry, expected):
    assert G.is_decrypter(entry) is expected


@pytest.mark.parametrize("before,after,removed,changes", [
    (["autocheck autochk *", "sysprepDecrypter.exe"], ("autocheck autochk *",), ("sysprepDecrypter.exe",), True),
    (["sysprepDecrypter.exe"], G.DEFAULT_BOOT_EXECUTE, ("sysprepDecrypter.exe",), True),
    (["autocheck autochk *", "sysprepDecrypter.exe", "MyTool.exe /a"], ("autocheck autochk *", "MyTool.exe /a"),
     ("sysprepDecrypter.exe",), True),
    (["MyTool.exe", "SysprepDecrypter", "autocheck autochk /p \\??\\C:"], ("MyTool.exe", "autocheck autochk /p \\??\\C:"),
     ("SysprepDecrypter",), True),  # order kept, other entries untouched
    (["autocheck autochk *"], ("autocheck autochk *",), (), False),
    ([], (), (), False),
    (None, G.DEFAULT_BOOT_EXECUTE, (), True),  # missing value: default restored
])
def test_plan_boot_execute(before, after, removed, changes):
    p = G.plan_boot_execute(before)
    assert p.after == after
    assert p.removed == removed
    assert p.changes is changes


def test_plan_is_idempotent():
    first = G.plan_boot_execute(["autocheck autochk *", "sysprepDecrypter.exe", "MyTool.exe"])
    assert not G.plan_boot_execute(first.after).changes


def test_reg_add_command_quotes_and_escapes():
    cmd = G.reg_add_command(["autocheck autochk *", "Tool.exe 50%"])
    assert cmd == (r'reg add "HKLM\SYSTEM\CurrentControlSet\Control\Session Manager" /v BootExecute '
                   r'/t REG_MULTI_SZ /d "autocheck autochk *\0Tool.exe 50%%" /f')
    assert G.reg_add_script(["a"]).startswith("@echo off\r\n")


@pytest.mark.parametrize("bad", ['say "hi"', "two\nlines", r"x\0y", "  "])
def test_reg_add_refuses_unsafe_entries(bad):
    with pytest.raises(UsageError):
        G.reg_add_command(["autocheck autochk *", bad])


T = datetime(2026, 11, 1, tzinfo=UTC)


def ev(vm, kind, minutes, reason=""):
    types = {"started": "CustomizationStartedEvent", "succeeded": "CustomizationSucceeded",
             "failed": "CustomizationSysprepFailed"}
    return SimpleNamespace(vm=vm, kind=kind, type=types[kind], created=T + timedelta(minutes=minutes),
                           reason=reason, message="", log_location="C:\\log")


@pytest.mark.parametrize("events,expected", [
    ([ev("a", "started", 0)], {"a": "stuck"}),
    ([ev("a", "started", 0), ev("a", "succeeded", 5)], {"a": "succeeded"}),
    ([ev("a", "started", 0), ev("a", "failed", 5, "sysprep")], {"a": "failed"}),
    ([ev("a", "started", 0), ev("a", "succeeded", 5), ev("a", "started", 60)], {"a": "stuck"}),  # re-run hangs
    ([ev("a", "started", 0), ev("b", "started", 1), ev("b", "succeeded", 2)], {"a": "stuck", "b": "succeeded"}),
    ([ev("a", "failed", 3)], {"a": "failed"}),  # start fell out of the event history
    ([], {}),
])
def test_customization_status(events, expected):
    assert {k: v.state for k, v in G.customization_status(events).items()} == expected


def test_failed_status_carries_the_reason():
    st = G.customization_status([ev("a", "started", 0), ev("a", "failed", 1, "sysprep files missing")])["a"]
    assert st.reason == "sysprep files missing" and st.started == T.isoformat()


@pytest.mark.parametrize("guest_id,expected", [
    ("win2000ServGuest", "2k"),
    ("winXPProGuest", "xp"),
    ("winXPPro64Guest", "xp-64"),
    ("winNetEnterpriseGuest", "svr2003"),
    ("winNetEnterprise64Guest", "svr2003-64"),
    ("windows7Server64Guest", None),
    ("windows9Server64Guest", None),
    ("otherLinux64Guest", None),
])
def test_sysprep_dir_for(guest_id, expected):
    assert G.sysprep_dir_for(guest_id) == expected


def test_check_sysprep_dir(tmp_path):
    assert G.check_sysprep_dir(tmp_path, "svr2003")[0] == "missing"
    (tmp_path / "svr2003").mkdir()
    assert G.check_sysprep_dir(tmp_path, "svr2003")[0] == "empty"
    (tmp_path / "svr2003" / "sysprep.exe").write_bytes(b"x")
    assert G.check_sysprep_dir(tmp_path, "svr2003")[0] == "incomplete"
    (tmp_path / "svr2003" / "SETUPCL.EXE").write_bytes(b"x")
    assert G.check_sysprep_dir(tmp_path, "svr2003") == ("populated", ["SETUPCL.EXE", "sysprep.exe"])


def test_credentials_from_env_and_file(tmp_path):
    c = G.guest_credentials({"ESXDR_GUEST_PASSWORD": "s3cret"})
    assert (c.user, c.password) == ("Administrator", "s3cret")
    assert "s3cret" not in repr(c)
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    os.chmod(f, 0o644)
    with pytest.raises(UsageError, match="readable by others"):
        G.guest_credentials({"ESXDR_GUEST_PASSWORD_FILE": str(f)})
    os.chmod(f, 0o600)
    c = G.guest_credentials({"ESXDR_GUEST_PASSWORD_FILE": str(f), "ESXDR_GUEST_USER": "ops"})
    assert (c.user, c.password) == ("ops", "from-file")
    assert G.guest_credentials({}, required=False) is None
    with pytest.raises(UsageError, match="no guest credentials"):
        G.guest_credentials({})
