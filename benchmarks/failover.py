"""Failover RTO and vSphere requests at scale: 4 datastores, 40 VMs in 3 priority groups.

A lab of its own (unique pools and account, torn down at the end): production seeded with 10
VMs per datastore, replicated once; production's tgtd is killed and `esxdr failover --disaster`
runs. Then the same VM steps are run sequentially, VM by VM (register one, power on one, answer,
wait for its heartbeat), on the same host in the same run, for comparison.
Prints a table and appends it to benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/failover.py              # appends to RESULTS.md
    .venv/bin/python benchmarks/failover.py --no-append  # prints only (and the requests by method)
    .venv/bin/python benchmarks/failover.py --no-vmx-paths   # the site file without vms.*.vmx
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ESXDR = str(ROOT / ".venv" / "bin" / "esxdr")


def esxdr(site: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([ESXDR, "--site", site, *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if r.returncode != 0:
        sys.exit(f"esxdr {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


def record_vmx_paths(site: str) -> int:
    """What an admin does once: `esxdr plan discover` and keep each VM's .vmx path in the site file
    (vms.NAME.vmx), so a failover registers the VMs without searching the datastores."""
    found = json.loads(esxdr(site, "--json", "plan", "discover", "core").stdout)["vms"]
    p = Path(site)
    lines = p.read_text().splitlines(keepends=True)
    out, n = [], 0
    for line in lines:
        out.append(line)
        name = line.strip().rstrip(":")
        if line.startswith("      ") and not line.startswith("       ") and line.rstrip().endswith(":") \
                and name in found and found[name].get("vmx"):
            out.append(f'        vmx: {json.dumps(found[name]["vmx"])}\n')
            n += 1
    p.write_text("".join(out))
    esxdr(site, "site", "validate")
    return n


def sequential(site_path: str) -> tuple[float, int, int]:
    """Power off + unregister everything on esx-dr, then the VM steps one VM at a time."""
    from esxdr.site import load_site
    from esxdr.vsphere import inventory
    from esxdr.vsphere import recovery as vr
    from esxdr.vsphere import vms as vv
    from esxdr.vsphere.session import connect

    site = load_site(site_path)
    with connect(site.endpoint("esx-dr")) as s:
        h = inventory.read_host(s, "esx-dr")
        refs = [s.ref("VirtualMachine", v.moid) for v in h.vms.values()]
        vv.power_off(s, refs)
        vv.unregister(s, refs)
    g = site.group("core")
    order = [v.name for v in sorted(g.vms, key=lambda v: (v.priority, v.name))]
    with connect(site.endpoint("esx-dr")) as s:
        start_req, t0 = s.requests, time.monotonic()
        h = inventory.read_host(s, "esx-dr")
        found = vr.find_vmx(s, h, sorted(h.datastores))
        for name in order:
            (vm,) = vv.register_vms(s, h, [found[name]])
            vv.power_on(s, [vm], uuid_answer="moved", timeout=120)
            vv.wait_heartbeats(s, [vm], timeout=120)
        return time.monotonic() - t0, s.requests - start_req, len(order)


def main() -> None:
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return
    from esxdr.lab import Lab, LabConfig, seed

    seed.VMS_PER_DATASTORE = 10  # 4 datastores x 10 = 40 VMs, priorities 1..3
    tag = f"b{os.getpid() % 100000}"
    d = tempfile.mkdtemp(prefix=f"esxdr-{tag}-", dir="/var/lib")
    os.chmod(d, 0o755)
    lab = Lab(LabConfig(dir=d, prod_pool=f"{tag}sp", dr_pool=f"{tag}rp", account=f"esxdr-{tag}", luns=4,
                        lun_size=48 << 20, pool_size=1 << 30))
    try:
        lab.up()
        site = str(lab.site_path)
        esxdr(site, "host", "apply", "esx-dr")
        esxdr(site, "replicate", "core")
        recorded = record_vmx_paths(site) if "--no-vmx-paths" not in sys.argv else 0
        import signal

        os.kill(lab.state()["tgtd"]["production"]["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        r = esxdr(site, "--json", "failover", "core", "--disaster")
        wall = time.monotonic() - t0
        rep = json.loads(r.stdout)
        vms = len(rep["vms"])
        prios = sorted({v["priority"] for v in rep["vms"]})
        power = [s for s in rep["steps"] if s["id"].startswith("power:")]
        vm_steps = [s for s in rep["steps"] if s["kind"] in ("register", "nics", "power")]
        vm_span = max(s["end"] for s in vm_steps) - min(s["start"] for s in vm_steps)
        seq_s, seq_req, seq_n = sequential(site)
        req = rep["requests"].get("vsphere", 0)
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            "## failover: RTO and SOAP requests, 4 datastores / 40 VMs / 3 priority groups (benchmarks/failover.py)",
            "",
            f"{now}, {platform.node()}, {os.cpu_count()} cores, zfs-fuse + tgtd + esxsim on loopback; "
            "disaster failover (production tgtd killed); "
            + (f"the site file names each VM's .vmx ({recorded} paths, from `esxdr plan discover`)" if recorded
               else "no .vmx paths in the site file (datastores searched)"),
            "",
            "| measure | esxdr failover | sequential, VM by VM | target |",
            "|---|---:|---:|---:|",
            f"| VMs booted | {vms} (priorities {', '.join(map(str, prios))}) | {seq_n} | 40 |",
            f"| power-on batches | {len(power)} (one per priority group) | {seq_n} | 3 |",
            f"| RTO (start → last heartbeat) | {rep['rto_seconds']} s | | |",
            f"| register + NICs + power-on + heartbeats | {vm_span:.1f} s | {seq_s:.1f} s (register + power-on + "
            "heartbeat) | |",
            f"| vSphere SOAP requests, whole run | {req} | {seq_req} (VM steps only) | ≤ 150 "
            f"{'ok' if req <= 150 else 'MISSED'} |",
            f"| wall time of the command | {wall:.1f} s | | |",
            "",
            "SOAP requests by method: " + ", ".join(
                f"{k} {v}" for k, v in sorted(rep.get("requests_by_method", {}).items())) + "; datastore HTTP "
            f"(.vmx read/written, not SOAP): {rep['requests'].get('vsphere datastore http', 0)}",
            "",
        ]
        text = "\n".join(lines)
        print(text)
        print("steps:", json.dumps([(s["id"], round(s["end"] - s["start"], 2)) for s in rep["steps"]
                                    if s.get("end") is not None]), file=sys.stderr)
        if "--no-append" not in sys.argv:
            with open(ROOT / "benchmarks" / "RESULTS.md", "a") as f:
                f.write("\n" + text + "\n")
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
