"""Failover at scale on the lab's vCenter mode: RTO, SOAP requests and step times, 40 to 200 VMs.

For each size of the curve (``--vms``, default 40,100,200) a lab of its own: zfs-fuse, sshd, both
tgtds and esx-prod from the embedded lab, ``--datastores`` LUNs (default 20, kept for every size:
the storage work is the same and only the VM count moves) with the VMs spread evenly over them,
priorities 1-3 (about a third each), replicated once; the DR side is esxsim's vCenter mode: one
DRS cluster of ``--hosts`` hosts (default 4) at the realistic pace (guest heartbeat 45 s after
power-on, rescans held 35 s: esxsim -profile realistic), each host logging in to the lab's real
DR tgtd with its own initiator, prepared with `esxdr host apply`. The site file names each VM's
.vmx (`esxdr plan discover`, as an admin keeps it). Production's tgtd is SIGKILLed and
`esxdr failover core --disaster` runs; the result is read back from esxsim and verified (every
VM registered once, powered on, heartbeat green, on a cluster host, production BIOS UUID, NICs on
DR-LAN).

Baseline, in the same run, on the largest lab after esxdr's failover: ``--baseline-vms`` VMs
(default 5, the first by priority then name) are powered off and unregistered, then a naive
pyVmomi loop registers, powers on and waits for the heartbeat of each, one VM at a time, and is
verified the same way (see _failover_naive.py). At a 45 s heartbeat a loop over 200 VMs would take
hours: it is reported for the VMs it ran, never scaled up.

Targets (issue 17): RTO <= 3 x heartbeat delay + 60 s; <= 2.5 SOAP requests per VM.
Prints the table (command line, date, machine, versions first); ``--append`` appends it to
benchmarks/RESULTS.md. Needs root. Runtime: about 20 minutes for the default curve.

    .venv/bin/python benchmarks/failover.py [--vms 40,100,200] [--datastores 20] [--hosts 4]
        [--baseline-vms 5] [--append]
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _failover_lab import VC_NAME, FailoverLab, LabFailed  # noqa: E402
from _failover_measure import FailoverRun, run_failover  # noqa: E402
from _failover_naive import NaiveResult, naive_loop, problems, read_back, reset_vms  # noqa: E402
from _record import esxdr_version, first_line, machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SOAP_PER_VM_TARGET = 2.5
FAILOVER_NETWORK = "DR-LAN"  # the lab's failover port group (vms.*.networks)
STEP_ORDER = ["guard", "stop-replication", "promote", "present", "rescan", "verify", "register", "nics", "power"]


# --------------------------------------------------------------------------- the record's header
def versions() -> str:
    from importlib.metadata import version

    debs = {p: first_line(["dpkg-query", "-W", "-f", "${Version}", p]) or "not installed"
            for p in ("zfs-fuse", "tgt", "golang-github-vmware-govmomi-dev")}
    return (f"{esxdr_version()}, pyVmomi {version('pyvmomi')}, zfs-fuse {debs['zfs-fuse']}, tgt {debs['tgt']}, "
            f"esxsim on govmomi {debs['golang-github-vmware-govmomi-dev']}")


# --------------------------------------------------------------------------- one size of the curve
@dataclass
class Point:
    vms: int
    run: FailoverRun | None = None
    error: str | None = None  # the lab or the command failed: nothing measured
    problems: list[str] = field(default_factory=list)
    placement: dict[str, int] = field(default_factory=dict)  # host -> VMs
    heartbeat: float = 0.0  # as esxsim reported its timing
    rescan: float = 0.0
    setup: dict[str, float] = field(default_factory=dict)
    baseline: NaiveResult | None = None

    @property
    def soap(self) -> int:
        return int(self.run.report.get("requests", {}).get("vsphere", 0)) if self.run else 0

    @property
    def by_method(self) -> dict[str, int]:
        return dict(self.run.report.get("requests_by_method", {})) if self.run else {}

    @property
    def rto(self) -> float | None:
        return self.run.report.get("rto_seconds") if self.run else None

    @property
    def failure(self) -> str | None:
        if self.error:
            return self.error
        if self.problems:
            return f"not verified: {self.problems[0]}" + (f" (and {len(self.problems) - 1} more)"
                                                          if len(self.problems) > 1 else "")
        return None


def measure_point(n: int, args: argparse.Namespace, tag: str, baseline: bool, say: Any) -> Point:
    hosts = [f"esx-dr{i + 1}" for i in range(args.hosts)]
    pt = Point(vms=n)
    fl = FailoverLab(vms=n, datastores=args.datastores, hosts=hosts, tag=tag, profile=args.profile)
    try:
        say(f"{n} VMs: building the lab ({args.datastores} datastores, vCenter of {args.hosts} hosts)")
        fl.up()
        pt.setup = fl.timings
        pt.heartbeat, pt.rescan = fl.vc.heartbeat_delay, fl.vc.rescan_delay
        uuids = fl.production_uuids()
        fl.kill_production_target()
        say(f"{n} VMs: production's tgtd killed; esxdr failover core --disaster")
        pt.run = run_failover(fl.site, str(Path(fl.dir) / "state"), {"esxsim": fl.vc.pid})
        if pt.run.error:
            pt.error = f"esxdr failover: {pt.run.error}"
            return pt
        seen = read_back(fl.site, VC_NAME)
        names = sorted(fl.priorities())
        pt.problems = problems(seen, names, uuids=uuids, hosts=hosts, network=FAILOVER_NETWORK)
        extra = sorted({v["name"] for v in seen} - set(names))
        if extra:
            pt.problems.append(f"VMs that are not the group's: {', '.join(extra[:5])}")
        for v in seen:
            pt.placement[v["host"]] = pt.placement.get(v["host"], 0) + 1
        say(f"{n} VMs: RTO {pt.rto} s, {pt.soap} SOAP requests, verified: {pt.failure or 'yes'}")
        if baseline:
            prio = fl.priorities()
            chosen = sorted(prio, key=lambda v: (prio[v], v))[:args.baseline_vms]
            say(f"{n} VMs: baseline on {', '.join(chosen)} (unregistered first), one VM at a time")
            reset_vms(fl.site, VC_NAME, chosen)
            from esxdr.site import load_site
            from esxdr.vsphere.session import read_password

            ep = load_site(fl.site).endpoint(VC_NAME)
            paths = fl.vmx_paths()
            b = pt.baseline = naive_loop(ep, read_password(ep), [(v, paths[v]) for v in chosen])
            if b.error is None:
                b.problems = problems(read_back(fl.site, VC_NAME), chosen, uuids=uuids, hosts=hosts,
                                      network=FAILOVER_NETWORK)
            say(f"{n} VMs: baseline {b.seconds:.1f} s, {b.requests} SOAP requests, "
                f"verified: {b.error or (b.problems[0] if b.problems else 'yes')}")
    except LabFailed as e:
        pt.error = f"lab: {e}"
    except Exception as e:  # noqa: BLE001 - one size that fails is reported as failed, the curve goes on
        pt.error = f"{type(e).__name__}: {getattr(e, 'message', None) or e}"
    finally:
        fl.down()
    return pt


# --------------------------------------------------------------------------- the table
def _f(x: float | None, unit: str = " s", nd: int = 1) -> str:
    return "-" if x is None else f"{x:.{nd}f}{unit}"


def rto_target(pt: Point) -> tuple[float, str]:
    limit = 3 * pt.heartbeat + 60
    if pt.failure or pt.rto is None or pt.run is None:
        return limit, f"failed: {pt.failure}"
    if pt.rto <= limit:
        return limit, "met"
    k = pt.run.by_kind()
    storage = sum(k.get(x, 0.0) for x in ("guard", "stop-replication", "promote", "present", "rescan", "verify"))
    power = k.get("power", 0.0)
    cpu = pt.run.cpu
    return limit, (f"MISSED ({pt.rto:.1f} s = storage {storage:.1f} s of which rescan {k.get('rescan', 0):.1f} s; "
                   f"register {k.get('register', 0):.1f} s; power-on {power:.1f} s = 3 x {pt.heartbeat:.0f} s heartbeat "
                   f"+ {power - 3 * pt.heartbeat:.1f} s; esxsim busy {cpu.get('register', {}).get('esxsim', 0):.1f} s "
                   f"CPU in register and {cpu.get('power', {}).get('esxsim', 0):.1f} s in power-on, esxdr "
                   f"{cpu.get('register', {}).get('esxdr', 0) + cpu.get('power', {}).get('esxdr', 0):.1f} s)")


def soap_target(pt: Point) -> str:
    if pt.failure or pt.run is None:
        return f"failed: {pt.failure}"
    per = pt.soap / pt.vms
    if per <= SOAP_PER_VM_TARGET:
        return "met"
    m = pt.by_method
    per_vm_calls = sum(v for k, v in m.items() if v >= pt.vms)
    big = ", ".join(f"{k} {v}" for k, v in sorted(m.items(), key=lambda kv: -kv[1]) if v >= pt.vms)
    waits = m.get("WaitForUpdatesEx", 0)
    return (f"MISSED ({per:.2f}: {big} = {per_vm_calls}; WaitForUpdatesEx {waits}; "
            f"{pt.soap - per_vm_calls - waits} other requests, whatever the VM count)")


def render(points: list[Point], args: argparse.Namespace, started: float) -> str:
    ok = [p for p in points if p.run and not p.error]
    hb = next((p.heartbeat for p in ok), 0.0)
    rs = next((p.rescan for p in ok), 0.0)
    cols = [f"{p.vms} VMs" for p in points]
    lines = [
        f"## failover at scale: esxsim vCenter, {args.hosts} hosts, {args.datastores} datastores, 3 priority "
        f"groups, {args.profile} pace (benchmarks/failover.py)",
        "",
        f"Command: `{shlex.join(sys.orig_argv)}`  ",
        f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC (the whole run took "
        f"{(time.monotonic() - started) / 60:.1f} min)  ",
        f"Machine: {machine()}  ",
        f"Versions: {versions()}  ",
        f"Conditions: esxsim -profile {args.profile} (guest heartbeat {hb:.0f} s after power-on, rescans held "
        f"{rs:.0f} s, as esxsim reported them); every size a lab of its own with {args.datastores} datastores "
        f"(48 MiB LUNs) and its VMs spread evenly; disaster failover after production's tgtd was SIGKILLed; "
        "the site file names each .vmx (`esxdr plan discover`).",
        "",
        "| measure | " + " | ".join(cols) + " | target |",
        "|---|" + "---:|" * len(cols) + "---|",
    ]

    def row(label: str, values: list[str], target: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(values) + f" | {target} |")

    def each(fn: Any) -> list[str]:
        return [fn(p) if p.run and not p.error else f"failed: {p.error}" for p in points]

    row("verified (registered once, on, heartbeat green, cluster host, production UUID, on DR-LAN)",
        each(lambda p: "yes" if not p.problems else f"NO: {p.failure}"))
    row("VMs per host (DRS)", each(lambda p: " / ".join(str(p.placement[h]) for h in sorted(p.placement))))
    row("RTO (esxdr's report: run start → last heartbeat)", each(lambda p: _f(p.rto)),
        f"≤ 3 × {hb:.0f} + 60 = {3 * hb + 60:.0f} s")
    row("wall time of `esxdr failover` (process start → exit)", each(lambda p: _f(p.run.wall)))
    row("SOAP requests, whole run (session included)", each(lambda p: str(p.soap)))
    row("SOAP requests per VM", each(lambda p: f"{p.soap / p.vms:.2f}"), f"≤ {SOAP_PER_VM_TARGET}")
    row("datastore HTTP requests (.vmx GET/PUT, not SOAP)",
        each(lambda p: str(p.run.report.get("requests", {}).get("vsphere datastore http", 0))))
    for kind in STEP_ORDER:
        if kind == "power":
            continue
        row(f"step time: {kind}" + (" (all datasets)" if kind == "promote" else ""),
            each(lambda p, k=kind: _f(p.run.by_kind().get(k))))
    for i in range(3):
        def power(p: Point, i: int = i) -> str:
            ps = p.run.power_steps() if p.run else []
            if i >= len(ps):
                return "-"
            sid, secs, n = ps[i]
            return f"{secs:.1f} s ({n} VMs; +{secs - p.heartbeat:.1f} s over the heartbeat)"
        row(f"step time: power-on, priority {i + 1}", each(power))
    row("esxsim CPU in register / power-on steps",
        each(lambda p: f"{p.run.cpu.get('register', {}).get('esxsim', 0):.1f} s / "
                       f"{p.run.cpu.get('power', {}).get('esxsim', 0):.1f} s"))
    row("esxdr CPU, whole command", each(lambda p: f"{p.run.cpu.get('whole command', {}).get('esxdr', 0):.1f} s"))
    lines.append("")
    for p in points:
        if p.run and not p.error:
            m = p.by_method
            lines.append(f"SOAP requests by method, {p.vms} VMs: " + ", ".join(
                f"{k} {v} ({v / p.vms:.2f}/VM)" for k, v in sorted(m.items())))
    lines.append("")
    lines.append("Targets:")
    for p in points:
        limit, verdict = rto_target(p)
        lines.append(f"- {p.vms} VMs: RTO ≤ {limit:.0f} s: {verdict}")
        lines.append(f"- {p.vms} VMs: ≤ {SOAP_PER_VM_TARGET} SOAP requests per VM: {soap_target(p)}")
    base = next((p for p in points if p.baseline is not None), None)
    lines.append("")
    if base is None:
        lines.append("Baseline: not run (" + ("--baseline-vms 0" if not args.baseline_vms else
                                              "the largest lab failed before it") + ").")
    else:
        lines += render_baseline(base)
    lines.append("")
    lines.append("Setup (not measured work): " + "; ".join(
        f"{p.vms} VMs: " + ", ".join(f"{k} {v:.0f} s" for k, v in p.setup.items()) for p in points if p.setup))
    return "\n".join(lines) + "\n"


def render_baseline(p: Point) -> list[str]:
    b = p.baseline
    assert b is not None and p.run is not None
    n = len(b.vms)
    ok = b.error is None and not b.problems
    verdict = ("yes" if ok else f"failed: {b.error}" if b.error else f"NO: {b.problems[0]}")
    mean = {k: sum(t[k] for t in b.per_vm.values()) / len(b.per_vm) for k in ("register", "power", "heartbeat")} \
        if b.per_vm else {}
    vm_span = sum(p.run.by_kind().get(k, 0.0) for k in ("register", "nics", "power"))
    lines = [
        f"Baseline, same run, on the {p.vms}-VM lab after esxdr's failover: {n} VMs ({', '.join(b.vms)}: the "
        "first by priority, then name) powered off and unregistered, then a naive pyVmomi loop, one VM at a "
        "time: register into the cluster (DRS places it), power on (answering \"I moved it\" if asked), wait "
        "for its heartbeat (property-collector waits, no polling). It registers the .vmx files esxdr's run "
        "prepared (NICs already on DR-LAN, uuid.action = keep), so it does less than esxdr did for those VMs, "
        "not more. Measured for these VMs only; not scaled up.",
        "",
        f"| measure | naive loop, {n} VMs | esxdr, {p.vms} VMs (same lab) |",
        "|---|---:|---:|",
        f"| verified (read back from esxsim) | {verdict} | {'yes' if not p.problems else 'NO'} |",
    ]
    if b.error is None:
        lines += [
            f"| wall time | {b.seconds:.1f} s | {p.rto:.1f} s RTO, of which register + NICs + power-on "
            f"{vm_span:.1f} s |",
            f"| seconds per VM | {b.seconds / n:.1f} s (register {mean['register']:.1f} + power-on "
            f"{mean['power']:.1f} + heartbeat {mean['heartbeat']:.1f}) | {vm_span / p.vms:.2f} s of VM steps |",
            f"| SOAP requests | {b.requests} (session included) | {p.soap} (session included) |",
            f"| SOAP requests per VM | {b.requests / n:.1f} | {p.soap / p.vms:.2f} |",
            f"| questions answered | {b.answered} | none asked (uuid.action = keep in the .vmx) |",
            "",
            "Baseline SOAP requests by method: " + ", ".join(f"{k} {v}" for k, v in sorted(b.by_method.items())),
        ]
    return lines


def sizes(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--vms takes sizes separated by commas, e.g. 40,100,200: {text!r}") from None
    if not out or any(n < 3 for n in out):
        raise argparse.ArgumentTypeError(f"--vms: each size must be at least 3 (one VM per priority): {text!r}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vms", type=sizes, default=[40, 100, 200], help="the curve: VM counts (default 40,100,200)")
    ap.add_argument("--datastores", type=int, default=20, help="datastores (LUNs) in every lab (default 20)")
    ap.add_argument("--hosts", type=int, default=4, help="DR hosts in the vCenter cluster (default 4)")
    ap.add_argument("--baseline-vms", type=int, default=5,
                    help="VMs the naive loop recovers, on the largest lab (default 5; 0: no baseline)")
    ap.add_argument("--profile", choices=["realistic", "lab"], default="realistic",
                    help="esxsim timing (default realistic: heartbeat 45 s, rescans 35 s)")
    ap.add_argument("--append", action="store_true", help=f"append the table to {RESULTS.relative_to(ROOT)}")
    args = ap.parse_args()
    bad = [n for n in args.vms if n % args.datastores]
    if bad or args.datastores < 1 or args.hosts < 1 or args.baseline_vms < 0:
        ap.error(f"every --vms size must be a multiple of --datastores ({args.datastores}): not {bad}"
                 if bad else "--datastores and --hosts must be at least 1, --baseline-vms at least 0")
    if args.baseline_vms > max(args.vms):
        ap.error(f"--baseline-vms {args.baseline_vms} is more than the largest lab's {max(args.vms)} VMs")
    if os.geteuid() != 0:
        ap.error("needs root (zfs-fuse pools, tgtd, the lab's service account)")
    started = time.monotonic()

    def say(s: str) -> None:
        print(f"[{(time.monotonic() - started) / 60:5.1f} min] {s}", file=sys.stderr, flush=True)

    points = []
    for i, n in enumerate(args.vms):
        tag = f"fo{os.getpid() % 10000}{i}"
        points.append(measure_point(n, args, tag, baseline=bool(args.baseline_vms) and n == max(args.vms)
                                    and not any(p.baseline for p in points), say=say))
    text = render(points, args, started)
    print(text)
    if args.append:
        with open(RESULTS, "a") as f:
            f.write("\n" + text)
        say(f"appended to {RESULTS}")
    return 0 if all(p.failure is None for p in points) else 1


if __name__ == "__main__":
    sys.exit(main())
