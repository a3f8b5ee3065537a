#!/usr/bin/env python3
"""The no-op on real OpenZFS: O(datasets) with snapshots_changed, against the full listing.

A replication that finds nothing to send lists every snapshot of both sides; on OpenZFS 2.2 and
newer esxdr reads each dataset and its newest common snapshot instead, while `snapshots_changed`
says nothing changed (esxdr/replication/quick.py). zfs-fuse (pool v23) has no such property, so
this runs in the OpenZFS lane's guest, built with OpenZFS from bookworm-backports (2.3).

Per shape (datasets x snapshots), in the guest: one group of filesystems under ozprod with the
snapshots taken recursively, DR seeded once with `zfs send -R | zfs recv -u` inside the guest
(setup, not timed), the replicas read-only as esxdr leaves them. Then, interleaved, --rounds
times each:
- full: `esxdr replicate GROUP --no-snapshot --no-prune` with the quick record removed first, so
  it lists both sides in full (what every no-op costs without snapshots_changed);
- quick: the same command with the record the previous full run wrote;
- floor: listing every dataset and snapshot of both sides once, at the same time, over the same
  SSH path (`zfs list -t all -rHp -o name,guid`), nothing else;
- ssh: one fresh SSH login that runs `true` (each esxdr run logs in to both sides).
Medians compared. Verified: every quick run says "observation": "quick" with one zfs command per
side, every full run says "full", and at the end DR holds every source snapshot (names and guids
of every dataset compared). A shape that fails any of it reports "failed: <why>", no ratio.

Run (the lane with OpenZFS 2.3; building that image takes about 12 min the first time):
    ESXDR_OPENZFS_SUITE=bookworm-backports scripts/openzfs-lane up
    set -a; . /run/esxdr-openzfs/lane.env; set +a
    .venv/bin/python benchmarks/noop_openzfs.py [--shapes 100x20,100x200] [--rounds 5] [--append]
    scripts/openzfs-lane down
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import append, header, lane_accel, table  # noqa: E402

from esxdr.lab.openzfs import NOT_RUNNING, Lane, keygen, site_storage  # noqa: E402
from esxdr.replication import quick  # noqa: E402

ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")
PROD, DR = "ozprod", "ozdr"


def seed(lane: Lane, name: str, n: int, m: int) -> float:
    """n filesystems with m recursive snapshots under ozprod/name, DR seeded in the guest."""
    t0 = time.monotonic()
    src, dst = f"{PROD}/{name}", f"{DR}/{name}"
    lane.run(f"zfs destroy -r {dst} 2>/dev/null; zfs destroy -r {src} 2>/dev/null; zfs create {src} && "
             f"for i in $(seq -w 0 {n - 1}); do zfs create {src}/lun$i && "
             f"  head -c 4096 /dev/urandom > /{src}/lun$i/data; done && "
             # the no-op's cost is in the number of snapshots, not in their data: one write each
             f"for j in $(seq -w 1 {m}); do zfs snapshot -r {src}@bench_$j; done", timeout=7200)
    lane.run(f"zfs send -R {src}@$(zfs list -H -t snapshot -o name -s createtxg -d 1 {src} | tail -1 | cut -d@ -f2) "
             f"| zfs receive -u {dst} && zfs set readonly=on {dst}", timeout=7200)
    return time.monotonic() - t0


def site(work: Path, lane: Lane, dr_key: str, name: str, n: int) -> Path:
    p = work / f"site-{name}.yaml"
    p.write_text(f"version: 1\nname: noop\nstate_dir: {work}/state-{name}\nstorage:\n"
                 + site_storage(lane, "ss1", "production")
                 + site_storage(lane, "ss2", "dr", user="esxdr-dr", key=dr_key, serve_prefix=DR)
                 + f"""protection_groups:
  {name}:
    source: ss1
    destination: ss2
    source_root: {PROD}/{name}
    dr_root: {DR}/{name}
    datasets: [{', '.join(f'lun{i:0{len(str(n - 1))}d}' for i in range(n))}]
    retention:
      source: {{hourly: 1000}}
      destination: {{hourly: 1000}}
    rpo: 1d
""")
    return p


def noop(site_path: Path, name: str) -> tuple[float, dict]:
    t0 = time.monotonic()
    r = subprocess.run([ESXDR, "--site", str(site_path), "--json", "replicate", name, "--no-snapshot", "--no-prune"],
                       capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"esxdr exited {r.returncode}: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return took, json.loads(r.stdout)


def listing(lane: Lane, name: str) -> tuple[float, dict[str, str], dict[str, str]]:
    """Both sides listed at once over SSH: (seconds, source name→guid, DR name→guid)."""
    def side(root: str) -> dict[str, str]:
        out = lane.out(["zfs", "list", "-t", "all", "-rHp", "-o", "name,guid", root], timeout=1800)
        return dict(line.split("\t") for line in out.splitlines())

    t0 = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        a, b = pool.submit(side, f"{PROD}/{name}"), pool.submit(side, f"{DR}/{name}")
        src, dst = a.result(), b.result()
    return time.monotonic() - t0, src, dst


def measure(lane: Lane, work: Path, dr_key: str, n: int, m: int, rounds: int) -> dict:
    name = f"n{n}x{m}"
    out: dict = {"shape": f"{n} x {m}", "objects": n * (m + 1) + m + 1}
    out["seed_s"] = seed(lane, name, n, m)
    sp = site(work, lane, dr_key, name, n)
    record = quick.record_path(str(work / f"state-{name}"), name)
    time.sleep(quick.MATURITY + 1)  # the seeding's snapshots: old enough to be trusted
    noop(sp, name)  # the first run probes and caches both hosts' capabilities
    times: dict[str, list[float]] = {"full": [], "quick": [], "floor": [], "ssh": []}
    for _ in range(rounds):
        record.unlink(missing_ok=True)
        t, res = noop(sp, name)
        if res["observation"] != "full":
            raise RuntimeError(f"a run without the record said {res['observation']!r}")
        times["full"].append(t)
        if not record.exists():
            raise RuntimeError("the full no-op recorded nothing (snapshots_changed missing or too fresh?)")
        t, res = noop(sp, name)
        if res["observation"] != "quick" or res["commands"] != {"ss1": 1, "ss2": 1}:
            raise RuntimeError(f"expected a quick run with 1 zfs command per side, got {res['observation']} "
                               f"{res['commands']}")
        times["quick"].append(t)
        times["floor"].append(listing(lane, name)[0])
        # a fresh login, as each esxdr run makes (lane.run shares one multiplexed connection)
        login = [{"ControlMaster=auto": "ControlMaster=no"}.get(a, a) for a in lane.ssh_argv()]
        login = [a if not a.startswith("ControlPath=") else "ControlPath=none" for a in login]
        t0 = time.monotonic()
        subprocess.run([*login, "true"], check=True, capture_output=True, timeout=120)
        times["ssh"].append(time.monotonic() - t0)
    _, src, dst = listing(lane, name)
    # snapshots keep their guid across send/receive; datasets get guids of their own
    mapped = {k.replace(f"{PROD}/{name}", f"{DR}/{name}", 1): v for k, v in src.items() if "@" in k}
    dst = {k: v for k, v in dst.items() if "@" in k}
    if mapped != dst:
        missing = sorted(set(mapped) - set(dst))[:3]
        raise RuntimeError(f"DR differs from the source (e.g. {missing or 'guids'})")
    out.update({k: statistics.median(v) for k, v in times.items()})
    out["rounds"] = {k: " ".join(f"{x:.2f}" for x in v) for k, v in times.items()}
    lane.run(f"zfs destroy -r {DR}/{name}; zfs destroy -r {PROD}/{name}", check=False, timeout=3600)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="100x20,100x200", help="datasets x snapshots, comma-separated")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--append", action="store_true", help="also append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    lane = Lane.from_env()
    if lane is None:
        print(NOT_RUNNING, file=sys.stderr)
        return 2
    lane.ensure_pool(PROD, (lane.disks or ["/dev/disk/by-id/virtio-esxdr-prod"])[0])
    lane.ensure_pool(DR, (lane.disks or ["", "/dev/disk/by-id/virtio-esxdr-dr"])[1])
    work = Path(tempfile.mkdtemp(prefix="esxdr-noopbench-"))
    os.chmod(work, 0o700)
    dr_key = work / "id_ed25519"
    lane.dr_account("esxdr-dr", DR, keygen(dr_key, "esxdr@noop-bench"))
    results = []
    for shape in args.shapes.split(","):
        n, m = (int(x) for x in shape.lower().split("x"))
        t0 = time.monotonic()
        try:
            results.append(measure(lane, work, str(dr_key), n, m, args.rounds))
        except (RuntimeError, subprocess.SubprocessError) as e:
            results.append({"shape": f"{n} x {m}", "failed": str(e)})
        print(f"{shape}: {time.monotonic() - t0:.0f} s", file=sys.stderr)
    base = next((r["quick"] for r in results if "quick" in r), None)
    rows = []
    for r in results:
        if "failed" in r:
            rows.append([r["shape"], "", f"failed: {r['failed']}", "", "", "", "", ""])
            continue
        target = "≤ 1 s: " + ("met" if r["quick"] <= 1 else f"MISSED ({r['quick']:.2f} s; one SSH login alone "
                                                            f"takes {r['ssh']:.2f} s in this guest)")
        if base is not None and r["quick"] is not base:
            target = (f"≤ 1.2 × the first shape's quick: {r['quick'] / base:.2f} × — "
                      + ("met" if r["quick"] <= 1.2 * base else "MISSED"))
        rows.append([r["shape"], r["objects"], f"{r['full']:.2f} s", f"{r['quick']:.2f} s",
                     f"{r['quick'] / r['full']:.2f}", f"{r['floor']:.2f} s", f"{r['ssh']:.2f} s", target])
    versions = [f"guest {lane.zfs_version()}", lane_accel()]
    block = (header("no-op on real OpenZFS: quick (snapshots_changed) vs full listing (benchmarks/noop_openzfs.py)",
                    versions) + "\n"
             + table(["datasets x snapshots", "objects per side", "full no-op", "quick no-op", "quick / full",
                      "floor: list both sides", "one SSH login", "target"], rows) + "\n\n"
             + "Medians of interleaved rounds (each round: full, quick, floor, ssh). Rounds: "
             + "; ".join(f"{r['shape']}: " + ", ".join(f"{k} {v}" for k, v in r["rounds"].items())
                         for r in results if "rounds" in r)
             + ". Seeding (not timed in the table): "
             + ", ".join(f"{r['shape']} {r['seed_s']:.0f} s" for r in results if "seed_s" in r) + ".\n")
    print(block)
    if args.append:
        append(block)
    return 1 if any("failed" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
