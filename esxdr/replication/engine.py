"""The replication engine: snapshot, plan, stream, hold, prune — for one protection group.

Control flow (docs/architecture.md draws it): lock → observe both sides (one
``zfs get`` each) → atomic snapshot → plan per dataset (pure) → streams in
parallel with retries for transient failures → holds moved to the new common
snapshot → prune by retention → run record. Dry-run walks the same plan and
only describes it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from esxdr.errors import (
    CommandFailed,
    ConflictError,
    EsxdrError,
    ReplicationConflict,
    TransientError,
    UsageError,
)
from esxdr.faults import checkpoint
from esxdr.lock import GroupLock
from esxdr.model import Dataset, Snapshot
from esxdr.plan.replication import (
    Action,
    Resume,
    RollbackDr,
    SendFull,
    SendIncremental,
    UpToDate,
    leaves_at,
    plan_dataset,
)
from esxdr.plan.runbook import HANDOFF_PROP
from esxdr.progress import Progress
from esxdr.replication import holds, prune, quick, shipping, sides
from esxdr.replication.consistency import quiesced
from esxdr.replication.result import DatasetResult, GroupResult, Options, combine, record_run
from esxdr.replication.seal import heal_seals, seal_replica
from esxdr.replication.sides import (
    Side,
    both,
    dr_side_site,
    failover_marker,
    pull_site,
    refuse_unreachable,
    snapshot_name,
    state_path,
)
from esxdr.zfs.compat import preflight
from esxdr.zfs.stream import run_stream

if TYPE_CHECKING:
    from esxdr.site.model import ProtectionGroup, Site


def pick_compression(group: ProtectionGroup, src: Side, dst: Side) -> str | None:
    mode = group.compression
    if mode == "none":
        return None
    common = [c for c in ("zstd", "lz4") if c in src.caps.compressors and c in dst.caps.compressors]
    if mode in ("zstd", "lz4"):
        if mode not in common:
            raise UsageError(f"compression {mode} requested but not available on both {src.name} and {dst.name}",
                             hint=f"install {mode} on both hosts or set compression: auto")
        return mode
    # auto: compress only when the stream really crosses a network (either side may be the remote
    # one: DR's in push mode, production's in pull mode).
    def here(side: Side) -> bool:
        return side.local or (side.address or "").startswith("127.") or side.address in ("localhost", "::1")

    return None if (here(src) and here(dst)) or not common else common[0]


def take_snapshot(group: ProtectionGroup, src: Side, observed: dict[str, Dataset], name: str,
                  props: dict[str, str] | None = None) -> None:
    """One atomic snapshot of all the group's datasets."""
    children = {n for n in observed if n == group.source_root or n.startswith(group.source_root + "/")}
    wanted = set(group.datasets)
    if children - {group.source_root} <= wanted:
        src.zfs.snapshot([], recursive_root=f"{group.source_root}@{name}", props=props)
    elif src.caps.multi_snapshot:
        src.zfs.snapshot([f"{d}@{name}" for d in group.datasets], props=props)
    else:
        # Pool-v23 zfs snapshots one name per call; -r on the root is the only atomic form,
        # so take it and drop the snapshots of datasets outside the group.
        src.zfs.snapshot([], recursive_root=f"{group.source_root}@{name}", props=props)
        extra = sorted(children - wanted - {group.source_root})
        if extra:
            src.zfs.destroy_snapshots([f"{d}@{name}" for d in extra])


def _with_new_snapshot(ds: Dataset, name: str, when: int) -> Dataset:
    snap = Snapshot(dataset=ds.name, name=name, guid=-1, createtxg=(ds.snapshots[-1].createtxg + 1
                                                                     if ds.snapshots else 1 << 62),
                    creation=when, referenced=ds.referenced)
    return Dataset(**{**ds.__dict__, "snapshots": [*ds.snapshots, snap]})


def plan_group(group: ProtectionGroup, src_obs: dict[str, Dataset], dst_obs: dict[str, Dataset], *,
               rollback_dr: bool) -> tuple[list[tuple[str, str, list[Action]]], list[ReplicationConflict]]:
    plans = []
    conflicts = []
    for ds in group.datasets:
        source = src_obs.get(ds)
        if source is None:
            raise UsageError(f"protection group {group.name}: source dataset {ds} does not exist",
                             hint="fix protection_groups in the site file (esxdr site validate)")
        dest_name = group.dr_dataset(ds)
        try:
            actions = plan_dataset(source, dst_obs.get(dest_name), dest_name,
                                   intermediate=group.incremental == "intermediate", allow_rollback_dr=rollback_dr,
                                   bookmarks=getattr(group, "bookmarks", False))
        except ReplicationConflict as c:
            conflicts.append(c)
            continue
        plans.append((ds, dest_name, actions))
    return plans, conflicts


class Engine:
    def __init__(self, site: Site, group_name: str, opts: Options):
        group = site.group(group_name)
        if opts.pull:
            site = pull_site(site, group)
            opts = dataclasses.replace(opts, take_snapshot=False)  # production snapshots itself
        if opts.rollback_dr and not opts.dry_run:
            # Rolling DR back destroys DR snapshots and data: DR does that itself, never the key.
            # (A dry run only reads: it may plan through the key from anywhere.)
            site = dr_side_site(site, group, "--rollback-dr",
                                "roll back, release or destroy on DR")
        if not opts.snapshot_only:
            refuse_unreachable(site, group.destination)
        self.site = site
        self.group = site.group(group_name)
        self.opts = opts
        self.src: Side | None = None
        self.dst: Side | None = None
        self._kinds: dict[str, str] = {}
        self._own_mountpoint: set[str] = set()  # replicas that mount somewhere (see _seal_replica)
        self._level: str | None = None
        self._dst_obs: dict[str, Dataset] = {}

    def close(self) -> None:
        for s in (self.src, self.dst):
            if s:
                s.transport.close()

    def run(self) -> GroupResult:
        marker = failover_marker(self.site.state_dir, self.group.name)
        if marker.exists() and not self.opts.failed_over and not (self.opts.pull and self._home_again(marker)):
            raise ConflictError(f"{self.group.name} is failed over ({marker}): replication from {self.group.source} "
                                f"is stopped, the DR datasets are live",
                                hint=f"bring the changes home first: esxdr reprotect {self.group.name}, then "
                                     f"esxdr failback {self.group.name} --planned")
        started = time.monotonic()
        try:
            if self.opts.dry_run:
                result = self._run()
            else:
                with GroupLock(self.site.state_dir, self.group.name):
                    result = self._run()
        finally:
            self.close()
        result.seconds = time.monotonic() - started
        if self.src and self.dst:
            result.remote_commands = {self.src.name: self.src.transport.stats.commands,
                                      self.dst.name: self.dst.transport.stats.commands}
        if not self.opts.dry_run and not self.opts.snapshot_only:  # a snapshot alone replicated nothing
            checkpoint("before-record")
            record_run(self.site.state_dir, result)
        return result

    def _home_again(self, marker: Path) -> bool:
        """Pull mode, on the DR box, after it handed back (esxdr failback --planned --hand-off): the
        marker names DR's final snapshot. Once production holds that very snapshot (by guid) under
        live datasets (its failback promoted them), the group is home: the marker, the hand-off's
        journal and property go, and the pull resumes. Until then DR's replication stays stopped:
        a pull against a production that has not yet taken DR's final snapshot would only find DR
        "diverged", and the hint of that (--rollback-dr) would destroy the only copy of what DR wrote."""

        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        snap, g = data.get("snapshot"), self.group
        if data.get("by") != "failback-hand-off" or not snap:
            return False
        src, dst = both(lambda: sides.open_side(self.site, g.source), lambda: sides.open_side(self.site, g.destination))
        try:
            src_obs, dst_obs = both(lambda: src.zfs.observe([g.source_root]), lambda: dst.zfs.observe([g.dr_root]))
            for ds in g.datasets:
                mine = dst_obs.get(g.dr_dataset(ds))
                theirs = src_obs.get(ds)
                a = mine.snapshot(snap) if mine else None
                b = theirs.snapshot(snap) if theirs else None
                if a is None or b is None or a.guid != b.guid or theirs.readonly is not False:  # type: ignore[union-attr]
                    raise ConflictError(f"{g.name}: the DR box handed back at @{snap}, and production has not "
                                        f"completed its failback yet ({ds} " + ("lacks that snapshot)" if b is None
                                                                                 else "is not live)"),
                                        hint=f"on production: esxdr failback {g.name} --planned --pull; DR's pull resumes "
                                             "by itself afterwards")
            self.opts.say(f"{g.name}: production is home at @{snap}: the pull resumes"
                          + (" (a real run removes the failback marker)" if self.opts.dry_run else ""))
            if not self.opts.dry_run:
                dst.zfs.inherit(g.dr_root, HANDOFF_PROP)
                state_path(self.site.state_dir, g.name, "failback-hand-off").unlink(missing_ok=True)
                marker.unlink(missing_ok=True)
        finally:
            src.transport.close()
            dst.transport.close()
        return True

    def _run(self) -> GroupResult:
        g, opts = self.group, self.opts
        if opts.snapshot_only:
            return self._snapshot_only()
        if not (opts.dry_run or opts.take_snapshot or opts.rollback_dr or opts.failed_over):
            record = quick.load(self.site.state_dir, g)
            opened = lambda key, side: setattr(self, "src" if key == "source" else "dst", side)  # noqa: E731
            hit = quick.attempt(self.site, g, record, opened, opts.say, opts.pull) if record else None
            if hit is not None:
                return hit
        # Each side opens and observes in its own thread: capability probes, the SSH handshake
        # (and the import of paramiko it needs) overlap the other side's `zfs get`.
        def source_side() -> dict[str, Dataset]:
            if self.src is None:
                self.src = sides.open_side(self.site, g.source, prewarm=opts.pull and not opts.dry_run)
            if opts.pull and not opts.dry_run and hasattr(self.src.transport, "prewarm"):
                self.src.transport.prewarm()  # a pull's stream comes from production over SSH
            return self.src.zfs.observe([g.source_root])

        def dr_side() -> dict[str, Dataset]:
            if self.dst is None:
                self.dst = sides.open_side(self.site, g.destination, prewarm=not opts.dry_run)
            if not opts.dry_run and hasattr(self.dst.transport, "prewarm"):
                # the stream's SSH master authenticates while DR lists its snapshots
                self.dst.transport.prewarm()
            return self.dst.zfs.observe([g.dr_root])

        observed_at = quick.observed_at()
        src_obs, dst_obs = both(source_side, dr_side)
        self._dst_obs = dst_obs
        src, dst = self.src, self.dst
        assert src is not None and dst is not None

        # bookmarks and stream directions, before anything changes
        preflight(g, src, dst, src_obs, site_path=self.site.path,
                  source_is_replica=self.site.storage[src.name].role == "dr")
        result = GroupResult(group=g.name, snapshot=None, dry_run=opts.dry_run, mode="pull" if opts.pull else "push")
        result.compression = pick_compression(g, src, dst)
        if not opts.dry_run and src.local and holds.release_leaked_send_holds(self.site.state_dir, g.name, src, src_obs, opts.say):
            src_obs = src.zfs.observe([g.source_root])
        if opts.take_snapshot:
            name, now = self._new_snapshot_name(src_obs)
            # Planned with the snapshot it is about to take, so that a run that will be refused takes
            # none: a refused run's snapshot would only be one more for retention, and the run its
            # hint names would find the name taken within the same second.
            observed = src_obs
            src_obs = {ds: _with_new_snapshot(d, name, int(now.timestamp())) if ds in g.datasets else d
                       for ds, d in src_obs.items()}
        plans, conflicts = plan_group(g, src_obs, dst_obs, rollback_dr=opts.rollback_dr)
        if conflicts:
            if dst.guarded:
                for c in conflicts:
                    if c.hint and "--rollback-dr" in c.hint:
                        c.hint += (f" (on the DR box: {dst.name} is behind esxdr serve, which takes no rollback "
                                   "through the replication key)")
            raise combine(conflicts)
        if opts.take_snapshot:
            result.snapshot = name
            opts.say(f"{g.name}: snapshot {g.source_root}@{name} ({len(g.datasets)} datasets, atomic)")
            if not opts.dry_run:
                checkpoint("before-snapshot")
                with self._consistency() as consistency:
                    take_snapshot(g, src, observed, name, props={"esxdr:consistency": consistency.level})
                result.consistency = consistency.to_dict()
                self._level = consistency.level
                checkpoint("after-snapshot")
        if not plans or all(isinstance(a, UpToDate) for _, _, acts in plans for a in acts):
            newest = plans[0][2][0].snapshot.name if plans and plans[0][2] else None  # type: ignore[attr-defined]
            result.snapshot = result.snapshot or newest
        elif not result.snapshot:
            # No snapshot taken (--no-snapshot, a pull): the run brings DR to the newest one it sends.
            targets = [t for _, _, acts in plans if acts for t in [leaves_at(acts[-1])] if t is not None]
            result.snapshot = targets[0].name if targets else None
            if opts.pull:
                # The level production recorded on the snapshot it took (--snapshot-only); DR gets it
                # on its copies, as a push sets it, since a send without -p carries no properties.
                levels = {t.prop("esxdr:consistency") for t in targets} - {None}
                self._level = levels.pop() if len(levels) == 1 else ("mixed" if levels else None)
        sending = any(not isinstance(a, UpToDate) for _, _, acts in plans for a in acts)
        # No receive may mount a replica. OpenZFS receives with -u. Pool-v23 receive has no -u and
        # mounts what it receives where the DR root's mountpoint says, which is how zfs-fuse hung
        # (an unmount racing the receive that had just mounted) and how a hostile stream would get
        # a mount on DR. There the DR root carries mountpoint=none, inherited by every replica.
        root = dst_obs.get(g.dr_root)
        receive_mounts = not dst.zfs.receive_unmounted
        if root is None and sending:
            opts.say(f"{g.name}: create {g.dr_root} on {dst.name}"
                     + (" (mountpoint none: receives never mount)" if receive_mounts else ""))
            if not opts.dry_run:
                dst.zfs.create(g.dr_root, {"mountpoint": "none"} if receive_mounts else None)
        elif receive_mounts and root is not None and root.mountpoint != "none" and sending:
            opts.say(f"{g.name}: set mountpoint=none on {g.dr_root} (receives never mount; drills and failover "
                     "mount their datasets explicitly)")
            if not opts.dry_run:
                dst.zfs.set_props(g.dr_root, {"mountpoint": "none"})
        for source, dest, actions in plans:
            for a in actions:
                opts.say(f"{g.name}: {a.describe()}")
            result.datasets.append(DatasetResult(source=source, dest=dest, actions=actions))
        heal_seals(g.name, dst, [dest for _, dest, _ in plans], dst_obs, dry_run=opts.dry_run, say=opts.say)
        if opts.dry_run:
            if opts.prune:
                result.pruned = self._prune(src_obs, dst_obs, dry_run=True)
            return result
        checkpoint("after-plan")
        work = [r for r in result.datasets if any(not isinstance(a, UpToDate) for a in r.actions)]
        self._kinds = {r.dest: src_obs[r.source].type for r in work}
        self._own_mountpoint = {r.dest for r in work
                                if (getattr(dst_obs.get(r.dest), "mountpoint", None) or "").startswith("/")}
        if work:
            with ThreadPoolExecutor(max_workers=max(1, g.parallel)) as pool:
                futures = [pool.submit(self._replicate_one, r, src_obs[r.source], result.compression) for r in work]
                errors = []
                for f in futures:
                    try:
                        f.result()
                    except EsxdrError as e:
                        errors.append(e)
            if errors:
                raise errors[0] if len(errors) == 1 or not all(isinstance(e, ReplicationConflict) for e in errors) \
                    else combine(errors)  # type: ignore[arg-type]
            checkpoint("after-receive")
            # The holds follow the seals. Beside them they bought about 0.1 s, but the run that
            # tried it hung in two sibling `zfs unmount` (see Zfs.unmount); not tried again since.
            holds.move_holds(g.name, src, dst, work, src_obs, dst_obs, self._level)
            holds.bookmark(g, src, work, src_obs, opts.say)
        if work or opts.take_snapshot:
            result.manifest = shipping.ship_manifest(self.site.storage[g.source], g, src, dst, dst_obs,
                                                    failed_over=opts.failed_over, say=opts.say)
        if opts.prune:
            checkpoint("before-prune")
            # Pruning works from what was observed before the streams: snapshots received or
            # taken by this run are newer than every candidate, and a hold released by this run
            # still counts (kept one run longer). Only a rollback invalidates that view.
            if any(isinstance(a, RollbackDr) or getattr(a, "force", False) for r in work for a in r.actions):
                src_obs, dst_obs = both(lambda: src.zfs.observe([g.source_root]),
                                        lambda: dst.zfs.observe([g.dr_root]))
            result.pruned = self._prune(src_obs, dst_obs, dry_run=False)
        if work or opts.take_snapshot or opts.rollback_dr or opts.failed_over or any(result.pruned.values()):
            quick.forget(self.site.state_dir, g.name)
        else:
            quick.remember(self.site.state_dir, g, src, dst, src_obs, dst_obs, observed_at, result.snapshot)
        return result

    # -- one dataset -----------------------------------------------------------
    def _replicate_one(self, r: DatasetResult, source: Dataset, compression: str | None) -> None:
        assert self.src and self.dst
        attempt = 0
        actions = list(r.actions)
        started = time.monotonic()
        replan = False  # after a transient failure: what DR has now decides what is left to send
        while actions:
            try:
                if replan:
                    # Re-observe this dataset: a resumable receive may have left a token, or the
                    # stream may have completed before the cut was noticed. Over a network that is
                    # still down this fails too, and counts as one more attempt.
                    dest_now = self.dst.zfs.observe([r.dest]).get(r.dest)
                    if any(s.guid == -1 for s in source.snapshots):
                        # the snapshot this run took is only known by name so far; the DR copy of
                        # it, if the stream got through, is matched by guid
                        source = self.src.zfs.observe([r.source]).get(r.source) or source
                    actions = plan_dataset(source, dest_now, r.dest,
                                           intermediate=self.group.incremental == "intermediate",
                                           allow_rollback_dr=self.opts.rollback_dr,
                                           bookmarks=getattr(self.group, "bookmarks", False))
                    actions = [a for a in actions if not isinstance(a, UpToDate)]
                    replan = False
                    if not actions:
                        break
                r.bytes += self._apply(actions[0], r, compression)
                actions.pop(0)
            except TransientError as e:
                attempt += 1
                r.retries = attempt
                if attempt > self.opts.retries:
                    r.error = e.message
                    raise
                delay = self.opts.backoff * (2 ** (attempt - 1)) * (1 + random.random() * 0.2)
                self.opts.say(f"{r.dest}: {e.message} — retry {attempt}/{self.opts.retries} in {delay:.1f}s")
                time.sleep(delay)
                replan = True
        r.seconds = time.monotonic() - started

    def _apply(self, action: Action, r: DatasetResult, compression: str | None) -> int:
        src, dst = self.src, self.dst
        assert src and dst
        if isinstance(action, RollbackDr):
            holds.release_own_holds(self.group.name, dst, self._dst_obs,
                                    [f"{r.dest}@{n.lstrip('@')}" for n in action.discards])
            try:
                dst.zfs.rollback(action.to.full_name, destroy_newer=True)
            except (TransientError, CommandFailed) as e:
                # Busy after esxdr's own holds are gone: another tag's hold or a clone (a drill) keeps
                # a snapshot it would destroy. Waiting does not change that.
                hint = (f"a hold of another tag or a clone keeps one of {', '.join(action.discards)} (see "
                        f"`zfs holds` and `zfs list -t all -o name,origin` on {dst.name}); release or remove it, "
                        "then run again")
                raise ReplicationConflict("held", f"{r.dest}: rolling back to @{action.to.name} failed: {e.message}",
                                          hint=hint, evidence={"dataset": r.dest, "to": action.to.name,
                                                               "discards": list(action.discards)}) from e
            return 0
        if isinstance(action, SendFull) and action.force and r.dest in self._dst_obs:
            # A full stream replaces a dataset only where it has no snapshots, on every stack:
            # re-seeding destroys the unrelated DR dataset first (the operator's --rollback-dr).
            self._reseed_destroy(r.dest)
        if isinstance(action, SendFull | SendIncremental | Resume):
            # The bar's total is what `zfs send -nvP` predicts for this very stream; where the stack
            # cannot say (pool v23) the bar shows bytes and rate only. A snapshot's `referenced` is
            # no estimate: a first full stream carried 4.6 MiB against 112 KiB referenced.
            if isinstance(action, SendFull):
                send = src.zfs.send_argv(None, action.source.full_name, False)
                total = src.zfs.send_estimate(None, action.source.full_name, False)
                force = action.force
            elif isinstance(action, SendIncremental):
                send = src.zfs.send_argv(action.base.full_name, action.target.full_name, action.intermediate)
                total = src.zfs.send_estimate(action.base.full_name, action.target.full_name, action.intermediate)
                force = action.force
            else:
                send = src.zfs.send_argv(None, "", False, resume_token=action.token)
                total, force = None, False  # the rest of a resumed stream: bytes and rate only
            label = r.dest.rsplit("/", 1)[-1]
            bar = Progress(label, total, enabled=self.opts.progress, on_bytes=_mid_stream_checkpoint)
            recv = dst.zfs.recv_argv(r.dest, force=force)
            inflight: list[Path] = []
            try:
                res = run_stream(src.transport, send, dst.transport, recv, compress=compression,
                                 mbuffer=self._mbuffer(src, dst), progress=bar, bwlimit=self.group.bandwidth_limit,
                                 dataset=r.dest,
                                 on_start=lambda procs: inflight.append(
                                     holds.note_send(self.site.state_dir, self.group.name, src, procs[0], r)))
            except EsxdrError:
                # What crossed the wire before the cut counts too: a resumed stream sends only the rest.
                r.bytes += bar.done
                raise
            for p in inflight:
                p.unlink(missing_ok=True)
            bar.finish()
            if isinstance(action, SendFull):
                # Received under the DR root's mountpoint=none: not mounted, unless the dataset was
                # there already with a mountpoint of its own (a forced re-seed after a failback).
                seal_replica(dst, r.dest, self._kinds.get(r.dest, "filesystem"),
                             mounted=r.dest in self._own_mountpoint)
            return res.bytes
        raise AssertionError(f"unknown action {action!r}")
    def _reseed_destroy(self, dest: str) -> None:
        """--rollback-dr onto a DR dataset that shares no snapshot with production: no stack receives
        a full stream over a dataset with snapshots, so it is destroyed first (with DR's privileges)."""
        assert self.dst
        below = sorted(n for n in self._dst_obs if n.startswith(dest + "/"))
        if below:
            raise ConflictError(f"{dest} on {self.dst.name} has datasets below it ({', '.join(below)}); "
                                "a full stream cannot replace it", hint="move or destroy them on DR first")
        holds.release_own_holds(self.group.name, self.dst, self._dst_obs, [s.full_name for s in self._dst_obs[dest].snapshots])
        try:
            self.dst.zfs.destroy_replica(dest)
        except (TransientError, CommandFailed) as e:
            raise ConflictError(f"{dest}: destroying it for the full stream failed: {e.message}",
                                hint="a hold of another tag or a clone (a drill) keeps it; release or remove "
                                     "that, then run again") from e
        self._dst_obs.pop(dest, None)

    # -- application consistency ---------------------------------------------------------
    def _consistency(self):
        """Context manager around the ZFS snapshot: quiesced VMware snapshots when the group asks.

        Its value has ``level`` ("crash", "application" or "mixed", recorded on the ZFS snapshot
        as esxdr:consistency) and ``to_dict()`` for the run summary.
        """
        if self.group.consistency == "application":

            return quiesced(self.site, self.group, say=self.opts.say)
        return _CrashConsistent()

    # -- the target manifest travels with the replica ----------------------------------
    def _new_snapshot_name(self, src_obs: dict[str, Dataset]) -> tuple[str, datetime]:
        """The name of the snapshot this run takes, and its time."""
        now = self.opts.now or datetime.now(UTC)
        name = snapshot_name(self.group.name, now)
        if self.opts.now is None and any(name == s.name for d in src_obs.values() for s in d.snapshots):
            # a run that ended within this second took the name already: names are per second
            time.sleep(1.05 - now.microsecond / 1e6)
            now = datetime.now(UTC)
            name = snapshot_name(self.group.name, now)
        return name, now

    # -- pull mode, production's half -------------------------------------------------
    def _snapshot_only(self) -> GroupResult:
        """On production, in pull mode: the group's atomic (and consistent) snapshot, the target
        manifest published on the source root for DR to read, and production's own retention.
        Nothing reaches DR: DR pulls (`esxdr replicate GROUP --pull` there)."""
        g, opts = self.group, self.opts
        self.src = src = sides.open_side(self.site, g.source)
        if src.guarded:
            raise UsageError(f"--snapshot-only runs on production itself, and {g.source} is reached here through "
                             "its send-only account", hint="run it on production, with production's site file")
        src_obs = src.zfs.observe([g.source_root])
        name, _ = self._new_snapshot_name(src_obs)
        missing = [d for d in g.datasets if d not in src_obs]
        if missing:
            raise UsageError(f"protection group {g.name}: source dataset {missing[0]} does not exist",
                             hint="fix protection_groups in the site file (esxdr site validate)")
        result = GroupResult(group=g.name, snapshot=name, dry_run=opts.dry_run, mode="snapshot-only")
        opts.say(f"{g.name}: snapshot {g.source_root}@{name} ({len(g.datasets)} datasets, atomic)")
        if not opts.dry_run:
            with self._consistency() as consistency:
                take_snapshot(g, src, src_obs, name, props={"esxdr:consistency": consistency.level})
            result.consistency = consistency.to_dict()
        # DR's final snapshot when it hands back (failed_over: the reversed view) publishes nothing:
        # the DR root keeps production's own manifest, the one failback presents at home again.
        captured = None if opts.failed_over else shipping.capture_encoded(self.site.storage[g.source], g, src.transport)
        if captured is None:
            if not opts.failed_over:
                opts.say(f"{g.name}: no production target presents the group's datasets; no manifest published")
        else:
            sha, props, count = captured
            result.manifest = shipping.store_manifest(
                src.zfs, g.source_root, src_obs, sha, props, opts.say,
                f"{g.name}: publish the target manifest ({count} LUs) on {g.source_root} for DR to pull",
                dry_run=opts.dry_run)
        if opts.prune:
            # Production's own retention, without a view of DR: the snapshot DR pulled last carries
            # DR's hold (esxdr_<group>, placed through the send-only account) and is kept for it.
            # Only that one: DR moves its hold forward with each pull, so an older hold of that tag
            # is stale, or a compromised DR holding everything to fill production's pool.
            src_obs = prune.release_stale_holds(src, g.name, src_obs, g.datasets, g.source_root,
                                                keep=prune.newest_held, dry_run=opts.dry_run)
            tz = g.schedule.timezone if g.schedule else "UTC"
            doomed = []
            for ds_name in g.datasets:
                ds = src_obs[ds_name]
                if ds.snapshots:
                    doomed += [d.snapshot.full_name for d in prune.prune_decisions(ds, g.retention.source, g.name,
                                                                             frozenset(), g.retention.prune_foreign,
                                                                             tz) if not d.keep]
            result.pruned = {src.name: doomed}
            if doomed and not opts.dry_run:
                opts.say(f"{g.name}: prune {len(doomed)} snapshot(s) on {src.name}")
                src.zfs.destroy_snapshots(doomed)
        return result

    def _mbuffer(self, src: Side, dst: Side) -> bool:
        mode = self.group.mbuffer
        if mode == "off":
            return False
        if mode == "on":
            return True
        return dst.caps.mbuffer and not dst.local and not (dst.address or "").startswith("127.")

    # -- retention -------------------------------------------------------------
    def _prune(self, src_obs: dict[str, Dataset], dst_obs: dict[str, Dataset], *, dry_run: bool) -> dict[str, list[str]]:
        """Each side that this run may prune: a guarded production (pull mode) prunes itself
        (`esxdr replicate --snapshot-only` there), and a guarded DR on its own schedule (`esxdr
        prune --side dr` on the DR box): the replication key cannot shorten the DR retention window."""
        assert self.src and self.dst
        which = tuple(k for k, side in (("source", self.src), ("dr", self.dst)) if not side.guarded)
        plans = prune.plan_prune(self.group, self.src, self.dst, src_obs, dst_obs, which)
        if not dry_run:
            prune.apply_prune(self.group.name, plans, [self.src, self.dst], self.opts.say)
        return {p.side: p.doomed for p in plans}


class _CrashConsistent:
    level = "crash"

    def __enter__(self) -> _CrashConsistent:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def to_dict(self) -> dict[str, object]:
        return {"level": self.level, "reason": "protection group consistency: crash"}


def _mid_stream_checkpoint(done: int) -> None:
    if done >= 1 << 20:
        checkpoint("mid-stream")
