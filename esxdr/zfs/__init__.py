"""The zfs CLI adapter: observe datasets and snapshots, run zfs operations.

Observation is ONE ``zfs get -rHp -o name,property,value`` per side per run:
``zfs get`` accepts ``-p`` even on pool-v23 ZFS (zfs-fuse, Solaris) where
``zfs list`` does not, and it returns exact numbers (guids especially: without
``-p`` a guid prints as "7.08E").
"""

from __future__ import annotations

import re
import shlex
import threading
from collections.abc import Iterable

from esxdr.errors import CommandFailed
from esxdr.model import LEGACY, OPENZFS, Bookmark, Capabilities, Dataset, Snapshot
from esxdr.serve import natural_mountpoint  # the DR account's serve checks clones by the same rule
from esxdr.transport.base import Transport
from esxdr.zfs.errors import translate

BASE_PROPS = ["type", "guid", "createtxg", "creation", "used", "referenced", "userrefs", "origin",
              "mountpoint", "readonly"]
OPENZFS_PROPS = ["written", "receive_resume_token"]
# What OpenZFS prints when a non-root (delegated) create succeeded but could not mount.
MOUNT_BY_ROOT_ONLY = "successfully created, but it may only be mounted by root"
USER_PROPS = ["esxdr:group", "esxdr:consistency", "esxdr:source", "esxdr:manifest-sha", "esxdr:handoff"]


def pool_is_here(pool: str) -> bool:
    """Whether this machine's own zfs knows ``pool`` (a loopback address may be a port forwarded
    to another machine's pools)."""
    import subprocess

    try:
        return subprocess.run(["zfs", "list", "-H", "-o", "name", pool], capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def parse_get(text: str, user_props: Iterable[str] = USER_PROPS) -> dict[str, Dataset]:
    """Parse ``zfs get -rHp -o name,property,value`` output into datasets with their snapshots."""
    user = set(user_props)
    rows: dict[str, dict[str, str]] = {}
    order: list[str] = []
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        name, prop, value = parts[0], parts[1], "\t".join(parts[2:])
        if name not in rows:
            rows[name] = {}
            order.append(name)
        rows[name][prop] = value
    datasets: dict[str, Dataset] = {}
    snaps: list[tuple[str, dict[str, str]]] = []
    marks: list[tuple[str, dict[str, str]]] = []
    for name in order:
        p = rows[name]
        kind = p.get("type", "")
        if kind == "bookmark" or "#" in name:
            # OpenZFS `zfs get -r` lists bookmarks too (type, guid, createtxg, creation; the rest "-").
            marks.append((name, p))
        elif kind == "snapshot" or "@" in name:
            snaps.append((name, p))
        elif kind in ("filesystem", "volume"):
            datasets[name] = Dataset(
                name=name, type=kind, guid=_int(p.get("guid")) or 0, createtxg=_int(p.get("createtxg")) or 0,
                used=_int(p.get("used")), referenced=_int(p.get("referenced")), written=_int(p.get("written")),
                snapshots_changed=_int(p.get("snapshots_changed")),
                resume_token=_str(p.get("receive_resume_token")), origin=_str(p.get("origin")),
                mountpoint=_str(p.get("mountpoint")), readonly=(p.get("readonly") == "on") if "readonly" in p else None,
                props={k: v for k, v in p.items() if k in user and v != "-"},
            )
    for name, p in snaps:
        ds, _, snap = name.partition("@")
        parent = datasets.get(ds)
        if parent is None:
            continue
        parent.snapshots.append(Snapshot(
            dataset=ds, name=snap, guid=_int(p.get("guid")) or 0, createtxg=_int(p.get("createtxg")) or 0,
            creation=_int(p.get("creation")) or 0, used=_int(p.get("used")), referenced=_int(p.get("referenced")),
            written=_int(p.get("written")), userrefs=_int(p.get("userrefs")),
            props=tuple(sorted((k, v) for k, v in p.items() if k in user and v != "-")),
        ))
    for name, p in marks:
        ds, _, mark = name.partition("#")
        parent = datasets.get(ds)
        if parent is None:
            continue
        parent.bookmarks.append(Bookmark(
            dataset=ds, name=mark, guid=_int(p.get("guid")) or 0, createtxg=_int(p.get("createtxg")) or 0,
            creation=_int(p.get("creation")) or 0))
    for d in datasets.values():
        d.snapshots.sort(key=lambda s: (s.createtxg, s.creation))
        d.bookmarks.sort(key=lambda s: (s.createtxg, s.creation))
    return datasets


def _int(v: str | None) -> int | None:
    if v is None or v in ("-", ""):
        return None
    try:
        return int(v)
    except ValueError:
        return None


def _str(v: str | None) -> str | None:
    return None if v in (None, "-", "") else v


def parse_send_estimate(text: str) -> int | None:
    """Total bytes from ``zfs send -nvP`` (OpenZFS): the ``size\\t<n>`` line."""
    total = None
    for line in text.splitlines():
        parts = line.split("\t")
        if parts[0] == "size" and len(parts) >= 2:
            total = _int(parts[1].strip())
    return total


def capabilities_from_probe(probe: dict) -> Capabilities:
    """Capabilities from what a host reports (``esxdr serve`` capability probe or a local probe)."""
    import dataclasses

    base = OPENZFS if probe.get("openzfs") else LEGACY
    version = openzfs_version(probe.get("zfs_version"), probe.get("zfs_kmod_version"))
    return dataclasses.replace(base, compressors=tuple(probe.get("compressors", ())),
                               mbuffer=bool(probe.get("mbuffer")),
                               snapshots_changed=bool(probe.get("openzfs")) and version is not None and version >= (2, 2))


def openzfs_version(*lines: str | None) -> tuple[int, int] | None:
    """The oldest of the versions `zfs version` printed (``zfs-2.2.2-1``, ``zfs-kmod-2.2.2-1``).

    The kernel module provides the properties; userland may be newer or older than it, so
    a feature counts only when both have it."""
    found = [(int(m[1]), int(m[2])) for line in lines if line
             for m in [re.match(r"zfs-(?:kmod-)?(\d+)\.(\d+)", line.strip())] if m]
    return min(found) if found else None


class Zfs:
    """zfs operations on one host, through its transport."""

    def __init__(self, transport: Transport, caps: Capabilities, zfs_command: tuple[str, ...] = ("zfs",)):
        self.t = transport
        self.caps = caps
        self.cmd = list(zfs_command)
        self._unmounting = threading.Lock()

    @property
    def host(self) -> str:
        return self.t.name

    def run(self, *args: str, dataset: str | None = None, timeout: float | None = 300, input: str | None = None):
        try:
            return self.t.run([*self.cmd, *args], timeout=timeout, input=input)
        except CommandFailed as e:
            raise translate(e, dataset=dataset) from e

    # -- observe ---------------------------------------------------------------
    def props(self) -> list[str]:
        return (BASE_PROPS + (OPENZFS_PROPS if self.caps.written else [])
                + (["snapshots_changed"] if self.caps.snapshots_changed else []) + USER_PROPS)

    def observe(self, roots: list[str]) -> dict[str, Dataset]:
        """Every dataset and snapshot under ``roots`` in one call; missing roots are simply absent."""
        argv = [*self.cmd, "get", "-rHp", "-o", "name,property,value", ",".join(self.props()), *roots]
        result = self.t.run(argv, check=False, timeout=300)
        if result.returncode != 0 and "does not exist" not in result.stderr:
            raise translate(CommandFailed(f"{self.host}: `{shlex.join(argv)}` failed: {result.stderr.strip()}",
                                          argv=argv, returncode=result.returncode, stderr=result.stderr,
                                          host=self.host))
        return parse_get(result.stdout)

    def read(self, names: list[str], props: list[str]) -> dict[str, dict[str, str]] | None:
        """Properties of exactly these datasets and snapshots, no descent: a targeted read whose
        cost grows with ``names``, not with the snapshots under them. None when any is missing."""
        argv = [*self.cmd, "get", "-Hp", "-o", "name,property,value", ",".join(props), *names]
        result = self.t.run(argv, check=False, timeout=300)
        if result.returncode != 0:
            if "does not exist" in result.stderr or "dataset does not exist" in result.stderr:
                return None
            raise translate(CommandFailed(f"{self.host}: `{shlex.join(argv)}` failed: {result.stderr.strip()}",
                                          argv=argv, returncode=result.returncode, stderr=result.stderr,
                                          host=self.host))
        rows: dict[str, dict[str, str]] = {}
        for line in result.stdout.splitlines():
            parts = line.split("\t")
            if len(parts) >= 3:
                rows.setdefault(parts[0], {})[parts[1]] = "\t".join(parts[2:])
        return rows if all(n in rows for n in names) else None

    # -- operations ------------------------------------------------------------
    def snapshot(self, names: list[str], recursive_root: str | None = None, props: dict[str, str] | None = None):
        opts: list[str] = []
        for k, v in (props or {}).items():
            opts += ["-o", f"{k}={v}"]
        if recursive_root:
            return self.run("snapshot", "-r", *opts, recursive_root, dataset=recursive_root)
        return self.run("snapshot", *opts, *names, dataset=names[0])

    def destroy_snapshots(self, names: list[str]) -> None:
        # OpenZFS takes ds@a,b,c in one call; legacy needs one call each.
        by_ds: dict[str, list[str]] = {}
        for n in names:
            ds, _, s = n.partition("@")
            by_ds.setdefault(ds, []).append(s)
        if self.caps.flavour == "openzfs":
            for ds, snaps in by_ds.items():
                self.run("destroy", f"{ds}@{','.join(snaps)}", dataset=ds)
            return
        # One snapshot per call on pool-v23 zfs: overlap the calls' round trips, a few at a time.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=4) as pool:
            for f in [pool.submit(self.run, "destroy", n, dataset=n) for n in names]:
                f.result()

    def hold(self, tag: str, snapshots: list[str]) -> None:
        """One call for all snapshots. A failure is tolerated: a hold only delays pruning."""
        self.t.run([*self.cmd, "hold", tag, *snapshots], check=False)

    def hold_one(self, tag: str, snapshot: str) -> bool:
        """Hold one snapshot; True when it carries the tag afterwards (a hold it had already
        counts: `zfs hold` fails with "tag already exists" on a resumed run)."""
        r = self.t.run([*self.cmd, "hold", tag, snapshot], check=False)
        return r.returncode == 0 or "tag already exists" in r.stderr

    def release_one(self, tag: str, snapshot: str) -> bool:
        """Release one snapshot's hold; False where this tag held nothing (other tags stay)."""
        return self.t.run([*self.cmd, "release", tag, snapshot], check=False).returncode == 0

    def release(self, tag: str, snapshots: list[str]) -> None:
        """One call; fails harmlessly for snapshots that carry no hold of this tag (another tool's)."""
        self.t.run([*self.cmd, "release", tag, *snapshots], check=False)

    def set_on_snapshots(self, prop: str, value: str, snapshots: list[str]) -> None:
        """One ``zfs set`` for a user property on several snapshots; a failure is tolerated (a
        label, such as the consistency level a send without -p does not carry)."""
        self.t.run([*self.cmd, "set", f"{prop}={value}", *snapshots], check=False)

    def bookmark(self, snapshot: str, bookmark: str) -> None:
        """``zfs bookmark ds@snap ds#name`` (OpenZFS)."""
        self.run("bookmark", snapshot, bookmark, dataset=snapshot)

    def destroy_bookmark(self, bookmark: str) -> None:
        """One bookmark per call: `zfs destroy` takes a single ``ds#name``."""
        self.run("destroy", bookmark, dataset=bookmark)

    def rollback(self, snapshot: str, destroy_newer: bool = False) -> None:
        self.run("rollback", *(["-r"] if destroy_newer else []), snapshot, dataset=snapshot)

    def set_props(self, dataset: str, props: dict[str, str]) -> None:
        # Legacy zfs takes one property per `set`.
        if self.caps.flavour == "openzfs":
            self.run("set", *[f"{k}={v}" for k, v in props.items()], dataset, dataset=dataset)
        else:
            for k, v in props.items():
                self.run("set", f"{k}={v}", dataset, dataset=dataset)

    def create(self, dataset: str, props: dict[str, str] | None = None, parents: bool = True) -> None:
        opts: list[str] = []
        for k, v in (props or {}).items():
            opts += ["-o", f"{k}={v}"]
        try:
            self.run("create", *(["-p"] if parents else []), *opts, dataset, dataset=dataset)
        except CommandFailed as e:
            # OpenZFS on Linux, delegated (`zfs allow`) account: the dataset is created, but only
            # root may mount, and zfs exits 1. esxdr never mounts what it creates on DR (replicas
            # are received with -u), so that is success.
            if MOUNT_BY_ROOT_ONLY not in (e.stderr or ""):
                raise

    def clone(self, snapshot: str, dataset: str, props: dict[str, str] | None = None) -> None:
        opts: list[str] = []
        for k, v in (props or {}).items():
            opts += ["-o", f"{k}={v}"]
        self.run("clone", *opts, snapshot, dataset, dataset=dataset)

    def destroy_clone(self, dataset: str) -> None:
        """Destroy a clone made by esxdr (never anything else: the caller checks `origin`)."""
        self.run("destroy", dataset, dataset=dataset)

    def destroy_replica(self, dataset: str) -> None:
        """A DR dataset and its snapshots (never its children: the caller checks there are none).
        Only with DR's own privileges, for --rollback-dr's re-seed; esxdr serve refuses it."""
        self.run("destroy", "-r", dataset, dataset=dataset)

    def inherit(self, dataset: str, prop: str) -> None:
        self.run("inherit", prop, dataset, dataset=dataset)

    def natural_mountpoint(self, dataset: str) -> str:
        """Where ``dataset`` mounts by ZFS's own inheritance from its pool's top filesystem.

        esxdr gives the DR root ``mountpoint=none`` so that no receive ever mounts a replica
        (pool-v23 receive has no ``-u``). Drill clones and promoted replicas still need a
        place to mount, and they get this one explicitly: the place they had before the root
        was set to none. Read from the pool, which the DR account cannot change.
        """
        pool = dataset.split("/", 1)[0]
        return natural_mountpoint(dataset, self.run("get", "-H", "-o", "value", "mountpoint", pool,
                                                    dataset=pool).stdout.strip())

    def is_mounted(self, dataset: str) -> bool:
        """False too where the dataset cannot be read (gone, or no such property on a zvol)."""
        r = self.t.run([*self.cmd, "get", "-Hp", "-o", "value", "mounted", dataset], check=False)
        return r.returncode == 0 and r.stdout.strip() == "yes"

    def mount(self, dataset: str) -> None:
        self.run("mount", dataset, dataset=dataset)

    def unmount(self, dataset: str, force: bool = False) -> None:
        if self.caps.flavour != "legacy":
            self.run("unmount", *(["-f"] if force else []), dataset, dataset=dataset)
            return
        # One at a time on pool v23: two `zfs unmount` of sibling filesystems started together
        # (the seals of parallel streams that ended at once) hung in zfs-fuse, and the daemon
        # then hung every later `zfs create`.
        with self._unmounting:
            self.run("unmount", *(["-f"] if force else []), dataset, dataset=dataset)

    def send_estimate(self, from_snap: str | None, to_snap: str, intermediate: bool) -> int | None:
        """What `zfs send -nvP` predicts for the stream, or None where the stack cannot say."""
        if not self.caps.send_estimate:
            return None
        args = ["send", "-nvP"]
        if from_snap:
            args += ["-I" if intermediate else "-i", from_snap]
        try:
            return parse_send_estimate(self.run(*args, to_snap, dataset=to_snap).stdout)
        except CommandFailed:
            return None

    def send_argv(self, from_snap: str | None, to_snap: str, intermediate: bool, resume_token: str | None = None,
                  raw: bool = False) -> list[str]:
        if resume_token:
            return [*self.cmd, "send", "-t", resume_token]
        args = [*self.cmd, "send"]
        if raw and self.caps.flavour == "openzfs":
            args.append("-w")
        if from_snap:
            args += ["-I" if intermediate else "-i", from_snap]
        return [*args, to_snap]

    @property
    def receive_unmounted(self) -> bool:
        """Whether receive can leave what it receives unmounted (-u); pool-v23 receive cannot."""
        return self.caps.flavour == "openzfs"

    def recv_argv(self, dataset: str, *, force: bool = False, resumable: bool = True) -> list[str]:
        args = [*self.cmd, "receive"]
        if self.receive_unmounted:
            args.append("-u")  # pool-v23 receive has no -u (and mounts what it receives)
        if force:
            args.append("-F")
        if resumable and self.caps.resume:
            args.append("-s")
        return [*args, dataset]

