"""`esxdr guest`: the guest customization boot loop (sysprepDecrypter in BootExecute)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import UsageError

GUEST_HELP = """Find and fix Windows VMs stuck in the guest customization boot loop.

When vCenter's sysprep files for a guest OS are missing or outdated, customization fails
and leaves sysprepDecrypter.exe in HKLM\\SYSTEM\\CurrentControlSet\\Control\\Session Manager
BootExecute, so it runs at every boot. These commands find such VMs (vCenter events),
confirm it inside the guest (guest operations: reg.exe through VMware Tools) and remove
only that entry.

Guest credentials come from the environment, never from the command line:
ESXDR_GUEST_USER (default Administrator) and ESXDR_GUEST_PASSWORD, or
ESXDR_GUEST_PASSWORD_FILE naming a 0600 file.

\b
Examples:
  esxdr guest check                          # customization started, never finished
  esxdr guest check --endpoint vcenter --json
  esxdr guest fix-boot-loop web07 --dry-run  # before/after, nothing written
  esxdr guest fix-boot-loop web07 --reboot   # write, verify, reboot once
  esxdr guest fix-boot-loop web07 --sysprep  # ... and re-run sysprep (new SID)
  esxdr guest check-sysprep --sysprep-dir /etc/vmware-vpx/sysprep

Exit codes: 0 ok, 2 bad input (e.g. not a Windows guest), 3 a decision is needed
(e.g. VMware Tools not running), 4 vSphere or guest failure, 5 `check` found stuck VMs.
"""


@click.group(help=GUEST_HELP)
def guest() -> None:
    pass


def _endpoints(ctx: Context, name: str | None) -> list[Any]:
    site = ctx.site()
    if name:
        if name not in site.vsphere:
            raise UsageError(f"no vsphere endpoint {name!r} in {site.path}",
                             hint="known: " + (", ".join(sorted(site.vsphere)) or "none"))
        return [site.vsphere[name]]
    if not site.vsphere:
        raise UsageError(f"{site.path} names no vsphere endpoints", hint="add one under vsphere:")
    # vCenter first: customization events are posted there.
    return sorted(site.vsphere.values(), key=lambda e: (e.kind != "vcenter", e.name))


def _connect(endpoint: Any):  # -> Session
    from esxdr.vsphere.session import connect

    return connect(endpoint)


# --------------------------------------------------------------------------- check
@guest.command("check")
@click.option("--endpoint", metavar="NAME", help="Only this vsphere endpoint (default: every one in the site file).")
@click.option("--no-guest", is_flag=True, help="Events only: do not log in to the guests to read BootExecute.")
@json_option
@site_option
@pass_ctx
def check_cmd(ctx: Context, endpoint: str | None, no_guest: bool) -> None:
    """VMs whose guest customization started but never succeeded or failed.

    Reads vCenter's Customization* events (an EventHistoryCollector). With guest
    credentials it then reads BootExecute in each such VM (Windows, tools running)
    to confirm sysprepDecrypter is there. Exit 5 when a stuck or confirmed VM is found.

    \b
    Examples:
      esxdr guest check
      ESXDR_GUEST_PASSWORD_FILE=/etc/esxdr/guest.pw esxdr guest check --json
    """
    from esxdr.errors import EsxdrError
    from esxdr.recovery import guest as G
    from esxdr.vsphere import guest as VG

    creds = None if no_guest else G.guest_credentials(required=False)
    rows: list[dict[str, Any]] = []
    for ep in _endpoints(ctx, endpoint):
        ctx.info(f"{ep.name}: reading customization events")
        with _connect(ep) as s:
            status = G.customization_status(VG.customization_events(s))
            vms = VG.read_vms(s) if status else {}
            for name, st in sorted(status.items()):
                row: dict[str, Any] = {"endpoint": ep.name, **st.to_dict(), "boot_execute": None,
                                       "sysprep_decrypter": None, "confirmation": ""}
                vm = vms.get(name)
                row["guest_os"] = vm.guest_id if vm else None
                if st.state == "succeeded":
                    row["confirmation"] = "customization succeeded"
                elif vm is None:
                    row["confirmation"] = "VM no longer in the inventory"
                elif creds is None:
                    row["confirmation"] = "not checked in the guest (no guest credentials)" if not no_guest \
                        else "not checked in the guest (--no-guest)"
                elif not vm.windows:
                    row["confirmation"] = f"not Windows ({vm.guest_id}): no BootExecute"
                elif vm.power_state != "poweredOn" or not vm.tools_running:
                    row["confirmation"] = "not checked: VM off or VMware Tools not running"
                else:
                    try:
                        entries, _ = G.read_boot_execute(VG.GuestOps(s, vm, creds))
                        row["boot_execute"] = entries
                        row["sysprep_decrypter"] = G.has_decrypter(entries)
                        row["confirmation"] = "sysprepDecrypter in BootExecute: boot loop confirmed" \
                            if row["sysprep_decrypter"] else "BootExecute is clean"
                    except EsxdrError as e:
                        row["confirmation"] = f"guest check failed: {e.message}"
                rows.append(row)
    # Events never go away: a VM whose BootExecute was read clean (fixed since) is not stuck any more.
    stuck = [r for r in rows if r["sysprep_decrypter"] or (r["state"] == "stuck" and r["sysprep_decrypter"] is None)]

    def text() -> str:
        if not rows:
            return "no guest customization events found"
        lines = [f"{'VM':<20} {'STATE':<10} {'ENDPOINT':<14} DETAIL"]
        for r in rows:
            lines.append(f"{r['vm']:<20} {r['state']:<10} {r['endpoint']:<14} {r['confirmation']}")
            if r["boot_execute"] is not None:
                lines.append(f"{'':<20}   BootExecute: {r['boot_execute']}")
        if stuck:
            lines.append("")
            lines.append("fix with: " + "; ".join(f"esxdr guest fix-boot-loop {r['vm']} --dry-run" for r in stuck))
        return "\n".join(lines)

    ctx.emit({"vms": rows, "stuck": [r["vm"] for r in stuck]}, text)
    if stuck:
        # exit 5 like a failed health check, without a second JSON document on stdout
        click.echo(f"esxdr: {len(stuck)} VM(s) stuck in guest customization: "
                   + ", ".join(r["vm"] for r in stuck), err=True)
        raise SystemExit(5)


# --------------------------------------------------------------------------- fix-boot-loop
@guest.command("fix-boot-loop")
@click.argument("vm")
@click.option("--endpoint", metavar="NAME", help="The vsphere endpoint the VM is on (default: search every one).")
@click.option("--dry-run", is_flag=True, help="Read BootExecute and show before/after; change nothing.")
@click.option("--reboot", is_flag=True, help="Reboot the guest once after the fix.")
@click.option("--sysprep", is_flag=True,
              help="Then run sysprep /generalize /oobe /reboot so the machine SID is unique (reboots).")
@json_option
@site_option
@pass_ctx
def fix_cmd(ctx: Context, vm: str, endpoint: str | None, dry_run: bool, reboot: bool, sysprep: bool) -> None:
    """Remove only the sysprepDecrypter entry from VM's BootExecute.

    Other entries stay as they are, in their order; when nothing else is left the
    Windows default `autocheck autochk *` is written. The value is read back after
    writing. Refuses non-Windows guests (exit 2) and VMs without running VMware
    Tools (exit 3).

    \b
    Examples:
      esxdr guest fix-boot-loop web07 --dry-run
      esxdr guest fix-boot-loop web07 --reboot
      esxdr guest fix-boot-loop web07 --endpoint vcenter --sysprep --json
    """
    from esxdr.recovery import guest as G
    from esxdr.vsphere import guest as VG

    creds = G.guest_credentials()
    eps = _endpoints(ctx, endpoint)
    result = None
    for ep in eps:
        with _connect(ep) as s:
            if len(eps) > 1 and vm not in VG.read_vms(s):
                continue
            result = G.fix_boot_loop(s, vm, creds, dry_run=dry_run, reboot=reboot, sysprep=sysprep, say=ctx.info)
            break
    if result is None:
        raise UsageError(f"no VM named {vm!r} on " + ", ".join(e.name for e in eps),
                         hint="name the endpoint with --endpoint, or check the VM name")

    def text() -> str:
        p = result.plan
        before = "(missing)" if p.before is None else "\n".join(f"    {e}" for e in p.before) or "    (empty)"
        lines = [f"{result.vm} on {result.endpoint}: {p.reason}", "  BootExecute before:", before]
        if p.changes:
            lines += ["  BootExecute after" + (" (dry run, not written):" if result.dry_run else ":"),
                      "\n".join(f"    {e}" for e in p.after)]
            if p.removed:
                lines.append("  removed: " + ", ".join(p.removed))
        if result.after_read is not None:
            lines.append("  verified: read back as written")
        for st in result.steps[1:] if p.changes else ():
            lines.append(("  would " if result.dry_run else "  ") + st)
        return "\n".join(lines)

    ctx.emit(result.to_dict(), text)


# --------------------------------------------------------------------------- check-sysprep
@guest.command("check-sysprep")
@click.option("--group", "group_name", metavar="GROUP", help="Only this protection group (default: all).")
@click.option("--sysprep-dir", type=click.Path(file_okay=False), metavar="DIR",
              help="vCenter's sysprep directory, or a copy of it (also $ESXDR_SYSPREP_DIR). On the "
                   "appliance: /etc/vmware-vpx/sysprep.")
@json_option
@site_option
@pass_ctx
def check_sysprep_cmd(ctx: Context, group_name: str | None, sysprep_dir: str | None) -> None:
    """Whether vCenter has the sysprep files the protection groups' Windows guests need.

    Windows Vista / Server 2008 and later carry sysprep in the guest; only older Windows
    (2000, XP, Server 2003) needs files in vCenter's sysprep/<family> directory. The
    vSphere API does not expose that directory, so its content can only be checked from
    a path (run on the vCenter appliance, or a copy): without --sysprep-dir the
    families needed are listed and their state is "unknown".

    \b
    Examples:
      esxdr guest check-sysprep
      esxdr guest check-sysprep --group core --sysprep-dir /etc/vmware-vpx/sysprep --json
    """
    from esxdr.recovery import guest as G
    from esxdr.replication.consistency import find_group_vms, group_datastore_filter
    from esxdr.vsphere import guest as VG

    site = ctx.site()
    groups = site.group_names(group_name)
    root_s = sysprep_dir or os.environ.get("ESXDR_SYSPREP_DIR")
    root = Path(root_s) if root_s else None
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    for gname in groups:
        g = site.protection_groups[gname]
        if not g.vsphere_production or g.vsphere_production not in site.vsphere:
            notes.append(f"{gname}: no vsphere_production endpoint: its VMs' guest OS cannot be read")
            continue
        with _connect(site.vsphere[g.vsphere_production]) as s:
            vms = VG.read_vms(s)
            names, naas = group_datastore_filter(g)
            on_ds = {v["name"] for v in find_group_vms(s, names, naas)[1]} if (names or naas) else set()
        wanted = on_ds | {v.name for v in g.vms}
        for name in sorted(wanted):
            vm = vms.get(name)
            if vm is None:
                rows.append({"group": gname, "vm": name, "guest_id": None, "sysprep_dir": None,
                             "state": "unknown", "detail": f"not found on {g.vsphere_production}"})
                continue
            sub = G.sysprep_dir_for(vm.guest_id)
            if not vm.windows:
                state, detail = "not-needed", f"{vm.family} guest: customized without sysprep"
            elif sub is None:
                state, detail = "not-needed", "Windows Vista/2008 or later: sysprep is in the guest"
            elif root is None:
                state, detail = "unknown", "not visible through the vSphere API; give --sysprep-dir"
            else:
                state, files = G.check_sysprep_dir(root, sub)
                detail = f"{root / sub}: {len(files)} file(s)" + (
                    "" if state == "populated" else f"; needs {', '.join(G.SYSPREP_FILES)}")
            rows.append({"group": gname, "vm": name, "guest_id": vm.guest_id, "sysprep_dir": sub,
                         "state": state, "detail": detail})
    bad = [r for r in rows if r["state"] in ("missing", "empty", "incomplete")]

    if not groups:
        notes.append(f"{site.path} has no protection groups: nothing to check")

    def text() -> str:
        lines = [f"{'GROUP':<10} {'VM':<20} {'GUEST OS':<24} {'DIR':<11} {'STATE':<11} DETAIL"]
        for r in rows:
            lines.append(f"{r['group']:<10} {r['vm']:<20} {r['guest_id'] or '-':<24} {r['sysprep_dir'] or '-':<11} "
                         f"{r['state']:<11} {r['detail']}")
        lines += [f"note: {n}" for n in notes]
        return "\n".join(lines)

    ctx.emit({"sysprep_dir": str(root) if root else None, "vms": rows, "notes": notes,
              "missing": sorted({r["sysprep_dir"] for r in bad})}, text)
    if bad:
        click.echo("esxdr: vCenter lacks sysprep files for: " + ", ".join(sorted({r["sysprep_dir"] for r in bad})),
                   err=True)
        raise SystemExit(5)
