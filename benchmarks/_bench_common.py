"""What benchmarks/replicate.py and benchmarks/scale.py share: the lab, a root sshd for the
baselines, the verification of every peer's replica, and the peers' versions for the record's
header (the header itself is _record's, as every benchmark's is).

Verification reads what each peer left on DR with this machine's own zfs (not through the peer):
the snapshot list by name and guid, and the sha256 of a file at a snapshot, read through a clone
mounted for the purpose (esxdr seals its replicas readonly and unmounted, and on pool v23 a mounted
replica may serve stale pages after an incremental receive, so no peer's replica is read in place).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _record import first_line  # noqa: E402
from _record import header as record_header  # noqa: E402

from esxdr.lab import Lab, LabConfig, zfsfuse  # noqa: E402
from esxdr.lab.sshd import keygen  # noqa: E402
from esxdr.lab.tgtd import _port_open, free_port  # noqa: E402

ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")


class Failed(Exception):
    """A peer's run or its verification failed: reported as "failed: <message>", never as a figure."""


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def run_ok(argv: list[str], what: str, **kw) -> subprocess.CompletedProcess:
    """Run a peer; a non-zero exit is its failure, with the line that says why."""
    r = subprocess.run(argv, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise Failed(f"{what} exited {r.returncode}: {cause(r)}")
    return r


def cause(r: subprocess.CompletedProcess) -> str:
    """The line of a failed run that names the error (not merely its last line)."""
    lines = [ln.strip() for ln in (r.stderr or r.stdout or "").splitlines() if ln.strip()]
    for words in (("CRITICAL", "ERROR"), ("error:", "Error", "cannot ", "refused", "failed")):
        for ln in lines:
            if any(w in ln for w in words):
                return ln[:300]
    return (lines[-1] if lines else "(no output)")[:300]


def timed(fn: Callable[[], object]) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


def compile_esxdr() -> None:
    """An installed esxdr is byte-compiled (pip compiles on install); a checkout may hold stale or
    no bytecode, and each start would compile about 0.1 s of it."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "esxdr")], check=True, capture_output=True)


def write_incompressible(path: Path, size: int, block: int = 1 << 20) -> None:
    """``size`` bytes, every block fresh from os.urandom: nothing repeats, so no compressor and no
    dedup window finds anything to shrink."""
    with open(path, "wb") as f:
        left = size
        while left > 0:
            n = min(block, left)
            f.write(os.urandom(n))
            left -= n


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- syncoid
SYNCOID_FIX = (
    "syncoid 2.1.0 (Debian 12) lists a dataset's snapshots with `zfs get -Hpd 1 -t snapshot`; pool-v23 "
    "zfs has no -t, so it falls back to getsnapsfallback(), which prefixes the ssh command a second "
    "time to a remote host's command (`ssh … ssh … root@host zfs get …`: exit 127, \"CRITICAL ERROR: "
    "snapshots couldn't be listed\"), so every incremental to a remote target fails. The benchmarks run "
    "a copy of it with that second prefix removed (upstream replaced the fallback in a6d4171, 2025).")


def syncoid_fixed(text: str) -> str | None:
    """syncoid's source with the second ssh prefix of getsnapsfallback() removed, or None when the
    source does not have that exact code (another version: run it as it is)."""
    start = text.find("sub getsnapsfallback()")
    if start < 0:
        return None
    bad = '\t\t$rhost = "$sshcmd $rhost";\n'
    at = text.find(bad, start)
    end = text.find("\nsub ", start + 1)
    if at < 0 or (end >= 0 and at > end):
        return None
    return text[:at] + "\t\t# (benchmarks: $rhost already carries $sshcmd, added by getsnaps())\n" + text[at + len(bad):]


# --------------------------------------------------------------------------- the lab
def new_lab(tag: str, pool_size: int) -> Lab:
    """A storage-only lab of this benchmark's own (pools ``<tag>sp`` and ``<tag>rp``, account
    ``esxdr-<tag>``); the caller tears it down with ``end_lab``."""
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", luns=0, account=f"esxdr-{tag}",
                        with_tgt=False, with_esxsim=False, pool_size=pool_size))
    lab.up()
    return lab


def end_lab(lab: Lab) -> None:
    """Lab down, then destroy whichever of its pools zfs-fuse still lists: `down` skips a pool when
    the daemon did not answer at that moment or its own destroy gave up, and a pool left behind
    keeps its vdev files. A daemon that still does not answer here leaves them too (said on
    stderr); the retry loop is a slower twin of esxdr.lab._destroy_pool's."""
    d = lab.cfg.dir
    try:
        lab.down()
    except Exception as e:  # noqa: BLE001 - the pools below are still ours to remove
        print(f"lab down: {e}", file=sys.stderr)
    for pool in (lab.cfg.dr_pool, lab.cfg.prod_pool):
        try:
            for _ in range(12):
                if subprocess.run(["zpool", "list", "-H", "-o", "name", pool], capture_output=True,
                                  timeout=120).returncode != 0:
                    break
                subprocess.run(["zpool", "destroy", "-f", pool], capture_output=True, timeout=120)
                time.sleep(5)
            else:
                raise subprocess.SubprocessError("still busy after a minute")
        except subprocess.SubprocessError as e:
            print(f"lab down: pool {pool} is left ({e}); remove it with zpool destroy -f {pool}", file=sys.stderr)
    shutil.rmtree(d, ignore_errors=True)


class Bench:
    """The lab's storage side as the benchmarks use it: pools, the service account, a root sshd."""

    def __init__(self, lab: Lab):
        self.lab = lab
        st = lab.state()
        self.prod = st["pools"]["production"]
        self.dr = st["pools"]["dr"]
        self.mnt = Path(st["pools"]["mountpoint_root"])
        self.ssh = st["sshd"]
        self.dir = Path(lab.cfg.dir)
        self.root_sshd: subprocess.Popen | None = None
        self.root_port = 0
        self.root_key = ""
        self._clones = 0

    def close(self) -> None:
        if self.root_sshd:
            self.root_sshd.terminate()
            try:
                self.root_sshd.wait(5)
            except subprocess.TimeoutExpired:
                self.root_sshd.kill()

    def path_of(self, dataset: str) -> Path:
        """Where a dataset of the lab's pools is mounted (its mountpoint inherited from the pool's)."""
        return self.mnt / dataset

    # a root login without a forced command, for syncoid and the root pipe
    def start_root_sshd(self) -> None:
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
        self.root_sshd = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)], stderr=subprocess.DEVNULL)
        for _ in range(100):
            if _port_open("127.0.0.1", port):
                break
            time.sleep(0.05)
        pub_host = Path(str(hk) + ".pub").read_text().split()
        (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub_host[0]} {pub_host[1]}\n")
        self.root_port, self.root_key = port, key

    def root_ssh_argv(self) -> list[str]:
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={self.dir}/rootsshd/known_hosts",
                "-o", "StrictHostKeyChecking=yes", "-i", self.root_key, "-p", str(self.root_port), "root@127.0.0.1"]

    def syncoid_argv(self) -> list[str]:
        """syncoid as root through the root sshd (it needs a shell and `zfs` on the far side)."""
        return [self.syncoid_binary(), "--sshport", str(self.root_port), "--sshkey", self.root_key,
                "--sshoption", f"UserKnownHostsFile={self.dir}/rootsshd/known_hosts"]

    @property
    def syncoid_patched(self) -> bool:
        return self.syncoid_binary() == str(self.dir / "syncoid")

    def syncoid_binary(self) -> str:
        """Debian 12's syncoid 2.1.0, with the one-line fix of its snapshot-listing fallback when
        that fix applies (see SYNCOID_FIX); the system's syncoid otherwise."""
        found = shutil.which("syncoid") or "syncoid"
        patched = self.dir / "syncoid"
        if patched.exists():
            return str(patched)
        fixed = syncoid_fixed(Path(found).read_text()) if Path(found).exists() else None
        if fixed is None:
            return found
        patched.write_text(fixed)
        patched.chmod(0o755)
        return str(patched)

    def account_ssh_argv(self) -> list[str]:
        """OpenSSH to the DR service account (its forced command is `esxdr serve`)."""
        kh = self.dir / "acct_known_hosts"
        if not kh.exists():
            pub = (self.dir / "sshd" / "ssh_host_ed25519_key.pub").read_text().split()
            kh.write_text(f"[127.0.0.1]:{self.ssh['port']} {pub[0]} {pub[1]}\n")
        return ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={kh}", "-o",
                "StrictHostKeyChecking=yes", "-i", self.ssh["key"], "-p", str(self.ssh["port"]),
                f"{self.ssh['account']}@127.0.0.1"]

    def destroy(self, ds: str) -> None:
        # zfs-fuse often calls a just-received, mounted filesystem busy; unmount it first
        sh("zfs", "unmount", "-f", ds, check=False)
        for _ in range(30):
            r = sh("zfs", "destroy", "-r", ds, check=False)
            if r.returncode == 0 or "does not exist" in r.stderr:
                return
            time.sleep(0.3)
        raise RuntimeError(f"could not destroy {ds}: {r.stderr.strip()}")

    # -- verification ---------------------------------------------------------------
    def snapshot_lists(self, root: str) -> dict[str, list[tuple[str, int]]]:
        """Every filesystem under ``root`` (itself included) → its snapshots (name, guid), oldest
        first (by createtxg), read with this machine's zfs."""
        r = sh("zfs", "get", "-rHp", "-o", "name,property,value", "type,guid,createtxg", root, check=False)
        if r.returncode != 0:
            raise Failed(f"cannot list {root}: {cause(r)}")
        props: dict[str, dict[str, str]] = {}
        for line in r.stdout.splitlines():
            name, prop, value = line.split("\t")
            props.setdefault(name, {})[prop] = value
        out: dict[str, list[tuple[str, int, int]]] = {}
        for name, p in props.items():
            if p.get("type") == "snapshot":
                ds, snap = name.split("@", 1)
                out.setdefault(ds, []).append((snap, int(p["guid"]), int(p["createtxg"])))
            else:
                out.setdefault(name, [])
        return {ds: [(n, g) for n, g, _ in sorted(v, key=lambda x: x[2])] for ds, v in out.items()}

    def sha256_at(self, snapshot: str, relpath: str) -> str:
        """The sha256 of ``relpath`` inside ``snapshot`` (pool/fs@snap), read through a clone of it
        mounted in this lab's directory, destroyed afterwards."""
        pool = snapshot.split("/", 1)[0]
        self._clones += 1
        clone = f"{pool}/benchverify{self._clones}"
        where = self.dir / "verify" / str(self._clones)
        where.mkdir(parents=True, exist_ok=True)
        r = sh("zfs", "clone", "-o", f"mountpoint={where}", "-o", "readonly=on", snapshot, clone, check=False)
        if r.returncode != 0:
            raise Failed(f"cannot clone {snapshot} to read it: {cause(r)}")
        try:
            if not (where / relpath).exists():
                sh("zfs", "mount", clone, check=False)
            if not (where / relpath).exists():
                raise Failed(f"{snapshot} has no {relpath}")
            return sha256_file(where / relpath)
        finally:
            self.destroy(clone)
            shutil.rmtree(where, ignore_errors=True)


def verify_replica(b: Bench, src_list: list[tuple[str, int]], dst_list: list[tuple[str, int]] | None, src: str,
                   dst: str) -> None:
    """The replica holds exactly the source's snapshots, by name and guid."""
    if dst_list is None:
        raise Failed(f"{dst} does not exist")
    if not dst_list:
        raise Failed(f"{dst} has no snapshot")
    if dst_list != src_list:
        s, d = dict(src_list), dict(dst_list)
        missing = [n for n in s if n not in d]
        extra = [n for n in d if n not in s]
        other = [n for n in s if n in d and s[n] != d[n]]
        parts = ([f"missing {len(missing)} ({', '.join(missing[:2])}…)"] if missing else []) + \
                ([f"{len(extra)} more ({', '.join(extra[:2])}…)"] if extra else []) + \
                ([f"{len(other)} with another guid ({other[0]}…)"] if other else [])
        raise Failed(f"{dst} vs {src}: " + "; ".join(parts or ["another order"]))


def sample(items: list[str], n: int) -> list[str]:
    """``n`` items spread evenly over the list (all when n is 0 or at least its length)."""
    if n <= 0 or n >= len(items):
        return list(items)
    return [items[(i * len(items)) // n] for i in range(n)]


# --------------------------------------------------------------------------- peak RSS
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


# --------------------------------------------------------------------------- the record
def tool_versions(syncoid: bool = True) -> list[str]:
    """The peers these benchmarks run beside esxdr (the record's header adds esxdr and Python)."""
    out = ["zfs-fuse " + (first_line(["dpkg-query", "-W", "-f", "${Version}", "zfs-fuse"]) or "?")
           + f" (pool v23, ARC ceiling {arc_ceiling()})", first_line(["ssh", "-V"]) or "ssh ?"]
    if syncoid:
        out.append(first_line(["syncoid", "--version"]).replace("/usr/sbin/", "") or "syncoid ?")
    return out


def arc_ceiling() -> str:
    """The running daemon's ARC ceiling: at 100 MiB it hangs at a few hundred filesystems (see
    esxdr.lab.zfsfuse.arc_max_mib), so it belongs with the figures."""
    try:
        return f"{int((zfsfuse.ARCSTATS / 'c_max').read_text()) >> 20} MiB"
    except (OSError, ValueError):
        return "unknown"


def header(title: str, syncoid: bool = True) -> str:
    return record_header(title, tool_versions(syncoid))


def target(ok: bool, what: str, reason: str) -> str:
    return f"{what}: met" if ok else f"{what}: MISSED ({reason})"
