"""`esxdr vmfs`: look at the VMFS headers on a LUN image, device or partition image."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx


@click.group(help="Read VMFS volume headers (LVM device id, UUID, label).")
def vmfs() -> None:
    pass


@vmfs.command("inspect")
@click.argument("path", type=click.Path(dir_okay=False))
@json_option
@pass_ctx
def inspect_cmd(ctx: Context, path: str) -> None:
    """Print the VMFS/LVM versions, stored device id, volume UUID and label of PATH.

    \b
    PATH is a whole LUN image or device (GPT, partition at LBA 2048) or a bare
    VMFS partition image.

    \b
    Examples:
      esxdr vmfs inspect /dev/zvol/rp1/iscsi/lun0
      esxdr vmfs inspect /tank/lab/lun0.img --json
    """
    from esxdr import vmfs as vm

    h = vm.inspect(path)
    ctx.emit(h.to_dict(), lambda: vm.describe(h))
