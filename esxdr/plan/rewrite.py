"""Rewrites applied to a production manifest on its way to DR. Pure: manifest in, new manifest out.

Every rewrite keeps the NAAs, serials and product ids untouched: those are what
ESXi recognises. Only where the data lives (datasets, paths), where the target
listens (portals, TPG tags) and who may log in (ACLs, CHAP) change.
"""

from __future__ import annotations

import copy
import hashlib
import re

from esxdr.errors import UsageError
from esxdr.model.manifest import Auth, InitiatorGroup, Manifest, Naa, Portal, Tpg, View

ZVOL_PREFIX = {"illumos": "/dev/zvol/rdsk/", "linux": "/dev/zvol/", "freebsd": "/dev/zvol/"}


def parse_mapping(items: list[str] | tuple[str, ...], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise UsageError(f"{what} {item!r} is not OLD=NEW", hint=f"e.g. {what} sp2=sp1")
        out[old] = new
    return out


def _map_prefix(value: str, mapping: dict[str, str], sep: str = "/") -> str:
    # Longest prefix first, and only on component boundaries: sp2 must not rename sp22.
    for old in sorted(mapping, key=len, reverse=True):
        if value == old or value.startswith(old.rstrip(sep) + sep):
            return mapping[old] + value[len(old):]
    return value


def rename_datasets(m: Manifest, mapping: dict[str, str]) -> Manifest:
    """Pool/dataset rename (sp2 -> sp1, or sp2/iscsi -> tank/dr/iscsi) in datasets and zvol paths."""
    m = copy.deepcopy(m)
    for lu in m.logical_units:
        b = lu.backing
        if b.dataset:
            new = _map_prefix(b.dataset, mapping)
            if b.kind == "zvol" and b.path.endswith(b.dataset):
                b.path = b.path[: len(b.path) - len(b.dataset)] + new
            b.dataset = new
        elif b.kind == "zvol":
            for prefix in ("/dev/zvol/rdsk/", "/dev/zvol/dsk/", "/dev/zvol/"):
                if b.path.startswith(prefix):
                    b.path = prefix + _map_prefix(b.path[len(prefix):], mapping)
                    break
        if b.kind == "file":
            # File LUNs live on a filesystem mounted (by default) at /<dataset>.
            b.path = "/" + _map_prefix(b.path.lstrip("/"), mapping)
    return m


def zvol_style(m: Manifest, platform: str) -> Manifest:
    """/dev/zvol/rdsk/pool/vol (illumos) <-> /dev/zvol/pool/vol (Linux, FreeBSD)."""
    if platform not in ZVOL_PREFIX:
        raise UsageError(f"unknown zvol platform {platform!r}", hint="use illumos, linux or freebsd")
    m = copy.deepcopy(m)
    for lu in m.logical_units:
        b = lu.backing
        if b.kind != "zvol":
            continue
        dataset = b.dataset
        if not dataset:
            for prefix in ("/dev/zvol/rdsk/", "/dev/zvol/dsk/", "/dev/zvol/"):
                if b.path.startswith(prefix):
                    dataset = b.path[len(prefix):]
                    break
        if dataset:
            b.dataset = dataset
            b.path = ZVOL_PREFIX[platform] + dataset
    return m


def zvols_to_files(m: Manifest, template: str) -> Manifest:
    """Present zvol LUs from files, e.g. template "/{dataset}.img" or "/tank/lab/{name}.img".

    ``{dataset}`` is the full dataset name and ``{name}`` its last component.
    Used where the DR side has no zvols (zfs-fuse in the lab) or LUN files on ZFS.
    """
    if "{dataset}" not in template and "{name}" not in template:
        raise UsageError(f"file template {template!r} names neither {{dataset}} nor {{name}}")
    m = copy.deepcopy(m)
    for lu in m.logical_units:
        b = lu.backing
        if b.kind != "zvol":
            continue
        if not b.dataset:
            raise UsageError(f"{lu.naa.esxi_name}: zvol {b.path} has no dataset name to build a file path from")
        b.path = template.format(dataset=b.dataset, name=b.dataset.rsplit("/", 1)[-1])
        b.kind = "file"
    return m


def map_paths(m: Manifest, mapping: dict[str, str]) -> Manifest:
    """Literal backing-store path prefix mapping (OLD=NEW) for anything the others do not cover."""
    m = copy.deepcopy(m)
    for lu in m.logical_units:
        lu.backing.path = _map_prefix(lu.backing.path, mapping)
        if lu.backing.path.startswith("/dev/zvol/") is False and lu.backing.kind == "zvol":
            lu.backing.kind = "block" if lu.backing.path.startswith("/dev/") else "file"
    return m


def set_portals(m: Manifest, portals: list[Portal], tag: int | None = None) -> Manifest:
    """Every target listens on the DR portals, in one TPG (tag kept, or ``tag``)."""
    m = copy.deepcopy(m)
    for t in m.targets:
        keep = t.tpgs[0].tag if t.tpgs else 1
        t.tpgs = [Tpg(tag=tag or keep, portals=list(portals), name=t.tpgs[0].name if t.tpgs else None)]
    return m


def allow_initiators(m: Manifest, iqns: list[str], group: str = "esxdr-dr") -> Manifest:
    """Let the DR ESXi hosts log in and see every LU.

    Every target gets the DR group in its ACL, also a target whose ACL was empty
    (on production: everyone): on DR an empty ACL would stay open to every
    initiator, and esxdr presents only to the initiators named here. LUs
    presented only to specific host groups get a view for the DR group with the
    same LUN number.
    """
    if not iqns:
        return m
    for iqn in iqns:
        if not re.match(r"^(iqn\.\d{4}-\d{2}\.\S+|eui\.[0-9A-Fa-f]{16})$", iqn):
            raise UsageError(f"{iqn!r} is not an initiator IQN", hint="e.g. iqn.1998-01.com.vmware:esxi-dr")
    m = copy.deepcopy(m)
    g = m.group(group)
    if g is None:
        g = InitiatorGroup(name=group)
        m.initiator_groups.append(g)
    for iqn in iqns:
        if iqn not in g.members:
            g.members.append(iqn)
    for t in m.targets:
        if group not in t.acl:
            t.acl.append(group)
    for lu in m.logical_units:
        if lu.views and all(v.initiator_group for v in lu.views):
            for v in list(lu.views):
                if not any(w.initiator_group == group and w.target == v.target for w in lu.views):
                    lu.views.append(View(lun=v.lun, target=v.target, initiator_group=group))
    return m


def set_chap(m: Manifest, user: str, secret_ref: str, mutual_user: str | None = None,
             mutual_secret_ref: str | None = None) -> Manifest:
    """CHAP for every target, the secret by reference into the secrets file (secrets:KEY)."""
    m = copy.deepcopy(m)
    for t in m.targets:
        t.auth = Auth(mode="mutual-chap" if mutual_user else "chap", user=user, secret_ref=secret_ref,
                      mutual_user=mutual_user, mutual_secret_ref=mutual_secret_ref)
    return m


def clone_naa(naa: Naa, snapshot: str) -> Naa:
    """A new, stable NAA for a clone of ``naa`` at ``snapshot`` (present-clone --new-naa).

    Keeps the NAA type and company id (so it still looks like the same vendor's
    LU) and replaces the vendor-specific digits with a hash of the original NAA
    and the snapshot name: the same clone always gets the same NAA, and it never
    equals the original.
    """
    keep = 7 if naa.naa_type in (5, 6) else 1
    width = len(naa.hex) - keep
    digest = hashlib.sha256(f"{naa.hex}@{snapshot}".encode()).hexdigest()
    new = naa.hex[:keep] + digest[:width]
    if new == naa.hex:  # pragma: no cover - a 2^-100 event, but the guarantee is cheap
        new = naa.hex[:keep] + digest[width:2 * width]
    return Naa(new)


def diff(observed: Manifest, desired: Manifest) -> list[dict]:
    """What importing ``desired`` would change on a target now showing ``observed``, LU by LU (by NAA)."""
    out: list[dict] = []
    fields = ("serial", "vendor_id", "product_id", "revision", "block_size", "read_only")
    for lu in desired.logical_units:
        have = observed.lu(lu.naa)
        if have is None:
            out.append({"naa": lu.naa.esxi_name, "change": "add", "backing": lu.backing.path,
                        "luns": [v.lun for v in lu.views]})
            continue
        changes: dict[str, list] = {}
        if have.backing.path != lu.backing.path:
            changes["backing"] = [have.backing.path, lu.backing.path]
        for f in fields:
            a, b = getattr(have, f), getattr(lu, f)
            if b is not None and a is not None and a != b:
                changes[f] = [a, b]
        for t in desired.targets:
            a, b = have.lun_on(t.iqn), lu.lun_on(t.iqn)
            if b is not None and a != b:
                changes[f"lun on {t.iqn}"] = [a, b]
        if changes:
            out.append({"naa": lu.naa.esxi_name, "change": "modify", "fields": changes})
    for lu in observed.logical_units:
        if desired.lu(lu.naa) is None:
            out.append({"naa": lu.naa.esxi_name, "change": "unmanaged", "backing": lu.backing.path})
    for t in desired.targets:
        if observed.target(t.iqn) is None:
            out.append({"target": t.iqn, "change": "add"})
    return out
