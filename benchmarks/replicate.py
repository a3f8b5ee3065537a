#!/usr/bin/env python3
"""Full send through each peer, and esxdr's peak RSS, on the embedded lab's storage side (zfs-fuse,
real sshd on loopback).

1. full send of --full-mib MiB of incompressible data (every MiB fresh from os.urandom), the peers
   taking turns for --reps rounds, medians compared:
   - the raw `zfs send | ssh | zfs recv` pipe through the DR service account (`esxdr serve`), with
     the cipher list esxdr's stream offers (the headline baseline) and with OpenSSH's default;
   - the raw pipe through a root login (no forced command);
   - esxdr replicate (--no-snapshot: it sends the snapshot that is there, as the pipes do);
   - syncoid --no-sync-snap through the root login.
   Every peer receives below a parent that exists with mountpoint=none, as esxdr's DR root is.
2. peak RSS of esxdr while it sends --rss-mib MiB.

Every peer is verified after every round: the received snapshot set (names and guids) equals the
source's, and the sha256 of the received file, read through a clone of the received snapshot,
equals the source's. A peer that fails or does not verify is reported "failed: <message>".
The steady-state scale figures (many datasets, scheduled runs, the no-op) are benchmarks/scale.py.

Run as root: `.venv/bin/python benchmarks/replicate.py [--reps 3] [--append]` (about 3 min).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import time
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
    peak_rss_of,
    sha256_file,
    target,
    timed,
    verify_replica,
    write_incompressible,
)
from _record import append, table

from esxdr.transport.ssh import stream_cipher_option


def site_file(b: Bench, name: str, src_root: str, dr_root: str, datasets: list[str]) -> Path:
    p = b.dir / f"site-{name}.yaml"
    s = b.ssh
    p.write_text(f"""version: 1
name: bench
state_dir: {b.dir}/state-{name}
storage:
  ss1: {{role: production, local: true}}
  ss2: {{role: dr, address: 127.0.0.1, port: {s['port']}, user: {s['account']}, key: {s['key']},
        host_key: {s['host_key']}, serve_prefix: {b.dr}}}
protection_groups:
  {name}:
    source: ss1
    destination: ss2
    source_root: {src_root}
    dr_root: {dr_root}
    datasets: [{', '.join(d.rsplit('/', 1)[1] for d in datasets)}]
    retention:
      source: {{hourly: 1000}}
      destination: {{hourly: 1000}}
    rpo: 1d
""")
    return p


class Peer:
    def __init__(self, key: str, label: str, run):
        self.key, self.label, self.run = key, label, run
        self.times: list[float] = []
        self.failure: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times and not self.failure else None

    def rounds(self) -> str:
        return " ".join(f"{t:.2f}" for t in self.times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full-mib", type=int, default=512, help="MiB sent in the full-send rounds (default 512)")
    ap.add_argument("--rss-mib", type=int, default=1024, help="MiB sent while esxdr's peak RSS is watched")
    ap.add_argument("--reps", type=int, default=3, help="rounds of the full send (medians are compared)")
    ap.add_argument("--no-syncoid", action="store_true", help="leave syncoid out")
    ap.add_argument("--append", action="store_true", help="also append the record to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root (the lab needs zfs-fuse and sshd)", file=sys.stderr)
        return 2
    compile_esxdr()
    tag = f"r{os.getpid() % 10000}"
    started = time.monotonic()
    lab = new_lab(tag, pool_size=max(8 << 30, (args.full_mib * 8 + args.rss_mib * 3) << 20))
    b = Bench(lab)
    syncoid = bool(shutil.which("syncoid")) and not args.no_syncoid
    rows: list[tuple[str, str, str]] = []
    notes: list[str] = []
    try:
        b.start_root_sshd()
        root_ssh = b.root_ssh_argv()
        acct_ssh = b.account_ssh_argv()
        # the cipher list esxdr's stream offers on this CPU (site key stream_ciphers: auto), passed
        # as esxdr passes it: the same-cipher pipe differs from esxdr by esxdr's own work only
        cipher = stream_cipher_option(shutil.which("ssh") or "ssh", "auto")
        same_ssh = [*acct_ssh[:-1], *cipher, acct_ssh[-1]]

        # 1. full send ---------------------------------------------------------------------
        src = f"{b.prod}/full"
        sh_ok("zfs", "create", src)
        sh_ok("zfs", "create", f"{src}/lun0")
        t0 = time.monotonic()
        write_incompressible(b.path_of(f"{src}/lun0") / "lun.img", args.full_mib << 20)
        t_write = time.monotonic() - t0
        sh_ok("zfs", "snapshot", f"{src}/lun0@base")
        src_sha = sha256_file(b.path_of(f"{src}/lun0") / "lun.img")
        src_list = b.snapshot_lists(f"{src}/lun0")[f"{src}/lun0"]

        def raw(ssh_argv: list[str], target_ds: str) -> None:
            send = subprocess.Popen(["zfs", "send", f"{src}/lun0@base"], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
            r = subprocess.run([*ssh_argv, f"zfs receive {target_ds}"], stdin=send.stdout, capture_output=True,
                               text=True)
            assert send.stdout is not None
            send.stdout.close()
            send_err = send.stderr.read().decode(errors="replace") if send.stderr else ""
            send.wait()
            if r.returncode != 0:
                raise Failed(f"ssh … zfs receive exited {r.returncode}: {cause(r)}")
            if send.returncode != 0:
                raise Failed(f"zfs send exited {send.returncode}: {send_err.strip()[:200]}")

        def esx(k: int, root: str) -> None:
            site = site_file(b, "full", src, root, [f"{src}/lun0"])
            r = subprocess.run([ESXDR, "--site", str(site), "-q", "--json", "replicate", "full", "--no-snapshot"],
                               capture_output=True, text=True)
            # the next round starts from the same state: no esxdr hold left on the source; DR's
            # copy loses its hold too, or destroying it is refused
            subprocess.run(["zfs", "release", "esxdr_full", f"{src}/lun0@base"], capture_output=True)
            subprocess.run(["zfs", "release", "esxdr_full", f"{root}/lun0@base"], capture_output=True)
            if r.returncode != 0:
                raise Failed(f"esxdr replicate exited {r.returncode}: {cause(r)}")

        def syn(k: int, root: str) -> None:
            r = subprocess.run([*b.syncoid_argv(), "--no-sync-snap", f"{src}/lun0", f"root@127.0.0.1:{root}/lun0"],
                               capture_output=True, text=True)
            if r.returncode != 0:
                raise Failed(f"syncoid exited {r.returncode}: {cause(r)}")

        peers = [Peer("same", f"raw pipe via the `esxdr serve` account, esxdr's cipher list (`-c {cipher[1].split(',')[0]},…`)"
                      if cipher else "raw pipe via the `esxdr serve` account (esxdr's stream offers no -c here)",
                      lambda k, root: raw(same_ssh, f"{root}/lun0")),
                 Peer("acct", "raw pipe via the `esxdr serve` account, OpenSSH's default cipher",
                      lambda k, root: raw(acct_ssh, f"{root}/lun0")),
                 Peer("root", "raw pipe via root ssh (no forced command), default cipher",
                      lambda k, root: raw(root_ssh, f"{root}/lun0")),
                 Peer("esxdr", "esxdr replicate --no-snapshot", esx)]
        if syncoid:
            peers.append(Peer("syncoid", "syncoid --no-sync-snap via root ssh", syn))
        verify_s = 0.0
        for k in range(args.reps):
            # a different peer goes first in each round; every peer receives below a parent that
            # exists, as a DR root does after the first run
            order = peers[k % len(peers):] + peers[:k % len(peers)]
            for p in order:
                if p.failure:
                    continue
                root = f"{b.dr}/{p.key}{k}"
                # mountpoint=none as esxdr's DR root has (and `esxdr serve` requires of a receive
                # without -u): no peer pays for mounting what it receives
                sh_ok("zfs", "create", "-o", "mountpoint=none", root)
                try:
                    p.times.append(timed(functools.partial(p.run, k, root)))
                    t0 = time.monotonic()
                    got = b.snapshot_lists(root).get(f"{root}/lun0")
                    verify_replica(b, src_list, got, f"{src}/lun0", f"{root}/lun0")
                    sha = b.sha256_at(f"{root}/lun0@base", "lun.img")
                    if sha != src_sha:
                        raise Failed(f"round {k + 1}: sha256 of {root}/lun0@base lun.img is {sha[:12]}…, "
                                     f"the source's {src_sha[:12]}…")
                    verify_s += time.monotonic() - t0
                except Failed as ex:
                    p.failure = f"round {k + 1}: {ex}" if not str(ex).startswith("round") else str(ex)
                finally:
                    b.destroy(root)
        by = {p.key: p for p in peers}
        base = by["same"].median
        what = f"full send {args.full_mib} MiB"
        for p in peers:
            if p.failure:
                rows.append((f"{what}: {p.label}", f"failed: {p.failure}", ""))
                continue
            med = p.median
            assert med is not None
            if p.key == "same":
                note = f"1.00, the baseline (rounds: {p.rounds()})"
            elif p.key == "esxdr":
                note = f"{med / base:.2f} (rounds: {p.rounds()})" if base else f"rounds: {p.rounds()}"
            else:
                note = (f"{med / base:.2f} (rounds: {p.rounds()})" if base else f"rounds: {p.rounds()}")
            rows.append((f"{what}: {p.label}", f"{med:.2f} s", note))
        esx_peer = by["esxdr"]
        if esx_peer.median and base:
            r = esx_peer.median / base
            rows.append((f"{what}: esxdr / same-cipher raw pipe", f"{r:.2f}",
                         target(r <= 1.10, "target <= 1.10",
                                f"{r:.2f}: {esx_peer.median - base:.2f} s over the pipe's {base:.2f} s")))
            if by["acct"].median:
                rows.append((f"{what}: esxdr / default-cipher raw pipe",
                             f"{esx_peer.median / by['acct'].median:.2f}", ""))
        if syncoid and esx_peer.median and by["syncoid"].median:
            r = esx_peer.median / by["syncoid"].median
            rows.append((f"{what}: esxdr / syncoid", f"{r:.2f}",
                         target(r <= 1.0, "target <= 1.0", f"{r:.2f}: {esx_peer.median - by['syncoid'].median:.2f} s slower")))
        notes.append(("The same-cipher pipe passes `ssh " + " ".join(cipher) + "`, the list esxdr's stream offers on "
                      "this CPU (`stream_ciphers: auto`, esxdr.transport.ssh.stream_cipher_option).") if cipher else
                     "esxdr's stream offers no cipher list on this CPU: its pipe is OpenSSH's default.")
        notes.append(f"Data: {args.full_mib} MiB written in {t_write:.1f} s, every 1 MiB block fresh from os.urandom. "
                     f"{args.reps} rounds, the peers taking turns (a different one first each round), medians "
                     "compared. Verified after every round, for every peer: the received snapshot set (names and "
                     "guids) equals the source's, and the sha256 of lun.img read through a clone of the received "
                     f"snapshot equals the source's ({verify_s:.1f} s of verification, outside the timings).")
        if syncoid and b.syncoid_patched:
            notes.append(SYNCOID_FIX + " A first send to a new target, as here, does not reach that code.")
        b.destroy(src)

        # 2. peak RSS while sending --rss-mib ------------------------------------------------
        src = f"{b.prod}/rss"
        sh_ok("zfs", "create", src)
        sh_ok("zfs", "create", f"{src}/lun0")
        write_incompressible(b.path_of(f"{src}/lun0") / "lun.img", args.rss_mib << 20)
        sh_ok("zfs", "snapshot", f"{src}/lun0@base")
        rss_sha = sha256_file(b.path_of(f"{src}/lun0") / "lun.img")
        site = site_file(b, "rss", src, f"{b.dr}/rss", [f"{src}/lun0"])
        peak, t_rss, proc = peak_rss_of([ESXDR, "--site", str(site), "-q", "replicate", "rss", "--no-snapshot"])
        label = f"peak RSS of esxdr sending {args.rss_mib} MiB"
        try:
            if proc.returncode != 0:
                raise Failed(f"esxdr replicate exited {proc.returncode}: {cause(proc)}")
            verify_replica(b, b.snapshot_lists(f"{src}/lun0")[f"{src}/lun0"],
                           b.snapshot_lists(f"{b.dr}/rss").get(f"{b.dr}/rss/lun0"), f"{src}/lun0", f"{b.dr}/rss/lun0")
            sha = b.sha256_at(f"{b.dr}/rss/lun0@base", "lun.img")
            if sha != rss_sha:
                raise Failed(f"sha256 of the replica's lun.img is {sha[:12]}…, the source's {rss_sha[:12]}…")
            rows.append((label, f"{peak / 1024:.1f} MiB",
                         target(peak < 80 * 1024, "target < 80 MiB", f"{peak / 1024:.1f} MiB")
                         + f"; {t_rss:.1f} s, verified"))
        except Failed as ex:
            rows.append((label, f"failed: {ex}", ""))
        for snap in (f"{b.dr}/rss/lun0@base", f"{src}/lun0@base"):
            subprocess.run(["zfs", "release", "esxdr_rss", snap], capture_output=True)
        b.destroy(f"{b.dr}/rss")
        b.destroy(src)
    finally:
        b.close()
        end_lab(lab)

    text = "\n".join([header("replicate: full send, esxdr vs raw pipes and syncoid; peak RSS (benchmarks/replicate.py)",
                             syncoid=syncoid),
                      "Lab: zfs-fuse pools on sparse files, OpenSSH on loopback (127.0.0.1), one 2-core machine.\n",
                      table(["measure", "value", "ratio / target"], rows), "", " ".join(notes),
                      f"\nRuntime: {time.monotonic() - started:.0f} s.\n"])
    print(text)
    if args.append:
        append(text)
    return 1 if any(v.startswith("failed") for _, v, _ in rows) else 0


def sh_ok(*argv: str) -> None:
    r = subprocess.run(argv, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")


if __name__ == "__main__":
    sys.exit(main())
