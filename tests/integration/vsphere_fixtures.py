"""A DR host for the vSphere tests: a real tgtd on 127.0.0.1 and esxsim on 127.0.0.2.

Used by tests/integration/test_host.py, the cassette recordings (tests/cassette) and
benchmarks/vsphere.py. Everything listens on loopback, on ports picked per run.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for p in (str(ROOT), str(Path(__file__).resolve().parent)):
    if p not in sys.path:
        sys.path.insert(0, p)

from conftest_esxsim import Tgtd, free_port, make_lun_file  # noqa: E402

from esxdr.lab import esxsim  # noqa: E402
from esxdr.model import manifest as mf  # noqa: E402

PASSWORD_ENV = "ESXDR_TEST_VSPHERE_PASSWORD"
ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")
PRODUCT = "VIRTUAL-DISK"  # tgt's product id
TARGET_IQN = "iqn.2024-01.lab.esxdr:dr"


def run_esxdr(site, password: str, *args: str, check: int | None = None, env_name: str = PASSWORD_ENV,
              timeout: float = 120) -> subprocess.CompletedProcess:
    """The esxdr CLI on a site file that reads its vSphere password from env_name.

    With ``check``, the exit code must be that (stdout and stderr are shown otherwise)."""
    p = subprocess.run([ESXDR, "--site", str(site), *args], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, env_name: password})
    if check is not None:
        assert p.returncode == check, p.stdout + p.stderr
    return p


def esxdr_on(lab: DrLab, *args: str, check: int | None = None) -> subprocess.CompletedProcess:
    """The esxdr CLI on a DR lab's own site file (see start_lab)."""
    return run_esxdr(lab.site, lab.esx.password, *args, check=check)


@pytest.fixture
def lab(esxsim_binary: Path, tmp_path: Path) -> Iterator[DrLab]:
    """A DR lab (tgtd + esxsim as esx-dr) for modules that list this file in pytest_plugins."""
    lab = start_lab(tmp_path / "lab", binary=esxsim_binary)
    yield lab
    lab.stop()


def naa_for(i: int) -> str:
    return f"600144f0c0ffee{i:018x}"


def vmfs_uuid_for(i: int) -> str:
    return f"5f1e2d3c-{i:08x}-8796-000c29aabbcc"


SITE = """version: 1
name: vsphere-test
state_dir: {dir}/state
storage:
  ss2: {{role: dr, local: true}}
vsphere:
  esx-dr:
    role: dr
    url: {url}
    user: root
    password_env: {env}
dr_network:
  esx-dr:
    vswitches:
      vSwitch1: {{uplinks: [vmnic1, vmnic2], mtu: 9000, active: [vmnic1], standby: [vmnic2]}}
    port_groups:
      iSCSI-A: {{vswitch: vSwitch1, vlan: 20, active_uplinks: [vmnic1], standby_uplinks: []}}
      Repl: {{vswitch: vSwitch1, vlan: 30}}
      Prod-LAN: {{vswitch: vSwitch1, vlan: 310, isolated: true}}
    vmkernel:
      vmk1: {{port_group: iSCSI-A, ip: 127.0.0.21/8, mtu: 9000}}
    iscsi:
      bind: [vmk1]
      send_targets: [{portal}]
"""


@dataclass
class DrLab:
    dir: Path
    tgtd: Tgtd
    esx: esxsim.EsxsimProcess
    site: Path
    luns: dict[str, Path] = field(default_factory=dict)  # naa hex → backing file
    lun_numbers: dict[str, int] = field(default_factory=dict)

    @property
    def portal(self) -> str:
        return self.tgtd.portal

    def endpoint(self):  # -> VsphereEndpoint
        from esxdr.site.model import VsphereEndpoint

        return VsphereEndpoint(name="esx-dr", role="dr", url=self.esx.url, user="root", password_env=PASSWORD_ENV)

    def connect(self):
        from esxdr.vsphere.session import connect

        return connect(self.endpoint(), password=self.esx.password)

    def desired(self):
        from esxdr.site import load_site

        return load_site(str(self.site)).dr_network["esx-dr"]

    def add_lun(self, i: int, *, served_naa: str | None = None, label: str | None = None,
                vmfs_naa: str | None = None, size_mb: int = 64) -> str:
        """LUN i with a VMFS header written for ``vmfs_naa`` (default: its own NAA), served as
        ``served_naa`` (default: its own NAA). A difference makes the volume unresolved."""
        from esxdr import vmfs

        naa = naa_for(i)
        path = make_lun_file(self.dir / f"lun{i}.img", size_mb)
        if label is not False:
            vmfs.write_vmfs(path, uuid=vmfs_uuid_for(i), label=label or f"ds{i}", naa=vmfs_naa or naa,
                            product_id=PRODUCT)
        if 1 not in self.tgtd.targets:
            self.tgtd.add_target(1, TARGET_IQN)
        lun = len(self.lun_numbers) + 1
        self.tgtd.add_lun(1, lun, path, served_naa or naa)
        self.luns[served_naa or naa] = path
        self.lun_numbers[served_naa or naa] = lun
        return served_naa or naa

    def manifest(self, naas: list[str] | None = None) -> Path:
        """A target manifest listing the given NAAs (default: every LUN added) as expected."""
        lus = []
        for idx, naa in enumerate(naas or list(self.luns)):
            path = self.luns.get(naa) or next(iter(self.luns.values()))
            lus.append(mf.LogicalUnit(naa=mf.Naa(naa), backing=mf.Backing("file", str(path)),
                                      size_bytes=path.stat().st_size, product_id=PRODUCT, vendor_id="IET",
                                      views=[mf.View(lun=self.lun_numbers.get(naa, 100 + idx), target=TARGET_IQN)]))
        m = mf.Manifest(targets=[mf.Target(iqn=TARGET_IQN, tpgs=[mf.Tpg(1, [mf.Portal(self.tgtd.host, self.tgtd.port)])])],
                        logical_units=lus, source=mf.Source(stack="tgt"))
        out = self.dir / "manifest.yaml"
        mf.save(m, out)
        return out

    def stop(self) -> None:
        self.esx.stop()
        self.tgtd.stop()


def start_lab(dir: Path, binary: Path | None = None, heartbeat_delay: float = 0.3, dell_idrac: bool = False) -> DrLab:
    dir.mkdir(parents=True, exist_ok=True)
    t = Tgtd("127.0.0.1", free_port("127.0.0.1"), random.randint(2000, 32000), dir / "tgtd.log")
    t.start()
    try:
        esx = esxsim.start("esx-dr", "127.0.0.2", free_port("127.0.0.2"), dir / "esx-dr", password="pw-esx-dr",
                           heartbeat_delay=heartbeat_delay, log_path=dir / "esx-dr.log",
                           mount_registry=dir / "mounts", binary=binary, dell_idrac=dell_idrac)
    except Exception:
        t.stop()
        raise
    site = dir / "site.yaml"
    site.write_text(SITE.format(dir=dir, url=esx.url, env=PASSWORD_ENV, portal=t.portal))
    os.environ[PASSWORD_ENV] = esx.password
    return DrLab(dir=dir, tgtd=t, esx=esx, site=site)
