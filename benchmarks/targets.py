"""Benchmark: export + import + verify of a 64-LUN site on tgt (two real tgtd on loopback).

Production and DR are each a tgtd on its own 127.0.0.x address and control port.
Every LUN file carries a VMFS6 header, so verify reads it over iSCSI too.

Every count is measured in the run, none is computed from a formula:
- commands: each command esxdr runs through its transport (a counting subclass of
  LocalTransport, the same choke point an SSH transport would be), by program;
- iSCSI: the probe's socket is wrapped for the run (``counting_wire``) and the bytes that pass
  are cut into PDUs by their framing: connections (sessions), request PDUs sent (each waits for
  its answer: a round trip), PDUs received, and the SCSI commands by CDB and LUN.
Verified: export (every LU with its NAA and the product id read over iSCSI), import (the DR tgtd
serves every LU of the manifest at its target and LUN with its identity, read with libiscsi's
iscsi-inq, a third-party initiator), the re-import changes nothing, verify finds every LU as in
the manifest with its VMFS volume.

Run as root (about 5 s):

    .venv/bin/python benchmarks/targets.py [--luns 64] [--targets 4] [--append]

Prints the table; --append also appends it to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _record import first_line as _sh  # noqa: E402
from _record import header  # noqa: E402

from esxdr import vmfs  # noqa: E402
from esxdr.lab import tgtd as labtgtd  # noqa: E402
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Portal, Source, Target, View  # noqa: E402
from esxdr.plan import rewrite  # noqa: E402
from esxdr.targets import probe, tgt  # noqa: E402
from esxdr.targets.verify import MOUNT, verify  # noqa: E402
from esxdr.transport import LocalTransport  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS.md"
INITIATOR = "iqn.1998-01.com.vmware:esxi-dr"


# --------------------------------------------------------------------------- the record's header
def deb_version(package: str) -> str:
    return _sh(["dpkg-query", "-W", "-f", "${Version}", package]) or "not installed"


# --------------------------------------------------------------------------- counting commands
class CountingTransport(LocalTransport):
    """LocalTransport that records every command it runs (the measurement, not esxdr's own Stats)."""

    def __init__(self, name: str):
        super().__init__(name)
        self.ran: Counter[str] = Counter()

    def run(self, argv: list[str], **kw: Any) -> Any:  # type: ignore[override]
        self.ran[Path(argv[0]).name] += 1
        return super().run(argv, **kw)

    def spawn_stream(self, argv: list[str], **kw: Any) -> Any:  # type: ignore[override]
        self.ran[Path(argv[0]).name] += 1
        return super().spawn_stream(argv, **kw)

    def take(self) -> Counter[str]:
        ran, self.ran = self.ran, Counter()
        return ran


# --------------------------------------------------------------------------- counting iSCSI PDUs
OUT_OPS = {0x00: "NOP-Out", 0x01: "SCSI Command", 0x02: "Task Management", 0x03: "Login", 0x04: "Text",
           0x05: "Data-Out", 0x06: "Logout"}
IN_OPS = {0x20: "NOP-In", 0x21: "SCSI Response", 0x22: "Task Management Response", 0x23: "Login Response",
          0x24: "Text Response", 0x25: "Data-In", 0x26: "Logout Response", 0x31: "R2T", 0x32: "Async Message",
          0x3F: "Reject"}
CDBS = {0x00: "TEST UNIT READY", 0x12: "INQUIRY", 0x25: "READ CAPACITY(10)", 0x28: "READ(10)",
        0x9E: "READ CAPACITY(16)", 0xA0: "REPORT LUNS"}


class Framer:
    """Cuts an iSCSI byte stream into PDUs: 48-byte BHS, AHS, data padded to 4 (no digests: the probe
    negotiates HeaderDigest=None and DataDigest=None, and the counts below would be garbage otherwise,
    which the check of the opcodes against the known ones would show)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes]:
        self.buf += data
        while len(self.buf) >= 48:
            ahs = self.buf[4] * 4
            dlen = int.from_bytes(self.buf[5:8], "big")
            total = 48 + ahs + dlen + (-dlen % 4)
            if len(self.buf) < total:
                return
            bhs = bytes(self.buf[:48])
            del self.buf[:total]
            yield bhs


@dataclass
class Wire:
    connections: int = 0
    sent: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    scsi: Counter[str] = field(default_factory=Counter)  # SCSI commands by CDB (INQUIRY by page)
    to_data_luns: int = 0  # SCSI commands addressed to LUN > 0 (the LUs, not tgt's controller LUN 0)
    round_trips: int = 0  # request PDUs sent: each waits for its answer
    bytes_out: int = 0
    bytes_in: int = 0

    def count_out(self, bhs: bytes) -> None:
        op = bhs[0] & 0x3F
        name = OUT_OPS.get(op, f"opcode 0x{op:02x}")
        self.sent[name] += 1
        itt = int.from_bytes(bhs[16:20], "big")
        # A NOP-Out that answers the target's ping (ITT 0xffffffff) and Data-Out wait for nothing.
        if not (op == 0x05 or (op == 0x00 and itt == 0xFFFFFFFF)):
            self.round_trips += 1
        if op == 0x01:
            cdb = bhs[32]
            kind = CDBS.get(cdb, f"CDB 0x{cdb:02x}")
            if cdb == 0x12:
                kind += f" VPD 0x{bhs[34]:02x}" if bhs[33] & 1 else " standard"
            self.scsi[kind] += 1
            if ((bhs[8] & 0x3F) << 8 | bhs[9]) != 0:
                self.to_data_luns += 1

    def count_in(self, bhs: bytes) -> None:
        op = bhs[0] & 0x3F
        name = IN_OPS.get(op, f"opcode 0x{op:02x}")
        if op == 0x21 and bhs[3] != 0:  # a failed command (CHECK CONDITION: UNIT ATTENTION is retried)
            name += f" status 0x{bhs[3]:02x}"
        self.received[name] += 1

    @property
    def unknown(self) -> list[str]:
        return [k for k in (*self.sent, *self.received) if k.startswith("opcode")]


class _WireSocket:
    def __init__(self, sock: Any, wire: Wire):
        self._sock, self._wire = sock, wire
        self._out, self._in = Framer(), Framer()

    def sendall(self, data: bytes) -> None:
        self._sock.sendall(data)
        self._wire.bytes_out += len(data)
        for bhs in self._out.feed(data):
            self._wire.count_out(bhs)

    def recv(self, n: int) -> bytes:
        data = self._sock.recv(n)
        self._wire.bytes_in += len(data)
        for bhs in self._in.feed(data):
            self._wire.count_in(bhs)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _SocketModule:
    """What esxdr.targets.probe sees as ``socket`` while counting: create_connection wrapped."""

    def __init__(self, real: Any, wire: Wire):
        self._real, self._wire = real, wire

    def create_connection(self, *a: Any, **kw: Any) -> _WireSocket:
        sock = self._real.create_connection(*a, **kw)
        self._wire.connections += 1
        return _WireSocket(sock, self._wire)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


@contextmanager
def counting_wire() -> Iterator[Wire]:
    """Count the PDUs of every iSCSI connection the probe opens inside the block."""
    wire = Wire()
    real = probe.socket
    probe.socket = _SocketModule(real, wire)  # type: ignore[assignment]
    try:
        yield wire
    finally:
        probe.socket = real


# --------------------------------------------------------------------------- the site
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


def libiscsi_identities(m: Manifest, address: str, port: int) -> tuple[int, str | None]:
    """Read VPD 0x83 of every LU of ``m`` with libiscsi's iscsi-inq (one login per LU) from the DR
    tgtd, and check that each target/LUN carries its NAA. iscsi-inq prints binary designators with
    %s (cut at the first zero byte), so the comparison uses the ASCII T10 vendor-id designator: on
    tgt it is the scsi_id, from which tgt derives the NAA-6. Returns (LUs matched, first problem)."""
    if shutil.which("iscsi-inq") is None:
        return 0, "iscsi-inq not installed (Debian libiscsi-bin)"
    matched = 0
    for t in m.targets:
        for n, lu in m.luns_of(t.iqn):
            r = subprocess.run(["iscsi-inq", "-i", INITIATOR, "-e", "1", "-c", "131",  # 131 = 0x83; no hex here
                                f"iscsi://{address}:{port}/{t.iqn}/{n}"], capture_output=True, text=True,
                               errors="replace", timeout=30)
            if r.returncode != 0:
                return matched, f"iscsi-inq {t.iqn} LUN {n}: {(r.stderr or r.stdout).strip()[:120]}"
            t10 = re.findall(r"Designator Type:\(1\) T10_VENDORT?_ID\s*\nDesignator:\[([^\]]*)\]", r.stdout)
            if [x.strip().lower() for x in t10] != [lu.naa.hex]:
                return matched, f"{t.iqn} LUN {n}: libiscsi reads T10 id {t10}, the manifest says naa.{lu.naa.hex}"
            matched += 1
    return matched, None


# --------------------------------------------------------------------------- the run
@dataclass
class Phase:
    name: str
    commands: Counter[str]
    wire: Wire | None
    seconds: float
    problems: list[str] = field(default_factory=list)


def run(args: argparse.Namespace, work: Path) -> tuple[list[Phase], dict[str, Any]]:
    prod_d = dr_d = None
    phases: list[Phase] = []
    extra: dict[str, Any] = {}
    try:
        prod_d = labtgtd.start(labtgtd.free_control_port(), "127.0.0.4", labtgtd.free_port("127.0.0.4"),
                               str(work / "prod-tgtd.log"))
        dr_d = labtgtd.start(labtgtd.free_control_port(), "127.0.0.5", labtgtd.free_port("127.0.0.5"),
                             str(work / "dr-tgtd.log"))
        (work / "prod").mkdir()
        # esxdr never presents a target to every initiator: production admits the DR host's
        # initiator, whose name export and verify log in with.
        seed = rewrite.allow_initiators(production_manifest(work / "prod", args.luns, args.targets), [INITIATOR])
        tgt.apply(LocalTransport("prod-setup"), seed, control_port=prod_d.control_port)  # not measured
        prod, dr = CountingTransport("prod"), CountingTransport("dr")

        with counting_wire() as wire:
            t0 = time.perf_counter()
            # tgtadm does not show vendor/product, so export reads them with one INQUIRY per LU.
            exported = tgt.observe(prod, prod_d.control_port, portal=prod_d.portal, initiator=INITIATOR)
            secs = time.perf_counter() - t0
        p = Phase("export (observe production)", prod.take(), wire, secs)
        want = {(lu.naa.hex, lu.product_id, lu.vendor_id) for lu in seed.logical_units}
        got = {(lu.naa.hex, lu.product_id, lu.vendor_id) for lu in exported.logical_units}
        if got != want:
            p.problems.append(f"{len(want - got)} LU(s) exported differently, e.g. {sorted(want - got)[:1]}")
        phases.append(p)

        # Both tgtds serve the same LUN files here (in the lab, replication would have copied them).
        m = rewrite.set_portals(exported, [Portal(dr_d.address, dr_d.port)])
        m = rewrite.allow_initiators(m, [INITIATOR])
        t0 = time.perf_counter()
        result = tgt.apply(dr, m, control_port=dr_d.control_port)
        p = Phase("import (apply on DR)", dr.take(), None, time.perf_counter() - t0)
        extra["import_changes"] = len(result.commands)
        matched, why = libiscsi_identities(m, dr_d.address, dr_d.port)
        if why:
            p.problems.append(why)
        extra["libiscsi"] = matched
        phases.append(p)

        t0 = time.perf_counter()
        again = tgt.apply(dr, m, control_port=dr_d.control_port)
        p = Phase("re-import (idempotent)", dr.take(), None, time.perf_counter() - t0)
        extra["reimport_changes"] = len(again.commands)
        if again.commands:
            p.problems.append(f"{len(again.commands)} change(s) on a re-import: {again.text()[:120]}")
        phases.append(p)

        with counting_wire() as wire:
            t0 = time.perf_counter()
            report = verify(m, dr_d.address, dr_d.port, initiator=INITIATOR)
            secs = time.perf_counter() - t0
        p = Phase("verify (iSCSI probe + VMFS)", Counter(), wire, secs)
        if not report.ok:
            p.problems.append(report.text().splitlines()[-1])
        not_mount = [c.naa for c in report.checks if c.prediction != MOUNT]
        if not_mount:
            p.problems.append(f"{len(not_mount)} LU(s) would not mount as themselves, e.g. naa.{not_mount[0]}")
        if len(report.checks) != args.luns:
            p.problems.append(f"{len(report.checks)} LUs checked of {args.luns}")
        extra["probe_counter"] = report.round_trips
        extra["probe_sessions"] = report.sessions
        phases.append(p)
    finally:
        for d in (dr_d, prod_d):
            if d is not None:
                d.stop()
    return phases, extra


# --------------------------------------------------------------------------- the table
def render(args: argparse.Namespace, phases: list[Phase], extra: dict[str, Any]) -> str:
    versions = [f"tgt {deb_version('tgt')}",
                f"libiscsi-bin {deb_version('libiscsi-bin')}"]
    lines = [header(f"targets: export + import + verify, {args.luns} LUNs on {args.targets} tgt targets "
                    "(benchmarks/targets.py)", versions), "",
             "| phase | commands run | iSCSI connections | iSCSI request PDUs (round trips) | PDUs received "
             "| wall s | verified |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for p in phases:
        cmds = sum(p.commands.values())
        w = p.wire
        # one table row: a multi-line message (tgtadm's plan text) folded onto one line
        ok = "yes" if not p.problems else "failed: " + " ".join("; ".join(p.problems).split()).replace("|", "/")
        lines.append(f"| {p.name} | {cmds} | {w.connections if w else 0} | {w.round_trips if w else 0} | "
                     f"{sum(w.received.values()) if w else 0} | {p.seconds:.2f} | {ok} |")
    lines += ["", "Measured detail:", ""]
    for p in phases:
        if p.commands:
            lines.append(f"- {p.name}: commands " + ", ".join(f"{k} {v}" for k, v in sorted(p.commands.items())))
        if p.wire is not None:
            w = p.wire
            lines.append(f"- {p.name}: sent " + ", ".join(f"{k} {v}" for k, v in sorted(w.sent.items()))
                         + "; SCSI " + ", ".join(f"{k} {v}" for k, v in sorted(w.scsi.items()))
                         + f"; {w.to_data_luns} SCSI commands to the {args.luns} LUs "
                         f"({w.to_data_luns / args.luns:.2f} per LU); received "
                         + ", ".join(f"{k} {v}" for k, v in sorted(w.received.items()))
                         + f"; {w.bytes_out} bytes out, {w.bytes_in} bytes in")
            if w.unknown:
                lines.append(f"  - unknown opcodes {w.unknown}: the stream was not cut right, ignore these counts")
    verify_wire = phases[-1].wire
    if verify_wire is not None:
        agree = "agrees" if extra.get("probe_counter") == verify_wire.round_trips else "DIFFERS"
        lines.append(f"- esxdr's own counter (VerifyReport.round_trips {extra.get('probe_counter')}, sessions "
                     f"{extra.get('probe_sessions')}) {agree} with the wire count")
    lines.append(f"- after the import, libiscsi's iscsi-inq (not timed) found {extra.get('libiscsi')} of "
                 f"{args.luns} LUs on the DR tgtd at their target and LUN with their identity (T10 designator)")
    lines += ["", "Targets (the promises the code documents):", ""]
    for text, ok, why in targets(args, phases, extra):
        lines.append(f"- {text}: " + ("met" if ok else f"MISSED ({why})"))
    lines += ["", "Setup: two tgtd on loopback (127.0.0.4 production, 127.0.0.5 DR), commands through a "
              "LocalTransport (over SSH they would be remote commands, one each). Counts from the wire and "
              "the transport in this run."]
    return "\n".join(lines) + "\n"


def targets(args: argparse.Namespace, phases: list[Phase], extra: dict[str, Any]) -> list[tuple[str, bool, str]]:
    export, _, reimport, check = phases
    cmds = sum(export.commands.values())
    ew, vw = export.wire, check.wire
    assert ew is not None and vw is not None
    return [
        ("export: at most 2 commands whatever the LU count (tgtadm show + one stat)", cmds <= 2,
         f"{cmds} commands"),
        (f"export: one iSCSI session per target ({args.targets})", ew.connections == args.targets,
         f"{ew.connections} connections"),
        ("re-import: no change", extra.get("reimport_changes") == 0, f"{extra.get('reimport_changes')} changes"),
        (f"verify: one iSCSI session per target ({args.targets})", vw.connections == args.targets,
         f"{vw.connections} connections"),
        ("every phase verified", all(not p.problems for p in phases),
         "; ".join(f"{p.name}: {p.problems[0]}" for p in phases if p.problems)),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--luns", type=int, default=64)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--append", action="store_true", help="also append the table to benchmarks/RESULTS.md")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("benchmarks/targets.py needs root (tgtd)", file=sys.stderr)
        return 2
    if args.luns < 1 or args.targets < 1 or args.targets > args.luns:
        print("--luns and --targets must be at least 1, and targets no more than LUNs", file=sys.stderr)
        return 2
    from esxdr.errors import EsxdrError

    work = Path(tempfile.mkdtemp(prefix="esxdr-bench-targets-"))
    try:
        phases, extra = run(args, work)
    except EsxdrError as e:
        print(f"benchmarks/targets.py: failed: {e.message}" + (f" ({e.hint})" if e.hint else ""), file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(args, phases, extra)
    print(text)
    if args.append:
        with RESULTS.open("a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 1 if any(p.problems for p in phases) else 0


if __name__ == "__main__":
    sys.exit(main())
