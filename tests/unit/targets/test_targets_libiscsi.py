"""tests/libiscsi.py: the NAA a third-party initiator reads, parsed from saved iscsi-inq output.

The corpus (tests/unit/targets/libiscsi_corpus) was captured with libiscsi-bin 1.19.0 from tgt
1.0.85 (Debian 12): `iscsi-inq -e 1 -c 131 iscsi://127.0.0.9:PORT/IQN/LUN` against a
tgtd started on 127.0.0.9 with one LU per scsi_id named in each file name. The .err
files are iscsi-inq's stderr for a LUN and a target that do not exist (exit 10).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import libiscsi
import pytest

CORPUS = Path(__file__).parent / "libiscsi_corpus"


def saved(naa: str) -> bytes:
    return (CORPUS / f"inq-{naa}.txt").read_bytes()


@pytest.mark.parametrize("naa, compared", [
    # tgt with scsi_id set: the T10 vendor id carries the same NAA as text
    ("600144f0b6a1c6b0000051a4d5e20001", "8 NAA bytes and the T10 vendor id"),  # zero byte at offset 8
    ("6001405abcdef0123456789abcdef012", "16 NAA bytes and the T10 vendor id"),  # LIO-style, no zero byte
    ("605d0a5d0a0a5d5d0102030405060708", "16 NAA bytes and the T10 vendor id"),  # "]" and newlines in it
])
def test_saved_outputs_present_their_naa(naa, compared):
    out = saved(naa)
    ds = libiscsi.parse(out)
    # tgt 1.0.85: NAA-6 from scsi_id, NAA-3 (tid<<32|lun), T10 vendor id; all about the logical unit
    assert [(d.type, d.association) for d in ds] == [(3, 0), (3, 0), (1, 0)]
    assert [d.naa_type for d in ds] == [6, 3, None]
    assert libiscsi.naa_designator(ds).shown == bytes.fromhex(naa).split(b"\0")[0]
    assert libiscsi.check_naa(out, "naa." + naa.upper()) == compared


def test_t10_vendor_id_completes_a_short_comparison():
    # tgt copies an explicit scsi_id into a T10 vendor-id designator as text: the whole NAA, even
    # where the binary designator shows fewer bytes than asked for...
    out = saved("600144f0b6a1c6b0000051a4d5e20001")
    assert libiscsi.check_naa(out, "600144f0b6a1c6b0000051a4d5e20001", min_bytes=9) == \
        "8 NAA bytes and the T10 vendor id"
    # ...and it tells apart two NAAs that agree up to the zero byte, which the binary one cannot.
    assert libiscsi.shown_for("600144f0b6a1c6b0000051a4d5e20002") == libiscsi.shown_for(
        "600144f0b6a1c6b0000051a4d5e20001")
    with pytest.raises(AssertionError, match="T10 vendor id carries 600144f0b6a1c6b0000051a4d5e20001"):
        libiscsi.check_naa(out, "600144f0b6a1c6b0000051a4d5e20002")


def test_tgt_default_naa_shows_one_byte():
    # Without scsi_id tgt presents 60000000000000000e0000000001LLLL and "IET     0001LLLL" as T10
    # vendor id: libiscsi shows one NAA byte, too few to tell LUs apart, and the helper says so.
    out = saved("60000000000000000e00000000010002")
    assert libiscsi.naa_designator(libiscsi.parse(out)).shown == b"\x60"
    with pytest.raises(AssertionError, match="zero byte at offset 1"):
        libiscsi.check_naa(out, "60000000000000000e00000000010002")


def test_raw_bytes_are_not_cut_at_a_bracket_or_newline():
    d = libiscsi.naa_designator(libiscsi.parse(saved("605d0a5d0a0a5d5d0102030405060708")))
    assert d.shown == bytes.fromhex("605d0a5d0a0a5d5d0102030405060708")


def test_another_naa_is_refused():
    with pytest.raises(AssertionError, match="reads NAA bytes 600144f0b6a1c6b0 where"):
        libiscsi.check_naa(saved("600144f0b6a1c6b0000051a4d5e20001"), "600144f0b6a1c6b1000051a4d5e20001")
    with pytest.raises(AssertionError, match="reads NAA bytes 6001405abcdef0123456789abcdef012 where"):
        libiscsi.check_naa(saved("6001405abcdef0123456789abcdef012"), "6001405abcdef0123456789abcdef013")


def test_controller_lun_has_no_comparable_naa():
    out = (CORPUS / "inq-controller-lun0.txt").read_bytes()
    assert libiscsi.naa_designator(libiscsi.parse(out)).shown == b"\x60"
    with pytest.raises(AssertionError, match="only 1 of its bytes"):
        libiscsi.check_naa(out, "60000000000000000e00000000010000")


def test_not_vpd_83_output():
    with pytest.raises(libiscsi.LibiscsiError, match="not VPD page 0x83"):
        libiscsi.parse(b"Peripheral Qualifier:CONNECTED\nPage Code:(0x80) UNIT_SERIAL_NUMBER\n")


def test_shown_for():
    assert libiscsi.shown_for("naa.600144F0B6A1C6B0000051A4D5E20001") == bytes.fromhex("600144f0b6a1c6b0")
    assert libiscsi.shown_for("6001405abcdef0123456789abcdef012") == bytes.fromhex("6001405abcdef0123456789abcdef012")


@pytest.fixture()
def fake_inq(tmp_path, monkeypatch):
    """A stand-in iscsi-inq that records argv and its CHAP environment, then replays a saved run."""
    def make(stdout: Path, stderr: Path | None = None, rc: int = 0) -> Path:
        log = tmp_path / "calls.txt"
        script = tmp_path / "iscsi-inq"
        script.write_text("#!/bin/sh\n"
                          f'printf "%s\\n" "$*" "user=$LIBISCSI_CHAP_USERNAME pass=$LIBISCSI_CHAP_PASSWORD" > {log}\n'
                          f"cat {stdout}\n" + (f"cat {stderr} >&2\n" if stderr else "") + f"exit {rc}\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        monkeypatch.setattr(libiscsi, "ISCSI_INQ", str(script))
        return log
    return make


def test_inquire_passes_chap_in_the_environment_only(fake_inq, monkeypatch):
    monkeypatch.setenv("LIBISCSI_CHAP_PASSWORD", "left-over-from-the-caller")
    log = fake_inq(CORPUS / "inq-600144f0b6a1c6b0000051a4d5e20001.txt")
    shown = libiscsi.assert_presents("127.0.0.2", 3261, "iqn.2024-01.io.esxdr:t1", 1,
                                     "600144f0b6a1c6b0000051a4d5e20001",
                                     initiator="iqn.1998-01.com.vmware:esxi-dr", chap=("dr", "s3cret"))
    assert shown == "8 NAA bytes and the T10 vendor id"
    argv, env = log.read_text().splitlines()
    assert argv == ("-e 1 -c 131 -i iqn.1998-01.com.vmware:esxi-dr "
                    "iscsi://127.0.0.2:3261/iqn.2024-01.io.esxdr:t1/1")
    assert "s3cret" not in argv and env == "user=dr pass=s3cret"
    log = fake_inq(CORPUS / "inq-600144f0b6a1c6b0000051a4d5e20001.txt")
    libiscsi.inquire("127.0.0.2", 3261, "iqn.2024-01.io.esxdr:t1", 1)
    assert log.read_text().splitlines()[1] == "user= pass="  # no CHAP leaks in from the caller


@pytest.mark.parametrize("err", ["inq-no-such-lun.err", "inq-no-such-target.err"])
def test_inquire_failure_names_the_url_and_libiscsi_message(fake_inq, err):
    fake_inq(Path(os.devnull), CORPUS / err, rc=10)
    with pytest.raises(libiscsi.LibiscsiError, match=r"iscsi://127.0.0.2:3261/iqn.x/9 exited 10: Login Failed"):
        libiscsi.inquire("127.0.0.2", 3261, "iqn.x", 9)


def test_parse_ls_two_targets():
    listing = libiscsi.parse_ls((CORPUS / "iscsi-ls-two-targets.txt").read_bytes())
    assert listing == {
        "iqn.2024-01.io.esxdr:t1": [(0, "STORAGE_ARRAY_CONTROLLER"), (1, "DIRECT_ACCESS")],
        "iqn.2024-01.io.esxdr:t2": [(0, "STORAGE_ARRAY_CONTROLLER"), (1, "DIRECT_ACCESS"), (2, "DIRECT_ACCESS")]}


@pytest.fixture()
def fake_portal(tmp_path, monkeypatch):
    """iscsi-ls and iscsi-inq stand-ins replaying the two-target capture: t1 LUN 1 and t2 LUN 1 and 2."""
    ls = tmp_path / "iscsi-ls"
    ls.write_text(f"#!/bin/sh\ncat {CORPUS / 'iscsi-ls-two-targets.txt'}\n")
    inq = tmp_path / "iscsi-inq"
    inq.write_text("#!/bin/sh\nfor url; do :; done\ncase \"$url\" in\n"
                   f"*:t1/1) cat {CORPUS / 'inq-600144f0b6a1c6b0000051a4d5e20001.txt'} ;;\n"
                   f"*:t2/1) cat {CORPUS / 'inq-605d0a5d0a0a5d5d0102030405060708.txt'} ;;\n"
                   f"*:t2/2) cat {CORPUS / 'inq-6001405abcdef0123456789abcdef012.txt'} ;;\n"
                   "*) echo 'Login Failed.' >&2; exit 10 ;;\nesac\n")
    for f in (ls, inq):
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(libiscsi, "ISCSI_LS", str(ls))
    monkeypatch.setattr(libiscsi, "ISCSI_INQ", str(inq))


def test_assert_served_finds_each_naa_on_its_lun(fake_portal):
    got = libiscsi.assert_served("127.0.0.2:3260", ["naa.600144f0b6a1c6b0000051a4d5e20001",
                                                    "6001405abcdef0123456789abcdef012"])
    assert got == {
        "naa.600144f0b6a1c6b0000051a4d5e20001": "iqn.2024-01.io.esxdr:t1 LUN 1 (8 NAA bytes and the T10 vendor id)",
        "naa.6001405abcdef0123456789abcdef012": "iqn.2024-01.io.esxdr:t2 LUN 2 (16 NAA bytes and the T10 vendor id)"}


def test_assert_served_names_what_is_missing_and_what_was_read(fake_portal):
    with pytest.raises(AssertionError) as e:
        libiscsi.assert_served("127.0.0.2:3260", ["600144f0b6a1c6b0000051a4d5e20002"])
    msg = str(e.value)
    assert "presenting naa.600144f0b6a1c6b0000051a4d5e20002" in msg
    assert "iqn.2024-01.io.esxdr:t1 LUN 1: 600144f0b6a1c6b0" in msg and "t2 LUN 2: 6001405abcdef012" in msg
