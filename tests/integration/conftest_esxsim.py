"""Fixtures for the esxsim integration tests: real tgtd instances and esxsim hosts.

Loaded with `pytest_plugins = ["tests.integration.conftest_esxsim"]` or imported by a test
module. Everything listens on 127.0.0.x, ports are picked per run, and teardown leaves no
tgtd or esxsim process behind.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from esxdr.lab import esxsim  # noqa: E402

TGTD = shutil.which("tgtd") or "/usr/sbin/tgtd"
TGTADM = shutil.which("tgtadm") or "/usr/sbin/tgtadm"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Tgtd:
    """One tgtd instance (`tgtd -f -C <control> --iscsi portal=<host>:<port>`)."""

    def __init__(self, host: str, port: int, control: int, log: Path):
        self.host, self.port, self.control = host, port, control
        self.log = log
        self.proc: subprocess.Popen | None = None
        self.targets: dict[int, str] = {}

    @property
    def portal(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        logf = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [TGTD, "-f", "-C", str(self.control), "--iscsi", f"portal={self.host}:{self.port}"],
            stdout=logf,
            stderr=logf,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        logf.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tgtd exited: {self.log.read_text()[-1000:]}")
            if self.adm("--op", "show", "--mode", "sys", check=False).returncode == 0:
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("tgtd did not start")

    def adm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [TGTADM, "-C", str(self.control), "--lld", "iscsi", *args]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip() or p.stdout.strip()}")
        return p

    def add_target(self, tid: int, iqn: str, allow: str = "ALL") -> None:
        self.adm("--op", "new", "--mode", "target", "--tid", str(tid), "-T", iqn)
        self.adm("--op", "bind", "--mode", "target", "--tid", str(tid), "-I", allow)
        self.targets[tid] = iqn

    def add_lun(self, tid: int, lun: int, path: Path, scsi_id: str, scsi_sn: str = "") -> None:
        self.adm(
            "--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun), "-b", str(path)
        )
        params = f"scsi_id={scsi_id}"
        if scsi_sn:
            params += f",scsi_sn={scsi_sn}"
        self.adm(
            "--op",
            "update",
            "--mode",
            "logicalunit",
            "--tid",
            str(tid),
            "--lun",
            str(lun),
            "--params",
            params,
        )

    def delete_lun(self, tid: int, lun: int) -> None:
        self.adm("--op", "delete", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun))

    def require_chap(self, tid: int, user: str, secret: str) -> None:
        self.adm("--op", "new", "--mode", "account", "--user", user, "--password", secret)
        self.adm("--op", "bind", "--mode", "account", "--tid", str(tid), "--user", user)

    def delete_target(self, tid: int) -> None:
        self.adm("--op", "delete", "--force", "--mode", "target", "--tid", str(tid), check=False)
        self.targets.pop(tid, None)

    def stop(self) -> None:
        if self.proc is None:
            return
        for tid in list(self.targets):
            self.delete_target(tid)
        self.adm("--op", "delete", "--mode", "system", check=False)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def lab_available() -> str | None:
    if os.geteuid() != 0:
        return "needs root (tgtd)"
    if not os.path.exists(TGTD):
        return "tgtd not installed (apt-get install tgt)"
    try:
        import pyVmomi  # noqa: F401
    except ImportError:
        return "pyvmomi not installed"
    return None


@pytest.fixture(scope="session")
def esxsim_binary() -> Path:
    why = lab_available()
    if why:
        pytest.skip(why)
    return esxsim.build(ROOT)


@pytest.fixture
def lab_dir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def tgtd_factory(lab_dir: Path) -> Iterator:
    started: list[Tgtd] = []

    def make(host: str = "127.0.0.1") -> Tgtd:
        t = Tgtd(host, free_port(host), random.randint(2000, 32000), lab_dir / f"tgtd-{len(started)}.log")
        t.start()
        started.append(t)
        return t

    yield make
    for t in started:
        t.stop()


@pytest.fixture
def esxsim_factory(esxsim_binary: Path, lab_dir: Path) -> Iterator:
    started: list[esxsim.EsxsimProcess] = []
    registry = lab_dir / "mounts"

    def make(name: str, host: str = "127.0.0.1", heartbeat_delay: float = 0.5) -> esxsim.EsxsimProcess:
        p = esxsim.start(
            name,
            host,
            free_port(host),
            lab_dir / name,
            password="secret-" + name,
            heartbeat_delay=heartbeat_delay,
            log_path=lab_dir / f"{name}.log",
            mount_registry=registry,
            binary=esxsim_binary,
        )
        started.append(p)
        return p

    yield make
    for p in started:
        p.stop()


def connect(proc: esxsim.EsxsimProcess):
    from pyVim.connect import SmartConnect

    return SmartConnect(
        protocol="http", host=proc.host, port=proc.port, user=proc.username, pwd=proc.password
    )


def make_lun_file(path: Path, size_mb: int = 64) -> Path:
    with open(path, "wb") as f:
        f.truncate(size_mb << 20)
    return path


# --- a tiny VMFS header writer, following docs/esxsim.md (bare volume, no GPT) ---


def vmfs_uuid_bytes(u: str) -> bytes:
    a, b, c, d = u.split("-")
    return struct.pack("<IIH", int(a, 16), int(b, 16), int(c, 16)) + bytes.fromhex(d)


def write_vmfs_header(
    path: Path,
    device_id: str,
    uuid: str,
    label: str,
    *,
    vendor: str = "IET",
    product: str = "VIRTUAL-DISK",
    part_start: int = 0,
) -> None:
    lvm = bytearray(0x200)
    struct.pack_into("<II", lvm, 0, 0xC001D00D, 6)
    lvm[0x0C] = 3
    lvm[0x0D] = len(device_id)
    struct.pack_into("<H", lvm, 0x0E, 1)
    lvm[0x12:0x1A] = vendor.encode().ljust(8)
    lvm[0x1A:0x2A] = product.encode().ljust(16)
    lvm[0x2A:0x2E] = b"0001"
    lvm[0x2E : 0x2E + len(device_id)] = device_id.encode()
    data_offset = 0x1100000
    struct.pack_into("<Q", lvm, 0x7A, data_offset)
    fs3 = bytearray(0x200)
    struct.pack_into("<II", fs3, 0, 0x2FABF15E, 24)
    fs3[0x09:0x19] = vmfs_uuid_bytes(uuid)
    fs3[0x1D : 0x1D + len(label)] = label.encode()
    with open(path, "r+b") as f:
        f.seek(part_start + 0x100000)
        f.write(lvm)
        f.seek(part_start + data_offset + 0x200000)
        f.write(fs3)
