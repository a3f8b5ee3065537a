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
import os
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from esxdr.errors import (
    CommandFailed,
    ConflictError,
    EsxdrError,
    ReplicationConflict,
    TransientError,
    UsageError,
)
from esxdr.faults import checkpoint
from esxdr.fmt import human_bytes
from esxdr.lock import GroupLock
from esxdr.model import Capabilities, Dataset, Snapshot
from esxdr.plan.replication import (
    Action,
    Resume,
    RollbackDr,
    SendFull,
    SendIncremental,
    UpToDate,
    common_snapshot,
    plan_dataset,
)
from esxdr.plan.retention import Decision, decide, esxdr_prefix
from esxdr.progress import Progress
from esxdr.transport import for_server
from esxdr.transport.base import Transport
from esxdr.util import atomic_write, pid_running
from esxdr.zfs import Zfs
from esxdr.zfs.capabilities import detect
from esxdr.zfs.errors import NotMounted
from esxdr.zfs.stream import run_stream


def snapshot_name(group: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{esxdr_prefix(group)}{now.strftime('%Y%m%dT%H%M%SZ')}"


def hold_tag(group: str) -> str:
    return f"esxdr_{group}"


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


def refuse_unreachable(site, server_name: str) -> None:
    """A DR box that pulls is never connected to from production: refused before anything else
    is touched, so nothing runs on production (no snapshot) for a job that cannot finish."""
    if site.storage[server_name].pulls:
        raise UsageError(f"{server_name} pulls from production (pulls: true): esxdr on this box holds no key to it "
                         "and never connects there",
                         hint=f"here: esxdr replicate GROUP --snapshot-only; on {server_name}, with its own site file: "
                              "esxdr replicate GROUP --pull (and status, prune --side dr, drills, failover)")


def open_side(site, server_name: str, *, prewarm: bool = False) -> Side:
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


def capture_manifest(site, group, transport: Transport):  # -> Manifest | None
    """What production's own target presents of this group now (None: no target, or none of its
    datasets), read through ``transport`` on production."""
    from esxdr import shipping
    from esxdr.targets import backend

    server = site.storage[group.source]
    if server.target is None:
        return None
    stack = server.target.stack
    kwargs: dict = {}
    if stack == "tgt":
        kwargs = {"control_port": server.target.control_port, "portal": server.target.portal,
                  "initiator": "iqn.2024-01.io.esxdr:replicate"}
    m = shipping.for_group(backend(stack).observe(transport, **kwargs), list(group.datasets))
    m.source.host = server.name
    return m if m.logical_units else None


def pull_site(site, group):  # (Site, ProtectionGroup) -> Site
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
    from esxdr.failover import on_dr_box

    return on_dr_box(site, group.destination, what="--pull", refused="run a pull: DR pulls from where it is",
                     dataset=group.dr_root)


def dr_side_site(site, group, what: str, refused: str):  # (Site, ProtectionGroup, …) -> Site
    """The site as the DR box sees it, for what only DR may do to its replicas (roll back, prune).

    A DR reached through `esxdr serve` refuses those through the replication key; esxdr then has
    to run on the DR box (or, in the lab, beside it on a loopback address)."""
    server = site.storage_server(group.destination)
    if not server.behind_serve:
        return site
    from esxdr.failover import on_dr_box

    return on_dr_box(site, group.destination, what=what, refused=refused, dataset=group.dr_root)


@dataclass
class DatasetResult:
    source: str
    dest: str
    actions: list[Action]
    bytes: int = 0
    seconds: float = 0.0
    retries: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "dest": self.dest, "actions": [a.to_dict() for a in self.actions],
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "retries": self.retries,
                "error": self.error}


@dataclass
class GroupResult:
    group: str
    snapshot: str | None
    dry_run: bool
    datasets: list[DatasetResult] = field(default_factory=list)
    pruned: dict[str, list[str]] = field(default_factory=dict)  # side -> snapshots destroyed (or to destroy)
    seconds: float = 0.0
    compression: str | None = None
    remote_commands: dict[str, int] = field(default_factory=dict)
    manifest: str | None = None  # sha of the target manifest on DR
    consistency: dict | None = None  # how the snapshot was taken (crash / application / mixed)
    mode: str = "push"  # push | pull (on DR, from production's send-only account) | snapshot-only (production)

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.datasets)

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group, "snapshot": self.snapshot, "dry_run": self.dry_run,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "compression": self.compression,
                "datasets": [d.to_dict() for d in self.datasets], "pruned": self.pruned, "manifest": self.manifest,
                "consistency": self.consistency, "mode": self.mode,
                "commands": self.remote_commands}


@dataclass
class Options:
    dry_run: bool = False
    rollback_dr: bool = False
    take_snapshot: bool = True
    prune: bool = True
    progress: bool = True
    retries: int = 3
    backoff: float = 1.0
    say: Callable[[str], None] = lambda s: None
    now: datetime | None = None
    failed_over: bool = False  # reprotect/failback replicate DR → production while the marker exists
    # Pull mode: this run is on the DR box and reads production through `esxdr serve --send-only`;
    # production takes its own snapshots (snapshot_only, on production) and prunes itself.
    pull: bool = False
    snapshot_only: bool = False


def _pick_compression(group, src: Side, dst: Side) -> str | None:
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


def _group_datasets(group, observed: dict[str, Dataset]) -> list[str]:
    return [d for d in group.datasets if d in observed]


def take_snapshot(group, src: Side, observed: dict[str, Dataset], name: str,
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


def plan_group(group, src_obs: dict[str, Dataset], dst_obs: dict[str, Dataset], *,
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


def _store_manifest(zfs: Zfs, dataset: str, observed: dict[str, Dataset], sha: str, props: dict[str, str],
                    say: Callable[[str], None], saying: str, *, dry_run: bool = False) -> str:
    """Set an encoded target manifest on ``dataset`` unless it already carries that one (by sha)."""
    from esxdr import shipping

    root = observed.get(dataset)
    if root is None or root.props.get(shipping.SHA_PROP) != sha:
        say(saying)
        if not dry_run:
            zfs.set_props(dataset, props)
    return sha


def _target(action: Action) -> Snapshot | None:
    """The snapshot an action leaves DR at: an incremental's target, a full stream's source."""
    return action.target if isinstance(action, SendIncremental) else getattr(action, "source", None)


class Engine:
    def __init__(self, site, group_name: str, opts: Options):
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
        from esxdr.failover import state_path
        from esxdr.plan.runbook import HANDOFF_PROP

        try:
            data = json.loads(marker.read_text())
        except (OSError, ValueError):
            return False
        snap, g = data.get("snapshot"), self.group
        if data.get("by") != "failback-hand-off" or not snap:
            return False
        src, dst = both(lambda: open_side(self.site, g.source), lambda: open_side(self.site, g.destination))
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
        # Each side opens and observes in its own thread: capability probes, the SSH handshake
        # (and the import of paramiko it needs) overlap the other side's `zfs get`.
        def source_side() -> dict[str, Dataset]:
            self.src = open_side(self.site, g.source, prewarm=opts.pull and not opts.dry_run)
            if opts.pull and not opts.dry_run and hasattr(self.src.transport, "prewarm"):
                self.src.transport.prewarm()  # a pull's stream comes from production over SSH
            return self.src.zfs.observe([g.source_root])

        def dr_side() -> dict[str, Dataset]:
            self.dst = open_side(self.site, g.destination, prewarm=not opts.dry_run)
            if not opts.dry_run and hasattr(self.dst.transport, "prewarm"):
                # the stream's SSH master authenticates while DR lists its snapshots
                self.dst.transport.prewarm()
            return self.dst.zfs.observe([g.dr_root])

        src_obs, dst_obs = both(source_side, dr_side)
        self._dst_obs = dst_obs
        src, dst = self.src, self.dst
        assert src is not None and dst is not None
        from esxdr.zfs.compat import preflight

        preflight(self.site, g, src, dst, src_obs)  # bookmarks and stream directions, before anything changes
        result = GroupResult(group=g.name, snapshot=None, dry_run=opts.dry_run, mode="pull" if opts.pull else "push")
        result.compression = _pick_compression(g, src, dst)
        if not opts.dry_run and src.local and self._release_leaked_send_holds(src_obs):
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
            raise _combine(conflicts)
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
            targets = [t for _, _, acts in plans if acts for t in [_target(acts[-1])] if t is not None]
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
        self._heal_seals(plans, dst_obs)
        if opts.dry_run:
            if opts.prune:
                result.pruned = self._prune(src_obs, dst_obs, dry_run=True, plans=plans)
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
                    else _combine(errors)  # type: ignore[arg-type]
            checkpoint("after-receive")
            # The holds follow the seals. Beside them they bought about 0.1 s, but the run that
            # tried it hung in two sibling `zfs unmount` (see Zfs.unmount); not tried again since.
            self._move_holds(work, src_obs, dst_obs)
            self._bookmark(work, src_obs)
        if work or opts.take_snapshot:
            result.manifest = self._ship_manifest(dst_obs)
        if opts.prune:
            checkpoint("before-prune")
            # Pruning works from what was observed before the streams: snapshots received or
            # taken by this run are newer than every candidate, and a hold released by this run
            # still counts (kept one run longer). Only a rollback invalidates that view.
            if any(isinstance(a, RollbackDr) or getattr(a, "force", False) for r in work for a in r.actions):
                src_obs, dst_obs = both(lambda: src.zfs.observe([g.source_root]),
                                        lambda: dst.zfs.observe([g.dr_root]))
            result.pruned = self._prune(src_obs, dst_obs, dry_run=False, plans=plans)
        return result

    # -- one dataset -----------------------------------------------------------
    def _replicate_one(self, r: DatasetResult, source: Dataset, compression: str | None) -> None:
        assert self.src and self.dst
        attempt = 0
        actions = list(r.actions)
        started = time.monotonic()
        while actions:
            action = actions[0]
            try:
                r.bytes += self._apply(action, r, compression)
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
                # Re-observe this dataset: a resumable receive may have left a token, or the
                # stream may have completed before the cut was noticed.
                dest_now = self.dst.zfs.observe([r.dest]).get(r.dest)
                if any(s.guid == -1 for s in source.snapshots):
                    # the snapshot this run took is only known by name so far; the DR copy of
                    # it, if the stream got through, is matched by guid
                    source = self.src.zfs.observe([r.source]).get(r.source) or source
                actions = plan_dataset(source, dest_now, r.dest, intermediate=self.group.incremental == "intermediate",
                                       allow_rollback_dr=self.opts.rollback_dr,
                                       bookmarks=getattr(self.group, "bookmarks", False))
                actions = [a for a in actions if not isinstance(a, UpToDate)]
        r.seconds = time.monotonic() - started

    def _apply(self, action: Action, r: DatasetResult, compression: str | None) -> int:
        src, dst = self.src, self.dst
        assert src and dst
        if isinstance(action, RollbackDr):
            self._release_own_holds([f"{r.dest}@{n.lstrip('@')}" for n in action.discards])
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
            if isinstance(action, SendFull):
                send = src.zfs.send_argv(None, action.source.full_name, False)
                total = action.source.referenced
                force = action.force
            elif isinstance(action, SendIncremental):
                send = src.zfs.send_argv(action.base.full_name, action.target.full_name, action.intermediate)
                total = action.estimate or src.zfs.send_estimate(action.base.full_name, action.target.full_name,
                                                                 action.intermediate)
                force = action.force
            else:
                send = src.zfs.send_argv(None, "", False, resume_token=action.token)
                total, force = None, False
            label = r.dest.rsplit("/", 1)[-1]
            bar = Progress(label, total, enabled=self.opts.progress, on_bytes=_mid_stream_checkpoint)
            recv = dst.zfs.recv_argv(r.dest, force=force)
            inflight: list[Path] = []
            try:
                res = run_stream(src.transport, send, dst.transport, recv, compress=compression,
                                 mbuffer=self._mbuffer(src, dst), progress=bar, bwlimit=self.group.bandwidth_limit,
                                 dataset=r.dest,
                                 on_start=lambda procs: inflight.append(self._note_send(procs[0], r)))
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
                self._seal_replica(r.dest, self._kinds.get(r.dest, "filesystem"),
                                   mounted=r.dest in self._own_mountpoint)
            return res.bytes
        raise AssertionError(f"unknown action {action!r}")

    def _release_own_holds(self, snapshots: list[str]) -> None:
        """Release replication's own hold, and only it, from DR snapshots about to be destroyed.

        One call each: a snapshot that does not carry the tag fails alone (check=False)."""
        assert self.dst
        held = {s.full_name for ds in self._dst_obs.values() for s in ds.snapshots if s.held}
        for name in snapshots:
            if name in held:
                self.dst.zfs.release(hold_tag(self.group.name), [name])

    def _reseed_destroy(self, dest: str) -> None:
        """--rollback-dr onto a DR dataset that shares no snapshot with production: no stack receives
        a full stream over a dataset with snapshots, so it is destroyed first (with DR's privileges)."""
        assert self.dst
        below = sorted(n for n in self._dst_obs if n.startswith(dest + "/"))
        if below:
            raise ConflictError(f"{dest} on {self.dst.name} has datasets below it ({', '.join(below)}); "
                                "a full stream cannot replace it", hint="move or destroy them on DR first")
        self._release_own_holds([s.full_name for s in self._dst_obs[dest].snapshots])
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
            from esxdr.consistency import quiesced

            return quiesced(self.site, self.group, say=self.opts.say)
        return _CrashConsistent()

    # -- the target manifest travels with the replica ----------------------------------
    def _ship_manifest(self, dst_obs: dict[str, Dataset]) -> str | None:
        """Capture the production target for this group and store it on DR when it changed."""
        assert self.src and self.dst
        if self.src.guarded and self.opts.failed_over:
            return None  # pull mode's way home: the DR root holds production's own manifest, not one to copy
        if self.src.guarded:
            return self._copy_published_manifest(dst_obs)
        captured = self._capture_manifest()
        if captured is None:
            if self.site.storage[self.group.source].target is not None:
                self.opts.say(f"{self.group.name}: the production target presents none of the group's datasets; "
                              "no manifest shipped")
            return None
        sha, props, count = captured
        return _store_manifest(self.dst.zfs, self.group.dr_root, dst_obs, sha, props, self.opts.say,
                               f"{self.group.name}: ship the target manifest ({count} LUs) to {self.group.dr_root}")

    def _copy_published_manifest(self, dst_obs: dict[str, Dataset]) -> str | None:
        """Pull mode: DR cannot read production's target stack through a send-only key. Production
        publishes the manifest on its source root (`esxdr replicate --snapshot-only`); DR reads it
        with `zfs get`, validates it as the untrusted input it is, and stores it on the DR root.
        The pin on DR (`esxdr target accept`) still decides whether a failover presents it."""
        from esxdr import shipping

        assert self.src and self.dst
        g = self.group
        m = shipping.read(self.src.zfs, g.source_root, g)  # raises ManifestError when forged
        if m is None:
            self.opts.say(f"{g.name}: production published no target manifest on {g.source_root} "
                          f"(esxdr replicate {g.name} --snapshot-only publishes it); none shipped")
            return None
        sha, props = shipping.encode(m)
        return _store_manifest(self.dst.zfs, g.dr_root, dst_obs, sha, props, self.opts.say,
                               f"{g.name}: copy the target manifest production published ({len(m.logical_units)} "
                               f"LUs) to {g.dr_root}")

    def _capture_manifest(self) -> tuple[str, dict[str, str], int] | None:
        """The production target's manifest for this group, encoded: (sha, properties, LUs)."""
        from esxdr import shipping

        assert self.src
        m = capture_manifest(self.site, self.group, self.src.transport)
        if m is None:
            return None
        sha, props = shipping.encode(m)
        return sha, props, len(m.logical_units)

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
        self.src = src = open_side(self.site, g.source)
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
        captured = None if opts.failed_over else self._capture_manifest()
        if captured is None:
            if not opts.failed_over:
                opts.say(f"{g.name}: no production target presents the group's datasets; no manifest published")
        else:
            sha, props, count = captured
            result.manifest = _store_manifest(
                src.zfs, g.source_root, src_obs, sha, props, opts.say,
                f"{g.name}: publish the target manifest ({count} LUs) on {g.source_root} for DR to pull",
                dry_run=opts.dry_run)
        if opts.prune:
            # Production's own retention, without a view of DR: the snapshot DR pulled last carries
            # DR's hold (esxdr_<group>, placed through the send-only account) and is kept for it.
            tz = g.schedule.timezone if g.schedule else "UTC"
            doomed = []
            for ds_name in g.datasets:
                ds = src_obs[ds_name]
                if ds.snapshots:
                    doomed += [d.snapshot.full_name for d in prune_decisions(ds, g.retention.source, g.name,
                                                                             frozenset(), g.retention.prune_foreign,
                                                                             tz) if not d.keep]
            result.pruned = {src.name: doomed}
            if doomed and not opts.dry_run:
                opts.say(f"{g.name}: prune {len(doomed)} snapshot(s) on {src.name}")
                src.zfs.destroy_snapshots(doomed)
        return result

    # -- pool-v23 send holds ------------------------------------------------------------
    # A pool-v23 `zfs send -I` takes temporary user holds (".send-<pid>-0") on the range it
    # sends; zfs-fuse only drops them when the sender exits on its own. A sender killed with
    # esxdr (power cut, SIGKILL) leaves them behind and they would block pruning forever, so
    # each local send is noted in the state dir and a later run releases what a dead one left.

    def _inflight_dir(self) -> Path:
        return Path(self.site.state_dir) / "inflight" / self.group.name

    def _note_send(self, proc, r: DatasetResult) -> Path:
        assert self.src
        d = self._inflight_dir()
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{proc.pid}.json"
        if self.src.local and self.src.caps.flavour == "legacy" and isinstance(getattr(proc, "pid", None), int):
            path.write_text(json.dumps({"pid": proc.pid, "dataset": r.source}))
        return path

    def _release_leaked_send_holds(self, src_obs: dict[str, Dataset]) -> bool:
        """True when something was released (the caller then observes again)."""
        assert self.src
        d = self._inflight_dir()
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
                self.opts.say(f"{self.group.name}: releasing holds left by a killed send (pid {entry['pid']})")
                self.src.transport.run([*self.src.zfs.cmd, "release", f".send-{entry['pid']}-0", *held],
                                       check=False)
                released = True
            note.unlink(missing_ok=True)
        return released

    def _heal_seals(self, plans, dst_obs: dict[str, Dataset]) -> None:
        """Seal replicas a killed run received but did not get to seal.

        A writable replica could be changed on DR (and then refuse the next receive), and on
        pool v23 a mounted one reads stale blocks after an incremental receive. A failed-over
        group never gets here (the run is refused), so a writable replica is a left-over.
        """
        for _, dest, _ in plans:
            ds = dst_obs.get(dest)
            if ds is None or ds.readonly is not False or not ds.snapshots:
                continue
            self.opts.say(f"{self.group.name}: seal {dest} (left writable by an interrupted run)")
            if not self.opts.dry_run:
                self._seal_replica(dest, ds.type, mounted=(ds.mountpoint or "").startswith("/"))

    def _seal_replica(self, dest: str, kind: str, mounted: bool) -> None:
        """A replica is never written or mounted on DR; drills use clones and failover promotes it.

        Unmounted also because zfs-fuse does not invalidate the kernel page cache when an
        incremental receive lands in a mounted filesystem: readers would see stale blocks.
        """
        assert self.dst
        dst = self.dst
        props = {"readonly": "on"}
        if kind == "filesystem":
            props["canmount"] = "noauto"
            if mounted:
                # a mountpoint of its own (an operator's, or a failed-over dataset's): back to the DR
                # root's scheme, where no receive mounts it
                props["mountpoint"] = "none"
        if dst.caps.flavour != "legacy" or kind != "filesystem":
            dst.zfs.set_props(dest, props)
            return
        # A replica that can be mounted is unmounted first: then the properties are plain metadata
        # changes (readonly=on on a mounted zfs-fuse filesystem remounts it) and, legacy `zfs set`
        # taking one property per call, go in parallel.
        if mounted:
            try:
                dst.zfs.unmount(dest)
            except NotMounted:
                pass  # a run killed after this unmount left it unmounted: the state wanted
        with ThreadPoolExecutor(max_workers=len(props)) as pool:
            list(pool.map(lambda kv: dst.zfs.set_props(dest, dict([kv])), props.items()))

    def _mbuffer(self, src: Side, dst: Side) -> bool:
        mode = self.group.mbuffer
        if mode == "off":
            return False
        if mode == "on":
            return True
        return dst.caps.mbuffer and not dst.local and not (dst.address or "").startswith("127.")

    def _move_holds(self, work: list[DatasetResult], src_obs: dict[str, Dataset], dst_obs: dict[str, Dataset]) -> None:
        """Hold the new common snapshot on both sides and release the previous one (one call each)."""
        assert self.src and self.dst
        tag = hold_tag(self.group.name)
        new_src, new_dst, old_src, old_dst = [], [], [], []
        for r in work:
            target = _target(r.actions[-1])
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
        src, dst = self.src, self.dst
        if not (src.caps.holds and dst.caps.holds):
            return

        def move(side: Side, new: list[str], old: list[str]) -> None:
            if new:
                side.zfs.hold(tag, new)
                checkpoint("after-hold")
            if old:
                side.zfs.release(tag, old)
                checkpoint("after-release")

        level = (self._level or "crash")

        def dr_side() -> None:
            # A guarded DR keeps replication's holds until the DR box prunes (the key may not release).
            move(dst, new_dst, [] if dst.guarded else old_dst)
            if level != "crash" and new_dst:
                # send without -p carries no user properties; DR must know the level even when
                # production is gone (drills and failover report it). Crash is the default.
                dst.transport.run([*dst.zfs.cmd, "set", f"esxdr:consistency={level}", *new_dst], check=False)

        both(lambda: move(src, new_src, old_src), dr_side)

    def _bookmark(self, work: list[DatasetResult], src_obs: dict[str, Dataset]) -> None:
        """bookmarks: true — bookmark the new common snapshot on the source, drop the group's older ones.

        The bookmark is the -i base should the source's snapshot be destroyed; a failure only
        warns (like a hold, it is a safeguard, the replica is already complete).
        """
        assert self.src
        if not getattr(self.group, "bookmarks", False) or not self.src.caps.bookmarks or self.src.guarded:
            # A pull's cursor on production is the hold DR keeps there: the send-only account makes
            # no bookmarks (they are a push-mode safeguard, kept by production itself).
            return
        from esxdr.errors import CommandFailed

        prefix = esxdr_prefix(self.group.name)
        for r in work:
            target = _target(r.actions[-1])
            if target is None:
                continue
            known = {b.name for b in src_obs[r.source].bookmarks}
            try:
                if target.name not in known:
                    self.src.zfs.bookmark(target.full_name, f"{r.source}#{target.name}")
                for b in src_obs[r.source].bookmarks:
                    if b.name.startswith(prefix) and b.name != target.name:
                        self.src.zfs.destroy_bookmark(b.full_name)
            except CommandFailed as e:
                self.opts.say(f"{self.group.name}: bookmark of {target.full_name} failed: {e.message}")

    # -- retention -------------------------------------------------------------
    def _prune(self, src_obs: dict[str, Dataset], dst_obs: dict[str, Dataset], *, dry_run: bool,
               plans) -> dict[str, list[str]]:
        assert self.src and self.dst
        g = self.group
        out: dict[str, list[str]] = {}
        tz = g.schedule.timezone if g.schedule else "UTC"
        sides = []
        if not self.src.guarded:
            # A guarded production (pull mode) prunes itself: `esxdr replicate --snapshot-only` there.
            sides.append((self.src, src_obs, g.retention.source, {ds: g.dr_dataset(ds) for ds in g.datasets}))
        if not self.dst.guarded:
            # A guarded DR prunes itself, on its own schedule (`esxdr prune --side dr` on the DR box):
            # the replication key cannot shorten the DR retention window.
            sides.append((self.dst, dst_obs, g.retention.destination, {g.dr_dataset(ds): ds for ds in g.datasets}))
        for side, obs, rules, mapping in sides:
            other = dst_obs if side is self.src else src_obs
            doomed: list[str] = []
            for name, ds in sorted(obs.items()):
                if not ds.snapshots:
                    continue
                partner = other.get(mapping.get(name, ""))
                protected: frozenset[int] = frozenset()
                if partner is not None:
                    pair = common_snapshot(ds, partner)
                    if pair:
                        protected = frozenset({pair[0].guid})
                elif name in mapping:
                    # Not replicated yet: everything may be the base of the first stream.
                    protected = frozenset(s.guid for s in ds.snapshots)
                decisions = prune_decisions(ds, rules, g.name, protected, g.retention.prune_foreign, tz)
                doomed += [d.snapshot.full_name for d in decisions if not d.keep and d.snapshot.guid != -1]
            out[side.name] = doomed

        def destroy(side: Side) -> None:
            doomed = out.get(side.name, [])
            if doomed and not dry_run:
                self.opts.say(f"{g.name}: prune {len(doomed)} snapshot(s) on {side.name}")
                side.zfs.destroy_snapshots(doomed[:1])
                checkpoint("mid-prune")
                if doomed[1:]:
                    side.zfs.destroy_snapshots(doomed[1:])

        src, dst = self.src, self.dst
        both(lambda: destroy(src), lambda: destroy(dst))
        return out


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


def both(a: Callable, b: Callable) -> tuple:
    """Run two independent steps, one per side, at the same time (each side's latency overlaps)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        fb = pool.submit(b)
        ra = a()
        return ra, fb.result()


def prune_decisions(ds: Dataset, rules, group: str, protected: frozenset[int], prune_foreign: bool,
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


def dr_decisions(group, dr_obs: dict[str, Dataset], tz: str) -> list[Decision]:
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


def prune_dr_side(site, group, *, dry_run: bool) -> DrPrune:
    """DR retention, run on the DR box with its own privileges, from DR's view alone.

    Production may be gone or hostile, so nothing is asked of it: each replica keeps its newest
    snapshot (the base of the next incremental, which production holds too) and whatever the DR
    rules keep. Replication's own hold (and only it) is released from what is destroyed; a
    snapshot kept by another hold or by a clone (a drill) stays, and is reported.
    """
    dst = open_side(site, group.destination)
    try:
        obs = dst.zfs.observe([group.dr_root])
        tz = group.schedule.timezone if group.schedule else "UTC"
        tag = hold_tag(group.name)
        # Replication holds every snapshot it sends to a DR behind serve; only the newest needs it
        # (the next base). Its hold moves there now, one release per snapshot (one without the tag
        # fails alone), so that what still holds a snapshot afterwards is someone else's: a drill's,
        # an admin's. Which tags a snapshot carries is not asked: zfs-fuse has no `zfs holds`. A
        # dry run assumes replication's hold on each held snapshot.
        older = [s for name, ds in obs.items() if name in group.dr_datasets
                 for s in ds.snapshots if s.held and s is not max(ds.snapshots, key=lambda x: x.createtxg)]
        if dry_run:
            moved = {s.full_name for s in older}
            obs = {name: dataclasses.replace(ds, snapshots=[
                dataclasses.replace(s, userrefs=(s.userrefs or 0) - 1) if s.full_name in moved else s
                for s in ds.snapshots]) for name, ds in obs.items()}
        elif older:
            for snap in older:
                dst.zfs.release(tag, [snap.full_name])
            obs = dst.zfs.observe([group.dr_root])
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


def _combine(conflicts: list) -> ReplicationConflict:
    if len(conflicts) == 1:
        return conflicts[0]
    first = conflicts[0]
    msg = "\n".join(c.message for c in conflicts)
    return ReplicationConflict(first.kind, msg, hint=first.hint,
                               evidence={"conflicts": [c.to_dict() for c in conflicts]})


def record_run(state_dir: str, result: GroupResult) -> None:
    runs = Path(state_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    entry = {**result.to_dict(), "finished": datetime.now(UTC).isoformat()}
    atomic_write(runs / f"{result.group}.last.json", json.dumps(entry, indent=2))
    with open(runs / f"{result.group}.history.jsonl", "a") as f:
        f.write(json.dumps({k: entry[k] for k in ("group", "snapshot", "bytes", "seconds", "finished")}) + "\n")


def summary_text(result: GroupResult) -> str:
    lines = []
    if result.mode == "snapshot-only":
        lines.append(f"{result.group}: {'would take' if result.dry_run else 'took'} @{result.snapshot}"
                     + (", target manifest published" if result.manifest else "")
                     + f"; DR pulls it (esxdr replicate {result.group} --pull on the DR box)")
    else:
        verb = {("pull", True): "would pull", ("pull", False): "pulled", ("push", True): "would replicate",
                ("push", False): "replicated"}[(result.mode, result.dry_run)]
        moved = [d for d in result.datasets if any(not isinstance(a, UpToDate) for a in d.actions)]
        lines.append(f"{result.group}: {verb} {len(moved)} of {len(result.datasets)} datasets"
                     + (f" to @{result.snapshot}" if result.snapshot else "")
                     + ("" if result.dry_run else f", {human_bytes(result.bytes)} in {result.seconds:.1f}s"))
    for side, snaps in result.pruned.items():
        if snaps:
            lines.append(f"{result.group}: {'would prune' if result.dry_run else 'pruned'} {len(snaps)} "
                         f"snapshot(s) on {side}")
    if result.consistency and result.consistency.get("level") != "crash" or \
            (result.consistency and result.consistency.get("vms")):
        from esxdr.consistency import describe

        lines += [f"{result.group}: {line}" for line in describe(result.consistency)]
    return "\n".join(lines)
