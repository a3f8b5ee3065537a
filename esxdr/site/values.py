"""Parsers and validators for the scalar values of a site file.

Each function takes the text the user wrote and returns the normalised value,
or raises :class:`Invalid` with a message and a hint. They know nothing about
YAML or file positions, so the rest of esxdr can reuse them (for example to
parse a ``--bandwidth-limit 50M`` option).
"""

from __future__ import annotations

import ipaddress
import re

from esxdr.site.model import KeepRules


class Invalid(ValueError):
    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


# ---------------------------------------------------------------- durations and sizes

_DURATION_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
_DURATION_PART = re.compile(r"(\d+)\s*([wdhms])")
_DURATION_HINT = "write it like 90s, 15m, 1h, 4h30m, 2d or 1w (or a number of seconds)"


def parse_duration(value: str | int) -> int:
    """``"90s"``, ``"15m"``, ``"4h30m"``, ``"2d"``, ``"1w"`` or an integer → seconds."""
    if isinstance(value, bool):
        raise Invalid(f"{value!r} is not a duration", _DURATION_HINT)
    if isinstance(value, int):
        if value < 0:
            raise Invalid(f"duration {value} is negative", _DURATION_HINT)
        return value
    text = value.strip().lower()
    if text.isdigit():
        return int(text)
    pos, total, last_rank = 0, 0, -1
    order = list(_DURATION_UNITS)
    for m in _DURATION_PART.finditer(text):
        if text[pos:m.start()].strip():
            break
        rank = order.index(m.group(2))
        if rank <= last_rank:
            raise Invalid(f"{value!r} is not a duration: units must go from largest to smallest, once each",
                          _DURATION_HINT)
        last_rank = rank
        total += int(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if pos == 0 or text[pos:].strip():
        raise Invalid(f"{value!r} is not a duration", _DURATION_HINT)
    return total


def format_duration(seconds: int) -> str:
    """The inverse of :func:`parse_duration`: 16200 → ``"4h30m"``, 0 → ``"0s"``."""
    if seconds <= 0:
        return "0s"
    out = []
    for unit, size in _DURATION_UNITS.items():
        if unit == "w" and seconds % size:
            continue  # 10d reads better than 1w3d
        n, seconds = divmod(seconds, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out)


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b)?$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE_HINT = "write it like 512K, 50M, 1G (binary units) or a number of bytes"


def parse_size(value: str | int) -> int:
    """``"512K"``, ``"50M"``, ``"1.5G"``, ``"2TiB"`` or an integer → bytes (binary units)."""
    if isinstance(value, bool):
        raise Invalid(f"{value!r} is not a size", _SIZE_HINT)
    if isinstance(value, int):
        if value < 0:
            raise Invalid(f"size {value} is negative", _SIZE_HINT)
        return value
    m = _SIZE.match(value.strip())
    if not m or (m.group(3) and m.group(3).lower() == "ib" and not m.group(2)):
        raise Invalid(f"{value!r} is not a size", _SIZE_HINT)
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


# ---------------------------------------------------------------- retention

_KEEP_WORDS = {
    "h": "hourly", "hourly": "hourly", "hours": "hourly",
    "d": "daily", "daily": "daily", "days": "daily",
    "w": "weekly", "weekly": "weekly", "weeks": "weekly",
    "m": "monthly", "monthly": "monthly", "months": "monthly",
    "y": "yearly", "yearly": "yearly", "years": "yearly",
    "last": "last", "latest": "last",
}
_KEEP_PART = re.compile(r"(\d+)\s*([a-z]+)")
KEEP_HINT = 'write it like "48h 30d 12w 12m" (hourly, daily, weekly, monthly; y = yearly, "3 last")'


def parse_keep_rules(text: str) -> KeepRules:
    """``"48h 30d 12w 12m"`` or ``"48 hourly, 30 daily, 12 weekly, 12 monthly, 3 last"``."""
    counts: dict[str, int] = {}
    pos = 0
    cleaned = text.strip().lower()
    for m in _KEEP_PART.finditer(cleaned):
        if cleaned[pos:m.start()].strip(" ,"):
            break
        word = _KEEP_WORDS.get(m.group(2))
        if word is None:
            raise Invalid(f"unknown retention period {m.group(2)!r} in {text!r}", KEEP_HINT)
        if word in counts:
            raise Invalid(f"retention period {word} given twice in {text!r}", KEEP_HINT)
        counts[word] = int(m.group(1))
        pos = m.end()
    if pos == 0 or cleaned[pos:].strip(" ,"):
        raise Invalid(f"{text!r} is not a retention rule", KEEP_HINT)
    counts.setdefault("last", 1)
    return KeepRules(**counts)



# ---------------------------------------------------------------- schedule

_CRON_FIELDS = (
    ("minute", 0, 59, None),
    ("hour", 0, 23, None),
    ("day of month", 1, 31, None),
    ("month", 1, 12, ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]),
    ("day of week", 0, 7, ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]),
)
CRON_HINT = 'five fields: minute hour day-of-month month day-of-week, e.g. "0 */4 * * *"'


def check_cron(expr: str) -> str:
    """Validate a five-field cron expression; returns it with whitespace normalised."""
    fields = expr.split()
    if len(fields) != 5:
        raise Invalid(f"cron expression {expr!r} has {len(fields)} field{'s' if len(fields) != 1 else ''}, "
                      "not 5", CRON_HINT)
    for text, (label, lo, hi, names) in zip(fields, _CRON_FIELDS, strict=True):
        for item in text.split(","):
            _check_cron_item(item, label, lo, hi, names, expr)
    return " ".join(fields)


def _check_cron_item(item: str, label: str, lo: int, hi: int, names: list[str] | None, expr: str) -> None:
    def number(s: str) -> int:
        if names and s.lower() in names:
            return names.index(s.lower()) + lo
        if not s.isdigit():
            raise Invalid(f"cron {label} field has {s!r} in {expr!r}", CRON_HINT)
        n = int(s)
        if not lo <= n <= hi:
            raise Invalid(f"cron {label} {n} is out of range {lo}–{hi} in {expr!r}", CRON_HINT)
        return n

    base, _, step = item.partition("/")
    if step and (not step.isdigit() or int(step) == 0):
        raise Invalid(f"cron {label} step {step!r} is not a positive number in {expr!r}", CRON_HINT)
    if base == "*":
        return
    start, dash, end = base.partition("-")
    a = number(start)
    if dash and number(end) < a:
        raise Invalid(f"cron {label} range {base!r} runs backwards in {expr!r}", CRON_HINT)


def check_timezone(name: str) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if name.upper() == "UTC":
        return "UTC"
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise Invalid(f"unknown time zone {name!r}", "use an IANA name such as UTC or Europe/Berlin") from None
    return name



# ---------------------------------------------------------------- names and identities

_ZFS_COMPONENT = re.compile(r"^[A-Za-z0-9_.:-]+$")
_ZFS_RESERVED_POOLS = {"mirror", "raidz", "raidz1", "raidz2", "raidz3", "draid", "spare", "log", "cache",
                       "special", "dedup"}
_ZFS_HINT = "ZFS names are pool/filesystem/…: letters, digits, '_', '-', '.', ':'; no '@', '#' or spaces"


def check_zfs_name(name: str) -> str:
    """A ZFS filesystem or volume name (not a snapshot or bookmark)."""
    if not name:
        raise Invalid("empty dataset name", _ZFS_HINT)
    if len(name) > 255:
        raise Invalid(f"dataset name is {len(name)} characters long, ZFS allows 255", _ZFS_HINT)
    if "@" in name or "#" in name:
        raise Invalid(f"{name!r} is a snapshot or bookmark name, not a dataset", _ZFS_HINT)
    if name.startswith("/") or name.endswith("/"):
        raise Invalid(f"{name!r} starts or ends with '/'", "a dataset name has no leading or trailing slash "
                      "(it is not a mount point)")
    parts = name.split("/")
    for part in parts:
        if not part:
            raise Invalid(f"{name!r} has an empty component ('//')", _ZFS_HINT)
        if part in (".", ".."):
            raise Invalid(f"{name!r} has a {part!r} component", _ZFS_HINT)
        if not _ZFS_COMPONENT.match(part):
            bad = sorted({c for c in part if not re.match(r"[A-Za-z0-9_.:-]", c)})
            raise Invalid(f"{name!r} contains invalid character{'s' if len(bad) > 1 else ''} "
                          f"{' '.join(repr(c) for c in bad)}", _ZFS_HINT)
    pool = parts[0]
    if not pool[0].isalpha():
        raise Invalid(f"pool name {pool!r} must begin with a letter", _ZFS_HINT)
    if pool in _ZFS_RESERVED_POOLS or re.match(r"^c[0-9]", pool):
        raise Invalid(f"{pool!r} is a reserved pool name", _ZFS_HINT)
    return name


def zfs_under(name: str, root: str) -> bool:
    """True when ``name`` is ``root`` or below it."""
    return name == root or name.startswith(root + "/")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def check_object_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise Invalid(f"{what} name {name!r} is not valid",
                      "use up to 63 letters, digits, '_', '-' or '.', starting with a letter or digit")
    return name


_GROUP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")


def check_group_name(name: str) -> str:
    if not _GROUP_NAME.match(name):
        raise Invalid(f"protection group name {name!r} is not valid",
                      "it goes into snapshot names esxdr_<group>_<time>: use up to 63 letters, digits, "
                      "'-' or '.', starting with a letter or digit (no '_')")
    return name


_HOSTNAME_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def check_host(value: str) -> str:
    """An IP address (v4 or v6) or a DNS name."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    labels = value.rstrip(".").split(".")
    if len(value) > 253 or not all(_HOSTNAME_LABEL.match(label) for label in labels) or \
            labels[-1].isdigit():
        raise Invalid(f"{value!r} is not an IP address or host name",
                      "write an address like 10.20.0.5 or a name like ss2.example.com")
    return value


def check_port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise Invalid(f"port {value} is out of range 1–65535")
    return value


def split_host_port(value: str, default_port: int) -> tuple[str, int]:
    """``"10.0.0.5:3260"``, ``"10.0.0.5"``, ``"[fd00::5]:3260"``, ``"ss2.example"`` → (host, port)."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise Invalid(f"{value!r} is not address:port", "write [IPv6 address]:port")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""  # a bare IPv6 address or a host without port
    if port_text:
        if not port_text.isdigit():
            raise Invalid(f"port {port_text!r} in {value!r} is not a number")
        port = check_port(int(port_text))
    else:
        port = default_port
    return check_host(host), port


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_interface(value: str) -> str:
    """A host address with its prefix length, as on a VMkernel NIC: ``10.20.0.11/24``."""
    if "/" not in value:
        raise Invalid(f"{value!r} has no prefix length", "write the address with its prefix, e.g. 10.20.0.11/24")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise Invalid(f"{value!r} is not an address with a prefix length",
                      "write it like 10.20.0.11/24") from None
    net = iface.network
    if net.num_addresses > 2 and iface.ip in (net.network_address, net.broadcast_address):
        which = "network" if iface.ip == net.network_address else "broadcast"
        raise Invalid(f"{value!r} is the {which} address of {net}", "use a host address inside the subnet")
    return str(iface)


_NAA = re.compile(r"^(?:naa\.)?([0-9a-f]+)$", re.IGNORECASE)


def check_naa(value: str) -> str:
    """``naa.600144f0…`` (or the bare hex) → ``naa.`` + lower-case hex; NAA 6 has 32 digits, 2/3/5 have 16."""
    m = _NAA.match(value.strip())
    hint = "an NAA is naa. + 32 hex digits for NAA 6 (e.g. naa.600144f0928c010000004fc511ec0001), 16 for NAA 2, 3, 5"
    if not m:
        raise Invalid(f"{value!r} is not an NAA", hint)
    digits = m.group(1).lower()
    want = {"6": 32, "2": 16, "3": 16, "5": 16}.get(digits[0])
    if want is None:
        raise Invalid(f"{value!r} has NAA type {digits[0]}; ESXi names LUNs by NAA type 2, 3, 5 or 6", hint)
    if len(digits) != want:
        raise Invalid(f"{value!r} has {len(digits)} hex digits; NAA type {digits[0]} has {want}", hint)
    return "naa." + digits


_IQN = re.compile(r"^iqn\.\d{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*"
                  r"(:[^\s]+)?$")
_EUI = re.compile(r"^eui\.[0-9a-f]{16}$")
_IQN_HINT = "write it like iqn.2010-09.org.example:ss2 (iqn.YYYY-MM.reversed.domain[:name])"


def check_iqn(value: str, *, prefix: bool = False) -> str:
    """An iSCSI name (iqn. or eui.); with ``prefix`` only the iqn.YYYY-MM.domain form."""
    v = value.strip().lower()
    if _IQN.match(v) or (not prefix and _EUI.match(v)):
        return v
    raise Invalid(f"{value!r} is not an iSCSI {'name prefix' if prefix else 'name'}", _IQN_HINT)


_HOST_KEY = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")


def check_host_key(value: str) -> str:
    v = value.strip()
    if _HOST_KEY.match(v):
        return v
    if v.startswith("MD5:") or re.match(r"^([0-9a-f]{2}:){15}[0-9a-f]{2}$", v, re.IGNORECASE):
        raise Invalid(f"{value!r} is an MD5 fingerprint; esxdr pins SHA-256",
                      "run ssh-keyscan HOST | ssh-keygen -lf - and copy the SHA256:… value")
    raise Invalid(f"{value!r} is not an SSH host key fingerprint",
                  "pin it as SHA256:<43 base64 characters> (ssh-keyscan HOST | ssh-keygen -lf -)")


_CIPHER = re.compile(r"^[a-z0-9][a-z0-9@.-]*$")


def check_ciphers(value: str) -> str:
    """stream_ciphers: auto, default, or an OpenSSH cipher list (ssh -Q cipher names them)."""
    v = value.strip()
    if v in ("auto", "default"):
        return v
    names = v.split(",")
    if all(_CIPHER.match(n) for n in names):
        return v
    raise Invalid(f"{value!r} is not auto, default or a comma-separated cipher list",
                  "e.g. stream_ciphers: aes128-gcm@openssh.com,chacha20-poly1305@openssh.com "
                  "(ssh -Q cipher lists the names)")


def check_thumbprint(value: str) -> str:
    """A SHA-256 certificate thumbprint → upper-case colon hex (32 bytes)."""
    hexdigits = re.sub(r"[:\s]", "", value)
    hint = "run `esxdr host thumbprint HOST` (or openssl x509 -fingerprint -sha256) and pin the result"
    if not re.fullmatch(r"[0-9a-fA-F]*", hexdigits):
        raise Invalid(f"{value!r} is not a hex thumbprint", hint)
    if len(hexdigits) == 40:
        raise Invalid("this is a SHA-1 thumbprint (20 bytes); esxdr pins SHA-256 (32 bytes)", hint)
    if len(hexdigits) != 64:
        raise Invalid(f"thumbprint has {len(hexdigits) // 2} bytes; a SHA-256 thumbprint has 32", hint)
    h = hexdigits.upper()
    return ":".join(h[i:i + 2] for i in range(0, 64, 2))


_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_env_name(value: str) -> str:
    if not _ENV.match(value):
        raise Invalid(f"{value!r} is not an environment variable name",
                      "name the variable that holds the secret, e.g. ESXDR_VC_PASSWORD — not the secret itself")
    return value


_VMFS_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{12}$")


def check_vmfs_uuid(value: str) -> str:
    v = value.strip().lower()
    if not _VMFS_UUID.match(v):
        raise Invalid(f"{value!r} is not a VMFS volume UUID", "it looks like 5b7ee5c9-1a2b3c4d-5e6f-001122334455")
    return v
