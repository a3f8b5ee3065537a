"""Legacy OpenSolaris iscsitgtd: parse and render `svccfg export iscsitgt`, and re-import it cleanly.

The classic DR procedure kept `svccfg export iscsitgt > backup.xml` and re-imported
it on the DR box. The SMF layout (DESIGN.md):

- ``target_<name>``: ``iscsi-name`` (the IQN), ``alias``, ``type``, ``acl-list``
  and ``tpgt-list`` (multi-valued), optional ``chap-name``;
- ``param_<target>_<lun>``: ``guid``, ``vid``, ``pid``, ``size`` (512-byte
  blocks, decimal or 0x-hex), ``backing-store``, ``status``, ``dtype``;
- ``tpgt_<n>``: ``ip-address`` (multi-valued);
- ``initiator_<name>``: ``iscsi-name``, ``chap-name``;
- ``passwords``: base64 CHAP secrets keyed by the owner's group name;
- ``iscsitgt``: daemon settings (``base-dir`` holds file-backed LUNs as
  ``<base-dir>/<target>/lun.<n>`` when no backing-store is set).

Group names cannot hold ':' or '.', so they are written ``__2`` and ``__1``.
A GUID of "0" means iscsitgtd never generated one: such an LU has no identity
to preserve and is refused with a clear message.

iscsitgtd keeps no per-LU serial (VPD 0x80), so a manifest serial is not carried
(ESXi names devices by NAA, not serial); render notes it in a comment.

Re-import never layers on top of an existing configuration: the emitted
sequence disables the service, deletes it, imports the rendered bundle, and
enables it again.
"""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING

from esxdr import templating
from esxdr.errors import ManifestError
from esxdr.model.manifest import (
    Auth,
    Backing,
    InitiatorGroup,
    LogicalUnit,
    Manifest,
    Naa,
    Portal,
    Source,
    Target,
    Tpg,
    View,
)
from esxdr.targets.base import ApplyResult, Command, Secrets, missing_backing, refuse_identity, stat_paths

if TYPE_CHECKING:
    from esxdr.transport.base import Transport

STACK = "iscsitgt"
SERVICE = "svc:/system/iscsitgt"
INSTANCE = "svc:/system/iscsitgt:default"
REMOTE_XML = "/var/tmp/esxdr-iscsitgt.xml"
DEFAULT_BASE_DIR = "/etc/iscsi/tgt"  # hypothetical default; base-dir is read from the export when present


def encode_name(name: str) -> str:
    return name.replace(":", "__2").replace(".", "__1")


def decode_name(name: str) -> str:
    return name.replace("__2", ":").replace("__1", ".")


def _props(pg: ET.Element) -> dict[str, list[str]]:
    """propval and multi-valued property elements of one property group."""
    out: dict[str, list[str]] = {}
    for el in pg:
        if el.tag == "propval":
            out[el.get("name", "")] = [el.get("value", "")]
        elif el.tag == "property":
            out[el.get("name", "")] = [v.get("value", "") for v in el.iter("value_node")]
    return out


def _first(props: dict[str, list[str]], key: str) -> str | None:
    v = props.get(key)
    return v[0] if v else None


def _blocks(text: str) -> int:
    text = text.strip().lower()
    return int(text, 16) if text.startswith("0x") else int(text)


def parse_xml(text: str, origin: str = "iscsitgt export") -> tuple[Manifest, dict[str, str]]:
    """A manifest and the CHAP secrets found (by secret_ref key), which the manifest does not keep."""
    try:
        # The export's DOCTYPE names an external DTD; ElementTree does not fetch it.
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ManifestError(f"{origin}: malformed XML: {e}",
                            hint="is this the output of `svccfg export iscsitgt`?") from e
    groups: dict[str, dict[str, list[str]]] = {}
    for pg in root.iter("property_group"):
        groups[pg.get("name", "")] = _props(pg)
    if not any(n.startswith("target_") or n.startswith("param_") for n in groups):
        raise ManifestError(f"{origin}: no target_* or param_* property groups",
                            hint="expected `svccfg export iscsitgt` output")
    base_dir = _first(groups.get("iscsitgt", {}), "base-dir") or DEFAULT_BASE_DIR
    secrets: dict[str, str] = {}
    for key, values in groups.get("passwords", {}).items():
        try:
            secrets[decode_name(key)] = base64.b64decode(values[0]).decode()
        except (ValueError, UnicodeDecodeError) as e:
            raise ManifestError(f"{origin}: passwords/{key}: not base64 text") from e
    m = Manifest(source=Source(stack=STACK))
    initiators: dict[str, InitiatorGroup] = {}
    for gname, props in sorted(groups.items()):
        if gname.startswith("initiator_"):
            local = decode_name(gname[len("initiator_"):])
            chap = _first(props, "chap-name")
            ref_key = f"initiator_{local}"
            initiators[local] = InitiatorGroup(
                name=local, members=[v for v in props.get("iscsi-name", []) if v],
                chap_user=chap, secret_ref=f"secrets:{ref_key}" if ref_key in secrets else None)
    m.initiator_groups = list(initiators.values())
    tpg_addresses: dict[int, list[str]] = {}
    for gname, props in groups.items():
        if gname.startswith("tpgt_") and gname[5:].isdigit():
            tpg_addresses[int(gname[5:])] = props.get("ip-address", [])
    targets: dict[str, Target] = {}
    for gname, props in sorted(groups.items()):
        if not gname.startswith("target_"):
            continue
        local = decode_name(gname[len("target_"):])
        iqn = _first(props, "iscsi-name")
        if not iqn:
            raise ManifestError(f"{origin}: {gname}: no iscsi-name")
        t = Target(iqn=iqn, alias=_first(props, "alias"), name=local)
        for tag in props.get("tpgt-list", []):
            if tag.isdigit():
                t.tpgs.append(Tpg(tag=int(tag), portals=[Portal.parse(a) for a in tpg_addresses.get(int(tag), [])]))
        for acl in props.get("acl-list", []):
            if acl not in initiators:
                # An ACL may name an initiator that has no initiator_ group: the entry is the IQN itself.
                g = InitiatorGroup(name=acl, members=[acl])
                initiators[acl] = g
                m.initiator_groups.append(g)
            t.acl.append(acl)
        if any(initiators[a].chap_user for a in t.acl):
            t.auth = Auth(mode="chap")
        chap = _first(props, "chap-name")
        if chap:
            t.auth = Auth(mode="mutual-chap", mutual_user=chap,
                          mutual_secret_ref=f"secrets:target_{local}" if f"target_{local}" in secrets else None)
        targets[local] = t
    m.targets = list(targets.values())
    for gname, props in sorted(groups.items(), key=lambda kv: kv[0]):
        mm = re.match(r"^param_(.+)_(\d+)$", gname)
        if not mm:
            continue
        local, lun = decode_name(mm.group(1)), int(mm.group(2))
        owner = targets.get(local)
        if owner is None:
            raise ManifestError(f"{origin}: {gname}: no property group target_{encode_name(local)} for it")
        t = owner
        guid = (_first(props, "guid") or "").strip()
        if guid in ("", "0"):
            raise ManifestError(f"{origin}: {gname}: GUID is {guid or 'missing'!r}: iscsitgtd never generated an "
                                f"identity for LUN {lun} of {t.iqn}",
                                hint="iscsitgtd assigns the GUID on first use; take a new export after the LUN "
                                     "has been seen by an initiator, or remove the LUN from the export")
        try:
            naa = Naa.parse(guid)
        except ValueError as e:
            raise ManifestError(f"{origin}: {gname}.guid: {e}") from e
        path = _first(props, "backing-store") or f"{base_dir}/{local}/lun.{lun}"
        kind, dataset = "file", None
        for prefix in ("/dev/zvol/rdsk/", "/dev/zvol/dsk/"):
            if path.startswith(prefix):
                kind, dataset = "zvol", path[len(prefix):]
        size = _first(props, "size")
        try:
            size_bytes = _blocks(size) * 512 if size else 0
        except ValueError as e:
            raise ManifestError(f"{origin}: {gname}.size: {size!r} is not a number of blocks") from e
        existing = m.lu(naa)
        if existing:
            existing.views.append(View(lun=lun, target=t.iqn))
            continue
        m.logical_units.append(LogicalUnit(
            naa=naa, backing=Backing(kind, path, dataset), size_bytes=size_bytes, block_size=512,
            vendor_id=(_first(props, "vid") or "").strip() or None,
            product_id=(_first(props, "pid") or "").strip() or None,
            revision=(_first(props, "revision") or "").strip() or None,
            views=[View(lun=lun, target=t.iqn)]))
    return m, secrets


def parse(files: list[tuple[str, str]]) -> Manifest:
    if len(files) != 1:
        raise ManifestError("iscsitgt: give exactly one `svccfg export iscsitgt` XML file")
    return parse_xml(files[0][1], files[0][0])[0]


def identity_problems(manifest: Manifest) -> list[str]:
    return [f"{lu.naa.esxi_name}: iscsitgtd GUIDs are NAA-6; this LU has an NAA-{lu.naa.naa_type}"
            for lu in manifest.logical_units if lu.naa.naa_type != 6]


def _local_name(t: Target) -> str:
    if t.name and re.match(r"^[A-Za-z0-9_.:-]+$", t.name):
        return t.name
    return re.sub(r"[^A-Za-z0-9-]+", "-", t.iqn.split(":")[-1]).strip("-") or "target"


def render(manifest: Manifest, secrets: Secrets | None = None) -> str:
    """The full `svccfg import` bundle for iscsitgt. Secrets are filled in only from a Secrets table."""
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    tags: dict[int, list[str]] = {}
    for t in manifest.targets:
        for g in t.tpgs:
            tags.setdefault(g.tag, [])
            tags[g.tag] += [p.address for p in g.portals if p.address not in tags[g.tag]]
    passwords: list[tuple[str, str]] = []

    def secret(ref: str | None, owner: str) -> None:
        if ref and secrets is not None:
            value = secrets.resolve(ref, owner)
            passwords.append((encode_name(owner), base64.b64encode(value.encode()).decode()))

    # iscsitgtd initiators carry one iscsi-name each, so a group of several (a COMSTAR host
    # group, say) becomes one initiator per member, all listed in the target's ACL.
    initiators = []
    local_names: dict[str, list[str]] = {}
    for ig in manifest.initiator_groups:
        members = ig.members or [ig.name]
        names = [ig.name] if len(members) == 1 else [f"{ig.name}-{i + 1}" for i in range(len(members))]
        local_names[ig.name] = names
        for name, iqn in zip(names, members, strict=True):
            initiators.append({"group": encode_name(name), "iqn": iqn, "chap": ig.chap_user})
            secret(ig.secret_ref, f"initiator_{name}")
    targets, params = [], []
    for t in manifest.targets:
        local = _local_name(t)
        targets.append({"group": encode_name(local), "iqn": t.iqn, "alias": t.alias or local,
                        "acl": [n for a in t.acl for n in local_names.get(a, [a])], "tpgts": [g.tag for g in t.tpgs],
                        "chap": t.auth.mutual_user if t.auth.mode == "mutual-chap" else None})
        if t.auth.mode == "mutual-chap":
            secret(t.auth.mutual_secret_ref, f"target_{local}")
        for n, lu in manifest.luns_of(t.iqn):
            params.append({"group": f"{encode_name(local)}_{n}", "guid": lu.naa.hex, "vid": lu.vendor_id or "SUN",
                           "pid": lu.product_id or "SOLARIS", "size": lu.size_bytes // 512,
                           "backing": lu.backing.path, "revision": lu.revision})
    return templating.render("iscsitgt.xml.j2", targets=targets, params=params, initiators=initiators,
                             tpgts=sorted(tags.items()), passwords=passwords,
                             source=manifest.source.stack or "manifest")


def commands(xml_path: str = REMOTE_XML) -> list[Command]:
    """Replace the whole iscsitgt configuration: never layer an import over the old one."""
    return [
        Command(["svcadm", "disable", "-s", INSTANCE], "stop iscsitgtd before replacing its configuration"),
        Command(["svccfg", "delete", "-f", SERVICE], "delete the old configuration (imports would merge with it)"),
        Command(["svccfg", "import", xml_path], "import the rendered configuration"),
        Command(["svcadm", "enable", "-s", INSTANCE], "start iscsitgtd with the imported targets"),
    ]


def observe(transport: Transport) -> Manifest:
    out = transport.run(["svccfg", "export", "iscsitgt"]).stdout
    m = parse_xml(out, f"{transport.name}: svccfg export iscsitgt")[0]
    m.source.host = transport.name
    return m


def apply(transport: Transport, manifest: Manifest, *, dry_run: bool = False, secrets: Secrets | None = None,
          check_backing: bool = True) -> ApplyResult:
    xml = render(manifest, secrets)
    if check_backing:
        missing_backing(stat_paths(transport, sorted({u.backing.path for u in manifest.logical_units})),
                        manifest, transport.name)
    upload = Command(["tee", REMOTE_XML], f"write the rendered configuration to {REMOTE_XML}", input=xml)
    cmds = [upload, *commands()]
    if not dry_run:
        for c in cmds:
            transport.run(c.argv, input=c.input)
    return ApplyResult(STACK, cmds, dry_run)
