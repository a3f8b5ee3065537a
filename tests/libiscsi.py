"""libiscsi's `iscsi-inq` as a third-party initiator for the tests.

esxdr's probe and esxsim's rescan both read VPD page 0x83 with iSCSI code written
here, from the same beliefs as the targets' configuration. libiscsi (Debian
`libiscsi-bin`) was written by no one here: when it reads the NAA a manifest
promises, the identity is on the wire for any initiator, ESXi included.

`iscsi-inq -e 1 -c 131 iscsi://HOST:PORT/IQN/LUN` prints each designator as
"Designator:[...]", binary ones raw and cut at their first zero byte (libiscsi
prints the designator with %s). So what can be compared is the NAA's bytes up to
its first zero byte: :func:`shown_for` is exactly that. A NAA with a zero byte in
its first 8 (tgt's default `60000000000000000e…`) shows fewer than 8 bytes, and
two NAAs equal up to a zero byte show alike. Where tgt also carries its
`scsi_id` (the whole NAA, as text) in a T10 vendor-id designator,
:func:`check_naa` compares that too.

CHAP credentials go to libiscsi through LIBISCSI_CHAP_USERNAME/PASSWORD in its
environment, never on the command line.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

ISCSI_INQ = shutil.which("iscsi-inq") or "/usr/bin/iscsi-inq"
ISCSI_LS = shutil.which("iscsi-ls") or "/usr/bin/iscsi-ls"
# ESXi names a device after its NAA designator, preferring NAA 6, then 5, 2, 3 (DESIGN.md).
NAA_PREFERENCE = (6, 5, 2, 3)
MIN_BYTES = 8

_DESIGNATOR = re.compile(
    rb"DEVICE DESIGNATOR #(\d+)\n"
    rb"Code Set:\((\d+)\)[^\n]*\n"
    rb"PIV:(\d+)\n"
    rb"Association:\((\d+)\)[^\n]*\n"
    rb"Designator Type:\((\d+)\)[^\n]*\n"
    # The value is raw bytes (a "]" or newline among them is possible): it ends at the "]\n" that
    # is followed by the next designator or by the end of the output.
    rb"Designator:\[(.*?)\]\n(?=DEVICE DESIGNATOR #|\Z)",
    re.S)


class LibiscsiError(Exception):
    pass


@dataclass(frozen=True)
class Designator:
    index: int
    code_set: int  # 1 binary, 2 ASCII, 3 UTF-8
    association: int  # 0 logical unit, 1 target port, 2 target device
    type: int  # 1 T10 vendor id, 2 EUI-64, 3 NAA, 8 SCSI name ...
    shown: bytes  # as iscsi-inq printed it: binary values cut at their first zero byte

    @property
    def naa_type(self) -> int | None:
        return self.shown[0] >> 4 if self.type == 3 and self.shown else None


def parse(out: bytes) -> list[Designator]:
    """The designators of `iscsi-inq -e 1 -c 131` output (bytes: binary values are printed raw)."""
    if b"Page Code:(0x83)" not in out:
        raise LibiscsiError("not VPD page 0x83 output of iscsi-inq: " + out[:200].decode("latin-1"))
    found = [Designator(int(m[1]), int(m[2]), int(m[4]), int(m[5]), m[6]) for m in _DESIGNATOR.finditer(out)]
    declared = len(re.findall(rb"^DEVICE DESIGNATOR #", out, re.M))
    if len(found) != declared:
        raise LibiscsiError(f"parsed {len(found)} of the {declared} designators iscsi-inq printed")
    return found


def naa_designator(designators: list[Designator]) -> Designator | None:
    """The logical unit's NAA designator ESXi would name the device after."""
    naas = [d for d in designators if d.type == 3 and d.association == 0 and d.naa_type in NAA_PREFERENCE]
    naas.sort(key=lambda d: NAA_PREFERENCE.index(d.naa_type or 0))
    return naas[0] if naas else None


def shown_for(naa_hex: str) -> bytes:
    """What iscsi-inq shows of this NAA: its bytes up to the first zero byte."""
    raw = bytes.fromhex(naa_hex.lower().removeprefix("naa."))
    return raw.split(b"\0", 1)[0]


def _run(tool: str, args: list[str], url: str, initiator: str | None, chap: tuple[str, str] | None,
         timeout: float) -> bytes:
    if not os.path.exists(tool):
        raise LibiscsiError(f"{tool} not found: install Debian libiscsi-bin (scripts/setup does)")
    argv = [tool, *args] + (["-i", initiator] if initiator else []) + [url]
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBISCSI_CHAP_")}
    if chap:
        env["LIBISCSI_CHAP_USERNAME"], env["LIBISCSI_CHAP_PASSWORD"] = chap
    p = subprocess.run(argv, capture_output=True, env=env, timeout=timeout)
    if p.returncode != 0:
        why = p.stderr.decode("utf-8", "replace").strip() or p.stdout[:200].decode("latin-1")
        raise LibiscsiError(f"{os.path.basename(tool)} {url} exited {p.returncode}: {why}")
    return p.stdout


def inquire(address: str, port: int, iqn: str, lun: int, *, initiator: str | None = None,
            chap: tuple[str, str] | None = None, timeout: float = 30) -> bytes:
    """Run iscsi-inq for VPD page 0x83 of one LUN; its stdout as bytes."""
    return _run(ISCSI_INQ, ["-e", "1", "-c", "131"], f"iscsi://{address}:{port}/{iqn}/{lun}", initiator, chap,
                timeout)


def parse_ls(out: bytes) -> dict[str, list[tuple[int, str]]]:
    """`iscsi-ls -s` output: (LUN, peripheral type) per target IQN."""
    targets: dict[str, list[tuple[int, str]]] = {}
    current = None
    for line in out.decode("utf-8", "replace").splitlines():
        m = re.match(r"^Target:(\S+) Portal:", line)
        if m:
            current = targets.setdefault(m.group(1), [])
            continue
        m = re.match(r"^Lun:(\d+)\s+Type:(\S+)", line)
        if m and current is not None:
            current.append((int(m.group(1)), m.group(2)))
    return targets


def list_luns(address: str, port: int, *, initiator: str | None = None, chap: tuple[str, str] | None = None,
              timeout: float = 60) -> dict[str, list[int]]:
    """Disk LUNs per target, found by libiscsi's discovery and REPORT LUNS (`iscsi-ls -s`)."""
    found = parse_ls(_run(ISCSI_LS, ["-s"], f"iscsi://{address}:{port}", initiator, chap, timeout))
    return {iqn: [n for n, kind in luns if kind == "DIRECT_ACCESS"] for iqn, luns in found.items()}


def assert_served(portal: str, naas, *, initiator: str | None = None,
                  chap: tuple[str, str] | None = None) -> dict[str, str]:
    """Every NAA in NAAS is presented at PORTAL ("addr:port"), as libiscsi reads VPD 0x83 of each
    disk LUN there: naa.X -> "IQN LUN n (what was compared)". Raises AssertionError naming the
    NAAs no LUN presented, beside what libiscsi did read."""
    address, _, port = portal.rpartition(":")
    wanted = {n.lower().removeprefix("naa.") for n in naas}
    outputs = [(iqn, lun, inquire(address, int(port), iqn, lun, initiator=initiator, chap=chap))
               for iqn, luns in sorted(list_luns(address, int(port), initiator=initiator, chap=chap).items())
               for lun in luns]
    found: dict[str, str] = {}
    for naa in sorted(wanted):
        for iqn, lun, out in outputs:
            try:
                found[f"naa.{naa}"] = f"{iqn} LUN {lun} ({check_naa(out, naa)})"
                break
            except AssertionError:
                continue
    missing = sorted(wanted - {k.removeprefix("naa.") for k in found})
    if missing:
        seen = [f"{iqn} LUN {lun}: {(d.shown.hex() if (d := naa_designator(parse(out))) else 'no NAA')}"
                for iqn, lun, out in outputs]
        raise AssertionError(f"libiscsi finds no LUN at {portal} presenting {', '.join('naa.' + m for m in missing)}"
                             f"; it read {'; '.join(seen) or 'no disk LUNs'}")
    return found


def check_naa(out: bytes, naa_hex: str, min_bytes: int = MIN_BYTES) -> str:
    """Raise AssertionError unless the iscsi-inq output presents this NAA; return what was compared."""
    naa_hex = naa_hex.lower().removeprefix("naa.")
    designators = parse(out)
    got = naa_designator(designators)
    expected = shown_for(naa_hex)
    if got is None:
        raise AssertionError(f"libiscsi saw no NAA designator where naa.{naa_hex} was expected: {designators}")
    if got.shown != expected:
        raise AssertionError(f"libiscsi reads NAA bytes {got.shown.hex()} where naa.{naa_hex} shows as "
                             f"{expected.hex()}")
    # tgt also copies its scsi_id, the whole NAA in hex, into a T10 vendor-id designator (text, so
    # printed whole). Two NAAs that agree up to a zero byte (600144f0b6a1c6b0 00 00 51a4…0001 and
    # …0002) look the same in the binary designator; the T10 text tells them apart.
    t10 = [d.shown.decode("ascii", "replace").strip().lower() for d in designators if d.type == 1]
    t10_naas = [t for t in t10 if re.fullmatch(r"[0-9a-f]{32}|[0-9a-f]{16}", t)]
    if t10_naas and naa_hex not in t10_naas:
        raise AssertionError(f"libiscsi reads the NAA bytes of naa.{naa_hex}, but the T10 vendor id carries "
                             f"{', '.join(t10_naas)}")
    compared = f"{len(expected)} NAA bytes" + (" and the T10 vendor id" if t10_naas else "")
    if len(expected) >= min_bytes or t10_naas:
        return compared
    raise AssertionError(f"naa.{naa_hex} has a zero byte at offset {len(expected)}: iscsi-inq shows only "
                         f"{len(expected)} of its bytes (fewer than {min_bytes}) and no T10 vendor id carries it")


def assert_presents(address: str, port: int, iqn: str, lun: int, naa_hex: str, *,
                    initiator: str | None = None, chap: tuple[str, str] | None = None) -> str:
    """libiscsi logs in to IQN at ADDRESS:PORT and reads VPD 0x83 of LUN: it must be NAA_HEX."""
    return check_naa(inquire(address, port, iqn, lun, initiator=initiator, chap=chap), naa_hex)
