"""Retention: which snapshots each side keeps, and their destruction.

Two views decide. A run that reaches both sides (replicate, `esxdr prune`) protects the snapshot
each dataset shares with its partner, the base of the next incremental. The DR box behind serve
prunes from its own view alone (`esxdr prune --side dr`): production may be gone or hostile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from esxdr.errors import CommandFailed, TransientError
from esxdr.faults import checkpoint
from esxdr.model import Dataset, Snapshot
from esxdr.plan.replication import common_snapshot
from esxdr.plan.retention import Decision, decide, esxdr_prefix
from esxdr.replication import sides
from esxdr.replication.sides import Side, both, hold_tag

if TYPE_CHECKING:
    from esxdr.site.model import KeepRules, ProtectionGroup, Site


def prune_decisions(ds: Dataset, rules: KeepRules, group: str, protected: frozenset[int], prune_foreign: bool,
                    tz: str) -> list[Decision]:
    rule_map = {k: getattr(rules, k) for k in ("hourly", "daily", "weekly", "monthly", "yearly")}
    return decide(ds.snapshots, rule_map, last=max(1, rules.last), prefix=esxdr_prefix(group),
                  protected_guids=protected, prune_foreign=prune_foreign, timezone=tz)


@dataclass
class DrPrune:
    """What `esxdr prune --side dr` decided and did on the DR box."""
    decisions: list[Decision]
    destroyed: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)  # snapshot -> why it could not be destroyed


def dr_decisions(group: ProtectionGroup, dr_obs: dict[str, Dataset], tz: str) -> list[Decision]:
    """The destination rules applied to DR from its view alone: each replica keeps its newest
    snapshot, the base of the next incremental (production holds it too)."""
    out: list[Decision] = []
    for name, ds in sorted(dr_obs.items()):
        if not ds.snapshots:
            continue
        newest = max(ds.snapshots, key=lambda x: x.createtxg)
        protected = frozenset({newest.guid}) if name in group.dr_datasets else frozenset()
        out += prune_decisions(ds, group.retention.destination, group.name, protected,
                               group.retention.prune_foreign, tz)
    return out


def prune_dr_side(site: Site, group: ProtectionGroup, *, dry_run: bool) -> DrPrune:
    """DR retention, run on the DR box with its own privileges, from DR's view alone.

    Production may be gone or hostile, so nothing is asked of it: each replica keeps its newest
    snapshot (the base of the next incremental, which production holds too) and whatever the DR
    rules keep. Replication's own hold (and only it) is released from what is destroyed; a
    snapshot kept by another hold or by a clone (a drill) stays, and is reported.
    """
    dst = sides.open_side(site, group.destination)
    try:
        obs = dst.zfs.observe([group.dr_root])
        tz = group.schedule.timezone if group.schedule else "UTC"
        # Replication holds every snapshot it sends to a DR behind serve; only the newest needs it
        # (the next base). Its hold moves there now, so that what still holds a snapshot afterwards
        # is someone else's: a drill's, an admin's.
        obs = release_stale_holds(dst, group.name, obs, group.dr_datasets, group.dr_root,
                                  keep=lambda ds: max(ds.snapshots, key=lambda x: x.createtxg), dry_run=dry_run)
        out = DrPrune(decisions=dr_decisions(group, obs, tz))
        doomed = [d.snapshot for d in out.decisions if not d.keep]
        if dry_run:
            return out
        for snap in doomed:
            try:
                dst.zfs.destroy_snapshots([snap.full_name])
                out.destroyed.append(snap.full_name)
            except (TransientError, CommandFailed) as e:
                out.kept[snap.full_name] = e.message
        return out
    finally:
        dst.transport.close()


@dataclass
class SidePrune:
    """One side's retention decisions, from a view of both sides."""
    side: str  # the storage server's name
    decisions: list[Decision]

    @property
    def doomed(self) -> list[str]:
        # guid -1: the snapshot this run is about to take, known by name only
        return [d.snapshot.full_name for d in self.decisions if not d.keep and d.snapshot.guid != -1]


def plan_prune(group: ProtectionGroup, src: Side, dst: Side, src_obs: dict[str, Dataset],
               dst_obs: dict[str, Dataset], which: tuple[str, ...] = ("source", "dr")) -> list[SidePrune]:
    """The retention decisions of the sides named in ``which`` ("source", "dr").

    Each dataset of the group protects the snapshot it shares with its partner on the other side
    (the next incremental's base); one that shares none, or has no partner yet, protects all its
    snapshots, since any of them may be the base of the stream that (re)seeds it.
    """
    g = group
    tz = g.schedule.timezone if g.schedule else "UTC"
    out = []
    for key, side, obs, other, rules, mapping in (
        ("source", src, src_obs, dst_obs, g.retention.source, {ds: g.dr_dataset(ds) for ds in g.datasets}),
        ("dr", dst, dst_obs, src_obs, g.retention.destination, {g.dr_dataset(ds): ds for ds in g.datasets}),
    ):
        if key not in which:
            continue
        decisions: list[Decision] = []
        for name, ds in sorted(obs.items()):
            if not ds.snapshots:
                continue
            partner = other.get(mapping.get(name, ""))
            pair = common_snapshot(ds, partner) if partner is not None else None
            protected: frozenset[int] = frozenset()
            if pair:
                protected = frozenset({pair[0].guid})
            elif name in mapping:
                protected = frozenset(s.guid for s in ds.snapshots)
            decisions += prune_decisions(ds, rules, g.name, protected, g.retention.prune_foreign, tz)
        out.append(SidePrune(side=side.name, decisions=decisions))
    return out


def apply_prune(group_name: str, plans: list[SidePrune], sides: list[Side], say: Callable[[str], None]) -> None:
    """Destroy what ``plans`` doom, each side in its own thread."""
    by_name = {s.name: s for s in sides}
    doomed = {p.side: p.doomed for p in plans}

    def destroy(side: Side) -> None:
        names = doomed.get(side.name, [])
        if names:
            say(f"{group_name}: prune {len(names)} snapshot(s) on {side.name}")
            side.zfs.destroy_snapshots(names[:1])
            checkpoint("mid-prune")
            if names[1:]:
                side.zfs.destroy_snapshots(names[1:])

    work = [by_name[p.side] for p in plans if p.doomed]
    if len(work) == 2:
        both(lambda: destroy(work[0]), lambda: destroy(work[1]))
    elif work:
        destroy(work[0])


def release_stale_holds(side: Side, group_name: str, obs: dict[str, Dataset], datasets: tuple[str, ...] | list[str],
                        root: str, *, keep: Callable[[Dataset], Snapshot | None], dry_run: bool) -> dict[str, Dataset]:
    """Release replication's hold (``esxdr_<group>``) from every held snapshot of ``datasets`` but
    the one ``keep`` names, and return the view after it. One release per snapshot: one that does
    not carry the tag (another tool's hold) fails alone. Which tags a snapshot carries is not asked
    (zfs-fuse has no `zfs holds`); a dry run assumes replication's hold on each held snapshot."""
    stale = []
    for name, ds in obs.items():
        if name not in datasets or not ds.snapshots:
            continue
        kept = keep(ds)
        stale += [x for x in ds.snapshots if x.held and (kept is None or x.guid != kept.guid)]
    if not stale:
        return obs
    if dry_run:
        moved = {x.full_name for x in stale}
        return {name: dataclasses.replace(ds, snapshots=[
            dataclasses.replace(x, userrefs=(x.userrefs or 0) - 1) if x.full_name in moved else x
            for x in ds.snapshots]) for name, ds in obs.items()}
    tag = hold_tag(group_name)
    for x in stale:
        side.zfs.release_one(tag, x.full_name)
    return side.zfs.observe([root])


def newest_held(ds: Dataset) -> Snapshot | None:
    """The newest snapshot that carries a hold: on production in pull mode, DR's cursor (the
    snapshot DR pulled last, held through its send-only account)."""
    held = [x for x in ds.snapshots if x.held]
    return max(held, key=lambda x: x.createtxg) if held else None
