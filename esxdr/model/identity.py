"""The identities a target manifest carries, checked one by one: NAA designators, iSCSI names
(RFC 3720), ACL members, dataset names and LUN files inside their dataset. What reaches a
target tool's argv or a config file passes here first."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

_HEX = re.compile(r"^[0-9a-f]+$")
# iSCSI names in the three forms of RFC 3720 3.2.6.3. The characters are the ASCII part of RFC 3722's
# profile (letters, digits, '-', '.', ':'); upper case is accepted because stringprep folds it. These
# names reach tgtadm/stmfadm argv and generated config files, so nothing else may pass.
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_IQN = re.compile(rf"^iqn\.\d{{4}}-(?:0[1-9]|1[0-2])\.{_LABEL}(?:\.{_LABEL})*(?::[a-z0-9.:-]*[a-z0-9])?$", re.I)
_EUI = re.compile(r"^eui\.[0-9a-f]{16}$", re.I)
_NAA_NAME = re.compile(r"^naa\.(?:[0-9a-f]{16}|[0-9a-f]{32})$", re.I)
ISCSI_NAME_MAX = 223  # bytes, RFC 3720 3.2.6.1


# --------------------------------------------------------------------------- NAA
@dataclass(frozen=True, order=True)
class Naa:
    """A SCSI NAA designator as ESXi names devices by it.

    Stored as lowercase hex: 32 digits for NAA type 6 (IEEE Registered
    Extended, what COMSTAR, LIO and tgt hand out) and 16 digits for types 2, 3
    and 5. The type is the first nibble, which is why the length and the first
    digit must agree.
    """

    hex: str

    def __post_init__(self) -> None:
        problem = naa_problem(self.hex)
        if problem:
            raise ValueError(problem)

    @classmethod
    def parse(cls, text: str) -> Naa:
        """Accept ``naa.600144f0…``, ``0x600144F0…``, upper case and ``-``/``:`` separators."""
        if not isinstance(text, str):
            raise ValueError(f"NAA must be a string of hex digits, not {type(text).__name__}")
        s = text.strip().lower()
        for prefix in ("naa.", "0x"):
            if s.startswith(prefix):
                s = s[len(prefix):]
        s = s.replace("-", "").replace(":", "")
        return cls(s)

    @property
    def naa_type(self) -> int:
        return int(self.hex[0], 16)

    @property
    def esxi_name(self) -> str:
        return f"naa.{self.hex}"

    @property
    def company_id(self) -> str | None:
        """The IEEE company id (OUI) for NAA 5 and 6: the 6 hex digits after the type nibble."""
        return self.hex[1:7] if self.naa_type in (5, 6) else None

    @property
    def vendor_specific(self) -> str:
        return self.hex[7:] if self.naa_type in (5, 6) else self.hex[1:]

    def __str__(self) -> str:
        return self.hex


def naa_problem(s: Any) -> str | None:
    """Why ``s`` is not a valid NAA designator in canonical form, or None."""
    if not isinstance(s, str):
        return f"NAA must be a string of hex digits, not {type(s).__name__}"
    if not s or not _HEX.match(s):
        return f"NAA {s!r} must be lowercase hex digits only"
    t = int(s[0], 16)
    if t == 6:
        if len(s) != 32:
            return f"NAA {s!r} is type 6 and must be 32 hex digits, got {len(s)}"
    elif t in (2, 3, 5):
        if len(s) != 16:
            return f"NAA {s!r} is type {t} and must be 16 hex digits, got {len(s)}"
    else:
        return f"NAA {s!r} has type {t}; only NAA types 2, 3, 5 and 6 exist"
    return None


# --------------------------------------------------------------------------- names and paths
def iscsi_name_problem(name: Any) -> str | None:
    """Why ``name`` is not an iSCSI name (iqn./eui./naa. form of RFC 3720), or None."""
    if not isinstance(name, str) or not name:
        return f"{name!r} is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex> or naa.<hex>)"
    if len(name.encode()) > ISCSI_NAME_MAX:
        return f"{name[:40]!r}… is {len(name.encode())} bytes long; an iSCSI name has at most {ISCSI_NAME_MAX}"
    if _IQN.match(name) or _EUI.match(name) or _NAA_NAME.match(name):
        return None
    return f"{name!r} is not an iSCSI name (iqn.YYYY-MM.reversed.domain[:id], eui.<16 hex> or naa.<hex>)"


def acl_member_problem(member: Any) -> str | None:
    """An ACL member is an initiator's iSCSI name or, for tgt, an IP address or network.

    tgt's keyword ``ALL`` (and any other word) is refused: esxdr never lets a manifest admit
    every initiator; the DR side names the initiators it admits."""
    if isinstance(member, str) and member.upper() == "ALL":
        return "'ALL' would admit every initiator; name the initiators (IQNs) or networks instead"
    if isinstance(member, str) and member[:4].lower() in ("iqn.", "eui.", "naa."):
        return iscsi_name_problem(member)
    try:
        ipaddress.ip_network(member, strict=False)
    except (TypeError, ValueError):
        return f"{member!r} is neither an initiator's iSCSI name nor an IP address or network"
    return None


def text_problem(value: str, limit: int = 255) -> str | None:
    """Free text (aliases) ends up in generated config files: one printable line, bounded."""
    if len(value) > limit or not value.isprintable():
        return f"{value[:40]!r} must be one line of at most {limit} printable characters"
    return None


def scsi_field_ok(value: str, limit: int) -> bool:
    # SCSI INQUIRY/VPD fields are printable ASCII. ',' and '=' are refused as well because tgt takes
    # these values in one `--params k=v,k=v` word: a comma in a product id would set another key.
    return len(value) <= limit and all(0x20 <= ord(c) < 0x7F for c in value) and "," not in value \
        and "=" not in value


ZVOL_DIRS = ("/dev/zvol/", "/dev/zvol/rdsk/", "/dev/zvol/dsk/")  # Linux/FreeBSD, illumos raw, illumos block


def dataset_problem(name: Any) -> str | None:
    from esxdr.site.values import Invalid, check_zfs_name

    try:
        check_zfs_name(name if isinstance(name, str) else "")
    except Invalid as e:
        return e.message
    return None


def relative_file(path: str, dataset: str) -> str:
    """The LUN file's name inside the filesystem of ``dataset``, from its production path.

    Production's mount point is not known on DR: the part after ``/<dataset>/`` is taken, else the
    last component. It must be exactly one plain name (no '/', not '.'/'..', no NUL, no leading '-'),
    so that the DR path ``<DR mount>/<name>`` cannot leave the DR dataset. Raises ValueError naming
    the cause otherwise."""
    marker = f"/{dataset}/"
    rel = path.split(marker, 1)[1] if marker in path else path.rsplit("/", 1)[-1]
    if "/" in rel or rel in ("", ".", ".."):
        raise ValueError(f"{path!r} leaves its dataset {dataset} (the LUN file must be one name directly in "
                         f"the dataset's mount, not {rel!r})")
    if "\x00" in rel or not rel.isprintable() or rel.startswith("-"):
        raise ValueError(f"{path!r}: the LUN file name {rel!r} has a control character or a leading '-'")
    return rel
