"""A whole lab of its own for the drill tests: pools, sshd, both tgtds, both esxsims, seeded production.

Unique pool, account and lab-dir names per run, so a developer's own `esxdr lab up`
(and other test sessions) are untouched. The DR host is prepared with `esxdr host apply`
and the group replicated once, as an admin would before the first drill.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from esxdr.lab import Lab, LabConfig

ESXDR = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "esxdr")


class DrillLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.site = str(lab.site_path)
        st = lab.state()
        self.dr_pool = st["pools"]["dr"]
        self.prod_pool = st["pools"]["production"]
        self.seed = st.get("seed", {})

    def esxdr(self, *args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([ESXDR, "--site", self.site, *args], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **(env or {})})

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        r = self.esxdr(*args, **kw)
        assert r.returncode == 0, f"esxdr {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r

    def vms(self, endpoint: str) -> dict[str, tuple[str, str, str]]:
        """VM name -> (power state, guest heartbeat, BIOS UUID) on one lab host (esx-prod or esx-dr)."""
        from esxdr.site import load_site
        from esxdr.vsphere import inventory
        from esxdr.vsphere.session import connect

        with connect(load_site(self.site).endpoint(endpoint)) as s:
            h = inventory.read_host(s, endpoint)
            return {n: (v.power_state, v.heartbeat, s.ref("VirtualMachine", v.moid).config.uuid)
                    for n, v in h.vms.items()}

    def power_on_production(self) -> None:
        """Production running as on any working day: every seeded VM on, its guest up."""
        from esxdr.site import load_site
        from esxdr.vsphere import inventory
        from esxdr.vsphere import vms as vv
        from esxdr.vsphere.session import connect

        with connect(load_site(self.site).endpoint("esx-prod")) as s:
            h = inventory.read_host(s, "esx-prod")
            vv.power_on(s, [s.ref("VirtualMachine", v.moid) for v in h.vms.values() if v.power_state != "poweredOn"])
            vv.wait_heartbeats(s, [s.ref("VirtualMachine", v.moid) for v in h.vms.values()], timeout=30)

    def kill_production_target(self) -> None:
        """The bad day: production's tgtd dies (SIGKILL, as a power cut would)."""
        import signal

        from esxdr.lab.tgtd import _pid_running

        pid = self.lab.state()["tgtd"]["production"]["pid"]
        os.kill(pid, signal.SIGKILL)
        _pid_running(pid)  # reap it

    def use_test_network(self, name: str) -> None:
        """Map the VMs' production port group to a test port group the DR host does not have yet."""
        p = Path(self.site)
        text = p.read_text().replace("test: Prod-LAN}", f"test: {name}}}")
        anchor = "      Prod-LAN: {vswitch: vSwitch1, vlan: 310, isolated: true}\n"
        assert anchor in text
        p.write_text(text.replace(anchor, anchor + f"      {name}: {{vswitch: vSwitch1, vlan: 311, isolated: true}}\n"))


@pytest.fixture(scope="module")
def drill_lab():
    tag = f"d{os.getpid() % 100000}"
    # sshd StrictModes refuses keys below a world-writable directory such as /var/tmp.
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", account=f"esxdr-{tag}", luns=2,
                        lun_size=48 << 20, pool_size=1 << 30, with_tgt=True, with_esxsim=True))
    try:
        lab.up()
        dl = DrillLab(lab)
        dl.ok("host", "apply", "esx-dr")
        dl.ok("replicate", "core")
        yield dl
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def all_vms(dl: DrillLab, endpoint: str) -> list[tuple[str, str]]:
    """Every VM registered on a lab host as (name, .vmx path), duplicates included (a dict by name hides them)."""
    from pyVmomi import vim

    from esxdr.site import load_site
    from esxdr.vsphere.session import connect

    with connect(load_site(dl.site).endpoint(endpoint)) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        return sorted((vm.name, vm.config.files.vmPathName) for vm in view.view)


def set_callouts(dl: DrillLab, block: str | None) -> None:
    """Put `callouts:` (YAML, indented for the group) into protection_groups.core, or take it out."""
    p = Path(dl.site)
    text = p.read_text()
    start = text.find("    callouts:\n")
    if start >= 0:
        end = text.find("\n    vms:\n", start)
        text = text[:start] + text[end + 1:]
    if block:
        anchor = "    vms:\n"
        assert anchor in text
        text = text.replace(anchor, "    callouts:\n" + block + anchor, 1)
    p.write_text(text)
    dl.ok("site", "validate")


def kill_chain(dl: DrillLab, command: tuple[str, ...], prefix: str, mid: tuple[str, ...],
               after_each=None) -> list[str]:  # noqa: ANN001 - Callable[[str], None]
    """SIGKILL `esxdr COMMAND` at every step of its runbook, one run per step: after each step
    (by id, from --dry-run), and inside the steps that have a mid-step crash point (``mid``
    kinds: the kill lands after their calls were issued, before they were awaited or recorded).
    Each run resumes the journal of the one before, so the chain walks the whole runbook;
    the caller then runs the command once more and checks the final state."""
    import json

    steps = [s["id"] for s in json.loads(dl.ok(*command, "--dry-run", "--json").stdout)["runbook"]["steps"]]
    points = []
    for sid in steps:
        kind = sid.split(":", 1)[0]
        if kind in mid:
            points.append(f"{prefix}-mid-{kind}")
        points.append(f"{prefix}-after-{sid}")
    for p in points:
        r = dl.esxdr(*command, env={"ESXDR_FAULT_KILL": p})
        assert r.returncode == -9, f"{p}: not killed (rc {r.returncode}):\n{r.stdout}\n{r.stderr}"
        if after_each is not None:
            after_each(p)
    return points
