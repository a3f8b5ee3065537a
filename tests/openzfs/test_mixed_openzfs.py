"""Mixed versions: production on zfs-fuse (pool v23, on the host) replicates into OpenZFS on DR.

The DR box is often the newer one. OpenZFS receives the pool-v23 stream format, so
production → DR works, and the replica keeps version 4, so failback works too. A
filesystem born on OpenZFS (ZPL version 5) cannot go to pool v23, and esxdr says
so: as a verdict (esxdr.zfs.compat.stream_direction) and, should a stream be tried
anyway, as a permanent typed error instead of a transient one.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from esxdr.errors import TransientError
from esxdr.lab.openzfs import site_storage
from esxdr.model import LEGACY, OPENZFS
from esxdr.zfs.compat import StreamFormatError, stream_direction

# The lane's names, as tests/openzfs/conftest.py sets them up (a conftest is not importable by path
# from every way pytest is started).
DR = "ozdr"
ESXDR = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "esxdr")

pytestmark = pytest.mark.openzfs


@pytest.fixture(scope="module")
def fuse_pool(lane):
    # `lane` first: no zfs-fuse pool is made when the guest cannot be reached.
    if shutil.which("zfs-fuse") is None:
        pytest.skip("zfs-fuse is not installed on the host (scripts/setup)")
    from esxdr.lab import ensure_zfs_fuse

    ensure_zfs_fuse()
    d = tempfile.mkdtemp(prefix="esxdr-ozmix-", dir="/var/lib")
    name = f"ozmix{os.getpid() % 100000}"
    vdev = Path(d) / "vdev"
    with open(vdev, "wb") as f:
        f.truncate(1 << 30)
    host_zfs("zpool", "create", "-m", f"{d}/mnt", name, str(vdev))
    yield name, Path(d) / "mnt"
    if host_zfs("zpool", "destroy", "-f", name, cleanup=True):
        shutil.rmtree(d, ignore_errors=True)
    else:  # keep the vdev: the pool still uses it (zpool destroy -f NAME once zfs-fuse answers again)
        print(f"left pool {name} on {d}/vdev: zfs-fuse did not let it go")


def host_zfs(*argv: str, timeout: float = 120, cleanup: bool = False) -> bool:
    """A zfs-fuse command on the host; a daemon that stopped answering FUSE requests (it is shared
    with the rest of the suite) fails the test instead of hanging it."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()  # may stay in D state until zfs-fuse answers; do not wait for it
        if cleanup:
            return False
        pytest.fail(f"zfs-fuse on the host did not answer `{' '.join(argv)}` within {timeout:.0f} s")
    if p.returncode != 0 and not cleanup:
        raise AssertionError(f"{' '.join(argv)}: {err}")
    return p.returncode == 0


def write_site(tmp_path: Path, title: str, storage: str, name: str, src_root: str, dr_root: str) -> Path:
    """A site file with ``storage`` (the ss1/ss2 entries) and one group ``name`` of dataset lun0."""
    site = tmp_path / "site.yaml"
    site.write_text(f"""version: 1
name: {title}
state_dir: {tmp_path / 'state'}
storage:
{storage}protection_groups:
  {name}:
    source: ss1
    destination: ss2
    source_root: {src_root}
    dr_root: {dr_root}
    datasets: [lun0]
    retention:
      source: {{hourly: 48}}
      destination: {{hourly: 48}}
    rpo: 1h
""")
    return site


def test_zfs_fuse_production_replicates_into_openzfs_dr(fuse_pool, lane, pools, dr_account, tmp_path):
    pool, mnt = fuse_pool
    name = f"mix{os.getpid() % 1000}"
    src_root, dr_root = f"{pool}/{name}", f"{DR}/{name}"
    host_zfs("zfs", "create", src_root)
    host_zfs("zfs", "create", f"{src_root}/lun0")
    lun = mnt / name / "lun0" / "lun.img"
    lun.write_bytes(os.urandom(3 << 20))
    storage = "  ss1: {role: production, local: true, zfs: auto}\n" + site_storage(
        lane, "ss2", "dr", user=dr_account["user"], key=dr_account["key"], serve_prefix=DR)
    site = write_site(tmp_path, "mixed", storage, name, src_root, dr_root)
    try:
        def esxdr(*args):
            return subprocess.run([ESXDR, "--site", str(site), *args], capture_output=True, text=True, timeout=600)

        r = esxdr("--json", "replicate", name)
        assert r.returncode == 0, r.stderr
        caps = {h: json.loads((tmp_path / "state" / "hosts" / f"{h}.json").read_text())["flavour"]
                for h in ("ss1", "ss2")}
        assert caps == {"ss1": "legacy", "ss2": "openzfs"}
        lun.write_bytes(os.urandom(3 << 20))
        r = esxdr("--json", "replicate", name)
        assert r.returncode == 0, r.stderr
        assert [a["kind"] for a in json.loads(r.stdout)["datasets"][0]["actions"]] == ["send-incremental"]
        # Same bytes on the OpenZFS side; the replica keeps the old on-disk version.
        want = subprocess.run(["sha256sum", str(lun)], capture_output=True, text=True).stdout.split()[0]
        got = lane.out(f"zfs mount {dr_root}/lun0 && sha256sum /{dr_root}/lun0/lun.img; rc=$?; "
                       f"zfs unmount {dr_root}/lun0; exit $rc").split()[0]
        assert got == want
        src_version = subprocess.run(["zfs", "get", "-H", "-o", "value", "version", f"{src_root}/lun0"],
                                     capture_output=True, text=True).stdout.strip()
        assert lane.out(["zfs", "get", "-H", "-o", "value", "version", f"{dr_root}/lun0"]).strip() == src_version
        # `esxdr status` says, per group, which ways the streams can go: both, the replica being version 4.
        r = esxdr("--json", "status", name)
        assert r.returncode == 0, r.stderr
        ways = json.loads(r.stdout)["directions"]
        assert ways["replication"]["possible"] and ways["replication"]["from"] == "legacy"
        assert ways["failback"]["possible"] and ways["failback"]["to"] == "legacy", ways
        # bookmarks: true cannot work with a pool-v23 source: refused with the site file's line, exit 2.
        site.write_text(site.read_text() + "    bookmarks: true\n")
        r = esxdr("replicate", name, "--dry-run")
        assert r.returncode == 2 and f"{site}:" in r.stderr and "bookmarks" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr

        # The way back, measured: the replica kept version 4, so failback to pool v23 works...
        snap = lane.out(["zfs", "list", "-H", "-t", "snapshot", "-o", "name", "-s", "createtxg",
                         f"{dr_root}/lun0"]).split()[-1]
        back = subprocess.run(f"{shlex.join(lane.ssh_argv())} zfs send {snap} | zfs receive {pool}/{name}-back",
                              shell=True, capture_output=True, text=True, timeout=300)
        assert back.returncode == 0, back.stderr
        # ...and zfs-fuse reads it: the same bytes (pool-v23 receive mounts what it receives).
        back_file = mnt / f"{name}-back" / "lun.img"
        assert subprocess.run(["sha256sum", str(back_file)], capture_output=True, text=True,
                              timeout=120).stdout.split()[0] == want
        assert stream_direction(OPENZFS, LEGACY, "filesystem", zpl_version=int(src_version), replica=True).ok
        # ...but a filesystem born on OpenZFS (ZPL 5) cannot go to pool v23: zfs-fuse refuses it,
        lane.run(f"zfs create {DR}/{name}-native && dd if=/dev/urandom of=/{DR}/{name}-native/f bs=64k count=4 "
                 f"status=none && zfs snapshot {DR}/{name}-native@a")
        native = subprocess.run(f"{shlex.join(lane.ssh_argv())} zfs send {DR}/{name}-native@a | "
                                f"zfs receive {pool}/{name}-native", shell=True, capture_output=True, text=True,
                                timeout=300)
        assert native.returncode != 0
        assert "unsupported feature" in native.stderr
        # and esxdr turns zfs-fuse's words into a permanent error that names the direction.
        from esxdr.errors import CommandFailed
        from esxdr.zfs.errors import translate

        err = translate(CommandFailed("receive failed", argv=["zfs", "receive"], returncode=1,
                                      stderr=native.stderr, host="ss1"), dataset=f"{pool}/{name}-native")
        assert isinstance(err, StreamFormatError), native.stderr
        assert not isinstance(err, TransientError)
        assert "pool-version-23" in (err.hint or "")
        verdict = stream_direction(OPENZFS, LEGACY, "filesystem",
                                   zpl_version=int(lane.out(["zfs", "get", "-H", "-o", "value", "version",
                                                             f"{DR}/{name}-native"]).strip()))
        assert not verdict.ok and "ZPL version 5" in verdict.reason
        assert stream_direction(LEGACY, OPENZFS).ok
    finally:
        lane.run(f"zfs destroy -r {dr_root}; zfs destroy -r {DR}/{name}-native", check=False)
        for ds in (f"{pool}/{name}-back", f"{pool}/{name}-native", src_root):
            host_zfs("zfs", "destroy", "-r", ds, cleanup=True)


def test_openzfs_to_pool_v23_direction_is_refused_before_sending(fuse_pool, lane, pools, tmp_path):
    """OpenZFS production (the guest) → pool-v23 DR (host zfs-fuse): esxdr decides from the ZPL version
    before any snapshot or stream; a version-4 filesystem then goes through."""
    pool, _ = fuse_pool
    name = f"mixr{os.getpid() % 1000}"
    src_root, dr_root = f"ozprod/{name}", f"{pool}/{name}"
    lane.run(f"zfs create -p {src_root}/lun0 && dd if=/dev/urandom of=/{src_root}/lun0/f bs=64k count=16 "
             "status=none")
    storage = site_storage(lane, "ss1", "production") + "  ss2: {role: dr, local: true, zfs: auto}\n"
    site = write_site(tmp_path, "mixed-back", storage, name, src_root, dr_root)

    def esxdr(*args):
        return subprocess.run([ESXDR, "--site", str(site), *args], capture_output=True, text=True, timeout=600)

    try:
        assert lane.out(["zfs", "get", "-H", "-o", "value", "version", f"{src_root}/lun0"]).strip() == "5"
        r = esxdr("--json", "replicate", name)
        assert r.returncode == 3, (r.stdout, r.stderr)
        err = json.loads(r.stdout)
        assert err["kind"] == "stream-direction" and f"{src_root}/lun0" in err["evidence"]["datasets"]
        assert "ZPL version 5" in r.stderr and "nothing was sent" in r.stderr and "Traceback" not in r.stderr
        # Nothing happened: no snapshot on production, nothing on the pool-v23 side.
        assert lane.out(["zfs", "list", "-H", "-t", "snapshot", "-r", src_root]).strip() == ""
        assert subprocess.run(["zfs", "list", dr_root], capture_output=True, timeout=120).returncode != 0
        # status shows it both ways: replication impossible, failback (pool v23 → OpenZFS) possible.
        r = esxdr("--json", "status", name)
        assert r.returncode == 5  # never replicated (the rows come first, then the stale error)
        ways = json.JSONDecoder().raw_decode(r.stdout)[0]["directions"]
        assert not ways["replication"]["possible"] and ways["replication"]["refused"] == [f"{src_root}/lun0"]
        assert ways["failback"]["possible"]
        r = esxdr("status", name)
        assert "replication openzfs → legacy NOT possible" in r.stdout, r.stdout

        # Made with version=4 on OpenZFS, the stream IS received by zfs-fuse (exit 0), but the result
        # cannot be opened: its root reads as missing. So esxdr refuses that too, before sending.
        lane.run(f"zfs destroy -r {src_root}/lun0 && zfs create -o version=4 {src_root}/lun0 && "
                 f"dd if=/dev/urandom of=/{src_root}/lun0/f bs=64k count=16 status=none && "
                 f"zfs snapshot {src_root}/lun0@raw")
        host_zfs("zfs", "create", dr_root)
        raw = subprocess.run(f"{shlex.join(lane.ssh_argv())} zfs send {src_root}/lun0@raw | "
                             f"zfs receive {dr_root}/raw", shell=True, capture_output=True, text=True, timeout=300)
        assert raw.returncode == 0, raw.stderr
        mnt = subprocess.run(["zfs", "get", "-H", "-o", "value", "mountpoint", f"{dr_root}/raw"],
                             capture_output=True, text=True, timeout=120).stdout.strip()
        assert not Path(mnt, "f").exists() and not Path(mnt).is_dir()
        host_zfs("zfs", "unmount", "-f", f"{dr_root}/raw", cleanup=True)  # the pool's teardown destroys it
        lane.run(f"zfs destroy {src_root}/lun0@raw")
        r = esxdr("--json", "replicate", name)
        assert r.returncode == 3, (r.stdout, r.stderr)
        assert "cannot be opened" in r.stderr and "ZPL version 4" in r.stderr
        assert lane.out(["zfs", "list", "-H", "-t", "snapshot", "-r", src_root]).strip() == ""
    finally:
        lane.run(f"zfs destroy -r {src_root}", check=False)
        host_zfs("zfs", "destroy", "-r", dr_root, cleanup=True)
