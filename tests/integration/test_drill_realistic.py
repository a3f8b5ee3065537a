"""A drill and a planned failover at a real host's pace (issue 13).

Both lab hosts run esxsim's ``realistic`` profile (tests/esxsim/main.go ``Profiles``): a guest's
heartbeat turns green 45 s after power-on, as VMware Tools report once the guest has booted on
real hardware, and RescanAllHba / RescanHba hold their synchronous call 35 s, as a real rescan
lasts until discovery, logins and the LUN scan are over. Both are longer than the 30 s an
ordinary call may go unanswered (esxdr's socket timeout), so the run passes only if

- every wait long-polls WaitForUpdatesEx below the socket timeout and loops up to its own
  deadline (it used to ask for up to 60 s and die at 30 s with VsphereUnreachable);
- rescans get their own, long socket timeout;
- the steps' deadlines are sized for minutes, not seconds (verify-storage, heartbeats).

The evidence is read from the run reports (each power step lasted at least the heartbeat delay,
each rescan step at least the rescan delay, RescanHba on the software adapter and no lazy
``Fetch``) and from the hosts themselves (one property read each).

Slow by design: about 10 minutes for the module (lab, host apply, a drill with three power
waves, its cleanup, a planned failover with three more).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(2400)]

pytest_plugins = ["drill_fixtures"]

HEARTBEAT_S = 45  # the realistic profile's, checked in the esxsim logs below
RESCAN_S = 35
RUN_TIMEOUT_S = 1500  # one esxdr command at this pace (three power waves of 45 s and more)


@pytest.fixture(scope="module")
def realistic_lab():
    """The drill lab (as drill_fixtures.make_drill_lab builds it), with both esxsims realistic."""
    from drill_fixtures import DrillLab

    from esxdr.lab import Lab, LabConfig

    tag = f"r{os.getpid() % 100000}"
    # sshd StrictModes refuses keys below a world-writable directory such as /var/tmp.
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", account=f"esxdr-{tag}", luns=2,
                        lun_size=48 << 20, pool_size=1 << 30, with_tgt=True, with_esxsim=True,
                        esxsim_profile="realistic"))
    try:
        lab.up()
        dl = DrillLab(lab)
        for host in ("esx-prod", "esx-dr"):
            log = (Path(d) / f"esxsim-{host}.log").read_text()
            assert (f"timing (profile realistic): guest heartbeat {HEARTBEAT_S}s after power-on, "
                    f"rescans held {RESCAN_S}s") in log, host
        dl.ok("host", "apply", "esx-dr", timeout=RUN_TIMEOUT_S)  # its RescanAllHba is held 35 s too
        dl.ok("replicate", "core", timeout=RUN_TIMEOUT_S)
        yield dl
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def last_report(dl, kind: str) -> dict:
    items = [i for i in json.loads(dl.ok("report", "list", "--json").stdout) if i["kind"] == kind]
    return json.loads(Path(items[0]["json"]).read_text())


def lasted(step: dict) -> float:
    return step["end"] - step["start"]


def check_pace(rep: dict) -> None:
    """The run waited through every slow thing without a socket timeout, at the realistic pace."""
    assert rep["outcome"] == "ok", rep.get("error")
    powers = [s for s in rep["steps"] if s["kind"] == "power"]
    assert len(powers) == 3  # priorities 1, 2, 3 of the seeded VMs: one wave each
    for s in powers:
        # Power-on, then 45 s without a single change on the watched properties: longer than the
        # 30 s socket timeout, so only a long poll below it, asked again, gets through.
        assert lasted(s) >= HEARTBEAT_S - 1, (s["id"], lasted(s))
    rescans = [s for s in rep["steps"] if s["kind"] == "rescan"]
    assert rescans and all(lasted(s) >= RESCAN_S - 1 for s in rescans), [(s["id"], lasted(s)) for s in rescans]
    by_method = rep["requests_by_method"]
    assert by_method.get("RescanHba", 0) >= 1 and "RescanAllHba" not in by_method, by_method
    assert not [m for m in by_method if m.startswith("Fetch")], by_method  # no lazy attribute reads
    # Each wave: the first answer at once, two empty long polls (20 s each) while the guests boot,
    # then the change at 45 s. Only a wait that asks again after an empty answer gets that far.
    assert by_method["WaitForUpdatesEx"] >= 4 * len(powers), by_method
    assert all(v["heartbeat_after_s"] is not None for v in rep["vms"])


def dr_host(dl, endpoint: str = "esx-dr"):
    from esxdr.site import load_site
    from esxdr.vsphere import inventory
    from esxdr.vsphere.session import connect

    with connect(load_site(dl.site).endpoint(endpoint)) as s:
        return inventory.read_host(s, endpoint)


def bios_uuids(dl, endpoint: str) -> dict[str, str]:
    """VM name -> BIOS UUID (config.uuid), in one RetrievePropertiesEx."""
    from pyVmomi import vim, vmodl

    from esxdr.site import load_site
    from esxdr.vsphere.inventory import retrieve
    from esxdr.vsphere.session import connect

    pc = vmodl.query.PropertyCollector
    with connect(load_site(dl.site).endpoint(endpoint)) as s:
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=s.container_view("VirtualMachine"), skip=True, selectSet=[
                pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view", skip=False)])],
            propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["name", "config.uuid"])])
        return {p["name"]: p["config.uuid"] for p in
                ({x.name: x.val for x in oc.propSet} for oc in retrieve(s, spec))}


def test_drill_at_a_real_hosts_pace(realistic_lab):
    dl = realistic_lab
    before = dr_host(dl)
    assert not before.vms

    r = dl.ok("test", "start", "core", timeout=RUN_TIMEOUT_S)
    assert "RTO" in r.stdout
    rep = last_report(dl, "test-start")
    check_pace(rep)
    h = dr_host(dl)
    assert {n for n in h.vms} == {v["name"] for v in dl.seed["vms"]}
    assert all((v.power_state, v.heartbeat) == ("poweredOn", "green") for v in h.vms.values())
    for d in rep["datastores"]:
        seeded = dl.seed["datastores"][d["name"]]
        assert d["uuid_unchanged"] and d["vmfs_uuid"] == seeded["uuid"]

    dl.ok("test", "cleanup", "core", timeout=RUN_TIMEOUT_S)  # powers off, unregisters, rescans (35 s)
    after = dr_host(dl)
    assert not after.vms
    assert sorted(after.luns) == sorted(before.luns)
    assert sorted(after.datastores) == sorted(before.datastores)


def test_planned_failover_at_a_real_hosts_pace(realistic_lab):
    from esxdr.site import load_site
    from esxdr.vsphere import inventory
    from esxdr.vsphere import vms as vv
    from esxdr.vsphere.session import connect

    dl = realistic_lab
    # Production running as on any working day, its guests up: 45 s from power-on here too.
    with connect(load_site(dl.site).endpoint("esx-prod")) as s:
        h = inventory.read_host(s, "esx-prod")
        refs = [s.ref("VirtualMachine", v.moid) for v in h.vms.values()]
        vv.power_on(s, [r for r, v in zip(refs, h.vms.values(), strict=True) if v.power_state != "poweredOn"])
        vv.wait_heartbeats(s, refs, timeout=4 * HEARTBEAT_S)
    prod_uuids = bios_uuids(dl, "esx-prod")

    r = dl.ok("failover", "core", "--planned", timeout=RUN_TIMEOUT_S)
    assert "RTO" in r.stdout
    rep = last_report(dl, "failover")
    assert rep["mode"] == "planned"
    check_pace(rep)
    shutdown = next(s for s in rep["steps"] if s["kind"] == "shutdown")
    assert all("powered off" not in e for e in shutdown["evidence"]), shutdown  # shut down, not pulled
    h = dr_host(dl)
    assert set(h.vms) == set(prod_uuids)
    assert all((v.power_state, v.heartbeat) == ("poweredOn", "green") for v in h.vms.values())
    assert bios_uuids(dl, "esx-dr") == prod_uuids  # I moved it: the production BIOS UUIDs
    assert all(v.power_state == "poweredOff" for v in dr_host(dl, "esx-prod").vms.values())
