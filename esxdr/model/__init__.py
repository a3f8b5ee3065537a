"""Pure values shared by the planners (esxdr.plan) and the adapters: no I/O, no adapter imports.

- ``zfs``: snapshots, bookmarks, datasets and a zfs stack's capabilities, as observed;
- ``manifest``: the portable target manifest (LUs, targets, ACLs), its validation and its files;
- ``identity``: NAA designators, iSCSI names, ACL members, dataset names and LUN files, checked;
- ``host``: what an ESXi host looks like (vSwitches, port groups, iSCSI, LUNs, datastores, VMs).

This module re-exports the zfs values, which nearly every layer uses.
"""

from esxdr.model.zfs import LEGACY, OPENZFS, Bookmark, Capabilities, Dataset, Snapshot

__all__ = ["LEGACY", "OPENZFS", "Bookmark", "Capabilities", "Dataset", "Snapshot"]
