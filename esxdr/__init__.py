"""esxdr: disaster recovery for VMware datastores on ZFS-backed iSCSI LUNs."""

__version__ = "0.1.0"
