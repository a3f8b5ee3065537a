"""Where a recovery's facts come from: the production identities of the LUNs, the DR target's
admin transport, where the DR root mounts."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from esxdr.errors import (
    ManifestError,
    RemoteError,
    UsageError,
)
from esxdr.model import manifest as mf
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Target, View
from esxdr.plan import runbook as rb
from esxdr.replication import shipping
from esxdr.zfs import Zfs

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Site, StorageServer
    from esxdr.transport.base import Transport


def target_transport(server: StorageServer) -> Transport:
    """Where a target's admin commands (tgtadm) run.

    The DR service account's forced command (`esxdr serve`) allows zfs only, so the
    target is administered locally when it runs here: the server is ``local``, or its
    portal is a loopback address (a target listening on loopback is on this machine).
    Otherwise through the server's own transport (an account allowed to run the
    target's admin tool).
    """
    from esxdr.transport import LocalTransport, for_server
    from esxdr.vsphere.session import is_loopback

    if server.local or (server.target and is_loopback(server.target.portal_address)):
        return LocalTransport(server.name)
    return for_server(server)


def live_manifest(server: StorageServer, group: ProtectionGroup) -> Manifest | None:
    """What ``server``'s own target presents of the group now (None: no target, or none of the
    group's LUs), read through its admin transport (:func:`target_transport`)."""
    if server.target is None:
        return None  # no transport opened for nothing
    t = target_transport(server)
    try:
        return shipping.capture_manifest(server, group, t)
    finally:
        t.close()


def resolve_manifest(site: Site, group: ProtectionGroup, dr_zfs: Zfs | None = None, explicit: str | None = None, *,
                     pin_first_use: bool = True,
                     live: Callable[[], Manifest | None] | None = None) -> tuple[Manifest, str]:
    """The production identities of the group's LUNs, and where they came from. Precedence:

    1. ``--manifest FILE`` (the user said so; its LUN files must still lie inside their datasets);
    2. the manifest pinned on this box (``<state_dir>/pins/<group>.manifest.json``), checked against
       the one replication shipped to the DR root (``esxdr:manifest.*``): a shipped manifest is
       untrusted input (production's key can write it), so it is validated field by field, pinned
       the first time it is used here, and a later change of identity or paths is refused until
       ``esxdr target accept`` (:func:`esxdr.replication.shipping.trusted`; ``pin_first_use=False`` for read-only
       commands that may run off the DR box). A shipped manifest that fails validation is refused,
       never skipped for a weaker source;
    3. ``live()``: what production's own target presents now, for commands that run beside a
       reachable production before anything was shipped (``esxdr plan discover``);
    4. the site file's ``datasets[].naa`` with the LUN file convention ``<mountpoint>/lun.img``
       (product ids unknown: a volume whose header names another product id will not mount as-is).
    """

    if explicit:
        return shipping.check_for_group(mf.load(explicit), group, explicit, untrusted=False), explicit
    shipped = None
    if dr_zfs is not None:
        try:
            shipped = shipping.read(dr_zfs, group.dr_root, group)
        except RemoteError:
            shipped = None  # DR unreadable: the pin (if any) still says what production served
        except ManifestError as e:
            raise ManifestError(e.message, hint=shipping.refusal_hint(site.state_dir, group.name)) from None
    if shipped is not None and not shipped.logical_units:
        shipped = None
    found = shipping.trusted(site.state_dir, group, shipped, pin_first_use=pin_first_use)
    if found is not None:
        return found
    m = live() if live is not None else None
    if m is not None and m.logical_units:
        return m, f"production target ({site.storage_server(group.source).name}, read now)"
    return site_manifest(group), "site file (datasets[].naa)"


def site_manifest(group: ProtectionGroup) -> Manifest:
    units = []
    for i, ds in enumerate(group.datasets):
        spec = group.luns.get(ds)
        if not spec or not spec.naa:
            continue
        units.append(LogicalUnit(naa=Naa.parse(spec.naa), backing=Backing(kind="file", path=f"/{ds}/lun.img",
                                                                           dataset=ds),
                                 size_bytes=0, alias=ds.rsplit("/", 1)[-1], views=[View(lun=i + 1)]))
    if not units:
        raise UsageError(f"no target manifest for {group.name}: nothing shipped with the replica and no "
                         "datasets[].naa in the site file", hint="pass one with --manifest FILE (esxdr target export)")
    return Manifest(targets=[Target(iqn=f"iqn.2024-01.io.esxdr:{rb.safe_name(group.name)}")], logical_units=units)


def dr_mount_base(zfs: Zfs, dr_root: str, dr_obs: dict) -> str | None:
    """Where the DR root would mount, asked of the pool only when the root mounts nowhere itself
    (replication sets it to mountpoint=none so that no receive mounts a replica)."""
    root = dr_obs.get(dr_root)
    if root is not None and (root.mountpoint or "").startswith("/"):
        return None
    return zfs.natural_mountpoint(dr_root)
