"""The portable target manifest: what every LUN is, independent of the target stack.

A manifest is the contract between production and DR. It carries each logical
unit's identity (NAA, serial, vendor/product/revision) because ESXi recognises a
VMFS volume by the device id stored in its LVM header: any other identity on DR
turns the datastore into an "unresolved snapshot". Everything else (targets,
portals, ACLs, LUN numbers) is carried so that DR can be rebuilt without a
human remembering how production was set up.

Secrets are never stored here: CHAP entries name a ``secret_ref`` (``env:NAME``,
``file:/path`` or ``secrets:<key>`` into a secrets file) and are resolved at
apply time only.

The schema (versioned by ``version``) is documented in docs/target-manifest.md.
Validation errors always name the offending field, e.g.
``logical_units[3].naa: ...``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from esxdr.errors import ManifestError
from esxdr.model.identity import (
    ZVOL_DIRS,
    Naa,
    acl_member_problem,
    dataset_problem,
    iscsi_name_problem,
    scsi_field_ok,
    text_problem,
)
from esxdr.plugins import NAME as PLUGIN_NAME

SCHEMA_VERSION = 1
KIND = "esxdr.target-manifest"
# A stack's name: a built-in one (comstar, iscsitgt, lio, tgt) or a plugin's (esxdr.targets entry
# point), the form every plugin name has. It is rendered into native configuration's comments.
STACK_NAME = PLUGIN_NAME
BACKING_KINDS = ("zvol", "file", "block")
AUTH_MODES = ("none", "chap", "mutual-chap")


# Stack-local names (initiator groups, TPG names, iscsitgt target names, tgt tids): they become argv
# words and config keys, so no spaces, no leading '-' and nothing a shell or config parser reads.
_LOCAL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@+-]{0,254}$")
_SECRET_REF = re.compile(r"^(?:env:[A-Za-z_][A-Za-z0-9_]*|file:/[^\x00]*|secrets:[A-Za-z0-9_.:@+-]+|[A-Za-z0-9_.@+-]+)$")


def backing_problem(b: Backing) -> tuple[str, str] | None:
    """(field, why) when a backing store is not a plain absolute path, or None.

    Backing paths become tgtadm's ``-b`` and stmfadm's data file: refuse what could point
    anywhere but where it says (``..``, ``.``, ``//``), control characters and NUL, and zvol paths
    that are not the zvol of the dataset the LU names."""
    path = b.path
    if not path:
        return "path", "empty"
    if not path.isprintable():
        return "path", f"{path!r} contains a control character or NUL"
    if not path.startswith("/"):
        return "path", f"{path!r} is not an absolute path"
    parts = path.split("/")[1:]
    if ".." in parts:
        return "path", f"{path!r} leaves its dataset ('..' is not allowed in a backing path)"
    if "." in parts or "" in parts:
        return "path", f"{path!r} is not a normalised path ('.', '//' or a trailing '/')"
    if b.dataset is not None:
        problem = dataset_problem(b.dataset)
        if problem:
            return "dataset", problem
    if b.kind == "zvol":
        if not path.startswith(ZVOL_DIRS[0]):
            return "path", f"{path!r} is not a zvol device (/dev/zvol/…)"
        if b.dataset and path not in {d + b.dataset for d in ZVOL_DIRS}:
            return "path", f"{path!r} is not the zvol of its dataset {b.dataset} (/dev/zvol/{b.dataset})"
    return None


# --------------------------------------------------------------------------- value types
@dataclass
class Portal:
    address: str
    port: int = 3260

    def __str__(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else f"{self.address}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Portal:
        text = text.strip()
        if text.startswith("["):
            addr, _, rest = text[1:].partition("]")
            port = rest.lstrip(":") or "3260"
        elif text.count(":") == 1:
            addr, port = text.split(":")
        else:
            addr, port = text, "3260"
        return cls(addr, int(port))


@dataclass
class Tpg:
    """A target portal group: ``tag`` is the TPGT sent at login, ``name`` the stack's own name if any."""

    tag: int
    portals: list[Portal] = field(default_factory=list)
    name: str | None = None


@dataclass
class Auth:
    """How initiators authenticate to a target. Secrets are references, never values."""

    mode: str = "none"
    user: str | None = None
    secret_ref: str | None = None
    mutual_user: str | None = None
    mutual_secret_ref: str | None = None


@dataclass
class InitiatorGroup:
    """A named set of initiators (COMSTAR host group, iscsitgt initiator, LIO node ACLs, tgt ACL).

    ``members`` are IQNs, or for tgt also IP addresses/networks.
    ``chap_user``/``secret_ref``: per-initiator CHAP as iscsitgt and LIO keep it.
    """

    name: str
    members: list[str] = field(default_factory=list)
    chap_user: str | None = None
    secret_ref: str | None = None


@dataclass
class Target:
    iqn: str
    alias: str | None = None
    tpgs: list[Tpg] = field(default_factory=list)
    auth: Auth = field(default_factory=Auth)
    # Names of initiator groups allowed to log in; empty means every initiator.
    acl: list[str] = field(default_factory=list)
    # Stack-specific name of the target (iscsitgt local name, tgt tid) kept for round trips.
    name: str | None = None


@dataclass
class View:
    """One LUN number under which a logical unit is presented.

    ``target`` None means on every target (COMSTAR "Target group: All");
    ``initiator_group`` None means to every initiator ("Host group: All").
    """

    lun: int
    target: str | None = None
    initiator_group: str | None = None


@dataclass
class Backing:
    kind: str  # zvol | file | block
    path: str
    dataset: str | None = None  # the ZFS dataset when known (zvol, or the filesystem holding the file)


@dataclass
class LogicalUnit:
    naa: Naa
    backing: Backing
    size_bytes: int
    block_size: int = 512
    serial: str | None = None
    vendor_id: str | None = None
    product_id: str | None = None
    revision: str | None = None
    read_only: bool = False
    alias: str | None = None
    views: list[View] = field(default_factory=list)

    @property
    def esxi_name(self) -> str:
        return self.naa.esxi_name

    def lun_on(self, target_iqn: str) -> int | None:
        """The LUN number on ``target_iqn`` (specific view first, then an all-targets view)."""
        for v in self.views:
            if v.target == target_iqn:
                return v.lun
        for v in self.views:
            if v.target is None:
                return v.lun
        return None


@dataclass
class Source:
    stack: str | None = None
    host: str | None = None
    exported_at: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Manifest:
    targets: list[Target] = field(default_factory=list)
    initiator_groups: list[InitiatorGroup] = field(default_factory=list)
    logical_units: list[LogicalUnit] = field(default_factory=list)
    source: Source = field(default_factory=Source)
    version: int = SCHEMA_VERSION

    # -- lookups ---------------------------------------------------------------
    def target(self, iqn: str) -> Target | None:
        return next((t for t in self.targets if t.iqn == iqn), None)

    def group(self, name: str) -> InitiatorGroup | None:
        return next((g for g in self.initiator_groups if g.name == name), None)

    def lu(self, naa: Naa | str) -> LogicalUnit | None:
        key = naa.hex if isinstance(naa, Naa) else Naa.parse(naa).hex
        return next((u for u in self.logical_units if u.naa.hex == key), None)

    def luns_of(self, target_iqn: str) -> list[tuple[int, LogicalUnit]]:
        """(LUN, LU) presented on a target, sorted by LUN."""
        out = []
        for u in self.logical_units:
            n = u.lun_on(target_iqn)
            if n is not None:
                out.append((n, u))
        return sorted(out, key=lambda p: p[0])

    # -- validation ------------------------------------------------------------
    def validate(self) -> Manifest:
        """Raise ManifestError listing every problem, each naming its field."""
        problems = validate_manifest(self)
        if problems:
            raise ManifestError("invalid target manifest:\n  " + "\n  ".join(problems),
                                hint="fix the fields named above (schema: docs/target-manifest.md)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return manifest_to_dict(self)


# --------------------------------------------------------------------------- validation
def validate_manifest(m: Manifest) -> list[str]:
    p: list[str] = []
    if m.version != SCHEMA_VERSION:
        p.append(f"version: unsupported manifest version {m.version!r} (this esxdr reads {SCHEMA_VERSION})")
    if m.source.stack is not None and not (isinstance(m.source.stack, str) and STACK_NAME.fullmatch(m.source.stack)):
        p.append(f"source.stack: {str(m.source.stack)[:40]!r} is not a target stack's name (lowercase letters, "
                 "digits, _ and -)")
    group_names = set()
    for i, g in enumerate(m.initiator_groups):
        if not g.name:
            p.append(f"initiator_groups[{i}].name: empty")
        elif not _LOCAL_NAME.match(g.name):
            p.append(f"initiator_groups[{i}].name: {g.name!r} must be letters, digits and _ . : @ + - "
                     "(not starting with '-')")
        if g.name in group_names:
            p.append(f"initiator_groups[{i}].name: duplicate group {g.name!r}")
        group_names.add(g.name)
        for j, member in enumerate(g.members):
            problem = acl_member_problem(member)
            if problem:
                p.append(f"initiator_groups[{i}].members[{j}]: {problem}")
        if g.chap_user is not None and not _LOCAL_NAME.match(g.chap_user):
            p.append(f"initiator_groups[{i}].chap_user: {g.chap_user!r} must be letters, digits and _ . : @ + -")
        if g.secret_ref is not None and not _SECRET_REF.match(g.secret_ref):
            p.append(f"initiator_groups[{i}].secret_ref: {g.secret_ref!r} is not env:NAME, file:/path or "
                     "secrets:KEY")
    iqns = set()
    for i, t in enumerate(m.targets):
        where = f"targets[{i}]"
        problem = iscsi_name_problem(t.iqn)
        if problem:
            p.append(f"{where}.iqn: {problem}")
        for name, value in (("alias", t.alias),):
            if value is not None and text_problem(value):
                p.append(f"{where}.{name}: {text_problem(value)}")
        if t.name is not None and not _LOCAL_NAME.match(t.name):
            p.append(f"{where}.name: {t.name!r} must be letters, digits and _ . : @ + - (not starting with '-')")
        for name, value in (("user", t.auth.user), ("mutual_user", t.auth.mutual_user)):
            if value is not None and not _LOCAL_NAME.match(value):
                p.append(f"{where}.auth.{name}: {value!r} must be letters, digits and _ . : @ + -")
        for name, value in (("secret_ref", t.auth.secret_ref), ("mutual_secret_ref", t.auth.mutual_secret_ref)):
            if value is not None and not _SECRET_REF.match(value):
                p.append(f"{where}.auth.{name}: {value!r} is not env:NAME, file:/path or secrets:KEY")
        if t.iqn in iqns:
            p.append(f"{where}.iqn: duplicate target {t.iqn!r}")
        iqns.add(t.iqn)
        if t.auth.mode not in AUTH_MODES:
            p.append(f"{where}.auth.mode: {t.auth.mode!r} is not one of {', '.join(AUTH_MODES)}")
        if t.auth.mode == "mutual-chap" and not t.auth.mutual_user:
            p.append(f"{where}.auth.mutual_user: mutual CHAP needs the target's user name")
        tags = set()
        for j, tpg in enumerate(t.tpgs):
            if tpg.tag in tags:
                p.append(f"{where}.tpgs[{j}].tag: duplicate TPG tag {tpg.tag}")
            tags.add(tpg.tag)
            if not 1 <= tpg.tag <= 65535:
                p.append(f"{where}.tpgs[{j}].tag: {tpg.tag} is outside 1..65535")
            if tpg.name is not None and not _LOCAL_NAME.match(tpg.name):
                p.append(f"{where}.tpgs[{j}].name: {tpg.name!r} must be letters, digits and _ . : @ + -")
            for k, portal in enumerate(tpg.portals):
                if not 0 < portal.port < 65536:
                    p.append(f"{where}.tpgs[{j}].portals[{k}].port: {portal.port} is not a TCP port")
                if not portal.address or not re.match(r"^[A-Za-z0-9.:%_-]+$", portal.address) \
                        or portal.address.startswith("-"):
                    p.append(f"{where}.tpgs[{j}].portals[{k}].address: {portal.address!r} is not a host name "
                             "or an IP address")
        for j, gname in enumerate(t.acl):
            if gname not in group_names:
                p.append(f"{where}.acl[{j}]: no initiator group named {gname!r}")
    naas: dict[str, int] = {}
    # (target or None, group or None, lun) -> index of the LU using it
    used: dict[tuple[str | None, str | None, int], int] = {}
    for i, u in enumerate(m.logical_units):
        where = f"logical_units[{i}]"
        if u.naa.hex in naas:
            p.append(f"{where}.naa: {u.naa.esxi_name} is also logical_units[{naas[u.naa.hex]}]; "
                     "two LUs with one NAA would look like two paths to one disk to ESXi")
        naas.setdefault(u.naa.hex, i)
        if u.backing.kind not in BACKING_KINDS:
            p.append(f"{where}.backing.kind: {u.backing.kind!r} is not one of {', '.join(BACKING_KINDS)}")
        bad = backing_problem(u.backing)
        if bad:
            p.append(f"{where}.backing.{bad[0]}: {bad[1]}")
        if u.alias is not None and text_problem(u.alias):
            p.append(f"{where}.alias: {text_problem(u.alias)}")
        if u.block_size not in (512, 1024, 2048, 4096):
            p.append(f"{where}.block_size: {u.block_size} is not 512, 1024, 2048 or 4096")
        if u.size_bytes < 0 or (u.size_bytes and u.size_bytes % u.block_size):
            p.append(f"{where}.size_bytes: {u.size_bytes} is not a multiple of the block size {u.block_size}")
        for name, value, limit in (("vendor_id", u.vendor_id, 8), ("product_id", u.product_id, 16),
                                   ("revision", u.revision, 4)):
            if value is not None and not scsi_field_ok(value, limit):
                p.append(f"{where}.{name}: {value!r} must be at most {limit} printable ASCII characters "
                         "without ',' or '=' (SCSI INQUIRY field)")
        if u.serial is not None and (not u.serial or not scsi_field_ok(u.serial, 254)):
            p.append(f"{where}.serial: {u.serial!r} must be 1..254 printable ASCII characters without ',' or '='")
        for j, v in enumerate(u.views):
            if not 0 <= v.lun <= 16383:
                p.append(f"{where}.views[{j}].lun: {v.lun} is outside 0..16383")
            if v.target is not None and v.target not in iqns:
                p.append(f"{where}.views[{j}].target: no target {v.target!r} in this manifest")
            if v.initiator_group is not None and v.initiator_group not in group_names:
                p.append(f"{where}.views[{j}].initiator_group: no initiator group {v.initiator_group!r}")
            for key, other in list(used.items()):
                t2, g2, n2 = key
                if n2 != v.lun or other == i:
                    continue
                if (t2 is None or v.target is None or t2 == v.target) and \
                   (g2 is None or v.initiator_group is None or g2 == v.initiator_group):
                    p.append(f"{where}.views[{j}].lun: duplicate LUN {v.lun} "
                             f"(logical_units[{other}] already uses it on "
                             f"{v.target or t2 or 'every target'})")
                    break
            used[(v.target, v.initiator_group, v.lun)] = i
    return p


# --------------------------------------------------------------------------- dict I/O
def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != [] and v != {}}


def manifest_to_dict(m: Manifest) -> dict[str, Any]:
    def auth(a: Auth) -> dict[str, Any]:
        return _drop_none({"mode": a.mode, "user": a.user, "secret_ref": a.secret_ref,
                           "mutual_user": a.mutual_user, "mutual_secret_ref": a.mutual_secret_ref})

    return {
        "kind": KIND,
        "version": m.version,
        "source": _drop_none({"stack": m.source.stack, "host": m.source.host,
                              "exported_at": m.source.exported_at, "notes": list(m.source.notes)}),
        "targets": [_drop_none({
            "iqn": t.iqn, "alias": t.alias, "name": t.name,
            "tpgs": [_drop_none({"tag": g.tag, "name": g.name,
                                 "portals": [str(p) for p in g.portals]}) for g in t.tpgs],
            "auth": auth(t.auth), "acl": list(t.acl),
        }) for t in m.targets],
        "initiator_groups": [_drop_none({"name": g.name, "members": list(g.members),
                                         "chap_user": g.chap_user, "secret_ref": g.secret_ref})
                             for g in m.initiator_groups],
        "logical_units": [_drop_none({
            "naa": u.naa.hex, "alias": u.alias, "serial": u.serial, "vendor_id": u.vendor_id,
            "product_id": u.product_id, "revision": u.revision, "block_size": u.block_size,
            "size_bytes": u.size_bytes,
            "backing": _drop_none({"kind": u.backing.kind, "path": u.backing.path,
                                   "dataset": u.backing.dataset}),
            "read_only": u.read_only,
            "views": [_drop_none({"lun": v.lun, "target": v.target, "initiator_group": v.initiator_group})
                      for v in u.views],
        }) for u in m.logical_units],
    }


_SECRET_KEYS = {"secret", "password", "chap_secret", "chap_password", "mutual_secret", "passwd"}


class _Reader:
    """Reads a plain dict, collecting problems that name the field path."""

    def __init__(self) -> None:
        self.problems: list[str] = []

    def get(self, d: dict, key: str, where: str, typ: type | tuple, *, required: bool = False,
            default: Any = None) -> Any:
        if key not in d or d[key] is None:
            if required:
                self.problems.append(f"{where}.{key}: missing (required)")
            return default
        v = d[key]
        if typ is int and isinstance(v, bool):
            self.problems.append(f"{where}.{key}: expected an integer, got {v!r}")
            return default
        if not isinstance(v, typ):
            names = typ.__name__ if isinstance(typ, type) else "/".join(t.__name__ for t in typ)
            self.problems.append(f"{where}.{key}: expected {names}, got {type(v).__name__} {v!r}")
            return default
        return v

    def mapping(self, v: Any, where: str) -> dict:
        if not isinstance(v, dict):
            self.problems.append(f"{where}: expected a mapping, got {type(v).__name__}")
            return {}
        for k in v:
            if str(k).lower() in _SECRET_KEYS:
                self.problems.append(f"{where}.{k}: secrets are never stored in a manifest; "
                                     "use secret_ref (env:NAME, file:/path or secrets:KEY)")
        return v

    def items(self, d: dict, key: str, where: str) -> list[tuple[str, Any]]:
        v = self.get(d, key, where, list, default=[])
        return [(f"{where}.{key}[{i}]" if where else f"{key}[{i}]", x) for i, x in enumerate(v)]

    def unknown(self, d: dict, known: set[str], where: str) -> None:
        for k in d:
            if k not in known and str(k).lower() not in _SECRET_KEYS:
                self.problems.append(f"{where}.{k}: unknown field" if where else f"{k}: unknown field")


def manifest_from_dict(data: Any, origin: str = "manifest") -> Manifest:
    """Build and validate a Manifest; ManifestError lists every problem with its field path."""
    r = _Reader()
    top = r.mapping(data, "(top level)")
    if r.problems:
        raise ManifestError(f"{origin}: " + "; ".join(r.problems))
    r.unknown(top, {"kind", "version", "source", "targets", "initiator_groups", "logical_units"}, "")
    kind = top.get("kind", KIND)
    if kind != KIND:
        r.problems.append(f"kind: {kind!r} is not {KIND!r}")
    version = r.get(top, "version", "", int, required=True, default=SCHEMA_VERSION)
    src = r.mapping(top.get("source") or {}, "source")
    source = Source(stack=r.get(src, "stack", "source", str), host=r.get(src, "host", "source", str),
                    exported_at=r.get(src, "exported_at", "source", str),
                    notes=[str(n) for n in r.get(src, "notes", "source", list, default=[])])
    groups = []
    for where, g in r.items(top, "initiator_groups", ""):
        g = r.mapping(g, where)
        r.unknown(g, {"name", "members", "chap_user", "secret_ref"}, where)
        members = r.get(g, "members", where, list, default=[])
        groups.append(InitiatorGroup(name=r.get(g, "name", where, str, required=True, default=""),
                                     members=[str(x) for x in members],
                                     chap_user=r.get(g, "chap_user", where, str),
                                     secret_ref=r.get(g, "secret_ref", where, str)))
    targets = []
    for where, t in r.items(top, "targets", ""):
        t = r.mapping(t, where)
        r.unknown(t, {"iqn", "alias", "name", "tpgs", "auth", "acl"}, where)
        tpgs = []
        for w2, g in r.items(t, "tpgs", where):
            g = r.mapping(g, w2)
            r.unknown(g, {"tag", "name", "portals"}, w2)
            portals = []
            for i, ptext in enumerate(r.get(g, "portals", w2, list, default=[])):
                try:
                    portals.append(Portal.parse(str(ptext)))
                except ValueError:
                    r.problems.append(f"{w2}.portals[{i}]: {ptext!r} is not ADDRESS[:PORT]")
            tpgs.append(Tpg(tag=r.get(g, "tag", w2, int, required=True, default=1),
                            name=r.get(g, "name", w2, str), portals=portals))
        a = r.mapping(t.get("auth") or {}, f"{where}.auth")
        r.unknown(a, {"mode", "user", "secret_ref", "mutual_user", "mutual_secret_ref"}, f"{where}.auth")
        auth = Auth(mode=r.get(a, "mode", f"{where}.auth", str, default="none"),
                    user=r.get(a, "user", f"{where}.auth", str),
                    secret_ref=r.get(a, "secret_ref", f"{where}.auth", str),
                    mutual_user=r.get(a, "mutual_user", f"{where}.auth", str),
                    mutual_secret_ref=r.get(a, "mutual_secret_ref", f"{where}.auth", str))
        targets.append(Target(iqn=r.get(t, "iqn", where, str, required=True, default=""),
                              alias=r.get(t, "alias", where, str), name=r.get(t, "name", where, (str, int)),
                              tpgs=tpgs, auth=auth,
                              acl=[str(x) for x in r.get(t, "acl", where, list, default=[])]))
        if isinstance(targets[-1].name, int):
            targets[-1].name = str(targets[-1].name)
    lus = []
    for where, u in r.items(top, "logical_units", ""):
        u = r.mapping(u, where)
        r.unknown(u, {"naa", "alias", "serial", "vendor_id", "product_id", "revision", "block_size",
                      "size_bytes", "backing", "read_only", "views"}, where)
        raw_naa = r.get(u, "naa", where, str, required=True)
        naa = None
        if raw_naa is not None:
            try:
                naa = Naa.parse(raw_naa)
            except ValueError as e:
                r.problems.append(f"{where}.naa: {e}")
        b = r.mapping(u.get("backing") or {}, f"{where}.backing")
        if "backing" not in u:
            r.problems.append(f"{where}.backing: missing (required)")
        r.unknown(b, {"kind", "path", "dataset"}, f"{where}.backing")
        backing = Backing(kind=r.get(b, "kind", f"{where}.backing", str, required="backing" in u, default="file"),
                          path=r.get(b, "path", f"{where}.backing", str, required="backing" in u, default=""),
                          dataset=r.get(b, "dataset", f"{where}.backing", str))
        views = []
        for w2, v in r.items(u, "views", where):
            v = r.mapping(v, w2)
            r.unknown(v, {"lun", "target", "initiator_group"}, w2)
            views.append(View(lun=r.get(v, "lun", w2, int, required=True, default=0),
                              target=r.get(v, "target", w2, str),
                              initiator_group=r.get(v, "initiator_group", w2, str)))
        serial = r.get(u, "serial", where, (str, int))
        lu = LogicalUnit(
            naa=naa or Naa("6" + "0" * 31), backing=backing,
            size_bytes=r.get(u, "size_bytes", where, int, required=True, default=0),
            block_size=r.get(u, "block_size", where, int, default=512),
            serial=str(serial) if serial is not None else None,
            vendor_id=r.get(u, "vendor_id", where, str), product_id=r.get(u, "product_id", where, str),
            revision=r.get(u, "revision", where, (str, int, float)), read_only=r.get(u, "read_only", where, bool,
                                                                                default=False),
            alias=r.get(u, "alias", where, str), views=views)
        if lu.revision is not None:
            lu.revision = str(lu.revision)
        lus.append(lu)
    m = Manifest(targets=targets, initiator_groups=groups, logical_units=lus, source=source, version=version)
    if not r.problems:
        r.problems.extend(validate_manifest(m))
    if r.problems:
        raise ManifestError(f"{origin}: invalid target manifest:\n  " + "\n  ".join(r.problems),
                            hint="fix the fields named above (schema: docs/target-manifest.md)")
    return m


# --------------------------------------------------------------------------- files
def dumps(m: Manifest, fmt: str = "yaml") -> str:
    d = m.to_dict()
    if fmt == "json":
        return json.dumps(d, indent=2) + "\n"
    import yaml

    return yaml.safe_dump(d, sort_keys=False, default_flow_style=False)


def loads(text: str, origin: str = "manifest") -> Manifest:
    """Parse JSON or YAML text (JSON is YAML, but JSON errors read better from json)."""
    stripped = text.lstrip()
    if stripped.startswith("{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{origin}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from e
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{origin}:{mark.line + 1}:{mark.column + 1}" if mark else origin
            raise ManifestError(f"{where}: malformed YAML: {getattr(e, 'problem', e)}") from e
    return manifest_from_dict(data, origin)


def load(path: str | Path) -> Manifest:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ManifestError(f"cannot read manifest {path}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path}: not a text file ({e.reason})") from e
    return loads(text, str(path))


def save(m: Manifest, path: str | Path) -> None:
    fmt = "json" if str(path).endswith(".json") else "yaml"
    Path(path).write_text(dumps(m.validate(), fmt))
