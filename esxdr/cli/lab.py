"""esxdr lab up|status|down: the embedded lab on this machine's loopback, or on two boxes (--boxes)."""

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
  sudo esxdr lab up --boxes      production and DR each in a network namespace of its own
  sudo ip netns exec esxdr-dr esxdr --site /var/lib/esxdr-lab/site-dr-push.yaml failover core --planned
  esxdr lab status --json        every component, address and credential
  esxdr --site /var/lib/esxdr-lab/site.yaml replicate core
  sudo esxdr lab down --dry-run  what would be stopped and removed
  sudo esxdr lab down            stop everything and remove every trace
""")
def lab() -> None:
    """The embedded lab: zfs-fuse pools, sshd, tgtd and esxsim on 127.0.0.x (or on two boxes)."""


def _status_text(st: dict) -> str:
    lines = [f"lab dir: {st['dir']}", f"site file: {st['site'] or '-'}",
             "zfs-fuse: " + {"up": "up", "down": "down",
                             "hung": "HUNG (not answering; `esxdr lab up` restarts it)"}[st["zfs_fuse_state"]]]
    for c in st["components"]:
        up = "up" if c["up"] else "DOWN"
        if c["kind"] == "pool":
            lines.append(f"pool    {c['role']:<10} {c['name']:<24} {up}")
        elif c["kind"] == "sshd":
            lines.append(f"sshd    {c.get('role', 'dr'):<10} {c['address']:<24} {up}  account {c['account']}, "
                         f"{c['host_key']}")
        elif c["kind"] == "netns":
            lines.append(f"netns   {c['role']:<10} {c['name']:<24} {up}  {c['address']}")
        elif c["kind"] == "tgtd":
            lines.append(f"tgtd    {c['role']:<10} {c['portal']:<24} {up}  control port {c['control_port']}")
        elif c["kind"] == "esxsim":
            lines.append(f"esxsim  {c['role']:<10} {c['url']:<24} {up}  {c['host']} ({c['username']})")
    return "\n".join(lines)


@lab.command()
@dir_option
@click.option("--no-esxsim", is_flag=True, help="Skip the ESXi simulators (storage only).")
@click.option("--boxes", is_flag=True,
              help="Production and DR each in a network namespace of its own (esxdr-prod at 198.18.0.1, "
                   "esxdr-dr at 198.18.0.2), joined by a veth pair: run esxdr in a site's namespace "
                   "(ip netns exec esxdr-dr esxdr …), as on that box.")
@click.option("--dry-run", is_flag=True, help="Say what would be started or created; change nothing.")
@json_option
@pass_ctx
def up(ctx: Context, lab_dir: str, no_esxsim: bool, boxes: bool, dry_run: bool) -> None:
    """Start the lab (safe to re-run; a hung zfs-fuse is restarted)."""
    from esxdr.lab import Lab, LabConfig

    lab_ = Lab(LabConfig(dir=lab_dir, with_esxsim=not no_esxsim, boxes=boxes))
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


@lab.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
             epilog="""\b
Examples:
  sudo esxdr lab run dr -- esxdr --site /var/lib/esxdr-lab/site-dr-push.yaml failover core --planned
  sudo esxdr lab run production -- esxdr --site /var/lib/esxdr-lab/site.yaml replicate core
  sudo esxdr lab run dr -- ssh -p 22 esxdr-dr@198.18.0.1     (production, as the DR box reaches it)
""")
@dir_option
@click.argument("role", type=click.Choice(["production", "dr"]))
@click.argument("argv", nargs=-1, type=click.UNPROCESSED, required=True)
def run(lab_dir: str, role: str, argv: tuple[str, ...]) -> None:
    """Run a command on one box of the two-box lab (`lab up --boxes`): in that site's network
    namespace, as on that box (the machine's files and mounts stay shared, as the pools are)."""
    import os
    import shutil

    from esxdr.errors import UsageError
    from esxdr.lab.netns import netns_prefix

    lab_ = _lab(lab_dir)
    boxes = lab_.state().get("boxes")
    if not boxes:
        raise UsageError(f"the lab in {lab_dir} is not up on two boxes", hint="esxdr lab up --boxes")
    prefix = netns_prefix(boxes[role]["netns"])
    if argv[0] == "esxdr" and not shutil.which("esxdr"):
        import sys

        argv = (os.path.join(os.path.dirname(sys.executable), "esxdr"), *argv[1:])  # this install's esxdr
    os.execvp(prefix[0], [*prefix, *argv])
