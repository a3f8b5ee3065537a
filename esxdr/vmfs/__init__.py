"""Read (and, for the lab, write) the VMFS volume headers esxdr needs: ``header`` reads, ``write``
writes; this module re-exports both.

ESXi decides whether a VMFS volume "mounts as-is" or "shows as a snapshot" by
comparing the device id stored in the volume's LVM header with the id of the
LUN it now sits on; a volume spanning several LUNs needs all of them. esxdr
reads those headers to predict the outcome before ESXi is touched. dissect.vmfs
is AGPL-3.0, so the fields are read here; docs/vmfs.md gives the layout, where
each part of it comes from and how it was checked against independent readers
(vmfs-tools, vmfs6-tools) and real images (dissect.vmfs's test data).

Layout on a LUN, in short (P = partition start, V = P + dataOffset)::

    LBA 2048                 GPT partition (P = 0 for a bare partition image)
    P + 0x100000             LVM device header: magic 0xC001D00D, major 5/6, SCSI_DiskId
                             at +0x0C, totalBytes, dataOffset (0x1100000), device UUID
    P + 0x100000 + md        volume table (md = 0x200 for LVM5, mdAlignment 0x1000 for
                             LVM6): logical size, LVM UUID, first/last 256 MiB physical
                             extent (PE) of this device, number of devices
    ... + SD table           device names of every extent ("naa.<hex>:1"), head only
    ... PE bitmap + table    physical -> logical offset of this device's PEs
    V + 0x200000             FS3 descriptor (head extent only): magic 0x2FABF15E, major
                             (14 = VMFS5, 24 = VMFS6), UUID, label, block size, LVM UUID
    V + 0x300000 ...         heartbeats, then the file descriptor cluster (FDC: inodes),
                             the root directory and the resource files (.fbb.sf, .fdc.sf,
                             .pbc.sf, .sbc.sf, .vh.sf, .pb2.sf)

The lab writer (:func:`write_volume`) writes all of that, so that vmfs6-tools'
``debugvmfs6`` (and vmfs-tools' ``debugvmfs`` for VMFS5) open the filesystem
and print UUID and label. The resource bitmaps are present but empty: these
are identity-carrying images for tests, not a filesystem ESXi could write to.

Device id of an NAA LUN (SCSI_DiskId): type 3 (the VPD 0x83 designator type),
``id`` = the NAA designator as binary bytes followed by the first 6 characters
of the product id, ``len`` = 22 for an NAA-6. docs/vmfs.md holds the evidence;
:func:`matches` also accepts the NAA as 32 hex characters (what esxdr and
esxsim wrote before) so that older lab images still match.
"""

from esxdr.vmfs.header import (  # noqa: F401
    DEFAULT_DATA_OFFSET,
    DISKID_TYPE_NAA,
    DISKID_TYPE_T10,
    FILE_BLOCK,
    FS3_MAGIC,
    FS3_MAGIC_L,
    FS3_MAJOR,
    FS3_OFFSET,
    GPT_PART_LBA,
    LVM_MAGIC,
    LVM_OFFSET,
    MAX_EXTENTS,
    PE_ENTRY,
    PE_SIZE,
    PRODUCT_CHARS,
    SD_ENTRY,
    VMFS_MAJOR_FOR,
    VMFS_TYPE_GUID,
    VT_ENTRY,
    DiskId,
    LvmInfo,
    VmfsHeader,
    Volume,
    describe,
    expected_device_id,
    format_uuid,
    group_volumes,
    incomplete,
    inspect,
    lun_differs,
    lvm_layout,
    matches,
    naa_hex,
    new_uuid,
    parse_uuid,
    read_header,
    show_device_id,
    try_read_header,
)
from esxdr.vmfs.write import (  # noqa: F401
    FS_BLOCKS,
    Extent,
    disk_id_bytes,
    filesystem_writes,
    min_size,
    write_vmfs,
    write_volume,
)
