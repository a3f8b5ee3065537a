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
- OpenZFS → pool-v23, a version-4 filesystem that came from pool v23 (a DR replica going
  back, also after OpenZFS wrote new files and directories into it), or a zvol: received and
  readable. (zfs-fuse then holds the zvol but cannot present it as a block device.)
- OpenZFS → pool-v23, a filesystem CREATED on OpenZFS with version=4: received (exit 0), but
  zfs-fuse cannot open it: its root reads as "No such file or directory". Refused too.
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
from typing import TYPE_CHECKING

from esxdr.errors import CommandFailed, ConflictError, UsageError
from esxdr.model import LEGACY, OPENZFS, Capabilities, Dataset

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup


@dataclass(frozen=True)
class Direction:
    ok: bool
    reason: str


def stream_direction(src: Capabilities, dst: Capabilities, kind: str = "filesystem",
                     zpl_version: int | None = None, raw: bool = False, replica: bool | None = None) -> Direction:
    """Can ``src`` send a stream of this dataset that ``dst`` receives? With the reason either way.

    ``zpl_version`` is the filesystem's ``version`` property when known (None: assume
    OpenZFS's default, 5). ``replica``: True when the filesystem came from the other side by
    stream (a DR copy going back), False when it was created where it is (None: not known).
    """
    if src.flavour == "openzfs" and dst.flavour == "legacy":
        if raw:
            return Direction(False, "raw (-w) OpenZFS streams carry feature flags pool-version-23 zfs cannot receive")
        if kind == "volume":
            return Direction(True, "a plain OpenZFS zvol stream is received by pool-version-23 zfs (zfs-fuse "
                                   "stores it but cannot present zvols as block devices)")
        if zpl_version is not None and zpl_version <= 4 and replica is False:
            return Direction(False, f"a filesystem created on OpenZFS, even at ZPL version {zpl_version}, is "
                                    "received by pool-version-23 zfs but cannot be opened there (zfs-fuse reports its "
                                    "root as missing); only filesystems that came from pool-version-23 zfs go back")
        if zpl_version is not None and zpl_version <= 4:
            return Direction(True, f"a ZPL version {zpl_version} filesystem that came from pool-version-23 zfs "
                                   "goes back by plain stream")
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


class DirectionRefused(ConflictError):
    """The two sides' stream formats rule this direction out (exit 3, before anything is sent)."""

    def __init__(self, message: str, hint: str | None = None, datasets: dict[str, str] | None = None):
        super().__init__(message, hint)
        self.datasets = datasets or {}

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "kind": "stream-direction", "evidence": {"datasets": self.datasets}}


def zpl_versions(zfs, datasets: list[str]) -> dict[str, int]:
    """The ``version`` property (ZPL) of filesystems, in one `zfs get` (only asked when it matters)."""
    if not datasets:
        return {}
    out = zfs.run("get", "-Hp", "-o", "name,value", "version", *datasets, dataset=datasets[0]).stdout
    res: dict[str, int] = {}
    for line in out.splitlines():
        name, _, value = line.partition("\t")
        if value.strip().isdigit():
            res[name] = int(value)
    return res


def preflight(group: ProtectionGroup, src, dst, src_obs: dict[str, Dataset], *, site_path: str, source_is_replica: bool) -> None:
    """Refuse, before any snapshot or stream, what the two sides' zfs cannot do for this group.

    ``src``/``dst`` are the engine's sides (``.name``, ``.caps``, ``.zfs``). ``source_is_replica``:
    the source's datasets came by replication (reprotect and failback run the group reversed, the
    source being the site's DR server); production's own were created where they are. Costs no
    zfs call unless an OpenZFS source sends filesystems to pool-version-23 zfs (then one
    `zfs get version`).
    """
    if getattr(group, "bookmarks", False) and not src.caps.bookmarks:
        raise UsageError(
            f"{site_path}:{group.line}: protection group {group.name} sets bookmarks: true, but {src.name} runs "
            f"pool-version-23 zfs ({src.caps.flavour}), which has no bookmarks",
            hint=f"remove `bookmarks: true` from {group.name} (bookmarks need OpenZFS on the source side)")
    if src.caps.flavour == dst.caps.flavour:
        return
    kinds = {ds: src_obs[ds].type for ds in group.datasets if ds in src_obs}
    versions: dict[str, int] = {}
    if src.caps.flavour == "openzfs" and dst.caps.flavour == "legacy":
        versions = zpl_versions(src.zfs, [ds for ds, k in kinds.items() if k == "filesystem"])
    refused = {}
    for ds, kind in kinds.items():
        d = stream_direction(src.caps, dst.caps, kind, versions.get(ds), replica=source_is_replica)
        if not d.ok:
            refused[ds] = d.reason
    if refused:
        first = next(iter(refused.values()))
        raise DirectionRefused(
            f"{group.name}: {src.name} ({src.caps.flavour}) → {dst.name} ({dst.caps.flavour}) cannot work for "
            f"{', '.join(sorted(refused))}: {first}; nothing was sent",
            hint="only pool-version-23 → OpenZFS works for filesystems (and back for what came that way); use "
                 "zvols, or the same zfs generation on both sides (`esxdr status` shows the directions per group)",
            datasets=refused)


def group_directions(group: ProtectionGroup, src_caps: Capabilities, dst_caps: Capabilities,
                     kinds: dict[str, str] | None = None, versions: dict[str, int] | None = None) -> dict[str, object]:
    """Per group, whether replication (source → DR) and failback (DR → source) streams can work.

    ``kinds``/``versions`` (dataset → type / ZPL version), when known, sharpen the verdict; unknown
    filesystems are judged as OpenZFS's default (version 5).
    """
    kinds = kinds or {ds: "filesystem" for ds in group.datasets}
    versions = versions or {}
    out: dict[str, object] = {}
    for what, a, b, replica in (("replication", src_caps, dst_caps, False), ("failback", dst_caps, src_caps, True)):
        verdicts = {ds: stream_direction(a, b, kinds.get(ds, "filesystem"), versions.get(ds), replica=replica)
                    for ds in group.datasets}
        bad = {ds: d.reason for ds, d in verdicts.items() if not d.ok}
        reason = next(iter(bad.values())) if bad else next(iter(verdicts.values())).reason if verdicts else ""
        out[what] = {"possible": not bad, "from": a.flavour, "to": b.flavour, "reason": reason,
                     "refused": sorted(bad)}
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
    return OPENZFS


def _legacy() -> Capabilities:
    return LEGACY
