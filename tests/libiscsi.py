"""libiscsi's `iscsi-inq` as a third-party initiator for the tests.

esxdr's probe and esxsim's rescan both read VPD page 0x83 with iSCSI code written
here, from the same beliefs as the targets' configuration. libiscsi (Debian
`libiscsi-bin`) was written by no one here: when it reads the NAA a manifest
promises, the identity is on the wire for any initiator, ESXi included.

`iscsi-inq -e 1 -c 131 iscsi://HOST:PORT/IQN/LUN` prints each designator as
"Designator:[...]", binary ones raw and cut at their first zero byte (libiscsi
prints the designator with %s). So what can be compared is the NAA's bytes up to
its first zero byte: :func:`shown_for` is exactly that. A NAA with a zero byte in
its first 8 (tgt's default `60000000000000000e…`) shows fewer than 8 bytes; for
those :func:`check_naa` also accepts tgt's T10 vendor-id designator, which tgt
fills with the whole `scsi_id` as text.

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


def inquire(address: str, port: int, iqn: str, lun: int, *, initiator: str | None = None,
            chap: tuple[str, str] | None = None, timeout: float = 30) -> bytes:
    """Run iscsi-inq for VPD page 0x83 of one LUN; its stdout as bytes."""
    if not os.path.exists(ISCSI_INQ):
        raise LibiscsiError(f"{ISCSI_INQ} not found: install Debian libiscsi-bin (scripts/setup does)")
    argv = [ISCSI_INQ, "-e", "1", "-c", "131"]
    if initiator:
        argv += ["-i", initiator]
    argv.append(f"iscsi://{address}:{port}/{iqn}/{lun}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIBISCSI_CHAP_")}
    if chap:
        env["LIBISCSI_CHAP_USERNAME"], env["LIBISCSI_CHAP_PASSWORD"] = chap
    p = subprocess.run(argv, capture_output=True, env=env, timeout=timeout)
    if p.returncode != 0:
        why = p.stderr.decode("utf-8", "replace").strip() or p.stdout[:200].decode("latin-1")
        raise LibiscsiError(f"iscsi-inq {argv[-1]} exited {p.returncode}: {why}")
    return p.stdout


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
    if len(expected) >= min_bytes:
        return f"{len(expected)} NAA bytes"
    # Fewer bytes than asked for are comparable (a zero byte early in the NAA). tgt also puts its
    # scsi_id, the whole NAA in hex, in a T10 vendor-id designator: accept that as the full comparison.
    t10 = [d.shown.decode("ascii", "replace").strip().lower() for d in designators if d.type == 1]
    if naa_hex in t10:
        return f"{len(expected)} NAA bytes and the T10 vendor id"
    raise AssertionError(f"naa.{naa_hex} has a zero byte at offset {len(expected)}: iscsi-inq shows only "
                         f"{len(expected)} of its bytes (fewer than {min_bytes}) and no T10 vendor id carries it")


def assert_presents(address: str, port: int, iqn: str, lun: int, naa_hex: str, *,
                    initiator: str | None = None, chap: tuple[str, str] | None = None) -> str:
    """libiscsi logs in to IQN at ADDRESS:PORT and reads VPD 0x83 of LUN: it must be NAA_HEX."""
    return check_naa(inquire(address, port, iqn, lun, initiator=initiator, chap=chap), naa_hex)
