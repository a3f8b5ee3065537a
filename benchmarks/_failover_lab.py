"""The failover benchmark's lab: the embedded lab (zfs-fuse, sshd, both tgtds, esx-prod seeded) with
its DR side replaced by esxsim's vCenter mode (one DRS cluster of DR hosts, each logging in to the
lab's real DR tgtd with its own initiator), as tests/integration/drill_fixtures.use_vcenter wires it.

Unique pool, account and directory names per lab; `FailoverLab.down()` removes everything.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")
LUN_SIZE = 48 << 20  # sparse: the VMFS headers and the VMs' small files are all that is written
VC_NAME = "vc-dr"


class LabFailed(RuntimeError):
    """The lab could not be built: the benchmark reports this, it measures nothing."""


def esxdr(site: str, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    r = subprocess.run([ESXDR, "--site", site, *args], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise LabFailed(f"esxdr {' '.join(args)} failed ({r.returncode}): {(r.stderr or r.stdout).strip()[-1500:]}")
    return r


@dataclass
class FailoverLab:
    """One lab: ``datastores`` LUNs with ``vms`` VMs on esx-prod, replicated once, and a vCenter
    (realistic timing) whose ``hosts`` are prepared with `esxdr host apply`."""

    vms: int
    datastores: int
    hosts: list[str]
    tag: str
    profile: str = "realistic"
    esxsim_binary: str | None = None  # another esxsim build for the DR vCenter (A/B of esxsim itself)
    say: Callable[[str], None] = lambda s: None
    dir: str = ""
    lab: Any = None
    vc: Any = None
    seed: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # what building it took (setup, not measured work)

    @property
    def site(self) -> str:
        return str(self.lab.site_path)

    def up(self) -> FailoverLab:
        from esxdr.lab import Lab, LabConfig, seed

        if self.vms % self.datastores:
            raise LabFailed(f"{self.vms} VMs do not spread evenly over {self.datastores} datastores")
        # seed.py puts VMS_PER_DATASTORE VMs on each datastore, priority 1 + (datastore + index) % 3
        seed.VMS_PER_DATASTORE = self.vms // self.datastores
        # sshd StrictModes refuses keys below a world-writable directory such as /var/tmp.
        self.dir = tempfile.mkdtemp(prefix=f"esxdr-{self.tag}-", dir="/var/lib")
        os.chmod(self.dir, 0o755)
        # Pool: LUN files are sparse, but each holds a VMFS image and its VMs' files on both sides.
        self.lab = Lab(LabConfig(dir=self.dir, prod_pool=f"{self.tag}sp", dr_pool=f"{self.tag}rp",
                                 account=f"esxdr-{self.tag}", luns=self.datastores, lun_size=LUN_SIZE,
                                 pool_size=2 << 30, esxsim_profile="lab"))
        t0 = time.monotonic()
        self.lab.up()
        self.seed = self.lab.state().get("seed", {})
        if len(self.seed.get("vms", [])) != self.vms:
            raise LabFailed(f"esx-prod was seeded with {len(self.seed.get('vms', []))} VMs, not {self.vms}")
        self.timings["lab up (pools, sshd, tgtds, esx-prod seeded)"] = time.monotonic() - t0
        t0 = time.monotonic()
        self._vcenter()
        esxdr(self.site, "host", "apply", VC_NAME)
        self.timings[f"vCenter of {len(self.hosts)} hosts started, host apply"] = time.monotonic() - t0
        t0 = time.monotonic()
        esxdr(self.site, "replicate", "core")
        self.timings["first replication"] = time.monotonic() - t0
        t0 = time.monotonic()
        n = self._record_vmx_paths()
        if n != self.vms:
            raise LabFailed(f"esxdr plan discover found the .vmx of {n} VMs, not {self.vms}")
        self.timings["plan discover (vms.*.vmx)"] = time.monotonic() - t0
        return self

    def _vcenter(self) -> None:
        """esxsim in vCenter mode at 127.0.0.2, and the site's group failing over to it."""
        from esxdr.lab import esxsim
        from esxdr.lab.tgtd import free_port

        data = Path(self.dir) / "esxsim-vc-dr"
        data.mkdir(exist_ok=True)
        self.vc = esxsim.start(VC_NAME, "127.0.0.2", free_port("127.0.0.2"), str(data), password="esxsim",
                               log_path=str(Path(self.dir) / "esxsim-vc-dr.log"), vcenter_hosts=self.hosts, drs=True,
                               profile=self.profile, binary=self.esxsim_binary)
        p = Path(self.site)
        text = p.read_text()
        pw = re.search(r"password_file: (\S+)", text)
        if pw is None:
            raise LabFailed("the lab's site file names no esxsim password file")
        endpoint = (f"  {VC_NAME}:\n    role: dr\n    kind: vcenter\n    url: {self.vc.url}\n"
                    f"    user: {self.vc.username}\n    password_file: {pw.group(1)}\n"
                    f"    hosts: [{', '.join(self.hosts)}]\n")
        text = text.replace("vsphere:\n", "vsphere:\n" + endpoint, 1)
        # esx-dr's DR network once per cluster host, each with an iSCSI vmk address of its own
        m = re.search(r"^  esx-dr:\n((?:    .*\n)+)", text[text.index("dr_network:"):], re.M)
        if m is None:
            raise LabFailed("no dr_network for esx-dr in the lab's site file")
        extra = "".join(f"  {h}:\n" + m.group(1).replace("127.0.0.12/8", f"127.0.0.{51 + i}/8")
                        for i, h in enumerate(self.hosts))
        text = text.replace("dr_network:\n", "dr_network:\n" + extra, 1)
        if "    vsphere_dr: esx-dr\n" not in text:
            raise LabFailed("the lab's group does not name vsphere_dr: esx-dr")
        p.write_text(text.replace("    vsphere_dr: esx-dr\n", f"    vsphere_dr: {VC_NAME}\n"))
        esxdr(self.site, "site", "validate")

    def _record_vmx_paths(self) -> int:
        """What an admin does once: `esxdr plan discover` and keep each VM's .vmx path in the site
        file (vms.NAME.vmx), so a failover registers the VMs without searching the datastores."""
        found = json.loads(esxdr(self.site, "--json", "plan", "discover", "core").stdout)["vms"]
        p = Path(self.site)
        out, n = [], 0
        for line in p.read_text().splitlines(keepends=True):
            out.append(line)
            name = line.strip().rstrip(":")
            if line.startswith("      ") and not line.startswith("       ") and line.rstrip().endswith(":") \
                    and name in found and found[name].get("vmx"):
                out.append(f'        vmx: {json.dumps(found[name]["vmx"])}\n')
                n += 1
        p.write_text("".join(out))
        esxdr(self.site, "site", "validate")
        return n

    def vmx_paths(self) -> dict[str, str]:
        from esxdr.site import load_site

        return {v.name: v.vmx for v in load_site(self.site).group("core").vms if v.vmx}

    def priorities(self) -> dict[str, int]:
        return {v["name"]: int(v["priority"]) for v in self.seed["vms"]}

    def kill_production_target(self) -> None:
        """The bad day: production's tgtd dies (SIGKILL, as a power cut would)."""
        from esxdr.util import pid_running

        pid = self.lab.state()["tgtd"]["production"]["pid"]
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not pid_running(pid):
                return
            time.sleep(0.05)

    def production_uuids(self) -> dict[str, str]:
        """VM name -> BIOS UUID on esx-prod (what "I moved it" keeps), one property read."""
        from pyVmomi import vim, vmodl

        from esxdr.site import load_site
        from esxdr.vsphere.inventory import retrieve
        from esxdr.vsphere.session import connect

        PC = vmodl.query.PropertyCollector
        with connect(load_site(self.site).endpoint("esx-prod")) as s:
            to_vms = PC.TraversalSpec(name="view-vms", type=vim.view.ContainerView, path="view", skip=False)
            spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=s.container_view("VirtualMachine"), skip=True,
                                                          selectSet=[to_vms])],
                                 propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=["name", "config.uuid"])])
            return {str(p["name"]): str(p["config.uuid"]) for p in
                    ({q.name: q.val for q in oc.propSet} for oc in retrieve(s, spec))}

    def down(self) -> None:
        if self.vc is not None:
            self.vc.stop()
            self.vc = None
        if self.lab is not None:
            self.lab.down()
        if self.dir:
            shutil.rmtree(self.dir, ignore_errors=True)
