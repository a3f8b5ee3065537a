#!/usr/bin/env python3
"""esxdr vs syncoid, bzfs and zfs-autobackup on real OpenZFS (the guest of scripts/openzfs-lane).

Every tool replicates the same kind of zvol from the guest's pool ozprod to its pool ozdr,
orchestrated from the host with both ends over SSH through the lane's forwarded port
(127.0.0.1 only), so the data takes the same path for all of them:
guest zfs send → ssh → host → ssh → guest zfs receive. The baseline is that raw pipe
as root. esxdr receives through its DR account (forced `esxdr serve`, `zfs allow`),
the others as root (they need a shell).

Measures, per tool: a full send of SIZE MiB of random data, then an incremental of
SIZE/8 MiB, then a no-op re-run. Every tool's time includes taking its snapshot (the raw
pipe's and bzfs's are taken by `ssh zfs snapshot` inside the timed command). The data is
written in the guest with `dd if=/dev/urandom bs=1M`: each block fresh from the kernel's
CSPRNG, so nothing compresses (measured: gzip -1 of each zvol's first 4 MiB is printed).

Verified per tool, after its last run: every step exited 0; its destination holds the
source's newest snapshot (same guid), and every snapshot name both sides have is the same
snapshot (guid) on both; the sha256
of the destination zvol equals the source's (the source has written nothing since its newest
snapshot: `written` is 0). A tool that fails any of these is reported "failed: <message>",
never with a ratio.

Run (needs the lane's guest image; `up` + this benchmark at --size 64 took about 14.5 min
here, most of it the guest's boot and SSH handshakes under TCG):
    scripts/openzfs-lane bench [--size 64] [--append]
or, with the lane up and its variables exported (scripts/openzfs-lane up):
    .venv/bin/python benchmarks/openzfs.py [--size 64] [--append]
Prints the table; --append also appends it to benchmarks/RESULTS.md.
Tools: syncoid from Debian (sanoid), bzfs and zfs-autobackup from PyPI (pip install
--target DIR bzfs zfs-autobackup; DIR from --tools, default /var/cache/esxdr-openzfs/benchtools).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _record import first_line as _sh  # noqa: E402
from _record import header, lane_accel  # noqa: E402

from esxdr.lab.openzfs import NOT_RUNNING, Lane, keygen, site_storage  # noqa: E402

ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
PROD, DR = "ozprod", "ozdr"
TOOLS = ["raw", "esxdr", "syncoid", "zfs-autobackup", "bzfs"]
STEPS = (("full", 0), ("incremental", 1), ("noop", 2))


# --------------------------------------------------------------------------- the record's header
def versions(lane: Lane, tools: str, tools_env: dict) -> list[str]:
    return [f"guest {lane.zfs_version()} ({lane_accel()})", _sh(["qemu-system-x86_64", "--version"]) or "qemu ?",
            _sh(["ssh", "-V"]) or "ssh ?", f"syncoid {_sh(['syncoid', '--version']) or '?'}",
            f"zfs-autobackup {_sh([f'{tools}/bin/zfs-autobackup', '--version'], tools_env) or '?'}",
            f"bzfs {_sh([f'{tools}/bin/bzfs', '--version'], tools_env) or '?'}"]


# --------------------------------------------------------------------------- running and checking
def timed(argv: list[str] | str, env: dict | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """Run a tool; a string is a bash command line with pipefail (a failed send fails the pipe)."""
    t = time.monotonic()
    cmd = ["bash", "-o", "pipefail", "-c", argv] if isinstance(argv, str) else argv
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, env={**os.environ, **(env or {})})
    return time.monotonic() - t, r


def cause(r: subprocess.CompletedProcess) -> str:
    """The error line of a failed run, not its last line: bzfs ends with "Log file was: …" after
    its "[E] ERROR: …"."""
    lines = (r.stderr or r.stdout).strip().splitlines()
    hits = [ln for ln in lines if "[E]" in ln or "ERROR" in ln or "error" in ln.lower()]
    return " ".join(((hits or lines)[-1:] or [f"exit status {r.returncode}"])[0].split())[:160]


def snapshots(lane: Lane, ds: str) -> list[tuple[str, str]]:
    """(snapshot name, guid) of ``ds``, oldest first."""
    out = lane.out(["zfs", "list", "-H", "-p", "-t", "snapshot", "-o", "name,guid", "-s", "createtxg", "-d", "1", ds],
                   check=False)
    return [(ln.split("\t")[0].split("@", 1)[1], ln.split("\t")[1]) for ln in out.splitlines() if "\t" in ln]


def verify(lane: Lane, src: str, dst: str) -> tuple[list[str], dict[str, object]]:
    """(problems, facts): snapshots by guid and the sha256 of both zvols."""
    problems: list[str] = []
    s, d = snapshots(lane, src), snapshots(lane, dst)
    facts: dict[str, object] = {"src_snapshots": len(s), "dst_snapshots": len(d)}
    if not s:
        return [f"{src} has no snapshot"], facts
    if not d:
        return [f"{dst} has no snapshot (or does not exist)"], facts
    # Snapshots of one name must be the same snapshot (guid) on both sides. A destination may keep
    # snapshots the source has pruned (another retention), so destination-only ones are counted, not failed.
    src_by_name = dict(s)
    differ = [n for n, g in d if n in src_by_name and src_by_name[n] != g]
    if differ:
        problems.append(f"@{differ[0]} has another guid on {dst} than on {src} ({len(differ)} such)")
    facts["dst_only"] = sum(1 for n, _ in d if n not in src_by_name)
    newest, guid = s[-1]
    if guid not in {g for _, g in d}:
        problems.append(f"the source's newest snapshot @{newest} is not on {dst} (its newest: @{d[-1][0]})")
    facts["newest"] = newest
    written = lane.out(["zfs", "get", "-H", "-p", "-o", "value", "written", src], check=False).strip()
    if written not in ("0", ""):
        problems.append(f"{src} wrote {written} bytes after @{newest}: its live data is not the snapshot's")
    sums = lane.out(f"udevadm settle; sha256sum /dev/zvol/{src} /dev/zvol/{dst} 2>&1", check=False)
    hashes = [ln.split()[0] for ln in sums.splitlines() if ln and not ln.startswith("sha256sum")]
    if len(hashes) != 2:
        problems.append(f"sha256sum: {' '.join(sums.split())[:120]}")
    else:
        facts["sha256"] = hashes[0][:12]
        if hashes[0] != hashes[1]:
            problems.append(f"sha256 differs: source {hashes[0][:12]}…, destination {hashes[1][:12]}…")
    return problems, facts


def incompressible(lane: Lane, zvol: str) -> float:
    """gzip -1 size of the zvol's first 4 MiB over 4 MiB (1.00 or a hair above: nothing compresses)."""
    n = lane.out(f"head -c 4194304 /dev/zvol/{zvol} | gzip -1 | wc -c").strip()
    return int(n) / 4194304


# --------------------------------------------------------------------------- the run
def run_tool(lane: Lane, tool: str, args: argparse.Namespace, work: Path, ssh: str, ssh_cfg: Path,
             tools_env: dict) -> dict[str, object]:
    size, inc = args.size, max(1, args.size // 8)
    name = tool.replace("-", "")
    src, dst = f"{PROD}/bench/{name}", f"{DR}/bench/{name}"
    port, kh = lane.ssh_port, lane.known_hosts
    # Fresh random 1 MiB blocks from the guest kernel's CSPRNG (the same source as os.urandom).
    lane.run(f"zfs create -s -V {2 * size}M -o volblocksize=16k {src} && udevadm settle && "
             f"dd if=/dev/urandom of=/dev/zvol/{src} bs=1M count={size} conv=fsync status=none")
    row: dict[str, object] = {"gzip": incompressible(lane, src)}

    def run_once(step: int) -> tuple[float, subprocess.CompletedProcess]:
        if tool == "raw":
            base = f"-i @s{step - 1} " if step else ""
            return timed(f"{ssh} zfs snapshot {src}@s{step} && "
                         f"{ssh} zfs send {base}{src}@s{step} | {ssh} zfs receive -u {dst}")
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
        bzfs = shlex.join([f"{args.tools}/bin/bzfs", f"root@{lane.ssh_address}:{src}", f"root@{lane.ssh_address}:{dst}",
                           "--ssh-src-config-file", str(ssh_cfg), "--ssh-dst-config-file", str(ssh_cfg)])
        return timed(f"{ssh} zfs snapshot {src}@s{step} && {bzfs}", env=tools_env)

    if tool == "esxdr":
        (work / "site.yaml").write_text(
            f"version: 1\nname: bench\nstate_dir: {work / 'state'}\nstorage:\n"
            + site_storage(lane, "ss1", "production")
            + site_storage(lane, "ss2", "dr", user="esxdr-dr", key=str(work / "id_ed25519"), serve_prefix=DR)
            + f"protection_groups:\n  bench:\n    source: ss1\n    destination: ss2\n"
              f"    source_root: {PROD}/bench\n    dr_root: {DR}/bench/esx\n    datasets: [esxdr]\n"
              f"    retention:\n      source: {{hourly: 48}}\n      destination: {{hourly: 48}}\n    rpo: 1h\n")
    if tool == "zfs-autobackup":
        lane.run(f"zfs set autobackup:bench=true {src} && zfs create -p {DR}/bench/zab")
    for label, step in STEPS:
        if step == 1:
            lane.run(f"dd if=/dev/urandom of=/dev/zvol/{src} bs=1M count={inc} seek=3 conv=notrunc,fsync "
                     "status=none")
        if step == 2 and tool == "raw":
            continue  # a pipe has no "nothing to do"
        secs, r = run_once(step)
        row[label] = secs
        if r.returncode != 0:
            row["failure"] = f"{label}: {cause(r)}"
            return row
        if tool == "esxdr":
            # the zfs commands esxdr ran on each side: what its time pays for beyond the stream
            try:
                row[f"{label}_commands"] = json.loads(r.stdout).get("commands", {})
            except (ValueError, AttributeError):
                row[f"{label}_commands"] = {}
    replica = {"esxdr": f"{DR}/bench/esx/esxdr", "zfs-autobackup": f"{DR}/bench/zab/{src}"}.get(tool, dst)
    problems, facts = verify(lane, src, replica)
    row.update(facts)
    if problems:
        row["failure"] = "; ".join(problems)
    return row


# --------------------------------------------------------------------------- the table
def render(results: dict[str, dict[str, object]], size: int, inc: int, vers: list[str]) -> str:
    def secs(r: dict[str, object], k: str) -> str:
        v = r.get(k)
        return f"{v:.1f} s" if isinstance(v, float) else "-"

    def ratio(r: dict[str, object], base: dict[str, object], k: str) -> str:
        a, b = r.get(k), base.get(k)
        if "failure" in r or "failure" in base or not isinstance(a, float) or not isinstance(b, float) or not b:
            return "-"
        return f"{a / b:.2f}"

    raw, esx = results.get("raw", {"failure": "not run"}), results.get("esxdr", {"failure": "not run"})
    lines = [header("OpenZFS lane: esxdr vs raw pipe, syncoid, zfs-autobackup, bzfs (benchmarks/openzfs.py)", vers),
             "", "| tool | full | incremental | no-op | vs raw pipe (full / incr) | tool / esxdr (full / incr / no-op) "
             "| verified |", "|---|---:|---:|---:|---:|---:|---|"]
    for tool in TOOLS:
        r = results.get(tool, {"failure": "not run"})
        if "failure" in r:
            lines.append(f"| {tool} | failed: {str(r['failure']).replace('|', '/')} | | | | | no |")
            continue
        check = (f"yes: {r['dst_snapshots']} snapshot(s) on DR ({r['dst_only']} not on the source), newest "
                 f"@{r['newest']} by guid; sha256 {r['sha256']}… equal")
        lines.append(f"| {tool} | {secs(r, 'full')} | {secs(r, 'incremental')} | {secs(r, 'noop')} | "
                     f"{ratio(r, raw, 'full')} / {ratio(r, raw, 'incremental')} | "
                     f"{ratio(r, esx, 'full')} / {ratio(r, esx, 'incremental')} / {ratio(r, esx, 'noop')} | {check} |")
    if "failure" not in esx:
        def cmds(label: str) -> str:
            c = esx.get(f"{label}_commands") or {}
            return f"ss1 {c.get('ss1', '?')} / ss2 {c.get('ss2', '?')}"
        lines += ["", "esxdr's zfs commands per run (production ss1 / DR ss2): "
                  + "; ".join(f"{label} {cmds(label)}" for label, _ in STEPS)
                  + ". Beyond the snapshot and the stream, esxdr lists both sides, moves its holds to the new "
                  "snapshot on both sides and marks the snapshot's consistency level on DR (this site sets no "
                  "`bookmarks` and presents no targets, so no bookmark and no manifest); bzfs bookmarks (its "
                  "default --create-bookmarks) but holds nothing; the raw pipe runs only the snapshot and the "
                  "stream."]
    gz = [r["gzip"] for r in results.values() if isinstance(r.get("gzip"), float)]
    lines += ["", f"Setup: one zvol per tool (volblocksize 16k, pool compression off), {size} MiB written with "
              f"`dd if=/dev/urandom bs=1M` for the full send, then {inc} MiB more for the incremental; "
              + (f"gzip -1 of each zvol's first 4 MiB: {min(gz):.3f}–{max(gz):.3f} of its size (incompressible); "
                 if gz else "")
              + "every tool guest → ssh → host → ssh → guest through the 127.0.0.1 hostfwd port, its time "
              "including its snapshot; one run each, in the order of the table. Verified after each tool's "
              "last run: destination holds the source's newest snapshot by guid, snapshots of one name have "
              "one guid on both sides, sha256 of both zvols equal (source `written` 0)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="MiB of random data in each zvol (default 64)")
    ap.add_argument("--tools", default="/var/cache/esxdr-openzfs/benchtools")
    ap.add_argument("--append", action="store_true", help="also append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if args.size < 8:
        print("--size must be at least 8 (MiB)", file=sys.stderr)
        return 2
    lane = Lane.from_env()
    if lane is None:
        print(NOT_RUNNING, file=sys.stderr)
        return 2
    lane.ensure_pool(PROD, (lane.disks or ["/dev/disk/by-id/virtio-esxdr-prod"])[0])
    lane.ensure_pool(DR, (lane.disks or ["", "/dev/disk/by-id/virtio-esxdr-dr"])[1])
    work = Path(tempfile.mkdtemp(prefix="esxdr-ozbench-"))
    os.chmod(work, 0o700)
    lane.dr_account("esxdr-dr", DR, keygen(work / "id_ed25519", "esxdr@openzfs-bench"))
    ssh_cfg = work / "bzfs_ssh_config"  # bzfs insists on this substring in the basename
    ssh_cfg.write_text(f"Host {lane.ssh_address}\n  Port {lane.ssh_port}\n  User root\n  IdentityFile {lane.key}\n"
                       f"  UserKnownHostsFile {lane.known_hosts}\n  StrictHostKeyChecking yes\n  BatchMode yes\n"
                       "  LogLevel ERROR\n")
    ssh = f"ssh -F {ssh_cfg} {lane.ssh_address}"
    tools_env = {"PYTHONPATH": args.tools, "PATH": f"{args.tools}/bin:{os.environ['PATH']}"}
    results: dict[str, dict[str, object]] = {}
    try:
        lane.run(f"zfs destroy -r {PROD}/bench; zfs destroy -r {DR}/bench; true", check=False)
        lane.run(f"zfs create {PROD}/bench && zfs create {DR}/bench")
        for tool in TOOLS:
            if tool in ("bzfs", "zfs-autobackup") and shutil.which(f"{args.tools}/bin/{tool}") is None:
                results[tool] = {"failure": f"{tool} not installed in {args.tools} (scripts/openzfs-lane bench does)"}
                continue
            if tool == "syncoid" and shutil.which("syncoid") is None:
                results[tool] = {"failure": "syncoid not installed (Debian sanoid)"}
                continue
            try:
                results[tool] = run_tool(lane, tool, args, work, ssh, ssh_cfg, tools_env)
            except subprocess.CalledProcessError as e:  # the guest refused a setup step: that tool's result
                results[tool] = {"failure": f"`{e.cmd}`: {' '.join((e.stderr or '').split())[:160]}"}
            print(tool, json.dumps(results[tool]), file=sys.stderr)
        vers = versions(lane, args.tools, tools_env)
    finally:
        lane.run(f"zfs destroy -r {PROD}/bench; zfs destroy -r {DR}/bench; true", check=False)
        shutil.rmtree(work, ignore_errors=True)
    text = render(results, args.size, max(1, args.size // 8), vers)
    print(text)
    if args.append:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 1 if any("failure" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
