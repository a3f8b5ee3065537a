"""SOAP requests and wall time of the vSphere adapter vs a naive pyVmomi loop, on esxsim + real tgtd.

Scenarios (each measured for esxdr and for a naive implementation in the same run, on identical
fresh labs: one lab drives esxdr, a twin lab drives the naive loop):

1. bootstrap of one host from empty: vSwitch, 3 VLAN port groups, VMkernel NIC, software iSCSI,
   binding, send target, rescans (target <= 30 requests, session included)
2. no-op re-run of the same (target <= 8)
3. verify-storage with N LUNs and N datastores (target <= 10, independent of the LUN count)
4. bootstrap 2 hosts through vCenter (esxsim -vcenter, cluster of 2): one property read for
   both hosts, the hosts applied in parallel (target <= 40); then the no-op re-run (target <= 8)
   and verify-storage on both hosts (target <= 10)

The naive baseline is what a typical pyVmomi script does: lazy attribute reads (each one a
Fetch or a RetrieveProperties), each object read once (a datastore's info and summary once, a
host's storage device info once with all its LUNs), no needless repetition. Both sides' results
are verified, outside the timing, on a session of its own:
- bootstrap and no-op: the host's configuration is read back (vSwitch uplinks, MTU and teaming,
  port group VLANs and teaming, VMkernel NIC address and MTU, software iSCSI on, the binding, the
  send target, every LUN of the lab seen) and compared with what the site file asks;
- verify-storage: each side's datastore <-> NAA <-> VMFS UUID mapping must equal the lab's.
A side that fails or does not verify is reported as "failed: <message>", never as a count.

Requests are counted by esxdr's CountingStub (every SOAP call, property reads included) and
include RetrieveServiceContent, Login and Logout. Needs root (tgtd). Run (about 5 s once esxsim is built):
    .venv/bin/python benchmarks/vsphere.py [--luns 16] [--append]
Prints the table; --append also appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from _record import first_line as _sh  # noqa: E402
from _record import header  # noqa: E402
from vsphere_fixtures import start_lab  # noqa: E402

from esxdr.lab import esxsim  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"


# --------------------------------------------------------------------------- the record's header
def deb_version(package: str) -> str:
    return _sh(["dpkg-query", "-W", "-f", "${Version}", package]) or "not installed"


# --------------------------------------------------------------------------- one measured run
@dataclass
class Run:
    requests: int = 0
    seconds: float = 0.0
    by_method: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the run raised: its message
    value: Any = None  # what fn returned (verify-storage: the mapping it found)
    problems: list[str] = field(default_factory=list)  # what the verification found wrong

    @property
    def failure(self) -> str | None:
        if self.error:
            return self.error
        if self.problems:
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"not verified: {self.problems[0]}{more}"
        return None


def message(e: BaseException) -> str:
    from esxdr.errors import EsxdrError
    from esxdr.vsphere.session import fault_message

    if isinstance(e, EsxdrError):
        return e.message
    text = fault_message(e) if hasattr(e, "msg") or hasattr(e, "faultMessage") else str(e)
    return f"{type(e).__name__}: {text}".replace("\n", " ")[:200]


def measure(connect: Callable[[], Any], fn: Callable[[Any], Any]) -> Run:
    """Session included (RetrieveServiceContent, Login, ..., Logout), as a CLI run pays it."""
    run = Run()
    t0 = time.perf_counter()
    s = None
    try:
        s = connect()
        run.value = fn(s)
    except Exception as e:  # noqa: BLE001 - a failing side is a result of the benchmark, not a crash
        run.error = message(e)
    finally:
        if s is not None:
            s.close()
            run.requests, run.by_method = s.requests, s.by_method()
    run.seconds = time.perf_counter() - t0
    return run


# --------------------------------------------------------------------------- naive pyVmomi
def naive_hosts(s: Any) -> dict[str, Any]:
    """The hosts by name, as a script walks the inventory: datacenter → host folder → hosts."""
    hosts = {}
    for dc in s.content.rootFolder.childEntity:
        for cr in dc.hostFolder.childEntity:
            for h in cr.host:
                hosts[h.name] = h
    return hosts


def naive_bootstrap(host: Any, desired: Any) -> None:
    """Read the network and the storage adapter once each, add what is missing, rescan if changed."""
    from pyVmomi import vim

    from esxdr.plan.host import split_ip

    cm = host.configManager
    ns = cm.networkSystem
    net = ns.networkInfo
    for name, vs in desired.vswitches.items():
        if not any(v.name == name for v in net.vswitch):
            ns.AddVirtualSwitch(name, vim.host.VirtualSwitch.Specification(
                numPorts=vs.ports, mtu=vs.mtu, bridge=vim.host.VirtualSwitch.BondBridge(nicDevice=list(vs.uplinks)),
                policy=vim.host.NetworkPolicy(nicTeaming=vim.host.NetworkPolicy.NicTeamingPolicy(
                    nicOrder=vim.host.NetworkPolicy.NicOrderPolicy(activeNic=list(vs.active),
                                                                   standbyNic=list(vs.standby))))))
    for name, pg in desired.port_groups.items():
        if not any(p.spec.name == name for p in net.portgroup):
            policy = vim.host.NetworkPolicy()
            if pg.active_uplinks is not None:
                policy.nicTeaming = vim.host.NetworkPolicy.NicTeamingPolicy(nicOrder=vim.host.NetworkPolicy.NicOrderPolicy(
                    activeNic=list(pg.active_uplinks), standbyNic=list(pg.standby_uplinks or ())))
            ns.AddPortGroup(vim.host.PortGroup.Specification(name=name, vlanId=pg.vlan, vswitchName=pg.vswitch,
                                                             policy=policy))
    devices = {}
    for name, nic in desired.vmkernel.items():
        found = [v for v in net.vnic if v.portgroup == nic.port_group]
        if found:
            devices[name] = found[0].device
        else:
            ip, mask, _ = split_ip(nic.ip)
            devices[name] = ns.AddVirtualNic(nic.port_group, vim.host.VirtualNic.Specification(
                ip=vim.host.IpConfig(dhcp=False, ipAddress=ip, subnetMask=mask), mtu=nic.mtu))
    if desired.iscsi is None:
        return
    ss = cm.storageSystem
    sdi = ss.storageDeviceInfo
    if not sdi.softwareInternetScsiEnabled:
        ss.UpdateSoftwareInternetScsiEnabled(True)
        sdi = ss.storageDeviceInfo  # the software adapter appears only now
    hba = next(a for a in sdi.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba))
    im = cm.iscsiManager
    bound = {p.vnicDevice for p in im.QueryBoundVnics(hba.device)}
    for vmk in desired.iscsi.bind:
        if devices[vmk] not in bound:
            im.BindVnic(hba.device, devices[vmk])
    have = {(t.address, t.port) for t in hba.configuredSendTarget}
    add = [vim.host.InternetScsiHba.SendTarget(address=p.address, port=p.port)
           for p in desired.iscsi.send_targets if (p.address, p.port) not in have]
    if add:
        ss.AddInternetScsiSendTargets(hba.device, add)
        ss.RescanAllHba()
        ss.RescanVmfs()


def naive_storage(host: Any, datastores: dict[str, tuple[Any, Any]]) -> tuple[set[str], dict[str, tuple]]:
    """(the disks the host sees, {disk: (datastore, VMFS UUID, accessible)}): the host's storage
    device info once (all its LUNs), each datastore's info and summary once (``datastores``
    caches them by moid, so a datastore shared by two hosts of a vCenter is read once)."""
    from pyVmomi import vim

    sdi = host.configManager.storageSystem.storageDeviceInfo
    seen = {lun.canonicalName for lun in sdi.scsiLun if isinstance(lun, vim.host.ScsiDisk)}
    on_disk: dict[str, tuple] = {}
    for ds in host.datastore:
        if ds._moId not in datastores:
            datastores[ds._moId] = (ds.info, ds.summary)
        info, summary = datastores[ds._moId]
        if isinstance(info, vim.host.VmfsDatastoreInfo):
            for extent in info.vmfs.extent:
                on_disk[extent.diskName] = (info.name, info.vmfs.uuid, summary.accessible)
    return seen, on_disk


def naive_verify(hosts: dict[str, Any], expected: list[Any]) -> dict[str, dict[str, tuple[str, str]]]:
    """Per host, {naa: (datastore, VMFS UUID)} of the expected LUNs it sees mounted and accessible."""
    datastores: dict[str, tuple[Any, Any]] = {}
    out = {}
    for name, host in hosts.items():
        seen, on_disk = naive_storage(host, datastores)
        found = {}
        for exp in expected:
            ds = on_disk.get(exp.canonical)
            if exp.canonical in seen and ds is not None and ds[2]:
                found[exp.naa] = (ds[0], ds[1])
        out[name] = found
    return out


# --------------------------------------------------------------------------- verification
def read_back(s: Any, desired: Any, naas: list[str]) -> list[str]:
    """What differs between the host's configuration, read back, and the site file's ``desired``."""
    from pyVmomi import vim

    from esxdr.plan.host import split_ip

    host = naive_hosts(s)[desired.host]
    cm = host.configManager
    net = cm.networkSystem.networkInfo
    bad = []
    vswitches = {v.name: v for v in net.vswitch}
    for name, want in desired.vswitches.items():
        v = vswitches.get(name)
        if v is None:
            bad.append(f"vSwitch {name} missing")
            continue
        uplinks = tuple(v.spec.bridge.nicDevice) if v.spec.bridge else ()
        order = v.spec.policy.nicTeaming.nicOrder if v.spec.policy and v.spec.policy.nicTeaming else None
        got = (set(uplinks), v.mtu, tuple(order.activeNic or ()) if order else (),
               tuple(order.standbyNic or ()) if order else ())
        if got != (set(want.uplinks), want.mtu, tuple(want.active), tuple(want.standby)):
            bad.append(f"vSwitch {name}: uplinks/mtu/active/standby {got}, asked {want}")
    groups = {p.spec.name: p.spec for p in net.portgroup}
    for name, want in desired.port_groups.items():
        pg = groups.get(name)
        if pg is None:
            bad.append(f"port group {name} missing")
            continue
        if (pg.vswitchName, pg.vlanId) != (want.vswitch, want.vlan):
            bad.append(f"port group {name}: on {pg.vswitchName} VLAN {pg.vlanId}, asked {want.vswitch} VLAN {want.vlan}")
        if want.active_uplinks is not None:
            order = pg.policy.nicTeaming.nicOrder if pg.policy and pg.policy.nicTeaming else None
            active = tuple(order.activeNic or ()) if order else ()
            standby = tuple(order.standbyNic or ()) if order else ()
            if (active, standby) != (tuple(want.active_uplinks), tuple(want.standby_uplinks or ())):
                bad.append(f"port group {name}: teaming {active}/{standby}, asked "
                           f"{want.active_uplinks}/{want.standby_uplinks}")
    devices = {}
    for name, want in desired.vmkernel.items():
        nic = next((v for v in net.vnic if v.portgroup == want.port_group), None)
        if nic is None:
            bad.append(f"VMkernel NIC {name} on {want.port_group} missing")
            continue
        devices[name] = nic.device
        ip, mask, _ = split_ip(want.ip)
        got = (nic.spec.ip.ipAddress, nic.spec.ip.subnetMask, nic.spec.mtu)
        if got != (ip, mask, want.mtu):
            bad.append(f"VMkernel NIC {nic.device}: {got}, asked {(ip, mask, want.mtu)}")
    if desired.iscsi is None:
        return bad
    sdi = cm.storageSystem.storageDeviceInfo
    if not sdi.softwareInternetScsiEnabled:
        return bad + ["software iSCSI is off"]
    hba = next((a for a in sdi.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba)), None)
    if hba is None:
        return bad + ["no software iSCSI adapter"]
    bound = {p.vnicDevice for p in cm.iscsiManager.QueryBoundVnics(hba.device)}
    for vmk in desired.iscsi.bind:
        if devices.get(vmk) not in bound:
            bad.append(f"{vmk} ({devices.get(vmk)}) not bound to {hba.device} (bound: {sorted(bound)})")
    have = {(t.address, t.port) for t in hba.configuredSendTarget or ()}
    for p in desired.iscsi.send_targets:
        if (p.address, p.port) not in have:
            bad.append(f"send target {p.address}:{p.port} missing on {hba.device}")
    have_static = {(t.address, t.port, t.iScsiName) for t in hba.configuredStaticTarget or ()}
    for st in desired.iscsi.static_targets:
        if (st.address, st.port, st.iqn) not in have_static:
            bad.append(f"static target {st.iqn} at {st.address}:{st.port} missing on {hba.device}")
    seen = {lun.canonicalName for lun in sdi.scsiLun}
    missing = [n for n in naas if "naa." + n not in seen]
    if missing:
        bad.append(f"{len(missing)} of {len(naas)} LUNs not seen after the rescan (first: naa.{missing[0]})")
    return bad


def check_mapping(got: dict[str, dict[str, tuple[str, str]]], expected: list[Any]) -> list[str]:
    """Per host, the datastore ↔ NAA ↔ VMFS UUID mapping a side found, against the lab's."""
    want = {e.naa: (e.datastore, e.vmfs_uuid) for e in expected}
    bad = []
    for host, mapping in got.items():
        for naa, w in want.items():
            g = mapping.get(naa)
            if g != w:
                bad.append(f"{host} naa.{naa}: {'not mounted' if g is None else g}, expected {w}")
    return bad


def esxdr_mapping(report: Any) -> dict[str, tuple[str, str]]:
    return {c.naa: (c.datastore, c.vmfs_uuid) for c in report.checks if c.ok}


# --------------------------------------------------------------------------- scenarios
@dataclass
class Row:
    name: str
    ours: Run
    naive: Run
    target: int


def verify_config(connect: Callable[[], Any], run: Run, desired: list[Any], naas: list[str]) -> None:
    """Read a lab's hosts back on a session of their own (not counted) into ``run.problems``."""
    if run.error:
        return
    with connect() as s:
        for d in desired:
            run.problems += [f"{d.host}: {p}" for p in read_back(s, d, naas)]


def single_host_rows(base: Path, binary: Path, luns: int) -> list[Row]:
    from esxdr.model import manifest as mf
    from esxdr.vsphere import host as H
    from esxdr.vsphere import storage as ST

    rows = []
    labs = []
    try:
        ours_lab = start_lab(base / "ours", binary=binary)
        labs.append(ours_lab)
        naive_lab = start_lab(base / "naive", binary=binary)
        labs.append(naive_lab)
        for lab in labs:
            for i in range(1, luns + 1):
                lab.add_lun(i, size_mb=40)
        desired, desired_naive = ours_lab.desired(), naive_lab.desired()
        naas = list(ours_lab.luns)

        def ours_apply(s: Any) -> None:
            H.ensure(s, desired)

        def naive_apply(s: Any) -> None:
            naive_bootstrap(naive_hosts(s)[desired_naive.host], desired_naive)

        for name, target in (("bootstrap from empty (vSwitch, 3 port groups, vmk, iSCSI, bind, target, rescans)", 30),
                             ("no-op re-run", 8)):
            o, n = measure(ours_lab.connect, ours_apply), measure(naive_lab.connect, naive_apply)
            verify_config(ours_lab.connect, o, [desired], naas)
            verify_config(naive_lab.connect, n, [desired_naive], naas)
            rows.append(Row(name, o, n, target))

        exp_o = ST.expected_luns(mf.load(ours_lab.manifest()))
        exp_n = ST.expected_luns(mf.load(naive_lab.manifest()))

        def ours_verify(s: Any) -> dict:
            return {desired.host: esxdr_mapping(ST.verify_storage(s, None, exp_o).report)}

        def naive_verify_one(s: Any) -> dict:
            return naive_verify({desired_naive.host: naive_hosts(s)[desired_naive.host]}, exp_n)

        o, n = measure(ours_lab.connect, ours_verify), measure(naive_lab.connect, naive_verify_one)
        compare_mappings(o, n, exp_o)
        rows.append(Row(f"verify-storage, {luns} LUNs / {luns} datastores", o, n, 10))
    finally:
        for lab in labs:
            lab.stop()
    return rows


def compare_mappings(o: Run, n: Run, expected: list[Any]) -> None:
    """Each side against the lab, then against each other (the same datastores ↔ NAAs)."""
    for run in (o, n):
        if not run.error:
            run.problems += check_mapping(run.value, expected)
    if not o.error and not n.error and not o.problems and not n.problems and o.value != n.value:
        n.problems.append("its datastore ↔ NAA mapping differs from esxdr's")


def vcenter_rows(binary: Path, base: Path, luns: int) -> list[Row]:
    """Scenario 4: two hosts of a vCenter cluster, esxdr (one read, parallel apply) vs naive."""
    from test_host_vcenter import HOSTS, VcLab

    from esxdr.model import manifest as mf
    from esxdr.plan.host import plan_hosts
    from esxdr.site import load_site
    from esxdr.vsphere import host as H
    from esxdr.vsphere import storage as ST

    rows = []
    labs = []
    try:
        labs.append(VcLab(base / "vc-ours", binary))
        labs.append(VcLab(base / "vc-naive", binary))
        for lab in labs:
            for i in range(1, luns + 1):
                lab.add_lun(i)
        ours, naive = labs
        want = {h: load_site(str(ours.site)).dr_network[h] for h in HOSTS}
        want_naive = {h: load_site(str(naive.site)).dr_network[h] for h in HOSTS}
        naas = list(ours.luns)

        def ours_apply(s: Any) -> None:
            states = H.observe_hosts(s, HOSTS)
            H.apply_plans(s, states, plan_hosts("vc-dr", want, states).plans)

        def naive_apply(s: Any) -> None:
            hosts = naive_hosts(s)
            for h in HOSTS:
                naive_bootstrap(hosts[h], want_naive[h])

        for name, target in ((f"bootstrap {len(HOSTS)} hosts through vCenter (parallel apply)", 40),
                             (f"no-op re-run, {len(HOSTS)} hosts through vCenter", 8)):
            o, n = measure(ours.connect, ours_apply), measure(naive.connect, naive_apply)
            verify_config(ours.connect, o, list(want.values()), naas)
            verify_config(naive.connect, n, list(want_naive.values()), naas)
            rows.append(Row(name, o, n, target))

        exp_o = ST.expected_luns(mf.load(ours.manifest()))
        exp_n = ST.expected_luns(mf.load(naive.manifest()))

        def ours_verify(s: Any) -> dict:
            report = H.verify_hosts(s, HOSTS, exp_o)[0]
            return {r.host: esxdr_mapping(r) for r in report.reports}

        def naive_verify_all(s: Any) -> dict:
            hosts = naive_hosts(s)
            return naive_verify({h: hosts[h] for h in HOSTS}, exp_n)

        o, n = measure(ours.connect, ours_verify), measure(naive.connect, naive_verify_all)
        compare_mappings(o, n, exp_o)
        rows.append(Row(f"verify-storage, {len(HOSTS)} hosts x {luns} LUNs through vCenter", o, n, 10))
    finally:
        for lab in labs:
            lab.stop()
    return rows


# --------------------------------------------------------------------------- the table
def cell(run: Run) -> tuple[str, str]:
    if run.failure:
        return "failed: " + " ".join(run.failure.split()).replace("|", "/"), "-"
    return str(run.requests), f"{run.seconds * 1000:.0f} ms"


def target_cell(row: Row) -> str:
    if row.ours.failure:
        return f"≤ {row.target}: MISSED (esxdr {row.ours.failure})"
    if row.ours.requests > row.target:
        return f"≤ {row.target}: MISSED ({row.ours.requests} requests)"
    return f"≤ {row.target}: met"


def render(rows: list[Row], luns: int) -> str:
    import importlib.metadata

    versions = [f"pyVmomi {importlib.metadata.version('pyvmomi')}",
                f"esxsim on govmomi {deb_version('golang-github-vmware-govmomi-dev')}",
                f"tgt {deb_version('tgt')}"]
    lines = [header("vSphere adapter: SOAP requests, esxdr vs a naive pyVmomi loop (benchmarks/vsphere.py)",
                    versions), "",
             "| scenario | esxdr requests | esxdr time | naive requests | naive time | esxdr / naive requests "
             "| both verified | target (esxdr requests) |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        (oreq, otime), (nreq, ntime) = cell(r.ours), cell(r.naive)
        ratio = f"{r.ours.requests / r.naive.requests:.2f}" if not (r.ours.failure or r.naive.failure) else "-"
        verified = "yes" if not (r.ours.failure or r.naive.failure) else "no"
        lines.append(f"| {r.name} | {oreq} | {otime} | {nreq} | {ntime} | {ratio} | {verified} | {target_cell(r)} |")
    lines += ["", "Requests by method (every count measured by CountingStub in this run):", ""]
    for r in rows:
        for side, run in (("esxdr", r.ours), ("naive", r.naive)):
            methods = ", ".join(f"{k} {v}" for k, v in sorted(run.by_method.items()))
            lines.append(f"- {r.name}, {side}: {methods}")
    lines += ["", f"Setup: esxsim + tgtd on loopback, {luns} LUNs with a VMFS6 header each; each side drives a "
              "lab of its own. Requests include RetrieveServiceContent, Login and Logout. Naive = a pyVmomi "
              "script with lazy attribute reads, each object read once. Verified outside the timing: the "
              "hosts' configuration read back against the site file (bootstrap, no-op) and each side's "
              "datastore ↔ NAA ↔ VMFS UUID mapping against the lab's (verify-storage)."]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--luns", type=int, default=16, help="LUNs (and datastores) in each lab (default 16)")
    ap.add_argument("--append", action="store_true", help="also append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/vsphere.py needs root (tgtd)", file=sys.stderr)
        return 2
    if args.luns < 1:
        print("--luns must be at least 1", file=sys.stderr)
        return 2
    binary = esxsim.build(ROOT)
    base = Path(tempfile.mkdtemp(prefix="esxdr-bench-vsphere-"))
    try:
        rows = single_host_rows(base, binary, args.luns)
        rows += vcenter_rows(binary, base, args.luns)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    text = render(rows, args.luns)
    print(text)
    if args.append:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 1 if any(r.ours.failure or r.naive.failure for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
