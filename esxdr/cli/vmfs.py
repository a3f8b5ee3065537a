"""`esxdr vmfs`: look at the VMFS headers on LUN images, devices or partition images."""

from __future__ import annotations

import click

from esxdr.cli.main import Context, json_option, pass_ctx


@click.group(help="Read VMFS volume headers (LVM device id, UUID, label, extents).")
def vmfs() -> None:
    pass


@vmfs.command("inspect")
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(dir_okay=False))
@json_option
@pass_ctx
def inspect_cmd(ctx: Context, paths: tuple[str, ...]) -> None:
    """Print the VMFS/LVM versions, stored device id, LVM UUID, extent, volume UUID and label of
    each PATH.

    \b
    PATH is a whole LUN image or device (GPT, partition at LBA 2048) or a bare
    VMFS partition image. An LVM extent without the VMFS descriptor (a non-head
    extent of a datastore spanning LUNs, or an LVM volume without VMFS) is read
    too. Give every extent of a spanned datastore to see each one's ordinal and
    whether the volume is complete.

    \b
    Examples:
      esxdr vmfs inspect /dev/zvol/rp1/iscsi/lun0
      esxdr vmfs inspect /tank/lab/lun0.img /tank/lab/lun1.img --json
    """
    from esxdr import vmfs as vm

    found = [(p, vm.inspect(p)) for p in paths]
    volumes = vm.group_volumes(found)
    by_path = {w: v for v in volumes for w, _ in v.extents}

    def extent(p: str, h) -> dict:
        v = by_path[p]
        return {"path": p, **h.to_dict(), "ordinal": v.ordinal(p)}

    data: dict = {"extents": [extent(p, h) for p, h in found],
            "volumes": [{"lvm_uuid": v.lvm_uuid, "uuid": v.uuid, "label": v.label, "devices": v.num_devices,
                         "extents": [w for w, _ in v.extents], "complete": not v.missing(),
                         "missing": v.missing()} for v in volumes]}
    if len(paths) == 1:  # one device: its header at the top level, as before
        data = {**data["extents"][0], "volume": data["volumes"][0]}

    def text() -> str:
        parts = []
        for p, h in found:
            parts.append((f"{p}:\n" if len(paths) > 1 else "") + vm.describe(h, by_path[p], p))
        for v in volumes:
            if v.missing():
                parts.append(v.describe_missing())
            elif v.num_devices > 1:
                parts.append(f"volume {v.label}: complete, {v.num_devices} extents")
        return "\n\n".join(parts)

    ctx.emit(data, text)
