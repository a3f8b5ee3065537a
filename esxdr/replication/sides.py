"""The two sides of a replication: what a run opens on each storage server, and the names both share.

A side is a transport, the zfs adapter on it and the stack's capabilities. Which site a run sees
the sides through is decided here too: a pull sees production through its send-only account, and
what only DR may do (roll back, prune behind serve) runs with the DR box's own view.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from esxdr.errors import UsageError
from esxdr.model import Capabilities
from esxdr.plan.retention import esxdr_prefix
from esxdr.transport import for_server
from esxdr.transport.base import Transport
from esxdr.zfs import Zfs, pool_is_here
from esxdr.zfs.capabilities import detect

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Site


def snapshot_name(group: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{esxdr_prefix(group)}{now.strftime('%Y%m%dT%H%M%SZ')}"


def hold_tag(group: str) -> str:
    return f"esxdr_{group}"


def state_path(state_dir: str, group: str, kind: str = "failover") -> Path:
    """The journal of a failover, failback, reprotect or hand-off (``kind``) of the group."""
    return Path(state_dir) / "failover" / f"{group}.{kind}.json"


def failover_marker(state_dir: str, group: str) -> Path:
    """Present while the group is failed over (esxdr failover): the DR datasets are live and
    replication from production must not touch them until failback."""
    return Path(state_dir) / "failover" / f"{group}.replication-stopped"


@dataclass
class Side:
    name: str
    transport: Transport
    zfs: Zfs
    caps: Capabilities
    local: bool
    address: str | None = None
    # Reached through `esxdr serve` (the site names its serve_prefix): the account there may not
    # release, destroy or roll back, so this side's retention and rollbacks run on the box itself.
    guarded: bool = False


def refuse_unreachable(site: Site, server_name: str) -> None:
    """A DR box that pulls is never connected to from production: refused before anything else
    is touched, so nothing runs on production (no snapshot) for a job that cannot finish."""
    if site.storage[server_name].pulls:
        raise UsageError(f"{server_name} pulls from production (pulls: true): esxdr on this box holds no key to it "
                         "and never connects there",
                         hint=f"here: esxdr replicate GROUP --snapshot-only; on {server_name}, with its own site file: "
                              "esxdr replicate GROUP --pull (and status, prune --side dr, drills, failover)")


def open_side(site: Site, server_name: str, *, prewarm: bool = False) -> Side:
    refuse_unreachable(site, server_name)
    server = site.storage[server_name]
    transport = for_server(server, site.state_dir)
    if prewarm and hasattr(transport, "prewarm"):
        # with a remembered host key the stream's SSH master authenticates beside paramiko's
        # import and handshake instead of after them
        transport.prewarm(connect=False)
    zfs_cmd = tuple(server.zfs_command) if server.local else ("zfs",)
    caps = detect(transport, zfs_cmd, server.zfs, os.path.join(site.state_dir, "hosts"))
    return Side(name=server_name, transport=transport, zfs=Zfs(transport, caps, zfs_cmd), caps=caps,
                local=server.local, address=server.address,
                guarded=server.behind_serve)


def on_dr_box(site: Site, server_name: str, *, what: str = "failover", refused: str = "promote replicas",
              dataset: str | None = None) -> Site:
    """The site as seen from the DR box: ``server_name`` is local (its own zfs, its own tgtadm).

    A loopback address counts as this machine only where ``dataset``'s pool is here too: a port
    forwarded to a VM (the OpenZFS lane) is also 127.0.0.1, and its pools are not this machine's."""
    from esxdr.vsphere.session import is_loopback

    server = site.storage_server(server_name)
    if server.local:
        return site
    here = bool(server.address and is_loopback(server.address))
    if here and dataset:
        here = pool_is_here(dataset.split("/", 1)[0])
    if not here:
        raise UsageError(f"{what} acts on {server_name} with its own privileges, and esxdr reaches it through "
                         f"{server.user or 'an account'}@{server.address} (esxdr serve may not {refused})",
                         hint=f"run esxdr on {server_name} itself, with a site file in which storage.{server_name} "
                              "has local: true")
    storage = {**site.storage, server_name: dataclasses.replace(server, local=True, zfs_command=("zfs",))}
    return dataclasses.replace(site, storage=storage)


def pull_site(site: Site, group: ProtectionGroup) -> Site:
    """The site for a pull: production reached through its send-only account, DR on this box.

    Pull mode is zrepl's answer to an untrusted source: production holds no key to DR at all."""
    src = site.storage_server(group.source)
    if not src.behind_serve:
        why = "local: true here" if src.local else "not behind esxdr serve (no serve_prefix)"
        raise UsageError(f"--pull reads {group.source} through its send-only account, but storage.{group.source} is "
                         f"{why}",
                         hint=f"run --pull on the DR box, with a site file in which storage.{group.source} has "
                              f"address, user, key and serve_prefix: {group.source_root} (its account runs esxdr "
                              "serve --send-only: esxdr keys authorized-line GROUP --pull prints the line)")
    dst = site.storage_server(group.destination)
    if dst.local:
        return site
    return on_dr_box(site, group.destination, what="--pull", refused="run a pull: DR pulls from where it is",
                     dataset=group.dr_root)


def dr_side_site(site: Site, group: ProtectionGroup, what: str, refused: str) -> Site:
    """The site as the DR box sees it, for what only DR may do to its replicas (roll back, prune).

    A DR reached through `esxdr serve` refuses those through the replication key; esxdr then has
    to run on the DR box (or, in the lab, beside it on a loopback address)."""
    server = site.storage_server(group.destination)
    if not server.behind_serve:
        return site
    return on_dr_box(site, group.destination, what=what, refused=refused, dataset=group.dr_root)


def both(a: Callable, b: Callable) -> tuple:
    """Run two independent steps, one per side, at the same time (each side's latency overlaps)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        fb = pool.submit(b)
        ra = a()
        return ra, fb.result()
