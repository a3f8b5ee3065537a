"""esxdr keys authorized-line: the DR service account's authorized_keys line."""

from __future__ import annotations

from pathlib import Path

import click

from esxdr.cli.main import Context, json_option, pass_ctx, site_option
from esxdr.errors import UsageError


@click.group()
def keys() -> None:
    """SSH keys for the DR service account."""


@keys.command("authorized-line", epilog="""\b
Examples:
  esxdr keys authorized-line --site site.yaml >> ~esxdr/.ssh/authorized_keys   (on the DR box)
  esxdr keys authorized-line --sudo        for zfs builds without `zfs allow` (zfs-fuse, old Solaris)
""")
@click.option("--server", help="The DR storage server (default: the only one with role dr).")
@click.option("--sudo", is_flag=True, help="Run zfs through `sudo -n` (pair with a sudoers rule for zfs only).")
@click.option("--esxdr-path", default="esxdr", show_default=True, help="Path of esxdr on the DR box.")
@json_option
@site_option
@pass_ctx
def authorized_line(ctx: Context, server: str | None, sudo: bool, esxdr_path: str) -> None:
    """Print the line that pins `esxdr serve` as the forced command, under the DR dataset prefix."""
    site = ctx.site()
    dr = [s for s in site.storage.values() if s.role == "dr"]
    if server:
        dr = [s for s in dr if s.name == server]
    if len(dr) != 1:
        raise UsageError("name the DR storage server with --server", hint=", ".join(s.name for s in dr) or None)
    srv = dr[0]
    prefixes = sorted({g.dr_root for g in site.protection_groups.values() if g.destination == srv.name})
    if srv.serve_prefix:
        prefixes = [srv.serve_prefix]
    if not prefixes:
        raise UsageError(f"no protection group replicates to {srv.name}")
    if not srv.key:
        raise UsageError(f"storage.{srv.name}.key is not set; it names the private key esxdr uses")
    pub = Path(srv.key + ".pub")
    if not pub.exists():
        raise UsageError(f"public key {pub} not found", hint=f"ssh-keygen -y -f {srv.key} > {pub}")
    opts = " ".join(f"--allow-prefix {p}" for p in prefixes)
    line = f'command="{esxdr_path} serve{" --sudo" if sudo else ""} {opts}",restrict {pub.read_text().strip()}'
    ctx.emit({"server": srv.name, "prefixes": prefixes, "line": line}, line)
