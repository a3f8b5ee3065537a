"""A minimal iSCSI initiator: just enough to see a LUN the way ESXi will.

`esxdr target verify` must check what the DR target really serves on the wire
(the NAA in VPD 0x83, the serial, product id, size, and the VMFS header on the
LUN) before any ESXi host is asked to mount anything. pyscsi and
cython-iscsi do not work together here, so this speaks RFC 7143 directly over a
socket: login (no auth, CHAP-MD5 one-way or mutual), SendTargets, and single-PDU
SCSI commands (REPORT LUNS, INQUIRY, READ CAPACITY(16), READ(10)).

One :class:`Session` per target; every request/response exchange counts as one
round trip (``Session.round_trips``) so the benchmark can prove verify is
O(LUNs). Errors become :class:`esxdr.errors.TransientError` (network) or
:class:`esxdr.errors.CommandFailed` (the target said no), never raw socket errors.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from dataclasses import asdict, dataclass, field

from esxdr.errors import CommandFailed, TransientError, UsageError

DEFAULT_INITIATOR = "iqn.2024-01.io.esxdr:probe"

# Opcodes (RFC 7143 §11)
OP_NOP_OUT, OP_SCSI_CMD, OP_LOGIN, OP_TEXT, OP_LOGOUT = 0x00, 0x01, 0x03, 0x04, 0x06
OP_NOP_IN, OP_SCSI_RSP, OP_LOGIN_RSP, OP_TEXT_RSP, OP_DATA_IN, OP_LOGOUT_RSP, OP_R2T, OP_REJECT = (
    0x20, 0x21, 0x23, 0x24, 0x25, 0x26, 0x31, 0x3F)
FLAG_F = 0x80
MAX_RECV = 262144
# Preference among NAA designators, as ESXi names devices (DESIGN.md).
NAA_PREFERENCE = (6, 5, 2, 3)


@dataclass
class Chap:
    user: str
    secret: str
    # For mutual CHAP: what the target must answer with.
    mutual_user: str | None = None
    mutual_secret: str | None = None


@dataclass
class LunIdentity:
    lun: int
    device_type: int
    vendor: str
    product: str
    revision: str
    serial: str | None
    naa: str | None  # preferred NAA designator, lowercase hex
    naa_all: list[str] = field(default_factory=list)
    t10_id: str | None = None
    block_size: int = 0
    size_bytes: int = 0

    @property
    def esxi_name(self) -> str | None:
        return f"naa.{self.naa}" if self.naa else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["esxi_name"] = self.esxi_name
        return d


class ScsiError(CommandFailed):
    def __init__(self, message: str, status: int, sense: bytes):
        super().__init__(message)
        self.status = status
        self.sense = sense

    @property
    def sense_key(self) -> int | None:
        if len(self.sense) >= 3 and self.sense[0] & 0x7F in (0x70, 0x71):
            return self.sense[2] & 0x0F
        if len(self.sense) >= 2 and self.sense[0] & 0x7F in (0x72, 0x73):
            return self.sense[1] & 0x0F
        return None


# --------------------------------------------------------------------------- text keys
def encode_keys(pairs: list[tuple[str, str]]) -> bytes:
    return b"".join(f"{k}={v}".encode() + b"\0" for k, v in pairs)


def decode_keys(data: bytes) -> list[tuple[str, str]]:
    out = []
    for item in data.split(b"\0"):
        if item:
            k, _, v = item.decode("utf-8", "replace").partition("=")
            out.append((k, v))
    return out


def _pad(n: int) -> int:
    return (4 - n % 4) % 4


def _chap_bytes(text: str) -> bytes:
    if text[:2].lower() == "0x":
        return bytes.fromhex(text[2:])
    if text[:2].lower() == "0b":
        import base64

        return base64.b64decode(text[2:])
    return bytes.fromhex(text)


def encode_lun(lun: int) -> bytes:
    """SAM LUN field: peripheral addressing below 256, flat space addressing above."""
    if lun < 256:
        return bytes([0, lun]) + b"\0" * 6
    return bytes([0x40 | (lun >> 8), lun & 0xFF]) + b"\0" * 6


def decode_lun(b: bytes) -> int:
    method = b[0] >> 6
    if method == 1:
        return ((b[0] & 0x3F) << 8) | b[1]
    return b[1] if method == 0 else int.from_bytes(b[:2], "big")


def parse_vpd83(page: bytes) -> tuple[str | None, list[str], str | None]:
    """(preferred NAA, every LU-associated NAA, T10 vendor id) from INQUIRY VPD 0x83."""
    if len(page) < 4 or page[1] != 0x83:
        return None, [], None
    end = min(len(page), 4 + struct.unpack_from(">H", page, 2)[0])
    i = 4
    naas: list[str] = []
    t10 = None
    while i + 4 <= end:
        code_set = page[i] & 0x0F
        assoc = (page[i + 1] >> 4) & 0x03
        dtype = page[i + 1] & 0x0F
        length = page[i + 3]
        if i + 4 + length > end:  # a descriptor cut short by the allocation length
            break
        value = page[i + 4:i + 4 + length]
        if assoc == 0 and dtype == 3 and value:
            naas.append(value.hex())
        elif assoc == 0 and dtype == 1 and code_set == 2:
            t10 = value.decode("ascii", "replace").rstrip("\0 ")
        i += 4 + length
    best = None
    for t in NAA_PREFERENCE:
        best = next((n for n in naas if int(n[0], 16) == t), None)
        if best:
            break
    return best, naas, t10


# --------------------------------------------------------------------------- session
class Session:
    """One iSCSI session (one connection) to one target, or a discovery session."""

    def __init__(self, address: str, port: int = 3260, *, target: str | None = None,
                 initiator: str = DEFAULT_INITIATOR, chap: Chap | None = None, timeout: float = 10.0):
        self.address, self.port, self.target, self.initiator = address, port, target, initiator
        self.chap = chap
        self.timeout = timeout
        self.round_trips = 0
        self.sock: socket.socket | None = None
        self.isid = b"\x80" + os.urandom(5)
        self.itt = 0
        self.cmdsn = 1
        self.expstatsn = 0
        self.tsih = 0
        self.max_xmit = 8192
        self.params: dict[str, str] = {}
        self._label = f"{target or 'discovery'} at {address}:{port}"

    # -- context manager ------------------------------------------------------
    def __enter__(self) -> Session:
        self.login()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- PDU I/O --------------------------------------------------------------
    def _send(self, bhs: bytearray, data: bytes = b"") -> None:
        bhs[5:8] = len(data).to_bytes(3, "big")
        assert self.sock is not None
        try:
            self.sock.sendall(bytes(bhs) + data + b"\0" * _pad(len(data)))
        except OSError as e:
            raise TransientError(f"iSCSI {self._label}: send failed: {e}") from e

    def _recv_exact(self, n: int) -> bytes:
        assert self.sock is not None
        buf = bytearray()
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except OSError as e:
                raise TransientError(f"iSCSI {self._label}: receive failed: {e}") from e
            if not chunk:
                raise TransientError(f"iSCSI {self._label}: connection closed by the target")
            buf += chunk
        return bytes(buf)

    def _recv(self) -> tuple[bytes, bytes]:
        while True:
            bhs = self._recv_exact(48)
            ahs = bhs[4] * 4
            dlen = int.from_bytes(bhs[5:8], "big")
            if ahs:
                self._recv_exact(ahs)
            data = self._recv_exact(dlen + _pad(dlen))[:dlen] if dlen else b""
            op = bhs[0] & 0x3F
            if op in (OP_SCSI_RSP, OP_TEXT_RSP, OP_LOGOUT_RSP, OP_NOP_IN) or (op == OP_DATA_IN and bhs[1] & 0x01):
                statsn = struct.unpack_from(">I", bhs, 24)[0]
                if op != OP_NOP_IN or struct.unpack_from(">I", bhs, 16)[0] == 0xFFFFFFFF or True:
                    self.expstatsn = max(self.expstatsn, statsn + 1)
            if op == OP_NOP_IN and struct.unpack_from(">I", bhs, 16)[0] == 0xFFFFFFFF:
                # An unsolicited ping; answer it if the target wants an answer (TTT set).
                ttt = struct.unpack_from(">I", bhs, 20)[0]
                if ttt != 0xFFFFFFFF:
                    out = bytearray(48)
                    out[0] = OP_NOP_OUT | 0x40
                    out[1] = FLAG_F
                    out[8:16] = bhs[8:16]
                    struct.pack_into(">IIII", out, 16, 0xFFFFFFFF, ttt, self.cmdsn, self.expstatsn)
                    self._send(out)
                continue
            if op == OP_REJECT:
                raise CommandFailed(f"iSCSI {self._label}: target rejected a PDU (reason 0x{bhs[2]:02x})")
            return bhs, data

    def _next_itt(self) -> int:
        self.itt = (self.itt + 1) & 0x7FFFFFFF
        return self.itt

    # -- login ----------------------------------------------------------------
    def connect(self) -> None:
        try:
            self.sock = socket.create_connection((self.address, self.port), timeout=self.timeout)
        except OSError as e:
            raise TransientError(f"iSCSI: cannot connect to {self.address}:{self.port}: {e}",
                                 hint="is the target service running and the portal address right?") from e
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _login_pdu(self, csg: int, nsg: int, transit: bool, keys: list[tuple[str, str]]) -> tuple[bytes, dict]:
        bhs = bytearray(48)
        bhs[0] = OP_LOGIN | 0x40
        bhs[1] = (0x80 if transit else 0) | (csg << 2) | (nsg if transit else 0)
        bhs[8:14] = self.isid
        struct.pack_into(">H", bhs, 14, self.tsih)
        struct.pack_into(">I", bhs, 16, self._next_itt())
        struct.pack_into(">HH", bhs, 20, 0, 0)
        struct.pack_into(">II", bhs, 24, self.cmdsn, self.expstatsn)
        self._send(bhs, encode_keys(keys))
        rsp, data = self._recv()
        self.round_trips += 1
        if rsp[0] & 0x3F != OP_LOGIN_RSP:
            raise CommandFailed(f"iSCSI {self._label}: unexpected PDU 0x{rsp[0]:02x} during login")
        status_class, detail = rsp[36], rsp[37]
        if status_class != 0:
            raise _login_error(self._label, status_class, detail, self.initiator)
        self.tsih = struct.unpack_from(">H", rsp, 14)[0]
        self.expstatsn = struct.unpack_from(">I", rsp, 24)[0] + 1
        return rsp, dict(decode_keys(data))

    def login(self) -> None:
        if self.sock is None:
            self.connect()
        base = [("InitiatorName", self.initiator)]
        if self.target:
            base += [("SessionType", "Normal"), ("TargetName", self.target)]
        else:
            base += [("SessionType", "Discovery")]
        if self.chap:
            rsp, keys = self._login_pdu(0, 1, False, base + [("AuthMethod", "CHAP,None")])
            if keys.get("AuthMethod") == "CHAP":
                rsp, keys = self._login_pdu(0, 1, False, [("CHAP_A", "5")])
                ident, challenge = int(keys["CHAP_I"]), _chap_bytes(keys["CHAP_C"])
                digest = hashlib.md5(bytes([ident]) + self.chap.secret.encode() + challenge).hexdigest()
                answer = [("CHAP_N", self.chap.user), ("CHAP_R", "0x" + digest)]
                my_id, my_challenge = None, b""
                if self.chap.mutual_secret:
                    my_id, my_challenge = os.urandom(1)[0], os.urandom(16)
                    answer += [("CHAP_I", str(my_id)), ("CHAP_C", "0x" + my_challenge.hex())]
                rsp, keys = self._login_pdu(0, 1, True, answer)
                if my_id is not None:
                    assert self.chap.mutual_secret is not None
                    want = hashlib.md5(bytes([my_id]) + self.chap.mutual_secret.encode() + my_challenge).digest()
                    if _chap_bytes(keys.get("CHAP_R", "0x")) != want:
                        raise CommandFailed(f"iSCSI {self._label}: the target failed mutual CHAP",
                                            hint="check the target's outgoing (mutual) CHAP secret")
            while not (rsp[1] & 0x80):
                rsp, keys = self._login_pdu(0, 1, True, [])
        else:
            rsp, keys = self._login_pdu(0, 1, True, base + [("AuthMethod", "None")])
            if keys.get("AuthMethod", "None") not in ("None", ""):
                raise CommandFailed(f"iSCSI {self._label}: the target requires {keys.get('AuthMethod')}",
                                    hint="pass CHAP credentials (secret from a secrets file)")
        ops = [("HeaderDigest", "None"), ("DataDigest", "None"), ("MaxRecvDataSegmentLength", str(MAX_RECV)),
               ("InitialR2T", "Yes"), ("ImmediateData", "Yes"), ("MaxBurstLength", str(MAX_RECV)),
               ("FirstBurstLength", "65536"), ("DefaultTime2Wait", "0"), ("DefaultTime2Retain", "0"),
               ("MaxOutstandingR2T", "1"), ("ErrorRecoveryLevel", "0"), ("MaxConnections", "1")]
        if not self.target:
            ops = [("HeaderDigest", "None"), ("DataDigest", "None"),
                   ("MaxRecvDataSegmentLength", str(MAX_RECV))]
        rsp, keys = self._login_pdu(1, 3, True, ops)
        self.params.update(keys)
        while not (rsp[1] & 0x80 and rsp[1] & 0x03 == 3):
            rsp, more = self._login_pdu(1, 3, True, [])
            self.params.update(more)
        if "MaxRecvDataSegmentLength" in self.params:
            self.max_xmit = int(self.params["MaxRecvDataSegmentLength"])

    def close(self) -> None:
        if self.sock is None:
            return
        try:
            bhs = bytearray(48)
            bhs[0] = OP_LOGOUT | 0x40
            bhs[1] = FLAG_F | 0  # reason 0: close the session
            struct.pack_into(">I", bhs, 16, self._next_itt())
            struct.pack_into(">II", bhs, 24, self.cmdsn, self.expstatsn)
            self._send(bhs)
            self._recv()
            self.round_trips += 1
        except (TransientError, CommandFailed):
            pass
        finally:
            self.sock.close()
            self.sock = None

    # -- discovery ------------------------------------------------------------
    def send_targets(self) -> list[tuple[str, list[str]]]:
        """SendTargets=All: [(target name, ["addr:port,tpgt", ...])]."""
        payload = b""
        ttt = 0xFFFFFFFF
        request = encode_keys([("SendTargets", "All")])
        while True:
            bhs = bytearray(48)
            bhs[0] = OP_TEXT | 0x40
            bhs[1] = FLAG_F
            struct.pack_into(">IIII", bhs, 16, self._next_itt(), ttt, self.cmdsn, self.expstatsn)
            self._send(bhs, request)
            rsp, data = self._recv()
            self.round_trips += 1
            payload += data
            if rsp[1] & 0x40 == 0:  # C bit clear: complete
                break
            ttt = struct.unpack_from(">I", rsp, 20)[0]
            request = b""
        out: list[tuple[str, list[str]]] = []
        for k, v in decode_keys(payload):
            if k == "TargetName":
                out.append((v, []))
            elif k == "TargetAddress" and out:
                out[-1][1].append(v)
        return out

    # -- SCSI -----------------------------------------------------------------
    def scsi(self, lun: int, cdb: bytes, alloc: int, *, retries: int = 3) -> bytes:
        """Run one data-in SCSI command; returns the data. Retries UNIT ATTENTION."""
        for attempt in range(retries + 1):
            try:
                return self._scsi_once(lun, cdb, alloc)
            except ScsiError as e:
                if e.sense_key == 6 and attempt < retries:  # UNIT ATTENTION: reported once, then gone
                    continue
                raise
        raise AssertionError("unreachable")

    def _scsi_once(self, lun: int, cdb: bytes, alloc: int) -> bytes:
        itt = self._next_itt()
        bhs = bytearray(48)
        bhs[0] = OP_SCSI_CMD
        bhs[1] = FLAG_F | (0x40 if alloc else 0) | 0x01  # final, read, simple task
        bhs[8:16] = encode_lun(lun)
        struct.pack_into(">IIII", bhs, 16, itt, alloc, self.cmdsn, self.expstatsn)
        bhs[32:48] = cdb.ljust(16, b"\0")
        self.cmdsn += 1
        self._send(bhs)
        buf = bytearray(alloc)
        got = 0
        while True:
            rsp, data = self._recv()
            op = rsp[0] & 0x3F
            if op == OP_DATA_IN:
                offset = struct.unpack_from(">I", rsp, 40)[0]
                buf[offset:offset + len(data)] = data
                got = max(got, offset + len(data))
                if rsp[1] & 0x01:  # status in the last Data-In
                    status = rsp[3]
                    break
            elif op == OP_SCSI_RSP:
                status = rsp[3]
                if status != 0:
                    sense = data[2:2 + struct.unpack_from(">H", data, 0)[0]] if len(data) >= 2 else b""
                    self.round_trips += 1
                    raise ScsiError(f"iSCSI {self._label} LUN {lun}: SCSI command 0x{cdb[0]:02x} failed "
                                    f"with status 0x{status:02x}", status, sense)
                break
            else:
                raise CommandFailed(f"iSCSI {self._label}: unexpected PDU 0x{op:02x} for a SCSI command")
        self.round_trips += 1
        if status != 0:
            raise ScsiError(f"iSCSI {self._label} LUN {lun}: status 0x{status:02x}", status, b"")
        return bytes(buf[:got])

    def report_luns(self) -> list[int]:
        alloc = 8 + 8 * 512
        data = self.scsi(0, struct.pack(">BBBBBBIBB", 0xA0, 0, 0, 0, 0, 0, alloc, 0, 0), alloc)
        n = struct.unpack_from(">I", data, 0)[0] // 8
        return sorted(decode_lun(data[8 + 8 * i:16 + 8 * i]) for i in range(n) if 16 + 8 * i <= len(data))

    def inquiry(self, lun: int, page: int | None = None, alloc: int = 255) -> bytes:
        evpd = 1 if page is not None else 0
        return self.scsi(lun, struct.pack(">BBBHB", 0x12, evpd, page or 0, alloc, 0), alloc)

    def read_capacity16(self, lun: int) -> tuple[int, int]:
        """(block count, block size)."""
        data = self.scsi(lun, struct.pack(">BBQIBB", 0x9E, 0x10, 0, 32, 0, 0), 32)
        last, bs = struct.unpack_from(">QI", data, 0)
        return last + 1, bs

    def read10(self, lun: int, lba: int, blocks: int, block_size: int) -> bytes:
        return self.scsi(lun, struct.pack(">BBIBHB", 0x28, 0, lba, 0, blocks, 0), blocks * block_size)

    def identify(self, lun: int) -> LunIdentity:
        """INQUIRY standard + VPD 0x80 + VPD 0x83 + READ CAPACITY(16): 4 round trips."""
        std = self.inquiry(lun, None, 96)
        serial = None
        try:
            v80 = self.inquiry(lun, 0x80)
            if len(v80) >= 4 and v80[1] == 0x80:
                serial = v80[4:4 + v80[3]].decode("ascii", "replace").strip("\0 ") or None
        except ScsiError:
            pass
        v83 = self.inquiry(lun, 0x83)
        naa, all_naa, t10 = parse_vpd83(v83)
        ident = LunIdentity(lun=lun, device_type=std[0] & 0x1F,
                            vendor=std[8:16].decode("ascii", "replace").strip(),
                            product=std[16:32].decode("ascii", "replace").strip(),
                            revision=std[32:36].decode("ascii", "replace").strip(),
                            serial=serial, naa=naa, naa_all=all_naa, t10_id=t10)
        if ident.device_type == 0:
            blocks, bs = self.read_capacity16(lun)
            ident.block_size, ident.size_bytes = bs, blocks * bs
        return ident

    def reader(self, lun: int, block_size: int):  # a read_at callable for esxdr.vmfs
        """A ``read_at(offset, n)`` over READ(10), caching blocks so headers cost one read each."""
        cache: dict[int, bytes] = {}

        def read_at(offset: int, n: int) -> bytes:
            first, last = offset // block_size, (offset + n - 1) // block_size
            missing = [b for b in range(first, last + 1) if b not in cache]
            if missing:
                lo, hi = missing[0], missing[-1]
                data = self.read10(lun, lo, hi - lo + 1, block_size)
                for i in range(hi - lo + 1):
                    cache[lo + i] = data[i * block_size:(i + 1) * block_size]
            raw = b"".join(cache[b] for b in range(first, last + 1))
            start = offset - first * block_size
            return raw[start:start + n]

        return read_at


def _login_error(label: str, status_class: int, detail: int, initiator: str) -> CommandFailed:
    what = {
        (2, 1): ("authentication failed", "check the CHAP user and secret"),
        (2, 2): (f"initiator {initiator} is not allowed (ACL)",
                 f"add it to the target's ACL (esxdr target import --allow-initiator {initiator})"),
        (2, 3): ("target not found", "check the target IQN; `esxdr target verify` reads it from the manifest"),
        (3, 0): ("target error", "look at the target service's log"),
    }.get((status_class, detail), (f"login failed (class {status_class}, detail {detail})", None))
    return CommandFailed(f"iSCSI {label}: {what[0]}", hint=what[1])


def discover(address: str, port: int = 3260, *, initiator: str = DEFAULT_INITIATOR,
             chap: Chap | None = None, timeout: float = 10.0) -> list[tuple[str, list[str]]]:
    """SendTargets discovery. Returns what the target advertises; connect to none of it blindly."""
    with Session(address, port, initiator=initiator, chap=chap, timeout=timeout) as s:
        return s.send_targets()


def check_loopback(address: str) -> None:
    """Guard used by tests and the lab: only 127.0.0.0/8 is ever probed there."""
    if not address.startswith("127."):
        raise UsageError(f"refusing to probe {address}: only 127.0.0.0/8 is allowed here")
