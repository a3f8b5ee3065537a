#!/usr/bin/env python3
"""esxdr vs syncoid, bzfs and zfs-autobackup on real OpenZFS (the guest of scripts/openzfs-lane).

Every tool replicates the same zvol from the guest's pool ozprod to its pool ozdr,
orchestrated from the host with both ends over SSH through the lane's forwarded port
(127.0.0.1 only), so the data takes the same path for all of them:
guest zfs send → ssh → host → ssh → guest zfs receive. The baseline is that raw pipe
as root. esxdr receives through its DR account (forced `esxdr serve`, `zfs allow`),
the others as root (they need a shell).

Measures, per tool: a full send of SIZE MiB of random data, then an incremental of
SIZE/8 MiB, then a no-op re-run. Ratios are against the raw pipe and tool/esxdr.

Run: scripts/openzfs-lane bench  (or with the lane up and its variables exported:
     .venv/bin/python benchmarks/openzfs.py [--size 128])
Tools: syncoid from Debian (sanoid), bzfs and zfs-autobackup from PyPI (pip install
--target DIR bzfs zfs-autobackup; DIR from --tools, default /var/cache/esxdr-openzfs/benchtools).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esxdr.lab.openzfs import NOT_RUNNING, Lane, keygen, site_storage  # noqa: E402

ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")
PROD, DR = "ozprod", "ozdr"


def timed(argv: list[str] | str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    t = time.monotonic()
    r = subprocess.run(argv, shell=isinstance(argv, str), capture_output=True, text=True, timeout=3600,
                       env={**os.environ, **(env or {})})
    return time.monotonic() - t, r


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128, help="MiB of random data in the zvol")
    ap.add_argument("--tools", default="/var/cache/esxdr-openzfs/benchtools")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    lane = Lane.from_env()
    if lane is None:
        print(NOT_RUNNING, file=sys.stderr)
        return 2
    lane.ensure_pool(PROD, (lane.disks or ["/dev/disk/by-id/virtio-esxdr-prod"])[0])
    lane.ensure_pool(DR, (lane.disks or ["", "/dev/disk/by-id/virtio-esxdr-dr"])[1])
    work = Path(tempfile.mkdtemp(prefix="esxdr-ozbench-"))
    os.chmod(work, 0o700)
    key = work / "id_ed25519"
    lane.dr_account("esxdr-dr", DR, keygen(key, "esxdr@openzfs-bench"))
    port, kh = lane.ssh_port, lane.known_hosts
    ssh_cfg = work / "bzfs_ssh_config"  # bzfs insists on this substring in the basename
    ssh_cfg.write_text(f"Host {lane.ssh_address}\n  Port {port}\n  User root\n  IdentityFile {lane.key}\n"
                       f"  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  LogLevel ERROR\n")
    ssh = f"ssh -F {ssh_cfg} {lane.ssh_address}"
    tools_env = {"PYTHONPATH": args.tools, "PATH": f"{args.tools}/bin:{os.environ['PATH']}"}
    size, inc = args.size, max(1, args.size // 8)
    tools = ["raw", "esxdr", "syncoid", "zfs-autobackup", "bzfs"]
    results: dict[str, dict[str, object]] = {}
    lane.run(f"zfs destroy -r {PROD}/bench; zfs destroy -r {DR}/bench; true", check=False)
    lane.run(f"zfs create {PROD}/bench && zfs create {DR}/bench")
    for tool in tools:
        src = f"{PROD}/bench/{tool.replace('-', '')}"
        dst = f"{DR}/bench/{tool.replace('-', '')}"
        lane.run(f"zfs create -s -V {2 * size}M -o volblocksize=16k {src} && udevadm settle && "
                 f"dd if=/dev/urandom of=/dev/zvol/{src} bs=1M count={size} conv=fsync status=none")
        row: dict[str, object] = {}

        def run_once(step: int, tool: str = tool, src: str = src,
                     dst: str = dst) -> tuple[float, subprocess.CompletedProcess]:
            if tool == "raw":
                lane.run(f"zfs snapshot {src}@s{step}")
                base = f"-i @s{step - 1} " if step else ""
                return timed(f"{ssh} zfs send {base}{src}@s{step} | {ssh} zfs receive -u {dst}")
            if tool == "esxdr":
                return timed([ESXDR, "--site", str(work / "site.yaml"), "-q", "--json", "replicate", "bench"])
            if tool == "syncoid":
                return timed(["syncoid", "--no-privilege-elevation", f"--sshport={port}", f"--sshkey={lane.key}",
                              f"--sshoption=UserKnownHostsFile={kh}", "--quiet",
                              f"root@{lane.ssh_address}:{src}", f"root@{lane.ssh_address}:{dst}"])
            if tool == "zfs-autobackup":
                return timed([f"{args.tools}/bin/zfs-autobackup", "--ssh-config", str(ssh_cfg),
                              "--ssh-source", lane.ssh_address, "--ssh-target", lane.ssh_address,
                              "--no-progress", "--keep-source=10", "--keep-target=10", "bench", f"{DR}/bench/zab"],
                             env=tools_env)
            lane.run(f"zfs snapshot {src}@s{step}")
            return timed([f"{args.tools}/bin/bzfs", f"root@{lane.ssh_address}:{src}",
                          f"root@{lane.ssh_address}:{dst}", "--ssh-src-config-file", str(ssh_cfg),
                          "--ssh-dst-config-file", str(ssh_cfg)], env=tools_env)

        if tool == "esxdr":
            (work / "site.yaml").write_text(
                f"version: 1\nname: bench\nstate_dir: {work / 'state'}\nstorage:\n"
                + site_storage(lane, "ss1", "production")
                + site_storage(lane, "ss2", "dr", user="esxdr-dr", key=str(key), serve_prefix=DR)
                + f"protection_groups:\n  bench:\n    source: ss1\n    destination: ss2\n"
                  f"    source_root: {PROD}/bench\n    dr_root: {DR}/bench/esx\n    datasets: [esxdr]\n"
                  f"    retention:\n      source: {{hourly: 48}}\n      destination: {{hourly: 48}}\n    rpo: 1h\n")
        if tool == "zfs-autobackup":
            lane.run(f"zfs set autobackup:bench=true {src} && zfs create -p {DR}/bench/zab")
        if tool == "bzfs" and shutil.which(f"{args.tools}/bin/bzfs") is None:
            results[tool] = {"error": "bzfs not installed"}
            continue
        for step, label in ((0, "full"), (1, "incremental"), (2, "noop")):
            if step == 1:
                lane.run(f"dd if=/dev/urandom of=/dev/zvol/{src} bs=1M count={inc} seek=3 conv=notrunc,fsync "
                         "status=none")
            if step == 2 and tool in ("raw",):
                continue
            secs, r = run_once(step)
            row[label] = round(secs, 2)
            if r.returncode != 0:
                # The cause, not the last line: bzfs ends with "Log file was: …" after its "[E] ERROR: …".
                lines = (r.stderr or r.stdout).strip().splitlines()
                cause = [ln for ln in lines if "[E]" in ln or "ERROR" in ln or "error" in ln.lower()]
                row[f"{label}_error"] = (cause or lines)[-1:] or [f"rc {r.returncode}"]
        # Same bytes arrived?
        ds_dst = {"esxdr": f"{DR}/bench/esx/esxdr", "zfs-autobackup": f"{DR}/bench/zab/{src}"}.get(tool, dst)
        # Source unchanged since its last snapshot, so its live zvol must equal the replica.
        sums = lane.out(f"udevadm settle; sha256sum /dev/zvol/{src} /dev/zvol/{ds_dst} 2>&1", check=False)
        hashes = [line.split()[0] for line in sums.splitlines() if line and not line.startswith("sha256sum")]
        row["verified"] = len(hashes) == 2 and hashes[0] == hashes[1]
        results[tool] = row
        print(tool, json.dumps(row), file=sys.stderr)
    lane.run(f"zfs destroy -r {PROD}/bench; zfs destroy -r {DR}/bench; true", check=False)
    shutil.rmtree(work, ignore_errors=True)

    base = results["raw"]
    esx = results["esxdr"]

    def ratio(a: object, b: object) -> str:
        return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) and b else "-"

    lines = ["| tool | full | incremental | no-op | vs raw pipe (full / incr) | tool / esxdr (full / incr / no-op) "
             "| data verified |", "|---|---:|---:|---:|---:|---:|---|"]
    for tool in tools:
        r = results[tool]
        errs = "; ".join(f"{k}: {' '.join(v)[:80]}" for k, v in r.items() if k.endswith("_error"))  # type: ignore[arg-type]
        lines.append(f"| {tool} | {r.get('full', '-')} s | {r.get('incremental', '-')} s | {r.get('noop', '-')} s | "
                     f"{ratio(r.get('full'), base.get('full'))} / {ratio(r.get('incremental'), base.get('incremental'))} | "
                     f"{ratio(r.get('full'), esx.get('full'))} / {ratio(r.get('incremental'), esx.get('incremental'))} / "
                     f"{ratio(r.get('noop'), esx.get('noop'))} | {r.get('verified')}{' — ' + errs if errs else ''} |")
    version = lane.zfs_version()
    head = (f"\n## OpenZFS lane: esxdr vs syncoid, zfs-autobackup, bzfs (benchmarks/openzfs.py)\n\n"
            f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores; guest under TCG "
            f"(no KVM), {version}; one zvol, {size} MiB random full then {inc} MiB incremental; every tool "
            f"guest → ssh → host → ssh → guest through the 127.0.0.1 hostfwd port. One run each.\n\n")
    table = head + "\n".join(lines) + "\n"
    print(table)
    if not args.no_record:
        with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
