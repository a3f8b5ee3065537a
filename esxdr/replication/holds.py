"""Holds and bookmarks: what keeps the base of the next incremental on both sides.

Replication's own hold (``esxdr_<group>``) moves to the new common snapshot after each run; a
bookmark on production (``bookmarks: true``) is the base should its snapshot be destroyed. Both
are safeguards: a failure only warns, the replica is already complete.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esxdr.errors import CommandFailed
from esxdr.faults import checkpoint
from esxdr.model import Dataset
from esxdr.plan.replication import leaves_at
from esxdr.plan.retention import esxdr_prefix
from esxdr.replication.result import DatasetResult
from esxdr.replication.sides import Side, both, hold_tag
from esxdr.util import pid_running

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup


# -- pool-v23 send holds ------------------------------------------------------------
# A pool-v23 `zfs send -I` takes temporary user holds (".send-<pid>-0") on the range it
# sends; zfs-fuse only drops them when the sender exits on its own. A sender killed with
# esxdr (power cut, SIGKILL) leaves them behind and they would block pruning forever, so
# each local send is noted in the state dir and a later run releases what a dead one left.

def inflight_dir(state_dir: str, group_name: str) -> Path:
    return Path(state_dir) / "inflight" / group_name


def note_send(state_dir: str, group_name: str, src: Side, proc: Any, r: DatasetResult) -> Path:
    d = inflight_dir(state_dir, group_name)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{proc.pid}.json"
    if src.local and src.caps.flavour == "legacy" and isinstance(getattr(proc, "pid", None), int):
        path.write_text(json.dumps({"pid": proc.pid, "dataset": r.source}))
    return path


def release_leaked_send_holds(state_dir: str, group_name: str, src: Side, src_obs: dict[str, Dataset],
                              say: Callable[[str], None]) -> bool:
    """True when something was released (the caller then observes again)."""
    d = inflight_dir(state_dir, group_name)
    released = False
    if not d.exists():
        return released
    for note in sorted(d.glob("*.json")):
        try:
            entry = json.loads(note.read_text())
        except (OSError, ValueError):
            note.unlink(missing_ok=True)
            continue
        if pid_running(int(entry["pid"])):
            continue
        ds = src_obs.get(entry["dataset"])
        held = [s.full_name for s in (ds.snapshots if ds else []) if s.held]
        if held:
            say(f"{group_name}: releasing holds left by a killed send (pid {entry['pid']})")
            src.zfs.release(f".send-{entry['pid']}-0", held)
            released = True
        note.unlink(missing_ok=True)
    return released


# -- replication's own hold ---------------------------------------------------------
def move_holds(group_name: str, src: Side, dst: Side, work: list[DatasetResult], src_obs: dict[str, Dataset],
               dst_obs: dict[str, Dataset], level: str | None) -> None:
    """Hold the new common snapshot on both sides and release the previous one (one call each)."""
    tag = hold_tag(group_name)
    new_src, new_dst, old_src, old_dst = [], [], [], []
    for r in work:
        target = leaves_at(r.actions[-1])
        if target is None:
            continue
        new_src.append(target.full_name)
        new_dst.append(f"{r.dest}@{target.name}")
        for s in src_obs[r.source].snapshots:
            if s.held and s.guid != -1 and s.name != target.name:
                old_src.append(s.full_name)
        dest_ds = dst_obs.get(r.dest)
        for s in (dest_ds.snapshots if dest_ds else []):
            if s.held and s.name != target.name:
                old_dst.append(s.full_name)
    if not (src.caps.holds and dst.caps.holds):
        return

    def move(side: Side, new: list[str], old: list[str]) -> None:
        if new:
            side.zfs.hold(tag, new)
            checkpoint("after-hold")
        if old:
            side.zfs.release(tag, old)
            checkpoint("after-release")

    level = level or "crash"

    def dr_side() -> None:
        # A guarded DR keeps replication's holds until the DR box prunes (the key may not release).
        move(dst, new_dst, [] if dst.guarded else old_dst)
        if level != "crash" and new_dst:
            # send without -p carries no user properties; DR must know the level even when
            # production is gone (drills and failover report it). Crash is the default.
            dst.zfs.set_on_snapshots("esxdr:consistency", level, new_dst)

    both(lambda: move(src, new_src, old_src), dr_side)


def release_own_holds(group_name: str, dst: Side, dst_obs: dict[str, Dataset], snapshots: list[str]) -> None:
    """Release replication's own hold, and only it, from DR snapshots about to be destroyed.

    One call each: a snapshot that does not carry the tag fails alone (check=False)."""
    held = {s.full_name for ds in dst_obs.values() for s in ds.snapshots if s.held}
    for name in snapshots:
        if name in held:
            dst.zfs.release(hold_tag(group_name), [name])


# -- bookmarks ---------------------------------------------------------------------
def bookmark(group: ProtectionGroup, src: Side, work: list[DatasetResult], src_obs: dict[str, Dataset],
             say: Callable[[str], None]) -> None:
    """bookmarks: true — bookmark the new common snapshot on the source, drop the group's older ones.

    The bookmark is the -i base should the source's snapshot be destroyed; a failure only
    warns (like a hold, it is a safeguard, the replica is already complete).
    """
    if not getattr(group, "bookmarks", False) or not src.caps.bookmarks or src.guarded:
        # A pull's cursor on production is the hold DR keeps there: the send-only account makes
        # no bookmarks (they are a push-mode safeguard, kept by production itself).
        return
    prefix = esxdr_prefix(group.name)
    for r in work:
        target = leaves_at(r.actions[-1])
        if target is None:
            continue
        known = {b.name for b in src_obs[r.source].bookmarks}
        try:
            if target.name not in known:
                src.zfs.bookmark(target.full_name, f"{r.source}#{target.name}")
            for b in src_obs[r.source].bookmarks:
                if b.name.startswith(prefix) and b.name != target.name:
                    src.zfs.destroy_bookmark(b.full_name)
        except CommandFailed as e:
            say(f"{group.name}: bookmark of {target.full_name} failed: {e.message}")
