"""Benchmark: export + import + verify of a 64-LUN site on tgt (two real tgtd on loopback).

Production and DR are each a tgtd on its own 127.0.0.x address and control port.
Every LUN file carries a VMFS6 header, so verify reads it over iSCSI too.
Prints a table and appends it to benchmarks/RESULTS.md. Run as root:

    .venv/bin/python benchmarks/targets.py [--luns 64] [--targets 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from esxdr import vmfs
from esxdr.lab import tgtd as labtgtd
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Portal, Source, Target, View
from esxdr.plan import rewrite
from esxdr.targets import tgt
from esxdr.targets.verify import MOUNT, verify
from esxdr.transport import LocalTransport

RESULTS = Path(__file__).with_name("RESULTS.md")
INITIATOR = "iqn.1998-01.com.vmware:esxi-dr"


def production_manifest(root: Path, luns: int, targets: int) -> Manifest:
    m = Manifest(source=Source(stack="tgt"))
    for t in range(targets):
        m.targets.append(Target(iqn=f"iqn.2010-09.org.openindiana:02:bench-{t}"))
    for i in range(luns):
        naa = Naa(f"600144f0b6a1c6b00000{i:012x}")
        path = root / f"lun{i}.img"
        lu = LogicalUnit(naa=naa, backing=Backing("file", str(path)), size_bytes=32 << 20, serial=f"SN{i:06d}",
                         vendor_id="SUN", product_id="COMSTAR", revision="1.0",
                         views=[View(lun=1 + i // targets, target=m.targets[i % targets].iqn)])
        vmfs.write_vmfs(path, uuid=vmfs.new_uuid(), label=f"ds{i}", naa=naa, product_id="COMSTAR", vendor="SUN",
                        size=lu.size_bytes)
        m.logical_units.append(lu)
    return m.validate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--luns", type=int, default=64)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--no-record", action="store_true", help="Do not append to RESULTS.md.")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="esxdr-bench-targets-"))
    prod_d = dr_d = None
    try:
        prod_d = labtgtd.start(labtgtd.free_control_port(), "127.0.0.4", labtgtd.free_port("127.0.0.4"),
                               str(work / "prod-tgtd.log"))
        dr_d = labtgtd.start(labtgtd.free_control_port(), "127.0.0.5", labtgtd.free_port("127.0.0.5"),
                             str(work / "dr-tgtd.log"))
        (work / "prod").mkdir()
        seed = production_manifest(work / "prod", args.luns, args.targets)
        tgt.apply(LocalTransport("prod-setup"), seed, control_port=prod_d.control_port)  # not measured

        rows = []
        prod, dr = LocalTransport("prod"), LocalTransport("dr")
        t0 = time.perf_counter()
        # tgtadm does not show vendor/product, so export reads them with one INQUIRY per LU.
        exported = tgt.observe(prod, prod_d.control_port, portal=prod_d.portal, initiator=INITIATOR)
        # Round trips: login (2) + logout (1) per session, one INQUIRY per LU.
        rows.append(("export (observe production)", prod.stats.commands, 3 * args.targets + args.luns,
                     args.targets, time.perf_counter() - t0))
        assert {lu.product_id for lu in exported.logical_units} == {"COMSTAR"}
        # Both tgtds serve the same LUN files here (in the lab, replication would have copied them).
        m = rewrite.set_portals(exported, [Portal(dr_d.address, dr_d.port)])
        m = rewrite.allow_initiators(m, [INITIATOR])

        t0 = time.perf_counter()
        result = tgt.apply(dr, m, control_port=dr_d.control_port)
        rows.append(("import (apply on DR)", dr.stats.commands, 0, 0, time.perf_counter() - t0))
        before = dr.stats.commands
        t0 = time.perf_counter()
        again = tgt.apply(dr, m, control_port=dr_d.control_port)
        rows.append(("re-import (idempotent)", dr.stats.commands - before, 0, 0, time.perf_counter() - t0))
        assert again.commands == [], again.text()

        t0 = time.perf_counter()
        report = verify(m, dr_d.address, dr_d.port, initiator=INITIATOR)
        rows.append(("verify (iSCSI probe + VMFS)", 0, report.round_trips, report.sessions,
                     time.perf_counter() - t0))
        assert report.ok, report.text()
        assert all(c.prediction == MOUNT for c in report.checks)
        assert report.sessions == args.targets
        # Per session: login (2), REPORT LUNS, tgt's controller LUN 0 (INQUIRY x3), logout.
        per_lu = (report.round_trips - report.sessions * 7) / args.luns

        cores = os.cpu_count()
        header = (f"\n## targets: export + import + verify, {args.luns} LUNs on {args.targets} tgt targets\n\n"
                  f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, {platform.node()}, {cores} cores, "
                  f"tgt via LocalTransport on loopback (127.0.0.4 -> 127.0.0.5)\n\n")
        table = ["| phase | remote commands | iSCSI round trips | sessions | wall s |",
                 "|---|---:|---:|---:|---:|"]
        for name, cmds, rts, sessions, secs in rows:
            table.append(f"| {name} | {cmds} | {rts} | {sessions} | {secs:.2f} |")
        table.append(f"\nimport ran {len(result.commands)} tgtadm commands for {args.luns} LUs; verify: "
                     f"{per_lu:.1f} round trips per LU (INQUIRY x3, READ CAPACITY(16), READ(10) x5 for GPT, LVM "
                     f"and FS3 headers) + 7 per session, one session per target.\n")
        text = header + "\n".join(table)
        print(text)
        if not args.no_record:
            with RESULTS.open("a") as f:
                f.write(text + "\n")
    finally:
        for d in (dr_d, prod_d):
            if d is not None:
                d.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
