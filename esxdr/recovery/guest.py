r"""The guest customization boot loop: find it, confirm it, fix it.

A known VMware failure: when vCenter's sysprep files for the guest OS are missing or
outdated, customization of a Windows VM fails half-way and leaves ``sysprepDecrypter.exe``
in ``HKLM\SYSTEM\CurrentControlSet\Control\Session Manager`` value ``BootExecute``
(REG_MULTI_SZ), so it runs at every boot, forever. The fix: BootExecute back to what it was
without that entry (default ``autocheck autochk *``), reboot once, run sysprep again so the
machine SID is unique.

Pure parts (unit-tested, table-driven): :func:`parse_reg_query`, :func:`is_decrypter`,
:func:`plan_boot_execute`, :func:`reg_add_script`, :func:`customization_status`,
:func:`sysprep_dir_for`. The rest drives :mod:`esxdr.vsphere.guest`.

Guest credentials come from the environment (``ESXDR_GUEST_USER``, default Administrator,
and ``ESXDR_GUEST_PASSWORD``) or a 0600 file (``ESXDR_GUEST_PASSWORD_FILE``), never argv.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esxdr.errors import ConflictError, RemoteError, UsageError

SESSION_MANAGER = r"HKLM\SYSTEM\CurrentControlSet\Control\Session Manager"
VALUE = "BootExecute"
DEFAULT_BOOT_EXECUTE = ("autocheck autochk *",)
DECRYPTER = "sysprepdecrypter"
OUT_FILE = r"C:\Windows\Temp\esxdr-guest-out.txt"
SCRIPT_FILE = r"C:\Windows\Temp\esxdr-fix-bootexecute.cmd"
SYSPREP = r"C:\Windows\System32\Sysprep\sysprep.exe"
SYSPREP_ARGS = "/generalize /oobe /reboot /quiet"

USER_ENV = "ESXDR_GUEST_USER"
PASSWORD_ENV = "ESXDR_GUEST_PASSWORD"
PASSWORD_FILE_ENV = "ESXDR_GUEST_PASSWORD_FILE"


# --------------------------------------------------------------------------- BootExecute (pure)
_NOT_FOUND = re.compile(r"unable to find the specified registry key or value", re.I)
_ROW = re.compile(r"^\s+(?P<name>\S(?:.*?\S)?)\s{2,}(?P<type>REG_[A-Z_]+)(?:\s{2,}|\s*$)(?P<data>.*)$")


def parse_reg_query(text: str, value: str = VALUE) -> list[str] | None:
    r"""The entries of ``value`` in ``reg query KEY /v VALUE`` output; None when it does not exist.

    reg.exe prints a REG_MULTI_SZ as its strings joined by a literal ``\0``; rows are
    ``<4 spaces>NAME<4 spaces>TYPE<4 spaces>DATA``. Value names compare case-insensitively.
    """
    if _NOT_FOUND.search(text):
        return None
    for line in text.replace("\r\n", "\n").split("\n"):
        m = _ROW.match(line)
        if not m or m.group("name").lower() != value.lower():
            continue
        data = m.group("data").rstrip()
        if m.group("type") == "REG_MULTI_SZ":
            return [e for e in data.split("\\0") if e != ""]
        return [data] if data else []
    return None


def is_decrypter(entry: str) -> bool:
    r"""True for the sysprepDecrypter entry, however written: ``sysprepDecrypter.exe``,
    ``sysprepDecrypter``, ``C:\sysprep\sysprepDecrypter.exe /x``, any case."""
    words = entry.strip().split()
    if not words:
        return False
    prog = words[0].replace("/", "\\").rsplit("\\", 1)[-1].lower()
    return prog.removesuffix(".exe") == DECRYPTER


@dataclass(frozen=True)
class BootExecutePlan:
    before: tuple[str, ...] | None  # None: the value does not exist
    after: tuple[str, ...]
    removed: tuple[str, ...]
    reason: str

    @property
    def changes(self) -> bool:
        return self.before is None or tuple(self.before) != self.after

    def to_dict(self) -> dict[str, object]:
        return {"before": list(self.before) if self.before is not None else None, "after": list(self.after),
                "removed": list(self.removed), "changes": self.changes, "reason": self.reason}


def plan_boot_execute(before: Iterable[str] | None) -> BootExecutePlan:
    """Remove only the sysprepDecrypter entries; keep every other entry in its order.
    Nothing left (or no value at all) → the Windows default ``autocheck autochk *``."""
    if before is None:
        return BootExecutePlan(None, DEFAULT_BOOT_EXECUTE, (),
                               "BootExecute is missing: restore the Windows default")
    entries = tuple(before)
    removed = tuple(e for e in entries if is_decrypter(e))
    kept = tuple(e for e in entries if not is_decrypter(e))
    if not removed:
        return BootExecutePlan(entries, entries, (), "no sysprepDecrypter entry: nothing to change")
    if not kept:
        return BootExecutePlan(entries, DEFAULT_BOOT_EXECUTE, removed,
                               "only sysprepDecrypter was there: restore the Windows default")
    return BootExecutePlan(entries, kept, removed, "remove sysprepDecrypter, keep the other entries")


def has_decrypter(entries: Iterable[str] | None) -> bool:
    return any(is_decrypter(e) for e in entries or ())


def reg_add_command(entries: Iterable[str]) -> str:
    r"""``reg add … /t REG_MULTI_SZ /d "a\0b" /f`` for a batch file (``%`` doubled)."""
    items = list(entries)
    for e in items:
        if any(c in e for c in '"\r\n') or "\\0" in e or not e.strip():
            raise UsageError(f"BootExecute entry {e!r} cannot be written safely through reg.exe",
                             hint="fix this VM's BootExecute by hand (regedit)")
    data = "\\0".join(items).replace("%", "%%")
    return f'reg add "{SESSION_MANAGER}" /v {VALUE} /t REG_MULTI_SZ /d "{data}" /f'


def reg_add_script(entries: Iterable[str]) -> str:
    return "@echo off\r\n" + reg_add_command(entries) + "\r\n"


REG_QUERY = f'reg query "{SESSION_MANAGER}" /v {VALUE}'


# --------------------------------------------------------------------------- customization events (pure)
@dataclass(frozen=True)
class CustomizationStatus:
    vm: str
    state: str  # stuck / failed / succeeded
    started: str | None = None  # ISO time of the last CustomizationStartedEvent
    last_event: str = ""
    reason: str = ""
    log_location: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"vm": self.vm, "state": self.state, "started": self.started, "last_event": self.last_event,
                "reason": self.reason, "log_location": self.log_location}


def customization_status(events: Iterable[Any]) -> dict[str, CustomizationStatus]:
    """Per VM, from the last customization run (events oldest first, as
    :func:`esxdr.vsphere.guest.customization_events` returns them): started without a later
    Succeeded/Failed → stuck."""
    runs: dict[str, list[Any]] = {}
    for e in events:
        if e.kind == "started":
            runs[e.vm] = [e]
        elif e.vm in runs:
            runs[e.vm].append(e)
        else:
            runs[e.vm] = [e]  # an outcome whose start fell out of the history
    out = {}
    for vm, evs in runs.items():
        start = next((e for e in evs if e.kind == "started"), None)
        end = next((e for e in evs if e.kind in ("succeeded", "failed")), None)
        state = end.kind if end else "stuck"
        last = evs[-1]
        out[vm] = CustomizationStatus(
            vm=vm, state=state, started=start.created.isoformat() if start and start.created else None,
            last_event=last.type, reason=(end.reason or end.message) if end and end.kind == "failed" else "",
            log_location=(start or last).log_location)
    return out


# --------------------------------------------------------------------------- sysprep directories (pure)
# vCenter keeps the sysprep files of pre-Vista Windows in one directory per guest family; Vista
# and later ship sysprep in the guest (C:\Windows\System32\Sysprep) and need nothing on vCenter.
SYSPREP_DIRS = (
    ("win2000", "2k"),
    ("winxppro64", "xp-64"),
    ("winxp", "xp"),
    ("winnet", "svr2003"),  # winNetStandard/Enterprise/Datacenter/Web; 64-bit variants below
)
VCSA_SYSPREP = "/etc/vmware-vpx/sysprep"
WINDOWS_VC_SYSPREP = r"C:\ProgramData\VMware\vCenterServer\cfg\vmware-vpx\sysprep"
SYSPREP_FILES = ("sysprep.exe", "setupcl.exe")


def sysprep_dir_for(guest_id: str) -> str | None:
    """The vCenter sysprep subdirectory a Windows guest id needs, or None (built-in sysprep)."""
    g = guest_id.lower()
    if not g.startswith("win"):
        return None
    for prefix, sub in SYSPREP_DIRS:
        if g.startswith(prefix):
            if sub == "svr2003" and "64" in g:
                return "svr2003-64"
            return sub
    return None


def check_sysprep_dir(root: Path, sub: str) -> tuple[str, list[str]]:
    """(state, files found) of ``root/sub``: populated / empty / missing."""
    d = root / sub
    if not d.is_dir():
        return "missing", []
    names = sorted(p.name for p in d.rglob("*") if p.is_file())
    low = {n.lower() for n in names}
    if all(f in low for f in SYSPREP_FILES):
        return "populated", names
    return ("incomplete" if names else "empty"), names


# --------------------------------------------------------------------------- credentials
def guest_credentials(env: dict[str, str] | None = None, *, required: bool = True):  # -> GuestCredentials | None
    """From ``ESXDR_GUEST_PASSWORD`` or the 0600 file ``ESXDR_GUEST_PASSWORD_FILE``."""
    from esxdr.vsphere.guest import GuestCredentials

    env = os.environ if env is None else env  # type: ignore[assignment]
    assert env is not None
    user = env.get(USER_ENV) or "Administrator"
    password = env.get(PASSWORD_ENV)
    path = env.get(PASSWORD_FILE_ENV)
    if password is None and path:
        try:
            st = os.stat(path)
        except OSError as e:
            raise UsageError(f"cannot read the guest password file {path}: {e.strerror}") from e
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"guest password file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o})",
                             hint=f"chmod 600 {path}")
        with open(path, encoding="utf-8") as f:
            password = f.readline().rstrip("\r\n")
    if password is None:
        if required:
            raise UsageError("no guest credentials: guest operations log in to Windows inside the VM",
                             hint=f"export {USER_ENV}=… and {PASSWORD_ENV}=…, or {PASSWORD_FILE_ENV}=<0600 file>")
        return None
    return GuestCredentials(user=user, password=password)


# --------------------------------------------------------------------------- reading and fixing a guest
def read_boot_execute(ops: Any) -> tuple[list[str] | None, str]:
    """(entries or None when missing, raw reg output) through guest operations."""
    code, out = ops.cmd(REG_QUERY, out_file=OUT_FILE)
    entries = parse_reg_query(out)
    if code != 0 and entries is not None:
        raise RemoteError(f"reg query in {ops.vm.name} exited {code}: {out.strip()[:200]}")
    if code != 0 and not _NOT_FOUND.search(out):
        raise RemoteError(f"reg query in {ops.vm.name} exited {code}: {out.strip()[:200] or 'no output'}",
                          hint="is the guest user an administrator?")
    return entries, out


@dataclass
class FixResult:
    vm: str
    endpoint: str
    dry_run: bool
    plan: BootExecutePlan
    after_read: list[str] | None = None  # BootExecute read back after writing
    rebooted: bool = False
    sysprep: bool = False
    steps: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"vm": self.vm, "endpoint": self.endpoint, "dry_run": self.dry_run, **self.plan.to_dict(),
                "verified": self.after_read, "rebooted": self.rebooted, "sysprep": self.sysprep, "steps": self.steps}


def fix_boot_loop(session: Any, vm_name: str, creds: Any, *, dry_run: bool = False, reboot: bool = False,
                  sysprep: bool = False, say: Callable[[str], None] = lambda s: None) -> FixResult:
    from esxdr.vsphere.guest import GuestOps, find_vm, require_guest_ops

    vm = find_vm(session, vm_name)
    require_guest_ops(vm)
    ops = GuestOps(session, vm, creds)
    before, _ = read_boot_execute(ops)
    plan = plan_boot_execute(before)
    res = FixResult(vm=vm.name, endpoint=session.name, dry_run=dry_run, plan=plan)
    if not plan.changes:
        res.steps.append(plan.reason)
        return res
    res.steps.append(f"write BootExecute = {list(plan.after)} ({plan.reason})")
    if reboot:
        res.steps.append("reboot the guest once")
    if sysprep:
        res.steps.append(f"run {SYSPREP} {SYSPREP_ARGS} (new machine SID; reboots)")
    if dry_run:
        return res
    say(f"{vm.name}: writing BootExecute")
    ops.upload(SCRIPT_FILE, reg_add_script(plan.after).encode("ascii"))
    try:
        code, out = ops.cmd(f'"{SCRIPT_FILE}"', out_file=OUT_FILE)
    finally:
        ops.delete(SCRIPT_FILE)
    if code != 0:
        raise RemoteError(f"reg add in {vm.name} exited {code}: {out.strip()[:200]}",
                          hint="is the guest user an administrator? BootExecute was not changed")
    res.after_read, _ = read_boot_execute(ops)
    if tuple(res.after_read or ()) != plan.after:
        raise ConflictError(f"{vm.name}: BootExecute reads back as {res.after_read}, expected {list(plan.after)}",
                            hint="something else writes it; look at the guest")
    if sysprep:
        # Not waited for: sysprep reboots the guest, which ends the guest-operations channel.
        say(f"{vm.name}: starting sysprep (it reboots the guest)")
        pid = ops.start(SYSPREP, SYSPREP_ARGS)
        res.steps.append(f"sysprep started as pid {pid}; its log: C:\\Windows\\System32\\Sysprep\\Panther")
        res.sysprep = True
        res.rebooted = True
    elif reboot:
        say(f"{vm.name}: rebooting the guest")
        ops.reboot()
        res.rebooted = True
    return res
