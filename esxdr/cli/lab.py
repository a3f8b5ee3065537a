"""esxdr lab up|status|down: the embedded lab on this machine's loopback."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx


def _lab(lab_dir: str):
    from esxdr.lab import Lab, LabConfig

    return Lab(LabConfig(dir=lab_dir))


dir_option = click.option("--dir", "lab_dir", default="/var/lib/esxdr-lab", show_default=True,
                          help="Where the lab keeps its pools' files, keys, logs and site file.")


@click.group(epilog="""\b
Examples:
  sudo esxdr lab up              start everything (idempotent) and write site.yaml
  esxdr lab status --json        every component, address and credential
  esxdr --site /var/lib/esxdr-lab/site.yaml replicate core
  sudo esxdr lab down --dry-run  what would be stopped and removed
  sudo esxdr lab down            stop everything and remove every trace
""")
def lab() -> None:
    """The embedded lab: zfs-fuse pools, sshd, tgtd and esxsim on 127.0.0.x."""


def _status_text(st: dict) -> str:
    lines = [f"lab dir: {st['dir']}", f"site file: {st['site'] or '-'}",
             "zfs-fuse: " + {"up": "up", "down": "down",
                             "hung": "HUNG (not answering; `esxdr lab up` restarts it)"}[st["zfs_fuse_state"]]]
    for c in st["components"]:
        up = "up" if c["up"] else "DOWN"
        if c["kind"] == "pool":
            lines.append(f"pool    {c['role']:<10} {c['name']:<24} {up}")
        elif c["kind"] == "sshd":
            lines.append(f"sshd    {'dr':<10} {c['address']:<24} {up}  account {c['account']}, {c['host_key']}")
        elif c["kind"] == "tgtd":
            lines.append(f"tgtd    {c['role']:<10} {c['portal']:<24} {up}  control port {c['control_port']}")
        elif c["kind"] == "esxsim":
            lines.append(f"esxsim  {c['role']:<10} {c['url']:<24} {up}  {c['host']} ({c['username']})")
    return "\n".join(lines)


@lab.command()
@dir_option
@click.option("--no-esxsim", is_flag=True, help="Skip the ESXi simulators (storage only).")
@click.option("--dry-run", is_flag=True, help="Say what would be started or created; change nothing.")
@json_option
@pass_ctx
def up(ctx: Context, lab_dir: str, no_esxsim: bool, dry_run: bool) -> None:
    """Start the lab (safe to re-run; a hung zfs-fuse is restarted)."""
    from esxdr.lab import Lab, LabConfig

    lab_ = Lab(LabConfig(dir=lab_dir, with_esxsim=not no_esxsim))
    if dry_run:
        todo = lab_.up_plan()
        ctx.emit({"dry_run": True, "actions": todo}, lambda: "\n".join(todo) or "the lab is up: nothing to do")
        return
    st = lab_.up(say=ctx.info)
    ctx.emit(st, lambda: _status_text(st))


@lab.command()
@dir_option
@json_option
@pass_ctx
def status(ctx: Context, lab_dir: str) -> None:
    """Show every component and its address (exit 5 if something is down)."""
    from esxdr.errors import StaleStateError

    st = _lab(lab_dir).status()
    ctx.emit(st, lambda: _status_text(st))
    if not st["components"] or not all(c["up"] for c in st["components"]):
        raise StaleStateError("the lab is not fully up", hint="run `esxdr lab up`")


@lab.command()
@dir_option
@click.option("--dry-run", is_flag=True, help="Say what would be stopped or removed; change nothing.")
@json_option
@pass_ctx
def down(ctx: Context, lab_dir: str, dry_run: bool) -> None:
    """Stop everything and remove pools, accounts and files."""
    lab_ = _lab(lab_dir)
    todo = lab_.down_plan()
    if dry_run:
        ctx.emit({"dry_run": True, "actions": todo}, lambda: "\n".join(todo) or "nothing to remove")
        return
    lab_.down(say=ctx.info)
    ctx.emit({"dry_run": False, "actions": todo}, lambda: "lab is down")
