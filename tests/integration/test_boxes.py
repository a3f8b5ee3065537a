"""The two-box lab (issue #19): production and DR in network namespaces of their own.

Every esxdr command runs on its box (nsenter into that site's namespace), and every path between
the sites crosses one veth link: the branches the loopback lab takes as local run here as remote
ones. The link is then cut under live TCP streams (the interface goes down, so packets vanish
with no FIN or RST, as when a cable is pulled) and shaped with a token bucket (tbf; this kernel
has no netem) so that a stream is in flight when it is cut. Every fault test ends with production's
and DR's data compared by sha256.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from esxdr.lab import Lab, LabConfig, netns

pytestmark = pytest.mark.integration
ESXDR = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "esxdr")
ZFS_TIMEOUT = 120
# esxdr's ssh gives up after ServerAliveInterval 15 × ServerAliveCountMax 3 of silence, counted
# from the last message it had: up to 60 s after a cut (a 50 s cut was seen to go unnoticed)
KEEPALIVE_S = 60

if not netns.supported():  # root and a kernel with network namespaces and veth
    pytest.skip("network namespaces or veth pairs are not available here", allow_module_level=True)


class Boxes:
    def __init__(self, lab: Lab):
        self.lab = lab
        st = lab.state()
        self.box = {role: netns.Box(**b) for role, b in st["boxes"].items()}
        self.prod_pool, self.dr_pool = st["pools"]["production"], st["pools"]["dr"]
        self.site = str(lab.site_path)  # production's, push mode
        self.dr_push = str(lab.dr_push_site_path)  # the DR box's, push mode
        self.mnt = Path(st["pools"]["mountpoint_root"])

    def on(self, role: str, *args: str, site: str, env: dict | None = None, timeout: float = 300,
           check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([*self.box[role].exec_prefix(), ESXDR, "--site", site, *args], capture_output=True,
                           text=True, timeout=timeout, env={**os.environ, **(env or {})})
        if check:
            assert r.returncode == 0, f"esxdr {' '.join(args)} on {role} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    def prod(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.on("production", *args, site=kw.pop("site", self.site), **kw)

    def dr(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.on("dr", *args, site=kw.pop("site", self.dr_push), **kw)

    def cut(self) -> None:
        netns.set_link(self.box["production"], up=False)

    def mend(self) -> None:
        netns.set_link(self.box["production"], up=True)

    def shape(self, rate: str | None) -> None:
        """Production's egress through a token bucket (None: unshaped again)."""
        b = self.box["production"]
        argv = (["tc", "qdisc", "replace", "dev", b.veth, "root", "tbf", "rate", rate, "burst", "32kbit",
                 "latency", "400ms"] if rate else ["tc", "qdisc", "del", "dev", b.veth, "root"])
        subprocess.run([*b.exec_prefix(), *argv], check=rate is not None, capture_output=True)

    def write(self, lun: str, mib: int, at_mib: int = 40) -> None:
        """Production's VMs write: ``mib`` MiB of incompressible data into a LUN file, past the VMFS
        volume's headers and file directory (below 40 MiB: the volume would no longer mount)."""
        with open(self.mnt / self.prod_pool / "iscsi" / lun / "lun.img", "r+b") as f:
            f.seek(at_mib << 20)
            f.write(os.urandom(mib << 20))

    def sha_snapshot(self, dataset: str, snap: str) -> str:
        """sha256 of the LUN file in a snapshot, read through a clone outside the group's root."""
        pool = dataset.split("/", 1)[0]
        clone = f"{pool}/boxes-verify"
        where = self.mnt / "verify" / dataset.replace("/", "_")
        subprocess.run(["zfs", "clone", "-o", f"mountpoint={where}", f"{dataset}@{snap}", clone], check=True,
                       capture_output=True, timeout=ZFS_TIMEOUT)
        try:
            return hashlib.sha256((where / "lun.img").read_bytes()).hexdigest()
        finally:
            for _ in range(20):  # zfs-fuse says "busy" for a moment after a file was read
                if subprocess.run(["zfs", "destroy", clone], capture_output=True, timeout=ZFS_TIMEOUT).returncode == 0:
                    break
                time.sleep(0.5)

    def newest_common(self, lun: str) -> str:
        def names(ds: str) -> list[str]:
            out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-s", "createtxg", "-r", ds],
                                 capture_output=True, text=True, check=True, timeout=ZFS_TIMEOUT).stdout
            return [n.split("@", 1)[1] for n in out.split() if n.startswith(ds + "@")]

        dr = set(names(f"{self.dr_pool}/iscsi/{lun}"))
        return [n for n in names(f"{self.prod_pool}/iscsi/{lun}") if n in dr][-1]

    def same_data(self, lun: str) -> str:
        """Production and DR hold the same bytes at their newest common snapshot: its name."""
        snap = self.newest_common(lun)
        prod = self.sha_snapshot(f"{self.prod_pool}/iscsi/{lun}", snap)
        assert prod == self.sha_snapshot(f"{self.dr_pool}/iscsi/{lun}", snap), f"{lun}@{snap} differs"
        return snap


@pytest.fixture(scope="module")
def boxes():
    tag = f"b{os.getpid() % 100000}"
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", account=f"esxdr-{tag}", luns=2,
                        lun_size=64 << 20, pool_size=1 << 30, boxes=True, netns_prefix=tag))
    try:
        lab.up()
        b = Boxes(lab)
        b.dr("host", "apply", "esx-dr")
        b.prod("replicate", "core")
        yield b
    finally:
        from drill_fixtures import keep_lab_logs

        keep_lab_logs(d)
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def test_the_boxes_reach_each_other_and_nothing_else(boxes):
    b = boxes
    for role, box in b.box.items():
        routes = subprocess.run(["ip", "-n", box.netns, "-4", "route"], capture_output=True, text=True,
                                check=True).stdout
        assert "default" not in routes and "198.18.0.0/24" in routes, (role, routes)
    here = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    assert "198.18." not in here  # the machine itself has no address on the link
    st = b.lab.status()
    kinds = sorted((c["kind"], c.get("role")) for c in st["components"])
    assert ("netns", "dr") in kinds and ("sshd", "production") in kinds and all(c["up"] for c in st["components"])
    # DR's sshd answers on DR's address from production, and production's on production's from DR
    assert netns.port_open("198.18.0.2", 22, b.box["production"].netns)
    assert netns.port_open("198.18.0.1", 22, b.box["dr"].netns)


def test_what_only_the_dr_box_may_do_is_refused_from_production(boxes):
    b = boxes
    # The DR server is a remote address here, not loopback: failover and DR's own pruning must run
    # on the DR box itself (replication.sides.on_dr_box and dr_side_site), nothing is touched.
    before = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", f"{b.dr_pool}/iscsi"],
                            capture_output=True, text=True, check=True).stdout
    for args in (("failover", "core", "--planned"), ("prune", "core", "--side", "dr")):
        r = b.prod(*args, check=False)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert "run esxdr on ss2 itself" in r.stderr or "on the DR box" in r.stderr, r.stderr
    # The manifest pin is the DR box's own state: production may read what was shipped, never pin it
    r = b.prod("target", "accept", "core", "--dry-run", check=False)
    assert r.returncode == 2 and "the pin is state of the DR box" in r.stderr, r.stderr
    b.prod("target", "shipped", "core", "-o", str(Path(b.lab.dir) / "shipped.yaml"))
    assert not (Path(b.lab.dir) / "state" / "pins").exists()
    assert subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", f"{b.dr_pool}/iscsi"],
                          capture_output=True, text=True, check=True).stdout == before


def test_an_impostor_and_plain_http_across_the_link_are_refused(boxes, tmp_path):
    b = boxes
    # DR's own sshd answers at production's name: the pinned host key is production's, so refused.
    text = Path(b.lab.dr_site_path).read_text()
    impostor = tmp_path / "impostor.yaml"
    impostor.write_text(text.replace("    address: 198.18.0.1\n", "    address: 198.18.0.2\n", 1))
    r = b.dr("replicate", "core", "--pull", site=str(impostor), check=False)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "host key" in r.stderr.lower(), r.stderr
    # vSphere in clear text to a host that is not this machine: refused before a byte is sent.
    plain = tmp_path / "plain.yaml"
    plain.write_text(Path(b.dr_push).read_text().replace("url: https://198.18.0.1:443/sdk", "url: http://198.18.0.1:443/sdk"))
    r = b.dr("failover", "core", "--planned", "--dry-run", site=str(plain), check=False)
    assert r.returncode == 2 and "plain http to 198.18.0.1" in r.stderr, r.stderr
    b.same_data("lun0")  # and nothing reached DR through either


def test_a_link_cut_mid_stream_is_transient_and_loses_nothing(boxes):
    b = boxes
    b.write("lun0", 12)
    b.shape("4mbit")  # about 500 KB/s: the 12 MiB stream is in flight for some 25 s
    out: dict = {}

    def run():
        out["r"] = b.prod("--json", "replicate", "core", check=False, timeout=600)

    t = threading.Thread(target=run)
    try:
        t.start()
        time.sleep(4)
        b.cut()
        time.sleep(KEEPALIVE_S + 8)  # longer than the keepalive: the stream's ssh gives up
        b.mend()
        b.shape(None)
        t.join(600)
    finally:
        b.mend()
        b.shape(None)
    r = out["r"]
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    lun0 = next(d for d in res["datasets"] if d["source"].endswith("/lun0"))
    assert lun0["retries"] >= 1, lun0  # it failed as transient, and went on
    assert "retry 1/" in r.stderr, r.stderr
    # the stream crossed a network, not loopback: compressed (scripts/setup installs zstd and lz4)
    assert res["compression"] in ("zstd", "lz4"), res
    for lun in ("lun0", "lun1"):
        assert b.same_data(lun) == res["snapshot"]


def test_push_failover_and_failback_reach_a_remote_production(boxes):
    b = boxes
    b.write("lun1", 2)
    r = b.dr("--json", "failover", "core", "--planned")
    rec = json.loads(r.stdout)
    steps = {s["id"]: s for s in rec["steps"]}
    # production's presentation was removed over ssh (target_transport's remote branch) ...
    assert any("removed" in e for e in steps["unpresent-production"]["evidence"]), steps["unpresent-production"]
    # ... and the split-brain guard probed production's portal across the link
    assert any("198.18.0.1:3260 serves none" in e for e in steps["guard"]["evidence"]), steps["guard"]
    final = rec["snapshot"]
    b.dr("reprotect", "core", "--yes")
    b.dr("failback", "core", "--planned")
    for lun in ("lun0", "lun1"):
        assert b.same_data(lun) != final  # failback's own final snapshot, newer than the failover's
    b.prod("replicate", "core")  # production replicates again, incrementally
    for lun in ("lun0", "lun1"):
        b.same_data(lun)


def test_a_link_cut_during_a_failover_step_resumes_from_the_journal(boxes, tmp_path):
    b = boxes
    b.write("lun0", 2, at_mib=54)
    flag = tmp_path / "paused"
    env = {"ESXDR_FAULT_PAUSE": "failover-after-stop-replication", "ESXDR_FAULT_PAUSE_FILE": str(flag)}
    out: dict = {}

    def run():
        out["r"] = b.dr("--json", "failover", "core", "--planned", env=env, check=False, timeout=600)

    t = threading.Thread(target=run)
    try:
        t.start()
        deadline = time.monotonic() + 120
        while not flag.exists() and time.monotonic() < deadline and t.is_alive():
            time.sleep(0.05)
        assert flag.exists(), out
        b.cut()  # the next step removes production's presentation over ssh
        flag.unlink()
        t.join(600)
    finally:
        b.mend()
    r = out["r"]
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    # nothing was promoted: the DR datasets are still sealed replicas
    ro = subprocess.run(["zfs", "get", "-H", "-o", "value", "readonly", f"{b.dr_pool}/iscsi/lun0"],
                        capture_output=True, text=True, check=True).stdout.strip()
    assert ro == "on"
    # the journal on the DR box: done up to the cut, the step across the link failed
    journal = json.loads((Path(b.lab.dir) / "state-dr" / "failover" / "core.failover.json").read_text())
    outcomes = {k: v.get("outcome") for k, v in journal["steps"].items()}
    assert outcomes == {"shutdown": "done", "replicate": "done", "stop-replication": "done",
                        "unpresent-production": "failed"}, (outcomes, r.stderr)
    assert "198.18.0.1" in r.stderr, r.stderr  # the error names what could not be reached
    again = b.dr("--json", "failover", "core", "--planned")
    rec = json.loads(again.stdout)
    earlier = [s["id"] for s in rec["steps"] if s["outcome"] == "done earlier"]
    assert rec["resumed"] and rec["outcome"] == "ok", rec
    # the journal kept what was done before the cut: the final replication is not run again
    assert "replicate" in earlier and "stop-replication" in earlier, earlier
    final = rec["snapshot"]
    assert b.newest_common("lun0") == final
    for lun in ("lun0", "lun1"):
        b.same_data(lun)
    b.dr("reprotect", "core", "--yes")
    b.dr("failback", "core", "--planned")
    b.prod("replicate", "core")


def test_pull_mode_across_the_link(boxes):
    b = boxes
    b.write("lun1", 3)
    # production snapshots itself and holds no key to DR; the DR box pulls through production's
    # send-only account, at production's address
    took = json.loads(b.prod("--json", "replicate", "core", "--snapshot-only",
                             site=str(b.lab.production_pull_site_path)).stdout)
    pulled = json.loads(b.dr("--json", "replicate", "core", "--pull", site=str(b.lab.dr_site_path)).stdout)
    assert pulled["mode"] == "pull" and pulled["snapshot"] == took["snapshot"], pulled
    assert pulled["compression"] in ("zstd", "lz4"), pulled  # across a network: compressed
    for lun in ("lun0", "lun1"):
        assert b.same_data(lun) == took["snapshot"]


def test_production_unreachable_fails_over_only_as_a_disaster(boxes):
    b = boxes
    b.prod("replicate", "core")
    snap = b.same_data("lun0")
    b.cut()
    try:
        r = b.dr("failover", "core", "--planned", check=False, timeout=600)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
        r = b.dr("--json", "failover", "core", "--disaster", timeout=600)
        rec = json.loads(r.stdout)
        guard = next(s for s in rec["steps"] if s["id"] == "guard")
        assert any("198.18.0.1:3260" in e and "serves none" in e for e in guard["evidence"]), guard
        assert rec["outcome"] == "ok" and rec["snapshot"] == snap, rec
    finally:
        b.mend()
    # DR recovered production's data as of the last snapshot both had, byte for byte
    for lun in ("lun0", "lun1"):
        assert b.same_data(lun) == snap


def test_lab_down_removes_the_boxes_even_after_a_crash():
    tag = f"k{os.getpid() % 100000}"  # not c<digit>: zfs reserves such pool names (disk names)
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    cfg = LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", account=f"esxdr-{tag}", luns=1,
                    lun_size=16 << 20, pool_size=256 << 20, with_esxsim=False, boxes=True, netns_prefix=tag)
    lab = Lab(cfg)
    try:
        lab.up()
        names = {f"{tag}-prod", f"{tag}-dr"}
        assert names <= netns.existing()
        running = [p for n in names for p in netns.pids(n)]
        assert len(running) >= 4  # two sshd, two tgtd
        # the crash: the lab's state is lost, and an orphan keeps running in a box
        orphan = subprocess.Popen([*netns.netns_prefix(f"{tag}-dr"), "sleep", "600"])
        Path(d, "lab.json").unlink()
        Lab(cfg).down()
        assert not names & netns.existing()
        assert orphan.wait(timeout=10) is not None
        from esxdr.util import pid_running

        assert not any(pid_running(p) for p in running)
        import pwd

        with pytest.raises(KeyError):  # the account went too: its home was the lab's
            pwd.getpwnam(cfg.account)
    finally:
        Lab(cfg).down()
        shutil.rmtree(d, ignore_errors=True)
