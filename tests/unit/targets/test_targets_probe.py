"""The pure parts of the iSCSI initiator: text keys, LUN addressing, VPD 0x83 and the NAA preference."""

from __future__ import annotations

import struct

import pytest

from esxdr.errors import UsageError
from esxdr.targets import probe


def designator(code_set: int, assoc: int, dtype: int, value: bytes) -> bytes:
    return bytes([code_set, (assoc << 4) | dtype, 0, len(value)]) + value


def page83(*descs: bytes) -> bytes:
    body = b"".join(descs)
    return bytes([0, 0x83]) + struct.pack(">H", len(body)) + body


NAA6 = bytes.fromhex("600144f0b6a1c6b0000051a4d5e20001")
NAA3 = bytes.fromhex("3000000100000001")
NAA5 = bytes.fromhex("5000c5001234abcd")


@pytest.mark.parametrize("descs, best", [
    ([designator(2, 0, 1, b"IET     00010001"), designator(1, 0, 3, NAA3), designator(1, 0, 3, NAA6)], NAA6.hex()),
    ([designator(1, 0, 3, NAA3), designator(1, 0, 3, NAA5)], NAA5.hex()),
    ([designator(1, 0, 3, NAA3)], NAA3.hex()),
    ([designator(1, 1, 3, NAA6), designator(1, 0, 3, NAA3)], NAA3.hex()),  # port-associated NAA ignored
    ([designator(2, 0, 1, b"VENDOR  x")], None),
])
def test_vpd83_preference(descs, best):
    naa, _, _ = probe.parse_vpd83(page83(*descs))
    assert naa == best


def test_vpd83_t10_and_truncation():
    page = page83(designator(2, 0, 1, b"IET     00010001"), designator(1, 0, 3, NAA6))
    naa, all_naa, t10 = probe.parse_vpd83(page)
    assert t10 == "IET     00010001" and all_naa == [NAA6.hex()]
    assert probe.parse_vpd83(page[:-4])[0] is None  # a cut descriptor is not read past the page
    assert probe.parse_vpd83(b"\0\x80\0\0") == (None, [], None)


@pytest.mark.parametrize("lun", [0, 1, 255, 256, 1000, 16383])
def test_lun_addressing(lun):
    assert probe.decode_lun(probe.encode_lun(lun)) == lun


def test_keys():
    data = probe.encode_keys([("InitiatorName", "iqn.x:y"), ("AuthMethod", "CHAP,None")])
    assert data.endswith(b"\0") and probe.decode_keys(data) == [("InitiatorName", "iqn.x:y"),
                                                                  ("AuthMethod", "CHAP,None")]


@pytest.mark.parametrize("text, raw", [("0x0a0b", b"\x0a\x0b"), ("0B CgsM".replace(" ", ""), b"\x0a\x0b\x0c")])
def test_chap_encodings(text, raw):
    assert probe._chap_bytes(text) == raw


def test_loopback_guard():
    probe.check_loopback("127.0.0.2")
    with pytest.raises(UsageError):
        probe.check_loopback("10.0.0.5")


def test_scsi_error_sense_key():
    e = probe.ScsiError("x", 2, bytes([0x70, 0, 0x06]) + b"\0" * 15)
    assert e.sense_key == 6
    assert probe.ScsiError("x", 2, bytes([0x72, 0x05, 0x24, 0])).sense_key == 5
