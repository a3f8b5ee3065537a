"""What an ESXi host looks like, as plain values (no pyVmomi here).

:mod:`esxdr.vsphere.inventory` fills these from one RetrievePropertiesEx; the pure planner
(:mod:`esxdr.plan.host`) and the storage verification compare them with the site file and
the target manifest. Unit tests build them by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ObservedVSwitch:
    name: str
    uplinks: tuple[str, ...] = ()
    mtu: int = 1500
    active: tuple[str, ...] = ()  # teaming failover order (vSwitch level)
    standby: tuple[str, ...] = ()
    ports: int = 128


@dataclass(frozen=True)
class ObservedPortGroup:
    name: str
    vswitch: str
    vlan: int = 0
    # The port group's own teaming override; None means "inherit the vSwitch's order".
    active: tuple[str, ...] | None = None
    standby: tuple[str, ...] | None = None
    # What ESXi computed from both levels (what BindVnic looks at).
    effective_active: tuple[str, ...] = ()
    effective_standby: tuple[str, ...] = ()


@dataclass(frozen=True)
class ObservedVnic:
    device: str  # vmk1
    port_group: str
    dhcp: bool = False
    ip: str | None = None
    netmask: str | None = None
    mtu: int = 1500


@dataclass(frozen=True)
class ObservedIscsi:
    """The software iSCSI adapter. ``bound`` is None when bindings were not read."""

    device: str  # vmhba65
    iqn: str
    send_targets: tuple[tuple[str, int], ...] = ()
    static_targets: tuple[tuple[str, int, str], ...] = ()  # configured by hand (staticMethod)
    discovered: tuple[tuple[str, int, str], ...] = ()  # found through send targets
    chap_name: str | None = None
    chap_enabled: bool = False
    bound: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ObservedLun:
    canonical_name: str  # naa.…
    uuid: str = ""
    vendor: str = ""
    model: str = ""
    serial: str = ""
    capacity_bytes: int = 0
    paths: tuple[str, ...] = ()  # vmhba65:C0:T0:L1
    adapters: tuple[str, ...] = ()  # vmhba65
    targets: tuple[str, ...] = ()  # target IQNs it is reached through


@dataclass(frozen=True)
class ObservedDatastore:
    name: str
    moid: str
    vmfs_uuid: str | None = None
    extents: tuple[str, ...] = ()  # naa.… disk names
    accessible: bool = True
    force_mounted: bool = False
    url: str = ""


@dataclass(frozen=True)
class ObservedVm:
    name: str
    moid: str
    vmx_path: str = ""
    power_state: str = "poweredOff"
    question_id: str | None = None
    question_text: str = ""
    heartbeat: str = "gray"
    tools_running: bool = False


@dataclass(frozen=True)
class UnresolvedVolume:
    """A VMFS volume ESXi sees but does not mount (it looks like a snapshot/copy)."""

    vmfs_uuid: str
    label: str
    extents: tuple[str, ...] = ()  # naa.… disk names it was found on
    device_paths: tuple[str, ...] = ()  # /vmfs/devices/disks/naa.…:1 (what resolve calls take)
    reason: str = ""  # diskIdMismatch, uuidConflict, …
    resolvable: bool = True
    multiple_copies: bool = False


@dataclass(frozen=True)
class Created:
    """What esxdr itself created on one host, as `esxdr host apply` recorded it.

    ESXi keeps no note of who made a vSwitch, a port group or a VMkernel NIC, and real hosts
    carry objects that are not the administrator's either (Dell's hidden ``vSwitchiDRACvusb``
    with ``vmk1`` at 169.254.0.2). ``--prune`` removes only what is listed here, and only while
    it is still what was recorded: a port group on the same vSwitch, a NIC on the same port group.
    """

    vswitches: frozenset[str] = frozenset()
    port_groups: frozenset[tuple[str, str]] = frozenset()  # (port group, its vSwitch)
    vnics: frozenset[tuple[str, str]] = frozenset()  # (device, its port group)


@dataclass(frozen=True)
class HostState:
    """One host as observed. ``refs`` maps configManager roles to managed object ids."""

    name: str
    moid: str
    refs: dict[str, str] = field(default_factory=dict, hash=False)
    pnics: tuple[str, ...] = ()
    vswitches: dict[str, ObservedVSwitch] = field(default_factory=dict, hash=False)
    port_groups: dict[str, ObservedPortGroup] = field(default_factory=dict, hash=False)
    vnics: dict[str, ObservedVnic] = field(default_factory=dict, hash=False)
    software_iscsi_enabled: bool = False
    iscsi: ObservedIscsi | None = None
    luns: dict[str, ObservedLun] = field(default_factory=dict, hash=False)
    datastores: dict[str, ObservedDatastore] = field(default_factory=dict, hash=False)
    vms: dict[str, ObservedVm] = field(default_factory=dict, hash=False)

    def uplink_owner(self, pnic: str) -> str | None:
        """The vSwitch that holds ``pnic`` as an uplink (an uplink belongs to one vSwitch)."""
        return next((v.name for v in self.vswitches.values() if pnic in v.uplinks), None)

    def vnic_on(self, port_group: str) -> ObservedVnic | None:
        return next((v for v in self.vnics.values() if v.port_group == port_group), None)

    def datastore_by_uuid(self, vmfs_uuid: str) -> ObservedDatastore | None:
        return next((d for d in self.datastores.values() if d.vmfs_uuid == vmfs_uuid), None)
