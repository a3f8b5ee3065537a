"""What a zfs send stream and a resume token say about themselves, read without zfs.

``esxdr serve`` reads both before it lets zfs act on them: the first record of the stream says
whether it is a full or an incremental stream (and from which snapshot, by guid) and whether it
carries properties or a whole tree (``send -p``/``-R``); a resume token says which snapshot
``zfs send -t`` would read. Standard library only, like serve.

Formats (OpenZFS ``sys/zfs_ioctl.h``, unchanged since the pool-v23 code zfs-fuse carries):

- A stream is a series of 312-byte ``dmu_replay_record``s: ``drr_type`` (u32; 0 = BEGIN, 5 = END),
  ``drr_payloadlen`` (u32), then for BEGIN ``struct drr_begin``: ``drr_magic`` (u64, 0x2F5bacbac),
  ``drr_versioninfo`` (u64; its low two bits are the header type, 1 = one snapshot's substream,
  2 = a compound stream), ``drr_creation_time`` (u64), ``drr_type`` (u32), ``drr_flags`` (u32),
  ``drr_toguid`` (u64), ``drr_fromguid`` (u64, 0 for a full stream) and ``drr_toname`` (256 bytes).
  Written in the sender's byte order; the magic tells which.
- libzfs writes a compound stream for ``send -I`` (a series of snapshots), ``-R`` and ``-p``: a
  BEGIN whose payload (``drr_payloadlen`` bytes) is an nvlist only for ``-R``/``-p`` (the tree,
  properties; with ``receive -F`` the receiver then destroys what the tree lacks), an END record,
  then one substream per snapshot, the first from the series' base.
- A resume token is ``1-<checksum>-<length>-<hex>``: the hex is a zlib-compressed nvlist packed in
  native encoding (``fnvlist_pack``), the length is the packed size, and the checksum is the first
  fletcher-4 word of the compressed bytes (the sum of its 32-bit words).
"""

import struct
import zlib

MAGIC = 0x2F5BACBAC
BEGIN_BYTES = 312  # one dmu_replay_record
SUBSTREAM, COMPOUND = 1, 2
DRR_BEGIN, DRR_END = 0, 5


class BadStream(ValueError):
    pass


class Begin:
    """A stream's BEGIN record, as far as serve judges it. (No dataclass: serve runs on Python 3.6.)"""

    __slots__ = ("toguid", "fromguid", "toname", "header_type", "payload", "order")

    def __init__(self, toguid: int, fromguid: int, toname: str, header_type: int, payload: int = 0,
                 order: str = "<") -> None:
        self.toguid, self.fromguid, self.toname, self.header_type = toguid, fromguid, toname, header_type
        self.payload = payload  # drr_payloadlen: the bytes of nvlist after this record
        self.order = order

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Begin) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self) -> str:
        return "Begin(" + ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__) + ")"

    @property
    def full(self) -> bool:
        return self.fromguid == 0

    @property
    def compound(self) -> bool:
        return self.header_type == COMPOUND


def parse_begin(head: bytes) -> Begin:
    """The BEGIN record at the head of a stream (its first BEGIN_BYTES bytes)."""
    if len(head) < BEGIN_BYTES:
        raise BadStream(f"the stream ends after {len(head)} bytes, before its first record does")
    for order in "<>":
        if struct.unpack_from(order + "Q", head, 8)[0] == MAGIC:
            break
    else:
        raise BadStream("not a zfs send stream (no stream magic in its first record)")
    drr_type, _payload, _magic, versioninfo, _ctime, _ostype, _flags, toguid, fromguid = \
        struct.unpack_from(order + "IIQQQIIQQ", head, 0)
    if drr_type != 0:
        raise BadStream(f"the stream's first record is of type {drr_type}, not BEGIN")
    name = head[56:56 + 256].split(b"\0", 1)[0].decode("utf-8", "replace")
    return Begin(toguid=toguid, fromguid=fromguid, toname=name, header_type=versioninfo & 3, payload=_payload,
                 order=order)


def record_type(record: bytes, order: str) -> int:
    if len(record) < BEGIN_BYTES:
        raise BadStream(f"the stream ends after a partial record ({len(record)} bytes)")
    return int(struct.unpack_from(order + "I", record, 0)[0])


def read_head(read) -> "tuple[bytes, Begin, Begin]":
    """Read a stream's head with ``read(n)``: (the bytes read, its first BEGIN, the BEGIN of its
    first substream). For a compound stream without payload (``send -I``) that is the record after
    the compound header's END; a payload (``-R``/``-p``) is not read: the caller refuses it."""
    head = read(BEGIN_BYTES)
    first = parse_begin(head)
    if not first.compound or first.payload:
        return head, first, first
    end = read(BEGIN_BYTES)
    if record_type(end, first.order) != DRR_END:
        raise BadStream("the compound stream's header is not followed by its END record")
    sub = read(BEGIN_BYTES)
    substream = parse_begin(sub)
    if substream.compound:
        raise BadStream("a compound stream inside a compound stream")
    return head + end + sub, first, substream


# -- resume tokens -------------------------------------------------------------------------------

# data_type_t values of the nvpairs a token holds (sys/nvpair.h)
_BOOLEAN, _UINT64, _INT64, _STRING, _BOOLEAN_VALUE = 1, 8, 7, 9, 21


def decode_token(token: str) -> "dict[str, object]":
    """The nvlist a ``receive_resume_token`` packs: toguid, toname, fromguid, object, offset, …"""
    parts = token.strip().split("-")
    if len(parts) != 4 or parts[0] != "1":
        raise BadStream("not a version-1 resume token (1-<checksum>-<length>-<hex>)")
    try:
        checksum, length = int(parts[1], 16), int(parts[2], 16)
        compressed = bytes.fromhex(parts[3])
    except ValueError as e:
        raise BadStream("the resume token is corrupt (not hex)") from e
    words = len(compressed) // 4
    if sum(struct.unpack_from(f"<{words}I", compressed)) & (2**64 - 1) != checksum:
        raise BadStream("the resume token is corrupt (checksum mismatch)")
    if length > 1 << 16:
        raise BadStream("the resume token is implausibly large")
    try:
        packed = zlib.decompressobj().decompress(compressed, length + 1)
    except zlib.error as e:
        raise BadStream("the resume token is corrupt (it does not decompress)") from e
    if len(packed) != length:
        raise BadStream("the resume token is corrupt (wrong length)")
    return _unpack_native(packed)


def _unpack_native(buf: bytes) -> "dict[str, object]":
    """A natively encoded nvlist of scalars (what a resume token holds); nested lists are refused."""
    if len(buf) < 12 or buf[0] != 0:
        raise BadStream("the resume token's nvlist is not natively encoded")
    order = "<" if buf[1] == 1 else ">"
    out: dict[str, object] = {}
    at = 12  # nvs header (4), nvl_version (4), nvl_nvflag (4)
    while True:
        if at + 4 > len(buf):
            raise BadStream("the resume token's nvlist is truncated")
        size = struct.unpack_from(order + "i", buf, at)[0]
        if size == 0:
            return out
        if size < 16 or at + size > len(buf):
            raise BadStream("the resume token's nvlist is malformed")
        name_sz, _reserve, nelem, dtype = struct.unpack_from(order + "hhii", buf, at + 4)
        name_at = at + 16
        value_at = name_at + ((name_sz + 7) & ~7)
        if name_sz < 1 or value_at > at + size:
            raise BadStream("the resume token's nvlist is malformed")
        name = buf[name_at:name_at + name_sz - 1].decode("utf-8", "replace")
        if dtype in (_UINT64, _INT64) and nelem == 1:
            out[name] = struct.unpack_from(order + ("Q" if dtype == _UINT64 else "q"), buf, value_at)[0]
        elif dtype == _STRING and nelem == 1:
            out[name] = buf[value_at:at + size].split(b"\0", 1)[0].decode("utf-8", "replace")
        elif dtype == _BOOLEAN:
            out[name] = True
        elif dtype == _BOOLEAN_VALUE and nelem == 1:
            out[name] = bool(struct.unpack_from(order + "i", buf, value_at)[0])
        else:
            out[name] = None  # a kind esxdr never needs to read (redaction lists …)
        at += size
