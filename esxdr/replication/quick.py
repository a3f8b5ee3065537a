"""The no-op that costs O(datasets), not O(snapshots).

A replication that finds nothing to send still lists every snapshot on both sides: at 100
datasets under GFS retention that is thousands of objects, and the cost grows with retention,
not with the work. OpenZFS >= 2.2 keeps ``snapshots_changed`` on every filesystem and volume:
the time (epoch seconds) at which one of its snapshots was last created or destroyed. While
that value, the dataset's guid and the newest common snapshot's guid are what the last full
observation saw, on both sides, that observation still stands: one targeted ``zfs get`` per
side (the datasets and their newest common snapshot, no descent) replaces the listing.

What the record must survive (the same reasoning as bzfs's snapshot cache):
- the property has one-second resolution, so a snapshot taken later in the very second the
  observation read would leave it unchanged. A value is recorded only when the observation
  started at least ``MATURITY`` seconds after it; that also absorbs a DR or production clock
  up to ``MATURITY - 1`` s behind this box's;
- what snapshots_changed does not cover is read live: DR written since the snapshot (a
  modified replica), a resume token (an interrupted receive), a replica left writable;
- a record is written only by a full run that changed nothing (no snapshot taken, nothing
  sent, nothing pruned); every other run removes it. Anything that differs means the full
  observation, and the run goes on as any other.

Pool v23 (zfs-fuse) and OpenZFS before 2.2 have no such property: there every run observes
in full. A run that takes the quick path leaves retention to the next full run (time alone
does not make a snapshot due when none was added).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from esxdr.model import Dataset, Snapshot
from esxdr.plan.replication import UpToDate
from esxdr.replication.result import DatasetResult, GroupResult
from esxdr.replication.sides import both, open_side
from esxdr.util import atomic_write
from esxdr.zfs.capabilities import reached_via

if TYPE_CHECKING:
    from collections.abc import Callable

    from esxdr.replication.sides import Side
    from esxdr.site.model import ProtectionGroup, Site

MATURITY = 5  # seconds between a recorded snapshots_changed and the read that saw it
VERSION = 1
_DATASET_PROPS = ["guid", "snapshots_changed", "written", "receive_resume_token", "readonly"]


def record_path(state_dir: str, group: str) -> Path:
    return Path(state_dir) / "runs" / f"{group}.quick.json"


def forget(state_dir: str, group: str) -> None:
    record_path(state_dir, group).unlink(missing_ok=True)


def remember(state_dir: str, g: ProtectionGroup, src: Side, dst: Side, src_obs: dict[str, Dataset],
             dst_obs: dict[str, Dataset], observed_at: float, snapshot: str | None) -> bool:
    """After a full run that changed nothing: what a later no-op compares. False (and no record)
    where any dataset lacks the evidence."""
    if not (src.caps.snapshots_changed and dst.caps.snapshots_changed and snapshot):
        forget(state_dir, g.name)
        return False
    entries: dict[str, dict[str, dict]] = {"source": {}, "dr": {}}
    for source in g.datasets:
        s, d = src_obs.get(source), dst_obs.get(g.dr_dataset(source))
        newest = s.newest if s else None
        common = d.snapshot(newest.name) if d and newest else None
        if s is None or d is None or newest is None or common is None or common.guid != newest.guid \
                or d.newest is not common or d.written or d.resume_token or d.readonly is False:
            forget(state_dir, g.name)
            return False
        for side, ds, snap in (("source", s, newest), ("dr", d, common)):
            if ds.snapshots_changed is None or ds.snapshots_changed > observed_at - MATURITY:
                forget(state_dir, g.name)
                return False
            entries[side][ds.name] = {"guid": ds.guid, "changed": ds.snapshots_changed, "snapshot": snap.name,
                                      "snapshot_guid": snap.guid, "createtxg": snap.createtxg,
                                      "creation": snap.creation}
    record = {"version": VERSION, "group": g.name, "snapshot": snapshot,
              "datasets": {source: g.dr_dataset(source) for source in g.datasets},
              "via": {"source": reached_via(src.transport), "dr": reached_via(dst.transport)},
              "sides": entries}
    path = record_path(state_dir, g.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(record, indent=1))
    return True


def load(state_dir: str, g: ProtectionGroup) -> dict | None:
    """The record, if it describes this group's datasets as the site file maps them now."""
    try:
        record = json.loads(record_path(state_dir, g.name).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != VERSION \
            or record.get("datasets") != {source: g.dr_dataset(source) for source in g.datasets}:
        return None
    return record


def still_true(record: dict, side_key: str, side: Side) -> bool:
    """One targeted read on one side: True when every dataset and its newest common snapshot are
    what the record says, and nothing the record cannot vouch for has happened."""
    entries: dict[str, dict] = record["sides"][side_key]
    if not side.caps.snapshots_changed or record["via"].get(side_key) != reached_via(side.transport):
        return False
    names = [*entries, *(f"{ds}@{e['snapshot']}" for ds, e in entries.items())]
    rows = side.zfs.read(names, _DATASET_PROPS)
    if rows is None:
        return False
    for ds, e in entries.items():
        now, snap = rows[ds], rows[f"{ds}@{e['snapshot']}"]
        if now.get("guid") != str(e["guid"]) or now.get("snapshots_changed") != str(e["changed"]) \
                or snap.get("guid") != str(e["snapshot_guid"]):
            return False
        if side_key == "dr" and (now.get("written") not in ("0", None) or now.get("receive_resume_token", "-") != "-"
                                 or now.get("readonly") != "on"):
            return False
    return True


def result_from(record: dict, g: ProtectionGroup, mode: str) -> GroupResult:
    """The no-op's result, as a full observation would have reported it."""
    result = GroupResult(group=g.name, snapshot=record["snapshot"], dry_run=False, mode=mode)
    result.observation = "quick"
    for source, dest in record["datasets"].items():
        e = record["sides"]["source"][source]
        snap = Snapshot(dataset=source, name=e["snapshot"], guid=e["snapshot_guid"], createtxg=e["createtxg"],
                        creation=e["creation"])
        result.datasets.append(DatasetResult(source=source, dest=dest, actions=[
            UpToDate(kind="up-to-date", dataset=dest, snapshot=snap,
                     reason="snapshots_changed, guid and the newest common snapshot as last observed")]))
    return result


def attempt(site: Site, g: ProtectionGroup, record: dict, opened: Callable[[str, Side], None],
            say: Callable[[str], None], pull: bool) -> GroupResult | None:
    """Open both sides (handed to ``opened``: a miss goes on with them) and read only what the
    record names. The result of a no-op, or None when the full observation must decide."""
    def check(server: str, key: str) -> bool:
        side = open_side(site, server)
        opened(key, side)
        return still_true(record, key, side)

    if not all(both(lambda: check(g.source, "source"), lambda: check(g.destination, "dr"))):
        say(f"{g.name}: changed since the last observation: observing both sides in full")
        return None
    say(f"{g.name}: nothing changed on either side since the last full observation (snapshots_changed): "
        f"up to date at @{record['snapshot']}; retention waits for the next full run")
    return result_from(record, g, "pull" if pull else "push")


def observed_at() -> float:
    """The time a full observation starts: a lower bound of when each side read its values."""
    return time.time()
