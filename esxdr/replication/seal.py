"""A replica is sealed: read-only and never mounted on DR. Drills use clones, failover promotes it."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from esxdr.model import Dataset
from esxdr.replication.sides import Side
from esxdr.zfs.errors import NotMounted


def heal_seals(group_name: str, dst: Side, dests: list[str], dst_obs: dict[str, Dataset], *, dry_run: bool,
               say: Callable[[str], None]) -> None:
    """Seal replicas a killed run received but did not get to seal.

    A writable replica could be changed on DR (and then refuse the next receive), and on
    pool v23 a mounted one reads stale blocks after an incremental receive. A failed-over
    group never gets here (the run is refused), so a writable replica is a left-over.
    """
    for dest in dests:
        ds = dst_obs.get(dest)
        if ds is None or ds.readonly is not False or not ds.snapshots:
            continue
        say(f"{group_name}: seal {dest} (left writable by an interrupted run)")
        if not dry_run:
            seal_replica(dst, dest, ds.type, mounted=(ds.mountpoint or "").startswith("/"))


def seal_replica(dst: Side, dest: str, kind: str, mounted: bool) -> None:
    """A replica is never written or mounted on DR; drills use clones and failover promotes it.

    Unmounted also because zfs-fuse does not invalidate the kernel page cache when an
    incremental receive lands in a mounted filesystem: readers would see stale blocks.
    """
    props = {"readonly": "on"}
    if kind == "filesystem":
        props["canmount"] = "noauto"
        if mounted:
            # a mountpoint of its own (an operator's, or a failed-over dataset's): back to the DR
            # root's scheme, where no receive mounts it
            props["mountpoint"] = "none"
    if dst.caps.flavour != "legacy" or kind != "filesystem":
        dst.zfs.set_props(dest, props)
        return
    # A replica that can be mounted is unmounted first: then the properties are plain metadata
    # changes (readonly=on on a mounted zfs-fuse filesystem remounts it) and, legacy `zfs set`
    # taking one property per call, go in parallel.
    if mounted:
        try:
            dst.zfs.unmount(dest)
        except NotMounted:
            pass  # a run killed after this unmount left it unmounted: the state wanted
    with ThreadPoolExecutor(max_workers=len(props)) as pool:
        list(pool.map(lambda kv: dst.zfs.set_props(dest, dict([kv])), props.items()))
