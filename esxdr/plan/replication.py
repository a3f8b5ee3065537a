"""Replication planning: which stream brings a DR dataset up to its source.

Pure: observed datasets in, actions (each with its reason) out, or a typed
:class:`ReplicationConflict` carrying its evidence. Snapshots are matched by
guid, never by name: a snapshot renamed or re-created under the same name is a
different snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from esxdr.errors import ReplicationConflict
from esxdr.fmt import human_bytes
from esxdr.model import Bookmark, Dataset, Snapshot


@dataclass(frozen=True)
class Action:
    kind: str
    dataset: str  # DR dataset
    reason: str

    def describe(self) -> str:
        return f"{self.dataset}: {self.kind} ({self.reason})"

    def to_dict(self) -> dict[str, object]:
        d = {k: v for k, v in self.__dict__.items()}
        return {k: (v.full_name if isinstance(v, Snapshot) else v) for k, v in d.items()}


@dataclass(frozen=True)
class SendFull(Action):
    source: Snapshot = field(default=None)  # type: ignore[assignment]
    force: bool = False
    estimate: int | None = None  # the snapshot's referenced size: a hint for the plan, not the stream's size

    def describe(self) -> str:
        est = f" ({human_bytes(self.estimate)} referenced)" if self.estimate else ""
        return f"send {self.source.full_name} full → {self.dataset}{est}{' [overwrite]' if self.force else ''}"


@dataclass(frozen=True)
class SendIncremental(Action):
    base: Snapshot = field(default=None)  # type: ignore[assignment]
    target: Snapshot = field(default=None)  # type: ignore[assignment]
    intermediate: bool = True
    count: int = 1  # snapshots carried
    force: bool = False
    estimate: int | None = None

    def describe(self) -> str:
        flag = "-I" if self.intermediate else "-i"
        est = f" (est. {human_bytes(self.estimate)})" if self.estimate else ""
        base = ("#" if isinstance(self.base, Bookmark) else "@") + self.base.name
        return (f"send {flag} {base} {self.target.full_name} → {self.dataset} "
                f"({self.count} snapshot{'s' if self.count != 1 else ''}){est}{' [rollback DR changes]' if self.force else ''}")


@dataclass(frozen=True)
class Resume(Action):
    token: str = ""

    def describe(self) -> str:
        return f"resume interrupted receive into {self.dataset}"


@dataclass(frozen=True)
class RollbackDr(Action):
    to: Snapshot = field(default=None)  # type: ignore[assignment]
    discards: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"roll {self.dataset} back to @{self.to.name}, destroying DR-only {', '.join(self.discards) or 'changes'}"


@dataclass(frozen=True)
class UpToDate(Action):
    snapshot: Snapshot = field(default=None)  # type: ignore[assignment]

    def describe(self) -> str:
        return f"{self.dataset}: up to date at @{self.snapshot.name}"


def leaves_at(action: Action) -> Snapshot | None:
    """The snapshot an action leaves DR at: an incremental's target, a full stream's source."""
    return action.target if isinstance(action, SendIncremental) else getattr(action, "source", None)


def _newest_on_dr(points: list, dest: Dataset) -> tuple | None:
    """The newest of ``points`` (oldest first) whose guid DR has as a snapshot, with DR's snapshot."""
    dest_by_guid = dest.by_guid()
    for p in reversed(points):
        d = dest_by_guid.get(p.guid)
        if d is not None:
            return p, d
    return None


def common_snapshot(source: Dataset, dest: Dataset) -> tuple[Snapshot, Snapshot] | None:
    """The newest source snapshot that DR also has (by guid), as (source's, DR's)."""
    return _newest_on_dr(source.snapshots, dest)


def common_bookmark(source: Dataset, dest: Dataset) -> tuple[Bookmark, Snapshot] | None:
    """The newest source bookmark whose guid DR has as a snapshot, as (source's bookmark, DR's snapshot).

    A bookmark keeps its snapshot's guid and createtxg, so it stands in for a source snapshot
    that was destroyed (`zfs send -i ds#bookmark` needs only those).
    """
    return _newest_on_dr(source.bookmarks, dest)


def plan_dataset(source: Dataset, dest: Dataset | None, dest_name: str, *, intermediate: bool = True,
                 allow_rollback_dr: bool = False, bookmarks: bool = False) -> list[Action]:
    """Actions that bring ``dest_name`` up to ``source``'s newest snapshot.

    With ``bookmarks`` the source's bookmarks count as incremental bases too: when the newest
    snapshot DR shares with the source is gone on the source but its bookmark is not, the
    stream starts from the bookmark (``-i``; ``-I`` takes only snapshots) instead of failing
    with "no common snapshot".
    """
    if not source.snapshots:
        return []
    newest = source.snapshots[-1]
    if dest is None:
        first = source.snapshots[0] if intermediate else newest
        actions: list[Action] = [SendFull(kind="send-full", dataset=dest_name, source=first,
                                          reason="not on DR yet", estimate=first.referenced)]
        if first is not newest:
            actions.append(SendIncremental(
                kind="send-incremental", dataset=dest_name, base=first, target=newest, intermediate=True,
                count=len(source.snapshots) - 1, reason="carry the remaining snapshots after the full stream"))
        return actions
    if dest.resume_token:
        return [Resume(kind="resume", dataset=dest_name, token=dest.resume_token,
                       reason="an interrupted receive left a resume token")]
    pair: tuple[Snapshot, Snapshot] | None = common_snapshot(source, dest)
    if bookmarks:
        marked = common_bookmark(source, dest)
        if marked is not None and (pair is None or marked[0].createtxg > pair[0].createtxg):
            pair = marked
    if pair is None:
        evidence = {"dataset": dest_name, "source_snapshots": [s.name for s in source.snapshots],
                    "dr_snapshots": [s.name for s in dest.snapshots]}
        if not allow_rollback_dr:
            if dest.snapshots:
                raise ReplicationConflict(
                    "no-common",
                    f"{dest_name} has {len(dest.snapshots)} snapshots on DR but none in common with {source.name}",
                    hint="the DR copy is not a replica of this source; check protection_groups mappings, or run "
                         "again with --rollback-dr to overwrite the DR dataset (destroys its data)",
                    evidence=evidence)
            raise ReplicationConflict(
                "unrelated", f"{dest_name} exists on DR but is not a replica of {source.name} (no snapshots)",
                hint="rename or destroy it on DR, or run again with --rollback-dr to overwrite it",
                evidence=evidence)
        first = source.snapshots[0] if intermediate else newest
        actions = [SendFull(kind="send-full", dataset=dest_name, source=first, force=True,
                            reason="--rollback-dr: overwrite the unrelated DR dataset", estimate=first.referenced)]
        if first is not newest:
            actions.append(SendIncremental(kind="send-incremental", dataset=dest_name, base=first, target=newest,
                                           count=len(source.snapshots) - 1, intermediate=True,
                                           reason="carry the remaining snapshots"))
        return actions
    src_common, dst_common = pair
    source_guids = {s.guid for s in source.snapshots}
    dr_only = [s for s in dest.snapshots if s.createtxg > dst_common.createtxg and s.guid not in source_guids]
    actions = []
    force = False
    if dr_only:
        evidence = {"dataset": dest_name, "common": src_common.name,
                    "source_only": [s.name for s in source.snapshots if s.createtxg > src_common.createtxg],
                    "dr_only": [s.name for s in dr_only]}
        if not allow_rollback_dr:
            raise ReplicationConflict(
                "diverged",
                f"{dest_name} diverged from {source.name}: common snapshot @{src_common.name}, "
                f"DR-only: {', '.join('@' + s.name for s in dr_only)}",
                hint=f"keep what DR wrote elsewhere first; `esxdr replicate --rollback-dr` rolls DR back to "
                     f"@{src_common.name} and destroys the DR-only snapshots",
                evidence=evidence)
        actions.append(RollbackDr(kind="rollback-dr", dataset=dest_name, to=dst_common,
                                  discards=tuple("@" + s.name for s in dr_only),
                                  reason="--rollback-dr: DR diverged after the common snapshot"))
    elif dest.written:
        if not allow_rollback_dr:
            raise ReplicationConflict(
                "modified",
                f"{dest_name} was modified on DR since @{dst_common.name} ({human_bytes(dest.written)} written)",
                hint="a DR test left writes behind? run again with --rollback-dr to discard them",
                evidence={"dataset": dest_name, "common": src_common.name, "written": dest.written})
        force = True
    elif dest.written is None and allow_rollback_dr:
        # Pool-v23 zfs cannot tell whether DR was written since the snapshot; the user has
        # accepted losing such writes, so let receive roll them back.
        force = True
    newer = [s for s in source.snapshots if s.createtxg > src_common.createtxg]
    if not newer:
        if actions:
            return actions
        return [UpToDate(kind="up-to-date", dataset=dest_name, snapshot=src_common,
                         reason="DR has the newest source snapshot")]
    discard = "; discard DR writes since then (--rollback-dr)" if force else ""
    if isinstance(src_common, Bookmark):
        # From a bookmark only `-i` works: first to the next snapshot (or straight to the newest
        # with incremental: direct), then -I for the rest as usual.
        first = newer[0] if intermediate else newer[-1]
        actions.append(SendIncremental(
            kind="send-incremental", dataset=dest_name, base=src_common, target=first, intermediate=False,
            count=1, force=force, estimate=first.written,
            reason=f"DR is at @{dst_common.name}, gone on the source: from its bookmark #{src_common.name}{discard}"))
        if first is not newer[-1]:
            actions.append(SendIncremental(
                kind="send-incremental", dataset=dest_name, base=first, target=newer[-1], intermediate=True,
                count=len(newer) - 1, estimate=sum(s.written for s in newer[1:] if s.written is not None) or None,
                reason="carry the remaining snapshots after the bookmark stream"))
        return actions
    actions.append(SendIncremental(
        kind="send-incremental", dataset=dest_name, base=src_common, target=newer[-1], intermediate=intermediate,
        count=len(newer) if intermediate else 1, force=force,
        reason=f"DR is at @{src_common.name}{discard}",
        estimate=sum(s.written for s in newer if s.written is not None) or None))
    return actions
