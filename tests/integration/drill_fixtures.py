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
        self.dr_site = str(lab.dr_site_path)  # the DR box's view (pull mode)
        st = lab.state()
        self.dr_pool = st["pools"]["dr"]
        self.prod_pool = st["pools"]["production"]
        self.seed = st.get("seed", {})
        self.vc = None  # esxsim in vCenter mode, when the DR side is a cluster (use_vcenter)

    def esxdr(self, *args: str, env: dict | None = None, timeout: float = 120,
              site: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([ESXDR, "--site", site or self.site, *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

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

        from esxdr.util import pid_running

        pid = self.lab.state()["tgtd"]["production"]["pid"]
        os.kill(pid, signal.SIGKILL)
        pid_running(pid)  # reap it

    def use_test_network(self, name: str) -> None:
        """Map the VMs' production port group to a test port group the DR host does not have yet."""
        p = Path(self.site)
        text = p.read_text().replace("test: Prod-LAN}", f"test: {name}}}")
        anchor = "      Prod-LAN: {vswitch: vSwitch1, vlan: 310, isolated: true}\n"
        assert anchor in text
        p.write_text(text.replace(anchor, anchor + f"      {name}: {{vswitch: vSwitch1, vlan: 311, isolated: true}}\n"))


VCENTER_HOSTS = ["esx-a", "esx-b"]


def keep_lab_logs(lab_dir: str) -> None:
    """A flake's evidence (esxsim, tgtd and serve logs) outlives the lab (scripts/soak sets
    ESXDR_KEEP_LAB_LOGS)."""
    keep = os.environ.get("ESXDR_KEEP_LAB_LOGS")
    if keep:
        into = Path(keep) / Path(lab_dir).name
        into.mkdir(parents=True, exist_ok=True)
        for f in Path(lab_dir).glob("*.log"):
            shutil.copy(f, into)


def make_drill_lab(tag: str, *, vcenter: bool = False, drs: bool = True, replicate: bool = True):  # a generator
    """The drill lab; with ``vcenter`` the DR side is esxsim's vCenter mode (a cluster of
    esx-a and esx-b, DRS on or off) instead of the standalone esx-dr: the group's
    ``vsphere_dr`` then names a ``kind: vcenter`` endpoint, and both hosts are prepared
    (`esxdr host apply vc-dr`) with the dr_network of esx-dr, each with its own vmk address."""
    # sshd StrictModes refuses keys below a world-writable directory such as /var/tmp.
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", account=f"esxdr-{tag}", luns=2,
                        lun_size=48 << 20, pool_size=1 << 30, with_tgt=True, with_esxsim=True))
    dl = None
    try:
        lab.up()
        dl = DrillLab(lab)
        if vcenter:
            use_vcenter(dl, drs=drs)
            dl.ok("host", "apply", "vc-dr")
        else:
            dl.ok("host", "apply", "esx-dr")
        if replicate:
            dl.ok("replicate", "core")
        yield dl
    finally:
        if dl is not None and dl.vc is not None:
            dl.vc.stop()
        keep_lab_logs(d)
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def use_vcenter(dl: DrillLab, *, drs: bool):  # EsxsimProcess
    """Start esxsim in vCenter mode beside the lab and point the group's vsphere_dr at it. Called
    again (another DRS setting), it replaces the running one: a fresh vCenter, hosts unprepared."""
    import re

    from esxdr.lab import esxsim
    from esxdr.lab.tgtd import free_port

    if dl.vc is not None:
        dl.vc.stop()
        dl.vc = None
    lab_dir = Path(dl.lab.cfg.dir)
    data = lab_dir / "esxsim-vc-dr"
    data.mkdir(exist_ok=True)
    vc = dl.vc = esxsim.start("vc-dr", "127.0.0.2", free_port("127.0.0.2"), str(data), password="esxsim",
                              log_path=str(lab_dir / "esxsim-vc-dr.log"), vcenter_hosts=VCENTER_HOSTS, drs=drs)
    p = Path(dl.site)
    text = p.read_text()
    if "  vc-dr:\n" in text:
        p.write_text(re.sub(r"(  vc-dr:\n(?:    .*\n)*?    url: )\S+", lambda m: m.group(1) + vc.url, text))
        return vc
    pw = re.search(r"password_file: (\S+)", text).group(1)  # type: ignore[union-attr]
    endpoint = (f"  vc-dr:\n    role: dr\n    kind: vcenter\n    url: {vc.url}\n    user: {vc.username}\n"
                f"    password_file: {pw}\n    hosts: [{', '.join(VCENTER_HOSTS)}]\n")
    text = text.replace("vsphere:\n", "vsphere:\n" + endpoint, 1)
    # The DR network of esx-dr, once per cluster host (its own iSCSI vmk address).
    m = re.search(r"^  esx-dr:\n((?:    .*\n)+)", text[text.index("dr_network:"):], re.M)
    assert m, "no dr_network for esx-dr in the lab's site file"
    block = m.group(1)
    extra = "".join(f"  {h}:\n" + block.replace("127.0.0.12/8", f"127.0.0.{41 + i}/8")
                    for i, h in enumerate(VCENTER_HOSTS))
    text = text.replace("dr_network:\n", "dr_network:\n" + extra, 1)
    assert "    vsphere_dr: esx-dr\n" in text
    p.write_text(text.replace("    vsphere_dr: esx-dr\n", "    vsphere_dr: vc-dr\n"))
    dl.ok("site", "validate")
    return vc


@pytest.fixture(scope="module")
def drill_lab():
    yield from make_drill_lab(f"d{os.getpid() % 100000}")


def all_vms(dl: DrillLab, endpoint: str) -> list[tuple[str, str]]:
    """Every VM registered on a lab host as (name, .vmx path), duplicates included (a dict by name hides them)."""
    from pyVmomi import vim

    from esxdr.site import load_site
    from esxdr.vsphere.session import connect

    with connect(load_site(dl.site).endpoint(endpoint)) as s:
        view = s.content.viewManager.CreateContainerView(s.content.rootFolder, [vim.VirtualMachine], True)
        return sorted((vm.name, vm.config.files.vmPathName) for vm in view.view)


def cluster(dl) -> dict:
    """Every host of the cluster as a drill may change it, comparable before/after (one read)."""
    from esxdr.site import load_site
    from esxdr.vsphere import inventory
    from esxdr.vsphere.session import connect

    site = load_site(dl.site)
    ep = site.endpoint("vc-dr")
    with connect(ep) as s:
        hosts = inventory.read_named_hosts(s, list(ep.hosts))
    return {n: {"port_groups": {p: (x.vswitch, x.vlan) for p, x in h.port_groups.items()},
                "vswitches": {v: x.uplinks for v, x in h.vswitches.items()},
                "datastores": {d: (x.vmfs_uuid, x.extents) for d, x in h.datastores.items()},
                "vms": {v: (x.vmx_path, x.power_state, x.heartbeat) for v, x in h.vms.items()},
                "luns": sorted(h.luns)} for n, h in hosts.items()}


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
               after_each=None) -> list[str]:  # Callable[[str], None]
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
