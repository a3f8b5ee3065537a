"""JSON Schema fragments for the site file's values (esxdr.site.schema): one per checker the loader
passes values through, and the patterns of the entry names it checks in code.

Patterns are ECMA-262 (editors run them in JavaScript; check-jsonschema uses regress): no flags,
no named groups. A pattern may be looser than its checker, never stricter: an editor must not
flag what esxdr accepts. tests/unit/site/test_schema.py holds each against its checker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from esxdr.site import loader as _loader
from esxdr.site import network as _network
from esxdr.site import values as _values
from esxdr.site.model import CALLOUT_RUNS, CALLOUT_STEP_KINDS

Norm = tuple[str, ...]  # a schema path: keys, "*" for any entry name, "[]" for any list item

# Entry names the loader checks in code (not through a typed getter), by where the entries are.
NAMES: dict[Norm, str] = {
    ("storage",): _values._NAME.pattern,
    ("vsphere",): _values._NAME.pattern,
    ("protection_groups",): _values._GROUP_NAME.pattern,
    ("dr_network", "*", "vmkernel"): "^vmk[0-9]+$",
    ("protection_groups", "*", "callouts"): "^(" + "|".join(CALLOUT_STEP_KINDS) + ")(:.+)?$",
}

# YAML 1.2 (editors, check-jsonschema) reads some scalars as numbers or booleans that the loader
# takes as the text written (YAML 1.1 text, any scalar but null): so text may be any of these.
TEXT_TYPES = ["string", "number", "boolean"]
YAML11_BOOL = "^(yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$"
YAML11_TRUE = "^(yes|Yes|YES|on|On|ON)$"
# A whole number the loader takes that YAML 1.2 reads as a string: quoted digits, or YAML 1.1's
# binary, underscored and sexagesimal integers.
YAML11_INT = r"^\s*[-+]?(0b[01_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*(:[0-5]?[0-9])*)\s*$"


def _ci(word: str) -> str:
    """A word matched in any case (JSON Schema patterns have no flags)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in word)


_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = rf"{_OCTET}(\.{_OCTET}){{3}}"
_IPV6 = r"[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*(%\S+)?"  # loose, but two colons at least
_LABEL = "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = rf"(?=.{{1,253}}$)({_LABEL}\.)*(?![0-9]+\.?$){_LABEL}\.?"
_PORT = "0*([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_NEAR_HOSTNAME = rf"({_LABEL}\.)*(?![0-9]+\.?(:|$)){_LABEL}\.?"  # no length look-ahead: a port follows
_IQN = (rf"{_ci('iqn')}\.[0-9]{{4}}-(0[1-9]|1[0-2])\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?"
        r"(\.[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:\S+)?")
_DURATION = (r"^\s*(?=[0-9])([0-9]+|([0-9]+\s*[wW]\s*)?([0-9]+\s*[dD]\s*)?([0-9]+\s*[hH]\s*)?"
             r"([0-9]+\s*[mM]\s*)?([0-9]+\s*[sS])?)\s*$")
_KEEP_WORD = "(" + "|".join(_ci(w) for w in sorted(_values._KEEP_WORDS, key=lambda w: (-len(w), w))) + ")(?![a-zA-Z])"
_KEEP = rf"^\s*[ ,]*[0-9]+\s*{_KEEP_WORD}([ ,]*[0-9]+\s*{_KEEP_WORD})*[ ,]*\s*$"


def _cron() -> str:
    months = "|".join(_ci(m) for m in ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct",
                                       "nov", "dec"))
    days = "|".join(_ci(d) for d in ("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
    numbers = ("0*([0-9]|[1-5][0-9])", "0*([0-9]|1[0-9]|2[0-3])", "0*([1-9]|[12][0-9]|3[01])",
               f"(0*([1-9]|1[0-2])|{months})", f"(0*[0-7]|{days})")
    fields = []
    for n in numbers:
        item = rf"(\*|{n}(-{n})?)(/0*[1-9][0-9]*)?"
        fields.append(f"{item}(,{item})*")
    return r"^\s*" + r"\s+".join(fields) + r"\s*$"


def _zfs_name() -> str:
    reserved = "|".join(sorted(_values._ZFS_RESERVED_POOLS))
    component = "[A-Za-z0-9_.:-]+"
    return rf"^(?!c[0-9])(?!({reserved})(/|$))[A-Za-z][A-Za-z0-9_.:-]*(/(?!\.\.?(/|$)){component})*$"


Format = tuple[dict[str, Any], str]  # (JSON Schema fragment, description)


def text_value(pattern: str = r"\S", types: Any = "string") -> dict[str, Any]:
    return {"type": types, "pattern": pattern}


# One fragment per checker the loader passes values through, by its module and name (a lambda is
# known by the first esxdr.site.values function it calls). A pattern may be looser than its
# checker, never stricter: an editor must not flag what esxdr accepts.
FORMATS: dict[str, Callable[[dict[str, Any]], Format]] = {
    "values.check_object_name": lambda a: (
        text_value(_values._NAME.pattern, TEXT_TYPES),
        "a name: up to 63 letters, digits, '_', '-' or '.', starting with a letter or digit"),
    "values.check_host": lambda a: (text_value(f"^({_IPV4}|{_IPV6}|{_HOSTNAME})$"), "an IP address or a DNS name"),
    "values.split_host_port": lambda a: (
        text_value(rf"^\s*(\[({_IPV4}|{_IPV6}|{_NEAR_HOSTNAME})\](:({_PORT})?)?|({_IPV4}|{_NEAR_HOSTNAME})(:({_PORT})?)?"
              rf"|{_IPV6})\s*$"),
        f"address[:port] ([IPv6 address]:port); the port defaults to {a.get('default_port', 3260)}"),
    "values.check_host_key": lambda a: (text_value(r"^\s*SHA256:[A-Za-z0-9+/]{43}\s*$"),
                                        "the pinned SSH host key fingerprint: SHA256: + 43 base64 characters"),
    "values.check_zfs_name": lambda a: ({**text_value(_zfs_name()), "maxLength": 255},
                                        "a ZFS filesystem or volume name: pool/filesystem/…"),
    "values.check_ciphers": lambda a: (
        text_value(r"^\s*(auto|default|[a-z0-9][a-z0-9@.-]*(,[a-z0-9][a-z0-9@.-]*)*)\s*$"),
        "auto, default, or an OpenSSH cipher list (ssh -Q cipher names them)"),
    "values.check_iqn": lambda a: (
        text_value(rf"^\s*({_IQN})\s*$" if a.get("prefix") else rf"^\s*({_IQN}|{_ci('eui')}\.[0-9a-fA-F]{{16}})\s*$"),
        "an iqn.YYYY-MM.reversed.domain prefix" if a.get("prefix") else "an iSCSI name (iqn. or eui.)"),
    "values.check_env_name": lambda a: (text_value(_values._ENV.pattern), "the name of an environment variable"),
    "values.check_thumbprint": lambda a: (
        text_value(r"^[\s:]*([0-9A-Fa-f][\s:]*){64}$", ["string", "integer"]),
        "the SHA-256 certificate thumbprint: 32 bytes in hex, colons optional"),
    "values.check_naa": lambda a: (
        text_value(r"^\s*([nN][aA][aA]\.)?(6[0-9A-Fa-f]{31}|[235][0-9A-Fa-f]{15})\s*$", ["string", "number"]),
        "the LUN's NAA: naa. + 32 hex digits (NAA 6) or 16 (NAA 2, 3, 5)"),
    "values.check_vmfs_uuid": lambda a: (
        text_value(r"^\s*[0-9A-Fa-f]{8}-[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\s*$"), "the VMFS volume UUID"),
    "values.parse_duration": lambda a: (
        {"type": ["string", "integer"], "pattern": _DURATION, "minimum": 0},
        "a duration: 90s, 15m, 1h, 4h30m, 2d, 1w, or a number of seconds"),
    "values.parse_size": lambda a: (
        {"type": ["string", "number"], "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*([kKmMgGtT]([iI]?[bB])?|[bB])?\s*$",
         "minimum": 0}, "a size: a number of bytes, or 512K, 50M, 1.5G, 2T (binary units)"),
    "values.parse_keep_rules": lambda a: (
        text_value(_KEEP), 'keep rules, e.g. "48h 30d 12w 12m" or "48 hourly, 30 daily, 3 last"'),
    "values.check_cron": lambda a: (
        text_value(_cron()), "five cron fields: minute hour day-of-month month day-of-week"),
    "values.check_timezone": lambda a: (text_value(), "an IANA time zone name, e.g. UTC or Europe/Berlin"),
    "loader._check_user": lambda a: (text_value(_loader._USER.pattern), "a user name"),
    "loader._check_nonblank": lambda a: (text_value(types=TEXT_TYPES), ""),
    "groups._check_vmx_path": lambda a: (text_value(r"^\[[^\]]+\] ?\S.*\.vmx$"), '"[datastore] dir/name.vmx"'),
    "groups._check_run": lambda a: ({"enum": list(CALLOUT_RUNS)}, "a kind of run"),
    "network._check_uplink": lambda a: (text_value(_network._UPLINK.pattern), "a physical NIC: vmnicN or vusbN"),
}
