#!/usr/bin/env python3
"""Replication benchmarks on the embedded lab's storage side (zfs-fuse, real sshd on loopback).

Every figure is a ratio within one run, against a baseline measured in the same run:

1. full send of 512 MiB: esxdr vs the raw `zfs send | ssh | zfs recv` pipe (through the same
   service account and `esxdr serve`, and through a root login without it) and vs syncoid;
2. initial replication of N datasets x M snapshots (one group): esxdr vs `syncoid -r`;
3. no-op re-run over the same datasets: remote zfs invocations per side and wall time;
4. peak RSS of esxdr while it sends 1 GiB.

Run as root: `.venv/bin/python benchmarks/replicate.py [--datasets 100 --snapshots 20]`.
Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from esxdr.lab import Lab, LabConfig  # noqa: E402
from esxdr.lab.sshd import keygen  # noqa: E402
from esxdr.lab.tgtd import _port_open, free_port  # noqa: E402

ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def timed(fn) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def write_random(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            # vary each MiB so nothing dedups or compresses
            f.write(chunk[:64] + i.to_bytes(8, "little") + chunk[72:])


class Bench:
    def __init__(self, lab: Lab):
        self.lab = lab
        st = lab.state()
        self.prod = st["pools"]["production"]
        self.dr = st["pools"]["dr"]
        self.mnt = Path(st["pools"]["mountpoint_root"])
        self.ssh = st["sshd"]
        self.dir = Path(lab.cfg.dir)
        self.root_sshd = None

    # a root login without a forced command, for syncoid and the plain baseline
    def start_root_sshd(self) -> tuple[int, str]:
        d = self.dir / "rootsshd"
        d.mkdir(exist_ok=True)
        key = str(d / "id_root")
        pub = keygen(key, "bench-root")
        hk = d / "hostkey"
        keygen(str(hk), "bench-host")
        (d / "ak").mkdir(exist_ok=True)
        (d / "ak" / "root").write_text(pub + "\n")
        port = free_port()
        cfg = d / "sshd_config"
        cfg.write_text(f"ListenAddress 127.0.0.1:{port}\nHostKey {hk}\nPidFile {d}/pid\n"
                       f"AuthorizedKeysFile {d}/ak/%u\nPermitRootLogin prohibit-password\nUsePAM no\n"
                       "PasswordAuthentication no\nStrictModes no\nMaxStartups 200\nMaxSessions 200\nLogLevel ERROR\n")
        self.root_sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                          stderr=subprocess.DEVNULL)
        for _ in range(100):
            if _port_open("127.0.0.1", port):
                break
            time.sleep(0.05)
        kh = d / "known_hosts"
        pub_host = Path(str(hk) + ".pub").read_text().split()
        kh.write_text(f"[127.0.0.1]:{port} {pub_host[0]} {pub_host[1]}\n")
        return port, key

    def root_ssh_argv(self, port: int, key: str) -> list[str]:
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.dir}/rootsshd/known_hosts",
                "-o", "StrictHostKeyChecking=yes", "-i", key, "-p", str(port), "root@127.0.0.1"]

    def account_ssh_argv(self) -> list[str]:
        kh = self.dir / "acct_known_hosts"
        if not kh.exists():
            pub = (self.dir / "sshd" / "ssh_host_ed25519_key.pub").read_text().split()
            kh.write_text(f"[127.0.0.1]:{self.ssh['port']} {pub[0]} {pub[1]}\n")
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={kh}", "-o",
                "StrictHostKeyChecking=yes", "-i", self.ssh["key"], "-p", str(self.ssh["port"]),
                f"{self.ssh['account']}@127.0.0.1"]

    def site(self, name: str, src_root: str, dr_root: str, datasets: list[str], parallel: int = 4) -> Path:
        p = self.dir / f"site-{name}.yaml"
        s = self.ssh
        p.write_text(f"""version: 1
name: bench
state_dir: {self.dir}/state-{name}
storage:
  ss1: {{role: production, local: true}}
  ss2: {{role: dr, address: 127.0.0.1, port: {s['port']}, user: {s['account']}, key: {s['key']},
        host_key: {s['host_key']}, serve_prefix: {self.dr}}}
protection_groups:
  {name}:
    source: ss1
    destination: ss2
    source_root: {src_root}
    dr_root: {dr_root}
    datasets: [{', '.join(d.rsplit('/', 1)[1] for d in datasets)}]
    parallel: {parallel}
    retention:
      source: {{hourly: 1000}}
      destination: {{hourly: 1000}}
    rpo: 1d
""")
        return p

    def destroy(self, ds: str) -> None:
        # zfs-fuse often calls a just-received, mounted filesystem busy; unmount it first
        sh("zfs", "unmount", "-f", ds, check=False)
        for _ in range(30):
            r = sh("zfs", "destroy", "-r", ds, check=False)
            if r.returncode == 0 or "does not exist" in r.stderr:
                return
            time.sleep(0.3)


def peak_rss_of(cmd: list[str]) -> tuple[int, float, subprocess.CompletedProcess]:
    """Run cmd; return the peak RSS (VmHWM, KiB) of that process itself and its wall time."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            try:
                for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
            except OSError:
                pass
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    out, err = proc.communicate()
    stop.set()
    t.join()
    return peak, time.monotonic() - started, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", type=int, default=100)
    ap.add_argument("--snapshots", type=int, default=20)
    ap.add_argument("--full-mib", type=int, default=512)
    ap.add_argument("--rss-mib", type=int, default=1024)
    ap.add_argument("--no-syncoid", action="store_true")
    ap.add_argument("--no-syncoid-many", action="store_true",
                    help="skip syncoid's 100 x 20 runs (about 5 min); the full-send comparison keeps syncoid")
    ap.add_argument("--no-append", action="store_true", help="print the table, leave RESULTS.md alone")
    ap.add_argument("--reps", type=int, default=3, help="rounds of the full send (medians are compared)")
    args = ap.parse_args()
    # An installed esxdr is byte-compiled (pip compiles on install); a checkout may hold stale or
    # no bytecode, and PYTHONDONTWRITEBYTECODE may keep it so: each start would compile ~0.1 s.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "esxdr")], check=True,
                   capture_output=True)
    tag = f"b{os.getpid() % 10000}"
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", luns=0, account=f"esxdr-{tag}",
                        with_tgt=False, with_esxsim=False, pool_size=8 << 30))
    lab.up()
    rows: list[tuple[str, str, str]] = []
    b = Bench(lab)
    syncoid = shutil.which("syncoid") and not args.no_syncoid
    try:
        port, rootkey = b.start_root_sshd()
        root_ssh = b.root_ssh_argv(port, rootkey)
        acct_ssh = b.account_ssh_argv()

        # 1. full send of 512 MiB: the tools take turns, --reps rounds, medians compared --------
        # (one round alone is at the mercy of whatever else the 2 cores are doing)
        src = f"{b.prod}/full"
        sh("zfs", "create", src)
        sh("zfs", "create", f"{src}/lun0")
        write_random(b.mnt / b.prod / "full" / "lun0" / "lun.img", args.full_mib << 20)
        sh("zfs", "snapshot", f"{src}/lun0@base")

        # the cipher esxdr's stream offers first on this CPU (site key stream_ciphers: auto), so the
        # pipe can be compared with the same cipher as well as with OpenSSH's default
        from esxdr.transport.ssh import stream_cipher_option

        cipher = stream_cipher_option(shutil.which("ssh") or "ssh", "auto")
        gcm_ssh = [*acct_ssh[:-1], *cipher[:1], cipher[1].split(",")[0], acct_ssh[-1]] if cipher else None

        def raw(ssh_argv: list[str], target: str) -> None:
            send = subprocess.Popen(["zfs", "send", f"{src}/lun0@base"], stdout=subprocess.PIPE)
            subprocess.run([*ssh_argv, f"zfs receive {target}"], stdin=send.stdout, check=True,
                           capture_output=True)
            send.stdout.close()
            assert send.wait() == 0

        def esx(k: int) -> None:
            site = b.site("full", src, f"{b.dr}/raw{k}e", [f"{src}/lun0"])
            r = sh(ESXDR, "--site", str(site), "-q", "--json", "replicate", "full", "--no-snapshot", check=False)
            assert r.returncode == 0, r.stderr
            # the next round starts from the same state: no esxdr hold left on the source
            sh("zfs", "release", "esxdr_full", f"{src}/lun0@base", check=False)
            sh("zfs", "release", "esxdr_full", f"{b.dr}/raw{k}e/lun0@base", check=False)  # or destroy is refused

        def syn(k: int) -> None:
            sh("zfs", "create", f"{b.dr}/syn{k}")
            r = sh("syncoid", "--no-sync-snap", "--sshport", str(port), "--sshkey", rootkey,
                   "--sshoption", f"UserKnownHostsFile={b.dir}/rootsshd/known_hosts",
                   f"{src}/lun0", f"root@127.0.0.1:{b.dr}/syn{k}/lun0", check=False)
            assert r.returncode == 0, r.stderr

        times: dict[str, list[float]] = {"acct": [], "root": [], "gcm": [], "esxdr": [], "syncoid": []}
        for k in range(args.reps):
            # every tool receives below a parent that exists, as a DR root does after the first run
            for x in ("a", "r", "g", "e"):
                sh("zfs", "create", f"{b.dr}/raw{k}{x}")
            times["acct"].append(timed(lambda k=k: raw(acct_ssh, f"{b.dr}/raw{k}a/lun0")))
            times["esxdr"].append(timed(lambda k=k: esx(k)))
            times["root"].append(timed(lambda k=k: raw(root_ssh, f"{b.dr}/raw{k}r/lun0")))
            if gcm_ssh:
                times["gcm"].append(timed(lambda k=k: raw(gcm_ssh, f"{b.dr}/raw{k}g/lun0")))
            if syncoid:
                times["syncoid"].append(timed(lambda k=k: syn(k)))
            for x in (f"raw{k}a", f"raw{k}r", f"raw{k}g", f"raw{k}e", f"syn{k}"):
                b.destroy(f"{b.dr}/{x}")
        med = {k: statistics.median(v) for k, v in times.items() if v}
        each = {k: " ".join(f"{t:.2f}" for t in v) for k, v in times.items()}
        rows.append((f"full send {args.full_mib} MiB: raw pipe via `esxdr serve` account",
                     f"{med['acct']:.2f} s", f"1.00 (rounds: {each['acct']})"))
        rows.append((f"full send {args.full_mib} MiB: raw pipe via root ssh", f"{med['root']:.2f} s",
                     f"{med['root'] / med['acct']:.2f} (rounds: {each['root']})"))
        if "gcm" in med:
            rows.append((f"full send {args.full_mib} MiB: raw pipe via account, `ssh -c {gcm_ssh[-2]}`",
                         f"{med['gcm']:.2f} s", f"{med['gcm'] / med['acct']:.2f} (rounds: {each['gcm']}); the "
                         "cipher esxdr's stream offers first here"))
        rows.append((f"full send {args.full_mib} MiB: esxdr replicate", f"{med['esxdr']:.2f} s",
                     f"{med['esxdr'] / med['acct']:.2f} vs account pipe, {med['esxdr'] / med['root']:.2f} vs root "
                     f"pipe (rounds: {each['esxdr']}); target <= 1.10"))
        if "syncoid" in med:
            rows.append((f"full send {args.full_mib} MiB: syncoid", f"{med['syncoid']:.2f} s",
                         f"esxdr/syncoid = {med['esxdr'] / med['syncoid']:.2f} (rounds: {each['syncoid']}); "
                         "target <= 1.0"))
        b.destroy(src)

        # 4. peak RSS while sending 1 GiB ---------------------------------------------------
        src = f"{b.prod}/rss"
        sh("zfs", "create", src)
        sh("zfs", "create", f"{src}/lun0")
        write_random(b.mnt / b.prod / "rss" / "lun0" / "lun.img", args.rss_mib << 20)
        sh("zfs", "snapshot", f"{src}/lun0@base")
        site = b.site("rss", src, f"{b.dr}/rss", [f"{src}/lun0"])
        peak, t_rss, r = peak_rss_of([ESXDR, "--site", str(site), "-q", "replicate", "rss", "--no-snapshot"])
        assert r.returncode == 0, r.stderr
        rows.append((f"peak RSS of esxdr sending {args.rss_mib} MiB", f"{peak / 1024:.1f} MiB",
                     f"target < 80 MiB ({t_rss:.1f} s)"))
        b.destroy(f"{b.dr}/rss")
        b.destroy(src)

        # 2. many datasets x snapshots -------------------------------------------------------
        n, m = args.datasets, args.snapshots
        src = f"{b.prod}/many"
        sh("zfs", "create", src)
        names = [f"{src}/lun{i:03d}" for i in range(n)]
        for ds in names:
            sh("zfs", "create", ds)
        for j in range(m):
            for ds in names:
                with open(b.mnt / b.prod / "many" / ds.rsplit("/", 1)[1] / "data", "ab") as f:
                    f.write(os.urandom(16 << 10))
            sh("zfs", "snapshot", "-r", f"{src}@esxdr_many_{20260101 + j}T000000Z")
        site = b.site("many", src, f"{b.dr}/many", names, parallel=4)
        t_many = timed(lambda: sh(ESXDR, "--site", str(site), "-q", "replicate", "many", "--no-snapshot",
                                  "--no-prune"))
        rows.append((f"initial replication {n} datasets x {m} snapshots: esxdr (parallel 4)", f"{t_many:.1f} s", ""))
        # 3. no-op re-run
        r = sh(ESXDR, "--site", str(site), "-q", "--json", "replicate", "many", "--no-snapshot", "--no-prune")
        noop = json.loads(r.stdout)
        t0 = time.monotonic()
        sh(ESXDR, "--site", str(site), "-q", "replicate", "many", "--no-snapshot", "--no-prune")
        t_noop_total = time.monotonic() - t0
        # The floor under any tool: listing both sides at once, nothing else (zfs-fuse's daemon
        # spends ~0.5 ms of CPU per snapshot, and both pools live in the one daemon here).
        floors = []
        for _ in range(3):
            t0 = time.monotonic()
            local = subprocess.Popen(["zfs", "get", "-rHp", "-o", "name,property,value", "name", src],
                                     stdout=subprocess.DEVNULL)
            subprocess.run([*acct_ssh, f"zfs get -rHp -o name,property,value name {b.dr}/many"],
                           stdout=subprocess.DEVNULL, check=True)
            local.wait()
            floors.append(time.monotonic() - t0)
        floor = statistics.median(floors)
        rows.append((f"no-op re-run over {n} datasets: remote zfs invocations",
                     f"ss1 {noop['commands']['ss1']}, ss2 {noop['commands']['ss2']}", "target <= 2 per side"))
        rows.append((f"no-op re-run over {n} datasets: wall time", f"{noop['seconds']:.2f} s engine, "
                     f"{t_noop_total:.2f} s process", f"target <= 1 s; {t_noop_total / floor:.2f} x the floor"))
        rows.append((f"floor: `zfs get -rHp name` of both sides at once ({n * (m + 1)} objects each)",
                     f"{floor:.2f} s", f"median of {' '.join(f'{f:.2f}' for f in floors)}"))
        if syncoid and not args.no_syncoid_many:
            sh("zfs", "create", f"{b.dr}/synmany")
            syn_cmd = ["syncoid", "-r", "--no-sync-snap", "--sshport", str(port), "--sshkey", rootkey,
                       "--sshoption", f"UserKnownHostsFile={b.dir}/rootsshd/known_hosts", src,
                       f"root@127.0.0.1:{b.dr}/synmany/many"]
            t0 = time.monotonic()
            syn = sh(*syn_cmd, check=False)
            t_syn_many = time.monotonic() - t0
            rows.append((f"initial replication {n} x {m}: syncoid -r", f"{t_syn_many:.1f} s (rc {syn.returncode})",
                         f"esxdr/syncoid = {t_many / t_syn_many:.2f}"))
            t0 = time.monotonic()
            syn2 = sh(*syn_cmd, check=False)
            rows.append((f"no-op re-run over {n} datasets: syncoid -r", f"{time.monotonic() - t0:.1f} s",
                         f"rc {syn2.returncode}: {(syn2.stderr.strip().splitlines() or [''])[-1][:70]}"))
    finally:
        if b.root_sshd:
            b.root_sshd.terminate()
        lab.down()
        shutil.rmtree(d, ignore_errors=True)

    width = max(len(r[0]) for r in rows)
    table = [f"| {'measure':<{width}} | value | ratio / note |", f"|{'-' * (width + 2)}|---|---|"]
    table += [f"| {a:<{width}} | {v} | {n} |" for a, v, n in rows]
    text = "\n".join(table)
    print(text)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.no_append:
        return 0
    with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
        f.write(f"\n## replicate: esxdr vs raw pipe and syncoid\n\n{stamp}, {platform.node()}, {os.cpu_count()} cores, "
                f"zfs-fuse 0.7 (pool v23), OpenSSH on loopback\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
