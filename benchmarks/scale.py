#!/usr/bin/env python3
"""Replication at steady state and scale: a scheduled run against `syncoid -r`, the floor of listing
both sides, and the no-op, for groups of N datasets x M snapshots (zfs-fuse, sshd on loopback).

Per shape (`--shapes 100x66,300x20,100x20,100x200`), on a lab of its own:

1. seed: N datasets under two identical trees on production, one for esxdr (`e`) and one for
   syncoid (`s`, only for the --syncoid-shapes); M rounds of 16 KiB of fresh random data written at
   a random 16 KiB-aligned offset in every dataset (the same bytes in both trees), each round ended
   by one `zfs snapshot -r` over both trees, snapshot names dated an hour apart in the past;
2. DR brought to steady state by esxdr's first replication (`esxdr replicate GROUP --no-snapshot`)
   and syncoid's copy by `syncoid -r --skip-parent` (both timed and printed, neither a headline);
3. --rounds scheduled runs, interleaved (the first tool alternates): 16 KiB more written to every
   dataset of both trees, then `esxdr replicate GROUP` (snapshot, N incrementals, holds, prune of
   production) and `syncoid -r --skip-parent` (its sync snapshot, N incrementals; it prunes
   nothing but its own previous sync snapshots); medians compared. DR's retention runs after
   each round on the DR box, as it must behind `esxdr serve` (`esxdr prune GROUP --side dr`,
   timed apart, not part of the ratio);
4. the floor: listing both sides' snapshots once, `zfs get -rHp guid` of production's tree
   locally and of the DR root through the same service account at once, median of 3;
5. the no-op: `esxdr replicate GROUP --no-snapshot` on the unchanged group, its first run after
   the scheduled runs and the median of 3 more, with the remote zfs invocations per side.

Every peer is verified after its first replication and after every scheduled round: each DR
dataset's snapshots (names and guids) equal its production dataset's, and the sha256 of the data
file at DR's newest snapshot (read through a clone) equals production's for --verify-sample
datasets chosen evenly (0: all). A peer that fails or does not verify is "failed: <message>".

Retention: esxdr's retention buckets by the snapshots' `creation`, which zfs sets from the clock
when a snapshot is taken and no one can back-date. Seeded snapshots are minutes apart, so GFS
rules alone would thin them to one per hour; `last: M` keeps the steady state at M (each
scheduled run adds one and prunes one), beside the GFS rules (for M = 66: 24 hourly, 30 daily,
8 weekly, 4 monthly, which is 66).

Run as root: `.venv/bin/python benchmarks/scale.py [--shapes 100x20] [--append]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench_common import (
    ESXDR,
    SYNCOID_FIX,
    Bench,
    Failed,
    cause,
    compile_esxdr,
    end_lab,
    header,
    new_lab,
    sample,
    sha256_file,
    target,
    verify_replica,
)
from _record import append, table

GROUP = "g"
BLOCK = 16 << 10
SPAN = 64  # blocks: the data file grows to at most 1 MiB
GFS = {"hourly": 24, "daily": 30, "weekly": 8, "monthly": 4}
DEFAULT_SHAPES = "100x66,300x20,100x20,100x200"


def parse_shapes(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        try:
            n, m = (int(x) for x in part.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--shapes: {part!r} is not DATASETSxSNAPSHOTS (e.g. 100x66)") from None
        if n < 1 or m < 2:
            raise SystemExit(f"--shapes: {part!r} needs at least 1 dataset and 2 snapshots")
        out.append((n, m))
    return out


def shape_name(n: int, m: int) -> str:
    return f"{n}x{m}"


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def rounds(xs: list[float]) -> str:
    return " ".join(f"{x:.2f}" for x in xs)


class Peer:
    def __init__(self, name: str):
        self.name = name
        self.times: list[float] = []
        self.failure: str | None = None
        self.counts: tuple[int, int] = (0, 0)  # snapshots per dataset on DR (min, max), once verified


class Shape:
    """One shape's lab, trees, tools and checks."""

    def __init__(self, n: int, m: int, args: argparse.Namespace, with_syncoid: bool, tag: str):
        self.n, self.m, self.args, self.with_syncoid = n, m, args, with_syncoid
        self.lab = new_lab(tag, pool_size=16 << 30)
        self.b = Bench(self.lab)
        b = self.b
        self.parent = f"{b.prod}/b"
        self.etree, self.stree = f"{self.parent}/e", f"{self.parent}/s"
        self.dr_root, self.syn_root = f"{b.dr}/e", f"{b.dr}/s"
        self.names = [f"d{i:03d}" for i in range(n)]
        self.rng = random.Random(n * 1000 + m)
        self.rows: list[tuple[str, str, str]] = []
        self.notes: list[str] = []
        self.verify_s = 0.0
        self.esxdr, self.syncoid = Peer("esxdr"), Peer("syncoid")
        self.noop_s: float | None = None
        self.floor_s: float | None = None

    # -- setup -------------------------------------------------------------------------
    def site(self) -> Path:
        s = self.b.ssh
        rules = {"last": self.m, **GFS}
        p = self.b.dir / "site.yaml"
        p.write_text(f"""version: 1
name: scale
state_dir: {self.b.dir}/state-scale
storage:
  ss1: {{role: production, local: true}}
  ss2: {{role: dr, address: 127.0.0.1, port: {s['port']}, user: {s['account']}, key: {s['key']},
        host_key: {s['host_key']}, serve_prefix: {self.b.dr}}}
protection_groups:
  {GROUP}:
    source: ss1
    destination: ss2
    source_root: {self.etree}
    dr_root: {self.dr_root}
    datasets: [{', '.join(self.names)}]
    retention:
      source: {json.dumps(rules)}
      destination: {json.dumps(rules)}
    rpo: 1d
""")
        return p

    def create(self) -> None:
        trees = [self.etree] + ([self.stree] if self.with_syncoid else [])
        for ds in [self.parent, *trees, *(f"{t}/{d}" for t in trees for d in self.names)]:
            must("zfs", "create", ds)
        if self.with_syncoid:
            # syncoid's copy receives below a parent that mounts nowhere, as esxdr's DR root does
            must("zfs", "create", "-o", "mountpoint=none", self.syn_root)
        self.site_path = self.site()

    def write_round(self) -> None:
        """16 KiB of fresh random data at a random aligned offset of every dataset's file, the same
        bytes at the same place in both trees."""
        trees = [self.etree] + ([self.stree] if self.with_syncoid else [])
        for d in self.names:
            data, off = os.urandom(BLOCK), self.rng.randrange(SPAN) * BLOCK
            for t in trees:
                fd = os.open(self.b.path_of(f"{t}/{d}") / "data", os.O_WRONLY | os.O_CREAT, 0o644)
                try:
                    os.pwrite(fd, data, off)
                finally:
                    os.close(fd)

    def seed(self) -> None:
        t_write = t_snap = 0.0
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=self.m + 1)
        for j in range(self.m):
            t0 = time.monotonic()
            self.write_round()
            t1 = time.monotonic()
            name = f"esxdr_{GROUP}_{(start + timedelta(hours=j)):%Y%m%dT%H%M%SZ}"
            must("zfs", "snapshot", "-r", f"{self.parent}@{name}")
            t_write += t1 - t0
            t_snap += time.monotonic() - t1
        trees = 2 if self.with_syncoid else 1
        self.rows.append(("seed production", f"{t_write + t_snap:.1f} s",
                          f"{self.m} rounds: writes {t_write:.1f} s ({trees} x {self.n} x 16 KiB a round), "
                          f"`zfs snapshot -r` {t_snap:.1f} s ({t_snap / self.m:.2f} s each, "
                          f"{trees * (self.n + 1) + 1} filesystems)"))

    # -- the tools ------------------------------------------------------------------------
    def esxdr_run(self, *extra: str) -> tuple[float, dict]:
        t0 = time.monotonic()
        r = subprocess.run([ESXDR, "--site", str(self.site_path), "-q", "--json", "replicate", GROUP, *extra],
                           capture_output=True, text=True)
        took = time.monotonic() - t0
        if r.returncode != 0:
            raise Failed(f"esxdr replicate {' '.join(extra)} exited {r.returncode}: {cause(r)}".replace("  ", " "))
        return took, json.loads(r.stdout)

    def dr_prune(self) -> float:
        t0 = time.monotonic()
        r = subprocess.run([ESXDR, "--site", str(self.site_path), "-q", "--json", "prune", GROUP, "--side", "dr"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise Failed(f"esxdr prune --side dr exited {r.returncode}: {cause(r)}")
        return time.monotonic() - t0

    def syncoid_run(self) -> float:
        t0 = time.monotonic()
        r = subprocess.run([*self.b.syncoid_argv(), "-r", "--skip-parent", self.stree,
                            f"root@127.0.0.1:{self.syn_root}"], capture_output=True, text=True)
        took = time.monotonic() - t0
        if r.returncode != 0:
            raise Failed(f"syncoid -r exited {r.returncode}: {cause(r)}")
        return took

    # -- checks ---------------------------------------------------------------------------
    def verify(self, peer: Peer, src_root: str, dst_root: str) -> None:
        """Every DR dataset's snapshots equal production's (names, guids); the data file's sha256 at
        DR's newest snapshot equals production's (its live file: nothing was written since) for a
        sample of datasets."""
        t0 = time.monotonic()
        src, dst = self.b.snapshot_lists(src_root), self.b.snapshot_lists(dst_root)
        counts = []
        for d in self.names:
            verify_replica(self.b, src[f"{src_root}/{d}"], dst.get(f"{dst_root}/{d}"), f"{src_root}/{d}",
                           f"{dst_root}/{d}")
            counts.append(len(dst[f"{dst_root}/{d}"]))
        for d in sample(self.names, self.args.verify_sample):
            newest = dst[f"{dst_root}/{d}"][-1][0]
            got = self.b.sha256_at(f"{dst_root}/{d}@{newest}", "data")
            want = sha256_file(self.b.path_of(f"{src_root}/{d}") / "data")
            if got != want:
                raise Failed(f"sha256 of {dst_root}/{d}@{newest} data is {got[:12]}…, production's {want[:12]}…")
        peer.counts = (min(counts), max(counts))
        self.verify_s += time.monotonic() - t0

    def checked(self, peer: Peer, what: str, fn) -> float | None:
        """Run a peer's step and its verification; a failure marks the peer failed."""
        if peer.failure:
            return None
        try:
            return fn()
        except Failed as e:
            peer.failure = f"{what}: {e}"
            return None

    # -- the measurements ---------------------------------------------------------------------
    def first_replication(self) -> None:
        def esx() -> float:
            took, _ = self.esxdr_run("--no-snapshot")
            self.verify(self.esxdr, self.etree, self.dr_root)
            return took

        t = self.checked(self.esxdr, "first replication", esx)
        self.rows.append(("first replication: esxdr replicate --no-snapshot (parallel 4)",
                          f"failed: {self.esxdr.failure}" if t is None else f"{t:.1f} s",
                          "" if t is None else f"verified; {self.esxdr.counts[0]} snapshots per dataset"))
        if not self.with_syncoid:
            return

        def syn() -> float:
            took = self.syncoid_run()
            self.verify(self.syncoid, self.stree, self.syn_root)
            return took

        ts = self.checked(self.syncoid, "first replication", syn)
        self.rows.append(("first replication: syncoid -r --skip-parent",
                          f"failed: {self.syncoid.failure}" if ts is None else f"{ts:.1f} s",
                          "" if ts is None else
                          f"verified; esxdr/syncoid = {t / ts:.2f}" if t else "verified"))

    def scheduled(self) -> None:
        prunes: list[float] = []
        commands: list[dict] = []
        for k in range(self.args.rounds):
            self.write_round()

            def esx() -> float:
                took, out = self.esxdr_run()
                commands.append(out.get("commands", {}))
                prunes.append(self.dr_prune())
                self.verify(self.esxdr, self.etree, self.dr_root)
                return took

            def syn() -> float:
                took = self.syncoid_run()
                self.verify(self.syncoid, self.stree, self.syn_root)
                return took

            steps = [(self.esxdr, esx)] + ([(self.syncoid, syn)] if self.with_syncoid else [])
            if k % 2:
                steps.reverse()
            for peer, fn in steps:
                t = self.checked(peer, f"scheduled round {k + 1}", fn)
                if t is not None:
                    peer.times.append(t)
        e, s = self.esxdr, self.syncoid
        self.rows.append(("scheduled run: esxdr replicate (snapshot, incrementals, holds, prune)",
                          f"failed: {e.failure}" if e.failure else f"{med(e.times):.2f} s",
                          "" if e.failure else
                          f"median of {rounds(e.times)}; verified, {e.counts[0]}-{e.counts[1]} snapshots per "
                          f"DR dataset; zfs commands ss1 {commands[-1].get('ss1')}, ss2 {commands[-1].get('ss2')}"))
        if prunes and not e.failure:
            self.rows.append(("DR box's own retention after each run: esxdr prune --side dr (not in the ratio)",
                              f"{med(prunes):.2f} s", f"median of {rounds(prunes)}"))
        if self.with_syncoid:
            self.rows.append(("scheduled run: syncoid -r --skip-parent (sync snapshot, incrementals; prunes only "
                              "its own sync snapshots)",
                              f"failed: {s.failure}" if s.failure else f"{med(s.times):.2f} s",
                              "" if s.failure else
                              f"median of {rounds(s.times)}; verified, {s.counts[0]}-{s.counts[1]} snapshots per "
                              "DR dataset"))
            if not e.failure and not s.failure:
                r = med(e.times) / med(s.times)
                self.rows.append(("scheduled run: esxdr / syncoid", f"{r:.2f}",
                                  target(r <= 0.5, "target <= 0.5", f"{r:.2f}: esxdr {med(e.times):.2f} s, "
                                         f"syncoid {med(s.times):.2f} s")))

    def floor(self) -> float:
        """Both sides' snapshot lists, once, at the same time: production's locally, DR's through
        the service account (its forced command, `esxdr serve`, runs the `zfs get`)."""
        ssh = self.b.account_ssh_argv()
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            local = subprocess.Popen(["zfs", "get", "-rHp", "-o", "name,property,value", "guid", self.etree],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            remote = subprocess.run([*ssh, f"zfs get -rHp -o name,property,value guid {self.dr_root}"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            local.wait()
            times.append(time.monotonic() - t0)
            if remote.returncode or local.returncode:
                raise RuntimeError(f"the floor's listing failed: {remote.stderr.strip()}")
        f = med(times)
        self.floor_s = f
        objects = self.n * (self.m + 1) + 1
        self.rows.append((f"floor: `zfs get -rHp guid` of both sides at once (about {objects} objects a side)",
                          f"{f:.2f} s", f"median of {rounds(times)}"))
        e = self.esxdr
        if not e.failure and e.times:
            r = med(e.times) / f
            self.rows.append(("scheduled run: esxdr / floor", f"{r:.2f}",
                              target(r <= 1.5, "target <= 1.5", f"{r:.2f}: {med(e.times):.2f} s against {f:.2f} s")))
        return f

    def noop(self, floor: float) -> None:
        e = self.esxdr
        if e.failure:
            self.rows.append(("no-op: esxdr replicate --no-snapshot", f"failed: {e.failure}", ""))
            return
        try:
            first, out1 = self.esxdr_run("--no-snapshot")
            times, outs = [], []
            for _ in range(3):
                t, out = self.esxdr_run("--no-snapshot")
                times.append(t)
                outs.append(out)
            self.verify(e, self.etree, self.dr_root)
        except Failed as ex:
            e.failure = f"no-op: {ex}"
            self.rows.append(("no-op: esxdr replicate --no-snapshot", f"failed: {ex}", ""))
            return
        sent = sum(d.get("bytes", 0) for o in [out1, *outs] for d in o.get("datasets", []))
        if sent:
            self.rows.append(("no-op: esxdr replicate --no-snapshot", f"failed: it sent {sent} bytes", ""))
            return
        c1 = out1.get("commands", {})
        cs = outs[-1].get("commands", {})
        self.rows.append(("no-op, first after a scheduled run: esxdr replicate --no-snapshot", f"{first:.2f} s",
                          f"engine {out1.get('seconds')} s; zfs commands ss1 {c1.get('ss1')}, ss2 {c1.get('ss2')}"))
        self.noop_s = med(times)
        self.rows.append(("no-op, repeated: esxdr replicate --no-snapshot", f"{self.noop_s:.2f} s",
                          f"median of {rounds(times)} (process wall time; engine "
                          f"{rounds([o.get('seconds', 0) for o in outs])} s); zfs commands ss1 {cs.get('ss1')}, "
                          f"ss2 {cs.get('ss2')}; {self.noop_s / floor:.2f} x the floor; verified"))

    def close(self) -> None:
        self.b.close()
        end_lab(self.lab)


def run_shape(n: int, m: int, args: argparse.Namespace, with_syncoid: bool, tag: str) -> tuple[Shape, float]:
    started = time.monotonic()
    s = Shape(n, m, args, with_syncoid, tag)

    def say(what: str) -> None:
        print(f"{shape_name(n, m)}: {what} at {time.monotonic() - started:.0f} s", file=sys.stderr)

    try:
        if with_syncoid:
            s.b.start_root_sshd()
        s.create()
        if with_syncoid and s.b.syncoid_patched:
            s.notes.append(SYNCOID_FIX)
        s.seed()
        say("seeded")
        s.first_replication()
        say("first replication done")
        s.scheduled()
        say("scheduled rounds done")
        f = s.floor()
        s.noop(f)
    except Exception as e:  # noqa: BLE001 - one shape's breakdown (a zfs-fuse hang) leaves the others' figures
        s.rows.append(("the shape's run", f"failed: {type(e).__name__}: {str(e)[:300]}", ""))
    finally:
        s.close()
    runtime = time.monotonic() - started
    s.notes.append(f"{shape_name(n, m)}: {runtime:.0f} s in all, verification {s.verify_s:.0f} s of it "
                   "(outside every timing).")
    return s, runtime


def must(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=DEFAULT_SHAPES,
                    help=f"DATASETSxSNAPSHOTS, comma-separated (default {DEFAULT_SHAPES})")
    ap.add_argument("--syncoid-shapes", default="100x66,300x20",
                    help="the shapes whose scheduled run is compared with syncoid -r (default 100x66,300x20; "
                         "'all' or 'none')")
    ap.add_argument("--rounds", type=int, default=3, help="scheduled rounds per tool (medians compared; default 3)")
    ap.add_argument("--verify-sample", type=int, default=10,
                    help="datasets whose data file is compared by sha256 after each run (default 10; 0: all)")
    ap.add_argument("--append", action="store_true", help="also append the record to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (the lab needs zfs-fuse and sshd)", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("--rounds must be at least 1", file=sys.stderr)
        return 2
    shapes = parse_shapes(args.shapes)
    have_syncoid = bool(shutil.which("syncoid"))
    if args.syncoid_shapes == "all":
        syn = {shape_name(n, m) for n, m in shapes}
    elif args.syncoid_shapes == "none":
        syn = set()
    else:
        syn = {shape_name(n, m) for n, m in parse_shapes(args.syncoid_shapes)}
    compile_esxdr()
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    noops: dict[tuple[int, int], float] = {}
    floors: dict[tuple[int, int], float] = {}
    for i, (n, m) in enumerate(shapes):
        tag = f"s{os.getpid() % 10000}{chr(ord('a') + i)}"
        shape, runtime = run_shape(n, m, args, have_syncoid and shape_name(n, m) in syn, tag)
        rows += [(shape_name(n, m), *r) for r in shape.rows]
        rows.append((shape_name(n, m), "runtime of this shape (lab up to lab down)", f"{runtime:.0f} s", ""))
        notes += shape.notes
        if shape.noop_s is not None and shape.floor_s is not None:
            noops[(n, m)], floors[(n, m)] = shape.noop_s, shape.floor_s
        print(table(["shape", "measure", "value", "ratio / target"], rows[-len(shape.rows) - 1:]), file=sys.stderr)
    for (n, m), t in noops.items():
        if (n, m) == (100, 20):
            rows.append(("100x20", "no-op target", f"{t:.2f} s",
                         target(t <= 1.0, "target <= 1 s", f"{t:.2f} s; the floor alone took {floors[(n, m)]:.2f} s")))
        if (n, m) == (100, 200):
            small = noops.get((100, 20))
            rows.append(("100x200", "no-op / no-op at 100x20", f"{t / small:.2f}" if small else "n/a",
                         target(t <= 1.2 * small, "target <= 1.2",
                                f"{t / small:.2f}: {t:.2f} s against {small:.2f} s; the floors "
                                f"{floors[(n, m)]:.2f} s against {floors[(100, 20)]:.2f} s")
                         if small else "100x20 not run in this invocation"))
    text = "\n".join([
        header("scale: steady-state replication, esxdr vs syncoid -r, the floor and the no-op (benchmarks/scale.py)",
               syncoid=have_syncoid),
        "Lab: zfs-fuse pools on sparse files (both pools in the one zfs-fuse daemon), OpenSSH on loopback; "
        "esxdr through its DR service account (`esxdr serve`, sudo zfs), syncoid as root through a root sshd; "
        "group parallel 4 (the default). Retention on both sides: "
        f"`last: M` and {', '.join(f'{v} {k}' for k, v in GFS.items())} (creation times cannot be back-dated, "
        "see the script's docstring).\n",
        table(["shape", "measure", "value", "ratio / target"], rows), "",
        f"{args.rounds} scheduled rounds per tool, interleaved (the first tool alternates), medians compared; "
        "verified after every run: each DR dataset's snapshots (names and guids) equal production's, and the "
        f"sha256 of the data file at DR's newest snapshot, read through a clone, equals production's for "
        f"{args.verify_sample or 'all'} datasets a run. " + " ".join(dict.fromkeys(notes)), ""])
    print(text)
    if args.append:
        append(text)
    return 1 if any(v.startswith("failed") for _, _, v, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
