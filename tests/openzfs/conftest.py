"""The OpenZFS lane for tests: a running guest (scripts/openzfs-lane up), or a clear skip when no lane
was asked for, or an error when one was and it cannot be reached.

Asked for = any of the variables `scripts/openzfs-lane up` writes to lane.env is set, or
ESXDR_OPENZFS_REQUIRE=1 (`scripts/openzfs-lane run-tests` sets it). Then a missing variable or a guest
that does not answer over SSH fails every lane test at setup: a lane run never goes green by skipping.
Without any of them (the whole tests/ tree on a machine with no lane) every `openzfs`-marked test is
skipped at collection, before any fixture runs, with NEEDS_LANE as its reason.

The guest holds two pools on its two data disks (by virtio serial): ``ozprod``
(production) and ``ozdr`` (DR). Production is reached as root over SSH; DR through
a service account whose only way in is the forced command ``esxdr serve`` and whose
zfs rights come from ``zfs allow`` (no sudo in the guest at all).

Every address used is 127.0.0.1 (qemu hostfwd); see esxdr/lab/openzfs.py.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from pathlib import Path

import pytest

from esxdr.lab.openzfs import Lane, keygen, site_storage

ROOT = Path(__file__).resolve().parents[2]
ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")
PROD, DR = "ozprod", "ozdr"
DR_USER = "esxdr-dr"
_counter = itertools.count()


NEEDS_LANE = "needs the OpenZFS guest lane: run scripts/openzfs-lane run-tests"
# What `scripts/openzfs-lane up` exports (lane.env); Lane.from_env needs all four.
LANE_VARS = ("ESXDR_OPENZFS_SSH", "ESXDR_OPENZFS_ISCSI", "ESXDR_OPENZFS_KEY", "ESXDR_OPENZFS_KNOWN_HOSTS")
REQUIRE = "ESXDR_OPENZFS_REQUIRE"


def lane_requested(env: dict[str, str] | None = None) -> bool:
    """A lane was asked for: its variables are (even partly) set, or ESXDR_OPENZFS_REQUIRE=1."""
    env = dict(os.environ if env is None else env)
    return env.get(REQUIRE) == "1" or any(env.get(k) for k in LANE_VARS)


def pytest_collection_modifyitems(config, items):
    # Skip before any fixture runs (test_mixed_openzfs's zfs-fuse pool must not be made for nothing).
    if lane_requested():
        return
    skip = pytest.mark.skip(reason=NEEDS_LANE)
    for item in items:
        if item.get_closest_marker("openzfs") is not None:  # (keywords would match the directory name)
            item.add_marker(skip)


@pytest.fixture(scope="session")
def lane() -> Lane:
    if not lane_requested():
        pytest.skip(NEEDS_LANE)
    try:
        ln = Lane.from_env()
    except ValueError as e:  # an address outside 127.0.0.0/8, or a port that is not a number
        pytest.fail(f"OpenZFS lane variables are wrong: {e}", pytrace=False)
    if ln is None:
        missing = [k for k in LANE_VARS if not os.environ.get(k)]
        pytest.fail(f"an OpenZFS lane was asked for but {', '.join(missing)} "
                    f"{'is' if len(missing) == 1 else 'are'} not set: export the variables of "
                    f"/run/esxdr-openzfs/lane.env (scripts/openzfs-lane up), or run scripts/openzfs-lane "
                    f"run-tests", pytrace=False)
    where = f"root@{ln.ssh_address}:{ln.ssh_port}"
    try:
        r = ln.run("true", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"OpenZFS lane unreachable: ssh to {where} did not answer within 60 s", pytrace=False)
    if r.returncode != 0:
        pytest.fail(f"OpenZFS lane unreachable: ssh to {where} failed (exit {r.returncode}): "
                    f"{r.stderr.strip() or 'no message'}; is the guest up (scripts/openzfs-lane status)?",
                    pytrace=False)
    return ln


@pytest.fixture(scope="session")
def pools(lane: Lane) -> tuple[str, str]:
    disks = lane.disks or ["/dev/disk/by-id/virtio-esxdr-prod", "/dev/disk/by-id/virtio-esxdr-dr"]
    lane.ensure_pool(PROD, disks[0])
    lane.ensure_pool(DR, disks[1])
    return PROD, DR


@pytest.fixture(scope="session")
def dr_account(lane: Lane, pools, tmp_path_factory) -> dict:
    keys = tmp_path_factory.mktemp("drkey")
    os.chmod(keys, 0o700)
    key = keys / "id_ed25519"
    pub = keygen(key, "esxdr@openzfs-lane")
    line = lane.dr_account(DR_USER, DR, pub)
    return {"user": DR_USER, "key": str(key), "line": line, "prefix": DR}


class Group:
    """A protection group in the guest: zvols (or filesystems) under ozprod/NAME, DR under ozdr/NAME."""

    def __init__(self, lane: Lane, dr: dict, tmp: Path, name: str, n: int, kind: str, extra: str,
                 volsize: str | list[str] = "64M"):
        self.lane, self.name, self.kind = lane, name, kind
        self.source_root = f"{PROD}/{name}"
        self.dr_root = f"{DR}/{name}"
        self.datasets = [f"{self.source_root}/lun{i}" for i in range(n)]
        cmds = [f"zfs create {self.source_root}"]
        sizes = volsize if isinstance(volsize, list) else [volsize] * n
        for ds, size in zip(self.datasets, sizes, strict=True):
            cmds.append(f"zfs create -s -V {size} -o volblocksize=16k {ds}" if kind == "volume"
                        else f"zfs create {ds}")
        # Wait for udev to make the /dev/zvol links.
        cmds.append("udevadm settle")
        lane.run(" && ".join(cmds))
        tmp.mkdir(parents=True, exist_ok=True)
        self.site = tmp / "site.yaml"
        self.state_dir = tmp / "state"
        self.site.write_text(
            f"version: 1\nname: openzfs-lane\nstate_dir: {self.state_dir}\nstorage:\n"
            + site_storage(lane, "ss1", "production")
            + site_storage(lane, "ss2", "dr", user=dr["user"], key=dr["key"], serve_prefix=dr["prefix"])
            + f"""protection_groups:
  {name}:
    source: ss1
    destination: ss2
    source_root: {self.source_root}
    dr_root: {self.dr_root}
    datasets: [{', '.join(d.rsplit('/', 1)[1] for d in self.datasets)}]
    retention:
      source: {{hourly: 48, daily: 30}}
      destination: {{hourly: 48, daily: 30}}
    rpo: 1h
{extra}""")

    def dr(self, ds: str) -> str:
        return self.dr_root + ds[len(self.source_root):]

    def write(self, ds: str, size: int, offset: int = 0) -> None:
        """Random bytes into a zvol (or a file on a filesystem) in the guest."""
        bs = 1 << 16
        assert size % bs == 0 and offset % bs == 0
        target = f"/dev/zvol/{ds}" if self.kind == "volume" else f"/{ds}/lun.img"
        self.lane.run(f"dd if=/dev/urandom of={target} bs={bs} count={size // bs} seek={offset // bs} "
                      f"conv=notrunc,fsync status=none")

    def sha(self, ds: str, side: str = "source") -> str:
        name = ds if side == "source" else self.dr(ds)
        if self.kind == "volume":
            return self.lane.out(f"udevadm settle; sha256sum /dev/zvol/{name}").split()[0]
        mounted = self.lane.out(f"zfs get -H -o value mounted {name}").strip() == "yes"
        cmd = f"sha256sum /{name}/lun.img" if mounted else \
            f"zfs mount {name} && sha256sum /{name}/lun.img; rc=$?; zfs unmount {name}; exit $rc"
        return self.lane.out(cmd).split()[0]

    def esxdr(self, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return subprocess.run([ESXDR, "--site", str(self.site), *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, timeout=timeout)

    def get(self, prop: str, name: str) -> str:
        return self.lane.out(["zfs", "get", "-Hp", "-o", "value", prop, name]).strip()

    def snapshots(self, root: str) -> dict[str, list[tuple[str, int]]]:
        """dataset -> [(snapshot, userrefs)], oldest first."""
        out = self.lane.out(["zfs", "list", "-Hp", "-t", "snapshot", "-o", "name,userrefs", "-s", "createtxg",
                             "-r", root], check=False)
        res: dict[str, list[tuple[str, int]]] = {}
        for line in out.splitlines():
            name, refs = line.split("\t")
            ds, s = name.split("@")
            res.setdefault(ds, []).append((s, int(refs)))
        return res

    def destroy(self) -> None:
        self.lane.run(f"zfs destroy -r {self.dr_root}; zfs destroy -r {self.source_root}; true", check=False)


@pytest.fixture
def group_factory(lane, pools, dr_account, tmp_path):
    made: list[Group] = []

    def make(n: int = 1, kind: str = "volume", extra: str = "", volsize: str | list[str] = "64M") -> Group:
        g = Group(lane, dr_account, tmp_path / f"g{len(made)}", f"oz{os.getpid() % 1000}x{next(_counter)}",
                  n, kind, extra, volsize)
        made.append(g)
        return g

    yield make
    for g in made:
        g.destroy()
