"""The site file as typed, frozen values.

These are what the rest of esxdr works with; only :mod:`esxdr.site.loader`
builds them from YAML, after every check has passed. Paths are absolute,
durations are seconds, sizes are bytes, and secrets appear only as references
(an environment variable name or a file path), never as values.

Fields keep the order of the design so positional construction works in
tests; every field after the first few has a default.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Literal

from esxdr.errors import UsageError

Role = Literal["production", "dr"]
ZfsFlavour = Literal["auto", "openzfs", "legacy"]
TargetStack = Literal["comstar", "iscsitgt", "lio", "tgt"]
VsphereKind = Literal["esxi", "vcenter"]
Incremental = Literal["intermediate", "direct"]
Compression = Literal["auto", "zstd", "lz4", "none"]
Mbuffer = Literal["auto", "on", "off"]
Consistency = Literal["crash", "application"]

KEEP_PERIODS = ("hourly", "daily", "weekly", "monthly", "yearly")

# Runbook step kinds a callout may name (esxdr.plan.runbook; tests/unit/plan/test_callouts.py keeps them in step).
CALLOUT_STEP_KINDS = (
    # test start
    "hold", "container", "clone", "present", "network", "rescan", "verify", "register", "nics", "power",
    # failover / failback
    "shutdown", "replicate", "stop-replication", "unpresent-production", "guard", "promote",
    # the hand-offs of pull mode (production's for failover, DR's for failback)
    "snapshot", "seal", "publish-handoff",
    # test cleanup
    "poweroff", "unregister", "unpresent", "destroy", "uncontainer", "release",
)
CALLOUT_RUNS = ("test-start", "test-cleanup", "failover", "failback", "hand-off", "failback-hand-off")


@dataclass(frozen=True)
class TargetConfig:
    """The iSCSI target stack a storage server runs, and where it listens."""

    stack: TargetStack
    portal: str  # "addr:port" ("[v6addr]:port" for IPv6)
    control_port: int | None = None  # tgt only: tgtadm -C / tgtd --control-port
    iqn_prefix: str | None = None

    @property
    def portal_address(self) -> str:
        return self.portal.rsplit(":", 1)[0].strip("[]")

    @property
    def portal_port(self) -> int:
        return int(self.portal.rsplit(":", 1)[1])


@dataclass(frozen=True)
class StorageServer:
    name: str
    role: Role
    local: bool
    address: str | None
    port: int = 22
    user: str | None = None
    key: str | None = None  # absolute path of the SSH private key
    host_key: str | None = None  # pinned "SHA256:<base64>" fingerprint
    known_hosts: str | None = None  # absolute path
    zfs: ZfsFlavour = "auto"
    zfs_command: tuple[str, ...] = ("zfs",)
    serve_prefix: str | None = None  # the --allow-prefix of the DR service account
    # Pull mode, in production's site file: this DR server pulls from production, which holds no
    # key to it and never connects (`esxdr replicate --snapshot-only` is production's half).
    pulls: bool = False
    stream_ciphers: str = "auto"  # the data stream's ssh -c: auto | default | cipher,list
    target: TargetConfig | None = None
    line: int = 0

    @property
    def behind_serve(self) -> bool:
        """Reached through `esxdr serve` from here (a serve_prefix, and not this box): the account
        there refuses what removes or rewinds (and, --send-only, what writes), so that work runs on
        that box itself."""
        return bool(self.serve_prefix) and not self.local


@dataclass(frozen=True)
class VsphereEndpoint:
    name: str
    role: Role
    url: str
    user: str
    password_env: str | None = None
    password_file: str | None = None  # absolute path
    thumbprint: str | None = None  # SHA-256, upper-case colon hex
    ca_file: str | None = None  # absolute path
    kind: VsphereKind = "esxi"
    hosts: tuple[str, ...] = ()  # vCenter: the hosts esxdr acts on
    line: int = 0

    @property
    def plain_http(self) -> bool:
        """True for the loopback lab endpoints reached without TLS."""
        return self.url.startswith("http://")


@dataclass(frozen=True)
class KeepRules:
    """Grandfather-father-son retention: how many snapshots to keep per period."""

    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    last: int = 1  # the newest N, whatever their age

    def describe(self) -> str:
        parts = [f"{getattr(self, p)} {p}" for p in KEEP_PERIODS if getattr(self, p)]
        if self.last:
            parts.append(f"{self.last} last")
        return ", ".join(parts) or "nothing"


@dataclass(frozen=True)
class RetentionPolicy:
    source: KeepRules = field(default_factory=KeepRules)
    destination: KeepRules = field(default_factory=KeepRules)
    prune_foreign: bool = False  # also prune snapshots esxdr did not make


@dataclass(frozen=True)
class Schedule:
    """When replication runs. Both None: no schedule (run by hand only)."""

    every_seconds: int | None = None
    cron: str | None = None  # five fields: minute hour day-of-month month day-of-week
    timezone: str = "UTC"

    @property
    def manual(self) -> bool:
        return self.every_seconds is None and self.cron is None


@dataclass(frozen=True)
class NetworkMap:
    """Where a VM's production port group goes on the DR side."""

    failover: str
    test: str


@dataclass(frozen=True)
class VmSpec:
    name: str
    priority: int = 3  # 1 boots first
    depends_on: tuple[str, ...] = ()
    networks: dict[str, NetworkMap] = field(default_factory=dict, hash=False)  # production port group → map
    boot_timeout_seconds: int = 300
    shutdown_timeout_seconds: int = 300
    line: int = 0
    vmx: str | None = None  # "[datastore] dir/name.vmx" as production has it (esxdr plan discover writes it)


@dataclass(frozen=True)
class Callout:
    """Commands run on the esxdr host before and after a runbook step (``protection_groups.*.callouts``).

    ``step`` is a step kind (``power``: every power-on batch) or one step id (``power:1:1``,
    ``promote:rp1/iscsi/lun0``). A failing ``pre`` stops the run before the step; ``post`` always
    runs once the step was attempted, also when it (or its ``pre``) failed.
    """

    step: str
    pre: tuple[str, ...] | None = None  # argv
    post: tuple[str, ...] | None = None  # argv
    # or a plugin's kind of callout (esxdr.callouts entry point): (name, ((key, value), ...))
    pre_plugin: tuple[str, tuple[tuple[str, str], ...]] | None = None
    post_plugin: tuple[str, tuple[tuple[str, str], ...]] | None = None
    runs: tuple[str, ...] = ()  # run kinds (CALLOUT_RUNS) it applies to; () = every run
    timeout_seconds: int = 300
    line: int = 0

    @property
    def kind(self) -> str:
        return self.step.split(":", 1)[0]


@dataclass(frozen=True)
class LunSpec:
    """Optional identity of one dataset's LUN, as discovered or written by hand."""

    dataset: str  # full source dataset name
    naa: str | None = None  # "naa." + lower-case hex
    datastore: str | None = None
    vmfs_uuid: str | None = None
    line: int = 0


@dataclass(frozen=True)
class ProtectionGroup:
    name: str
    source: str  # storage server (role production)
    destination: str  # storage server (role dr)
    source_root: str
    dr_root: str
    datasets: tuple[str, ...] = ()  # full source dataset names
    incremental: Incremental = "intermediate"  # zfs send -I (intermediate) or -i (direct)
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    schedule: Schedule = field(default_factory=Schedule)
    rpo_seconds: int = 86400
    parallel: int = 4
    compression: Compression = "auto"
    bandwidth_limit: int | None = None  # bytes per second
    mbuffer: Mbuffer = "auto"
    consistency: Consistency = "crash"
    vsphere_production: str | None = None
    vsphere_dr: str | None = None
    vms: tuple[VmSpec, ...] = ()
    line: int = 0
    luns: dict[str, LunSpec] = field(default_factory=dict, hash=False)  # by full source dataset name
    callouts: tuple[Callout, ...] = ()  # pre/post commands per runbook step
    bookmarks: bool = False  # bookmark the newest common snapshot on the source; use it as -i base (OpenZFS)
    # For audit: the last successful drill may be at most this old (the report index and `esxdr
    # status` flag it). The group's own `drill_max_age`, else the site's; None: no limit.
    drill_max_age_seconds: int | None = None

    def dr_dataset(self, source_dataset: str) -> str:
        """The DR dataset a source dataset replicates into (source_root prefix → dr_root)."""
        if source_dataset == self.source_root:
            return self.dr_root
        prefix = self.source_root + "/"
        if not source_dataset.startswith(prefix):
            raise ValueError(f"{source_dataset} is not under {self.source_root}")
        return self.dr_root + "/" + source_dataset[len(prefix):]

    def source_dataset(self, dr_dataset: str) -> str:
        """The inverse of :meth:`dr_dataset` (for reprotect and failback)."""
        if dr_dataset == self.dr_root:
            return self.source_root
        prefix = self.dr_root + "/"
        if not dr_dataset.startswith(prefix):
            raise ValueError(f"{dr_dataset} is not under {self.dr_root}")
        return self.source_root + "/" + dr_dataset[len(prefix):]

    @property
    def dr_datasets(self) -> tuple[str, ...]:
        return tuple(self.dr_dataset(d) for d in self.datasets)

    def vm(self, name: str) -> VmSpec:
        for v in self.vms:
            if v.name == name:
                return v
        raise KeyError(name)


@dataclass(frozen=True)
class VSwitch:
    name: str
    uplinks: tuple[str, ...] = ()
    mtu: int = 1500
    active: tuple[str, ...] = ()  # the loader fills this with the uplinks when not given
    standby: tuple[str, ...] = ()
    ports: int = 128


@dataclass(frozen=True)
class PortGroupSpec:
    name: str
    vswitch: str
    vlan: int = 0
    active_uplinks: tuple[str, ...] | None = None  # None: inherit the vSwitch's order
    standby_uplinks: tuple[str, ...] | None = None
    isolated: bool = False  # only for validation drills: must not reach production


@dataclass(frozen=True)
class VmkernelNic:
    name: str  # "vmk1"
    port_group: str
    ip: str | None = None  # "10.20.0.11/24"; None = DHCP
    mtu: int = 1500


@dataclass(frozen=True)
class Portal:
    address: str
    port: int = 3260


@dataclass(frozen=True)
class StaticTarget:
    address: str
    port: int
    iqn: str


@dataclass(frozen=True)
class ChapSpec:
    name: str
    secret_file: str | None = None  # absolute path
    secret_env: str | None = None


@dataclass(frozen=True)
class IscsiSpec:
    enabled: bool = True
    bind: tuple[str, ...] = ()  # vmk names bound to the software iSCSI adapter
    send_targets: tuple[Portal, ...] = ()
    static_targets: tuple[StaticTarget, ...] = ()
    chap: ChapSpec | None = None


@dataclass(frozen=True)
class HostNetwork:
    """The desired network of one DR ESXi host (what `esxdr host plan|apply` enforces)."""

    host: str  # a vsphere endpoint (role dr, kind esxi) or a host of a DR vCenter
    vswitches: dict[str, VSwitch] = field(default_factory=dict, hash=False)
    port_groups: dict[str, PortGroupSpec] = field(default_factory=dict, hash=False)
    vmkernel: dict[str, VmkernelNic] = field(default_factory=dict, hash=False)
    iscsi: IscsiSpec | None = None
    endpoint: str = ""  # the vsphere endpoint that manages this host
    line: int = 0


@dataclass(frozen=True)
class Site:
    path: str  # absolute path of the site file
    version: int
    name: str
    state_dir: str
    # Mappings are left out of the hash (dicts are not hashable), so every value here can go in a set.
    storage: dict[str, StorageServer] = field(hash=False)
    vsphere: dict[str, VsphereEndpoint] = field(hash=False)
    protection_groups: dict[str, ProtectionGroup] = field(hash=False)
    dr_network: dict[str, HostNetwork] = field(hash=False)
    drill_max_age_seconds: int | None = None  # the site-wide `drill_max_age`, every group's default

    def group(self, name: str | None = None) -> ProtectionGroup:
        """A protection group by name, or the only one when none is named; an unknown name is a
        usage error with a suggestion, and so is no name where the site has several groups."""
        if name is None:
            if len(self.protection_groups) != 1:
                raise UsageError("name the protection group",
                                 hint="known: " + (", ".join(sorted(self.protection_groups)) or "none"))
            return next(iter(self.protection_groups.values()))
        try:
            return self.protection_groups[name]
        except KeyError:
            raise UsageError(f"no protection group {name!r} in {self.path}",
                             hint=_known_hint(name, self.protection_groups)) from None

    def groups(self, name: str | None = None) -> list[ProtectionGroup]:
        """One group (by name) or all of them, for commands taking an optional GROUP."""
        return [self.group(name)] if name else list(self.protection_groups.values())

    def with_group(self, group: ProtectionGroup) -> Site:
        """This site with ``group`` in place of its namesake (a reversed view, for the replication engine)."""
        return dataclasses.replace(self, protection_groups={**self.protection_groups, group.name: group})

    def group_names(self, name: str | None = None) -> list[str]:
        """The named group, or every group (sorted) when none is named; a site without any is an error."""
        if name is None and not self.protection_groups:
            raise UsageError(f"{self.path} defines no protection_groups")
        return [self.group(name).name] if name else sorted(self.protection_groups)

    def storage_server(self, name: str) -> StorageServer:
        try:
            return self.storage[name]
        except KeyError:
            raise UsageError(f"no storage server {name!r} in {self.path}",
                             hint=_known_hint(name, self.storage)) from None

    def endpoint(self, name: str) -> VsphereEndpoint:
        try:
            return self.vsphere[name]
        except KeyError:
            raise UsageError(f"no vsphere endpoint {name!r} in {self.path}",
                             hint=_known_hint(name, self.vsphere)) from None

    def endpoint_for_host(self, host: str) -> VsphereEndpoint | None:
        """The endpoint that manages a host: the ESXi endpoint of that name, or a vCenter listing it."""
        if host in self.vsphere:
            return self.vsphere[host]
        for ep in self.vsphere.values():
            if host in ep.hosts:
                return ep
        return None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `esxdr site show` and --json (secrets are references already)."""
        return _plain(self)


def _known_hint(name: str, known: dict[str, Any]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    listing = ", ".join(known) or "none"
    return (f"did you mean {close[0]!r}? " if close else "") + f"known: {listing}"


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.name != "line"}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value
