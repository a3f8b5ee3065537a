"""Which way a replication stream can go between two zfs flavours, and why.

Measured in the OpenZFS lane (scripts/openzfs-lane: OpenZFS 2.1.11 in the guest,
zfs-fuse 0.7 / pool version 23 on the host), plain ``zfs send`` without flags:

- pool-v23 → OpenZFS: works, full and incremental. OpenZFS keeps the replica at
  the sender's filesystem version (4), so a zfs-fuse production can replicate into
  a newer OpenZFS DR box.
- OpenZFS → pool-v23, filesystem at ZPL version 5 (the OpenZFS default): refused,
  "stream has unsupported feature, feature flags = 4" (SA_SPILL: version 5 keeps
  file attributes as system attributes). So failback of such a filesystem to
  pool-v23 production is impossible by stream.
- OpenZFS → pool-v23, filesystem created with version=4, or a zvol: received.
  (zfs-fuse then holds the zvol but cannot present it as a block device.)
- Any stream with -c/-L/-e/-w (compressed, large blocks, embedded, raw) into pool
  v23: refused ("feature flags = 420000" for -c).

``stream_direction`` is the plan-time verdict (pure: both sides' capabilities and
what is known of the dataset); ``receive_refusal`` recognises the receiver's error
text when a stream is tried anyway, so that it surfaces as a permanent, explained
error and not as a transient one worth retrying.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from esxdr.errors import CommandFailed
from esxdr.model import Capabilities


@dataclass(frozen=True)
class Direction:
    ok: bool
    reason: str


def stream_direction(src: Capabilities, dst: Capabilities, kind: str = "filesystem",
                     zpl_version: int | None = None, raw: bool = False) -> Direction:
    """Can ``src`` send a stream of this dataset that ``dst`` receives? With the reason either way.

    ``zpl_version`` is the filesystem's ``version`` property when known (None: assume
    OpenZFS's default, 5).
    """
    if src.flavour == "openzfs" and dst.flavour == "legacy":
        if raw:
            return Direction(False, "raw (-w) OpenZFS streams carry feature flags pool-version-23 zfs cannot receive")
        if kind == "volume":
            return Direction(True, "a plain OpenZFS zvol stream is received by pool-version-23 zfs (zfs-fuse "
                                   "stores it but cannot present zvols as block devices)")
        if zpl_version is not None and zpl_version <= 4:
            return Direction(True, f"a ZPL version {zpl_version} filesystem's plain stream is received by "
                                   "pool-version-23 zfs")
        return Direction(False, "OpenZFS filesystems at ZPL version 5 send system attributes (stream feature "
                                "SA_SPILL) that pool-version-23 zfs cannot receive; only version=4 filesystems "
                                "and zvols go that way")
    if src.flavour == "legacy" and dst.flavour == "openzfs":
        return Direction(True, "OpenZFS receives the pool-version-23 stream format; the replica keeps the old "
                               "filesystem version (do not `zfs upgrade` it on DR, or failback is impossible)")
    return Direction(True, f"same stream format ({src.flavour})")


def directions(a: str, a_caps: Capabilities, b: str, b_caps: Capabilities, kind: str = "filesystem",
               zpl_version: int | None = None) -> list[str]:
    """Both directions between two hosts, as lines to show (replication and failback)."""
    out = []
    for (x, xc), (y, yc), what in (((a, a_caps), (b, b_caps), "replication"), ((b, b_caps), (a, a_caps), "failback")):
        d = stream_direction(xc, yc, kind, zpl_version)
        out.append(f"{x} → {y} ({what}): {'possible' if d.ok else 'NOT possible'} — {d.reason}")
    return out


# What a pool-v23 receiver prints for a stream it cannot read: the first seen in the lane
# (zfs-fuse 0.7), the second is libzfs's text for ENOTSUP from the kernel (a stream version
# above the pool's).
_REFUSAL = [
    re.compile(r"stream has unsupported feature", re.I),
    re.compile(r"pool must be upgraded to receive this stream", re.I),
]


class StreamFormatError(CommandFailed):
    """The receiver cannot read this sender's stream format: permanent, retrying cannot help."""


def receive_refusal(err: CommandFailed, stderr_folded: str, dataset: str | None) -> StreamFormatError | None:
    if not any(p.search(stderr_folded) for p in _REFUSAL):
        return None
    d = stream_direction(_openzfs(), _legacy())
    return StreamFormatError(
        f"{err.host or 'receiver'}: cannot receive the stream{f' into {dataset}' if dataset else ''}: the sender's "
        f"stream format is newer than this zfs understands ({stderr_folded})",
        argv=err.argv, returncode=err.returncode, stderr=err.stderr, host=err.host,
        hint=f"{d.reason}. Replicate the other way (old → new), or run the same zfs generation on both sides")


def _openzfs() -> Capabilities:
    from esxdr.model import OPENZFS

    return OPENZFS


def _legacy() -> Capabilities:
    from esxdr.model import LEGACY

    return LEGACY
