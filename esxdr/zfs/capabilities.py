"""Which zfs a host runs, detected once and cached in the state dir.

A no-op replication must cost at most two remote zfs calls per side, so the
probe (one call: ``esxdr-capabilities`` through `esxdr serve`, else
``zfs version``) runs only when the cache has no entry for the host.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from esxdr.errors import CommandFailed
from esxdr.model import LEGACY, OPENZFS, Capabilities
from esxdr.transport.base import Transport
from esxdr.transport.local import LocalTransport
from esxdr.util import atomic_write
from esxdr.zfs import capabilities_from_probe


def probe(transport: Transport, zfs_command: tuple[str, ...]) -> Capabilities:
    if isinstance(transport, LocalTransport):
        from esxdr.serve import capabilities

        return capabilities_from_probe(capabilities(list(zfs_command)))
    r = transport.run(["esxdr-capabilities"], check=False, timeout=60)
    if r.returncode == 0:
        try:
            return capabilities_from_probe(json.loads(r.stdout))
        except (ValueError, TypeError):
            pass
    try:
        out = transport.run([*zfs_command, "version"], timeout=60).stdout
        return capabilities_from_probe({"openzfs": True, "zfs_version": out.splitlines()[0] if out else None,
                                        "zfs_kmod_version": next((ln for ln in out.splitlines()
                                                                  if ln.startswith("zfs-kmod-")), None)})
    except CommandFailed:
        return LEGACY


def detect(transport: Transport, zfs_command: tuple[str, ...], setting: str, cache_dir: str | None) -> Capabilities:
    """Capabilities for a host: forced by the site file (zfs: openzfs|legacy) or probed and cached."""
    cache = Path(cache_dir) / f"{transport.name}.json" if cache_dir else None
    # One box may keep two site files for one server, each reaching it through another account
    # (the DR box: production's send-only account to pull, an admin account for failback). What
    # the probe found depends on the account (esxdr serve reports its compressors, a plain account
    # does not), so an entry holds only for the way it was probed.
    via = reached_via(transport)
    if cache and cache.exists():
        try:
            cached = json.loads(cache.read_text())
            caps = Capabilities.from_dict(cached)
            # an entry written before the cache knew snapshots_changed is probed again, once
            if setting in ("auto", caps.flavour) and cached.get("via", via) == via and "snapshots_changed" in cached:
                return caps
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    caps = probe(transport, zfs_command)
    if setting in ("openzfs", "legacy") and caps.flavour != setting:
        base = OPENZFS if setting == "openzfs" else LEGACY
        caps = dataclasses.replace(base, compressors=caps.compressors, mbuffer=caps.mbuffer,
                                   snapshots_changed=caps.snapshots_changed and setting == "openzfs")
    if cache:
        atomic_write(cache, json.dumps({**caps.to_dict(), "via": via}), dir_mode=0o777)
    return caps


def reached_via(transport: Transport) -> str:
    """How this box reaches the host: "local", or user@address:port."""
    if isinstance(transport, LocalTransport):
        return "local"
    return f"{getattr(transport, 'user', None) or ''}@{getattr(transport, 'address', '')}:{getattr(transport, 'port', '')}"
