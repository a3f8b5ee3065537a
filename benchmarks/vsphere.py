"""SOAP requests and wall time of the vSphere adapter vs naive pyVmomi, on esxsim + real tgtd.

Scenarios (each measured for esxdr and for a naive implementation that reads properties one
by one through pyVmomi's lazy attributes, in the same run, on identical fresh hosts):

1. bootstrap of one host from empty: vSwitch, 3 VLAN port groups, VMkernel NIC, software iSCSI,
   binding, send target, rescans (target ≤ 30 requests, session included)
2. no-op re-run of the same (target ≤ 8)
3. verify-storage with 16 LUNs and 16 datastores (target ≤ 10, independent of the LUN count)
4. bootstrap 2 hosts through vCenter (esxsim -vcenter, cluster of 2): one property read for
   both hosts, the hosts applied in parallel (target ≤ 40); then the no-op re-run (target ≤ 8)
   and verify-storage on both hosts (target ≤ 10)

Requests are counted by esxdr's CountingStub (every SOAP call, property reads included), and
include RetrieveServiceContent, Login and Logout. Needs root (tgtd). Run:
    .venv/bin/python benchmarks/vsphere.py [--luns 16]
Prints a table and appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from vsphere_fixtures import start_lab  # noqa: E402

from esxdr.lab import esxsim  # noqa: E402


# --------------------------------------------------------------------------- naive pyVmomi
def naive_bootstrap(s, desired, host_index: int = 0) -> None:
    """What a straightforward pyVmomi script does: walk attributes, check, then add."""
    from pyVmomi import vim

    from esxdr.plan.host import split_ip

    host = s.content.rootFolder.childEntity[0].hostFolder.childEntity[0].host[host_index]
    ns = host.configManager.networkSystem
    for name, vs in desired.vswitches.items():
        if not any(v.name == name for v in ns.networkInfo.vswitch):
            ns.AddVirtualSwitch(name, vim.host.VirtualSwitch.Specification(
                numPorts=vs.ports, mtu=vs.mtu, bridge=vim.host.VirtualSwitch.BondBridge(nicDevice=list(vs.uplinks)),
                policy=vim.host.NetworkPolicy(nicTeaming=vim.host.NetworkPolicy.NicTeamingPolicy(
                    nicOrder=vim.host.NetworkPolicy.NicOrderPolicy(activeNic=list(vs.active),
                                                                   standbyNic=list(vs.standby))))))
    for name, pg in desired.port_groups.items():
        if not any(p.spec.name == name for p in ns.networkInfo.portgroup):
            policy = vim.host.NetworkPolicy()
            if pg.active_uplinks is not None:
                policy.nicTeaming = vim.host.NetworkPolicy.NicTeamingPolicy(nicOrder=vim.host.NetworkPolicy.NicOrderPolicy(
                    activeNic=list(pg.active_uplinks), standbyNic=list(pg.standby_uplinks or ())))
            ns.AddPortGroup(vim.host.PortGroup.Specification(name=name, vlanId=pg.vlan, vswitchName=pg.vswitch,
                                                             policy=policy))
    devices = {}
    for name, nic in desired.vmkernel.items():
        found = [v for v in ns.networkInfo.vnic if v.portgroup == nic.port_group]
        if found:
            devices[name] = found[0].device
        else:
            ip, mask, _ = split_ip(nic.ip)
            devices[name] = ns.AddVirtualNic(nic.port_group, vim.host.VirtualNic.Specification(
                ip=vim.host.IpConfig(dhcp=False, ipAddress=ip, subnetMask=mask), mtu=nic.mtu))
    ss = host.configManager.storageSystem
    if not ss.storageDeviceInfo.softwareInternetScsiEnabled:
        ss.UpdateSoftwareInternetScsiEnabled(True)
    hba = next(a for a in ss.storageDeviceInfo.hostBusAdapter if isinstance(a, vim.host.InternetScsiHba))
    im = host.configManager.iscsiManager
    bound = {p.vnicDevice for p in im.QueryBoundVnics(hba.device)}
    for vmk in desired.iscsi.bind:
        if devices[vmk] not in bound:
            im.BindVnic(hba.device, devices[vmk])
    have = {(t.address, t.port) for t in hba.configuredSendTarget}
    for p in desired.iscsi.send_targets:
        if (p.address, p.port) not in have:
            ss.AddInternetScsiSendTargets(hba.device, [vim.host.InternetScsiHba.SendTarget(address=p.address,
                                                                                           port=p.port)])
            changed = True
    changed = locals().get("changed", False)
    if changed:
        ss.RescanAllHba()
        ss.RescanVmfs()


def naive_verify(s, expected, host_index: int = 0) -> bool:
    from pyVmomi import vim

    host = s.content.rootFolder.childEntity[0].hostFolder.childEntity[0].host[host_index]
    ss = host.configManager.storageSystem
    ok = True
    for exp in expected:
        seen = any(lun.canonicalName == exp.canonical for lun in ss.storageDeviceInfo.scsiLun
                   if isinstance(lun, vim.host.ScsiDisk))
        mounted = False
        for ds in host.datastore:
            info = ds.info
            if isinstance(info, vim.host.VmfsDatastoreInfo) and info.vmfs.uuid == exp.vmfs_uuid:
                mounted = ds.summary.accessible
        ok = ok and seen and mounted
    return ok


def vcenter_rows(binary, base: Path, luns: int) -> list:
    """Scenario 4: two hosts of a vCenter cluster, esxdr (one read, parallel apply) vs naive."""
    from test_host_vcenter import HOSTS, VcLab

    from esxdr.model import manifest as mf
    from esxdr.plan.host import plan_hosts
    from esxdr.site import load_site
    from esxdr.vsphere import host as H
    from esxdr.vsphere import storage as ST

    rows = []
    labs = [VcLab(base / "vc-ours", binary), VcLab(base / "vc-naive", binary)]
    try:
        for lab in labs:
            for i in range(1, luns + 1):
                lab.add_lun(i)
        ours, naive = labs
        want = {h: load_site(str(ours.site)).dr_network[h] for h in HOSTS}
        want_naive = {h: load_site(str(naive.site)).dr_network[h] for h in HOSTS}

        def ours_apply(s):
            states = H.observe_hosts(s, HOSTS)
            H.apply_plans(s, states, plan_hosts("vc-dr", want, states).plans)

        def naive_apply(s):
            for i, h in enumerate(HOSTS):
                naive_bootstrap(s, want_naive[h], i)

        o = measure(ours, ours_apply)
        n = measure(naive, naive_apply)
        rows.append((f"bootstrap {len(HOSTS)} hosts through vCenter (parallel apply)", o, n, 40))
        o = measure(ours, ours_apply)
        n = measure(naive, naive_apply)
        rows.append((f"no-op re-run, {len(HOSTS)} hosts through vCenter", o, n, 8))
        exp_o = ST.expected_luns(mf.load(ours.manifest()))
        exp_n = ST.expected_luns(mf.load(naive.manifest()))
        results = {}

        def ours_verify(s):
            results["ours"] = H.verify_hosts(s, HOSTS, exp_o)[0].ok

        def naive_verify_all(s):
            results["naive"] = all(naive_verify(s, exp_n, i) for i in range(len(HOSTS)))

        o = measure(ours, ours_verify)
        n = measure(naive, naive_verify_all)
        assert results == {"ours": True, "naive": True}, results
        rows.append((f"verify-storage, {len(HOSTS)} hosts x {luns} LUNs through vCenter", o, n, 10))
    finally:
        for lab in labs:
            lab.stop()
    return rows


# --------------------------------------------------------------------------- runs
def measure(lab, fn):
    t0 = time.perf_counter()
    s = lab.connect()
    try:
        fn(s)
    finally:
        s.close()
    return s.requests, time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--luns", type=int, default=16)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/vsphere.py needs root (tgtd)", file=sys.stderr)
        return 2
    from esxdr.model import manifest as mf
    from esxdr.vsphere import host as H
    from esxdr.vsphere import storage as ST

    binary = esxsim.build(ROOT)
    base = Path(tempfile.mkdtemp(prefix="esxdr-bench-"))
    rows = []
    labs = []
    try:
        ours_lab = start_lab(base / "ours", binary=binary)
        naive_lab = start_lab(base / "naive", binary=binary)
        labs += [ours_lab, naive_lab]
        for lab in labs:
            for i in range(1, args.luns + 1):
                lab.add_lun(i, size_mb=40)
        desired = ours_lab.desired()
        desired_naive = naive_lab.desired()

        o = measure(ours_lab, lambda s: H.ensure(s, desired))
        n = measure(naive_lab, lambda s: naive_bootstrap(s, desired_naive))
        rows.append(("bootstrap from empty (vSwitch, 3 port groups, vmk, iSCSI, bind, target, rescans)", o, n, 30))
        o = measure(ours_lab, lambda s: H.ensure(s, desired))
        n = measure(naive_lab, lambda s: naive_bootstrap(s, desired_naive))
        rows.append(("no-op re-run", o, n, 8))
        exp_o = ST.expected_luns(mf.load(ours_lab.manifest()))
        exp_n = ST.expected_luns(mf.load(naive_lab.manifest()))
        results = {}

        def ours_verify(s):
            results["ours"] = ST.verify_storage(s, None, exp_o).report.ok

        def naive(s):
            results["naive"] = naive_verify(s, exp_n)

        o = measure(ours_lab, ours_verify)
        n = measure(naive_lab, naive)
        assert results == {"ours": True, "naive": True}, results
        rows.append((f"verify-storage, {args.luns} LUNs / {args.luns} datastores", o, n, 10))
        rows += vcenter_rows(binary, base, args.luns)
    finally:
        for lab in labs:
            lab.stop()
        shutil.rmtree(base, ignore_errors=True)

    header = "| scenario | esxdr requests | esxdr time | naive requests | naive time | target |"
    lines = [header, "|---|---:|---:|---:|---:|---:|"]
    for name, (oreq, otime), (nreq, ntime), target in rows:
        flag = "ok" if oreq <= target else "OVER"
        lines.append(f"| {name} | {oreq} | {otime * 1000:.0f} ms | {nreq} | {ntime * 1000:.0f} ms | ≤ {target} {flag} |")
    table = "\n".join(lines)
    print(table)
    if not args.no_append:
        cpu = os.cpu_count()
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        with open(ROOT / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(f"\n## vSphere adapter (benchmarks/vsphere.py) — {stamp}\n\n"
                    f"Machine: {platform.node()} {platform.machine()}, {cpu} cores, Python {platform.python_version()}; "
                    "esxsim (govmomi 0.24 simulator) + tgtd on loopback. Requests include "
                    "RetrieveServiceContent, Login and Logout. Naive = pyVmomi lazy attribute reads.\n\n"
                    f"{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
