"""Linux LIO (targetcli / rtslib saveconfig.json): parse, render, observe, apply.

Identity is LIO's weak spot. The kernel builds the NAA-6 designator as
``6`` + company_id (6 hex digits, default 001405) + the first 25 hex digits of
``vpd_unit_serial`` (non-hex characters skipped, zero-filled):
target_core_spc.c, spc_gen_naa_6h_vendor_specific. saveconfig.json keeps the
serial (``wwn``) but NOT company_id, vendor or product, so a plain restore
silently changes any NAA whose company id is not LIO's default. esxdr therefore

- derives ``vpd_unit_serial`` from the NAA (keeping the manifest serial when it
  already maps to the NAA),
- writes ``wwn/company_id``, ``wwn/vendor_id``, ``wwn/product_id`` and
  ``wwn/revision`` in configfs explicitly, before the LU is exported (the kernel
  refuses identity changes on an exported device), and
- refuses with IdentityConflict when the NAA cannot be reproduced: not NAA-6, or
  a company id other than 001405 on a kernel without ``wwn/company_id``.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import TYPE_CHECKING

from esxdr.errors import IdentityConflict, ManifestError
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

STACK = "lio"
DEFAULT_COMPANY_ID = "001405"
DEFAULT_VENDOR = "LIO-ORG"
DEFAULT_REVISION = "4.0"
PLUGIN_PRODUCT = {"block": "IBLOCK", "iblock": "IBLOCK", "fileio": "FILEIO", "ramdisk": "RAMDISK-MCP",
                  "rd_mcp": "RAMDISK-MCP", "pscsi": "PSCSI"}
HBA_GLOB = {"block": "iblock_*", "fileio": "fileio_*"}
CONFIGFS = "/sys/kernel/config/target/core"


# --------------------------------------------------------------------------- the NAA rule
def naa_from_serial(serial: str, company_id: str = DEFAULT_COMPANY_ID) -> Naa:
    """The NAA LIO builds from vpd_unit_serial and company_id."""
    digits = "".join(c.lower() for c in serial if c in "0123456789abcdefABCDEF")[:25]
    return Naa("6" + company_id.lower().rjust(6, "0")[-6:] + digits.ljust(25, "0"))


def serial_for(lu: LogicalUnit) -> str:
    """The vpd_unit_serial that makes LIO present ``lu.naa``: the manifest serial when it maps to the
    NAA, else the NAA's 25 vendor-specific hex digits."""
    naa = lu.naa
    if naa.naa_type != 6:
        raise IdentityConflict(f"{naa.esxi_name}: LIO presents only NAA-6 designators")
    if lu.serial and naa_from_serial(lu.serial, naa.company_id or "").hex == naa.hex:
        return lu.serial
    derived = naa.hex[7:]
    if naa_from_serial(derived, naa.company_id or "").hex != naa.hex:  # pragma: no cover - arithmetic guard
        raise IdentityConflict(f"{naa.esxi_name}: no vpd_unit_serial reproduces this NAA on LIO")
    return derived


def identity_problems(manifest: Manifest, company_id_settable: bool = True) -> list[str]:
    out = []
    for lu in manifest.logical_units:
        if lu.naa.naa_type != 6:
            out.append(f"{lu.naa.esxi_name}: LIO presents only NAA-6 (6 + company_id + serial digits); "
                       f"this LU has an NAA-{lu.naa.naa_type}")
            continue
        if not company_id_settable and lu.naa.company_id != DEFAULT_COMPANY_ID:
            out.append(f"{lu.naa.esxi_name}: company id {lu.naa.company_id} needs wwn/company_id, "
                       f"which this kernel lacks (it always uses {DEFAULT_COMPANY_ID})")
    return out


def serial_notes(manifest: Manifest) -> list[str]:
    notes = []
    for lu in manifest.logical_units:
        if lu.naa.naa_type == 6 and lu.serial and serial_for(lu) != lu.serial:
            notes.append(f"{lu.naa.esxi_name}: VPD 0x80 serial becomes {serial_for(lu)!r} (was {lu.serial!r}) "
                         "because LIO derives the NAA from it; ESXi names devices by NAA, not serial")
    return notes


# --------------------------------------------------------------------------- parse
def _so_name(path: str) -> tuple[str, str]:
    parts = path.strip("/").split("/")
    if len(parts) != 3 or parts[0] != "backstores":
        raise ManifestError(f"saveconfig.json: storage_object {path!r} is not /backstores/<plugin>/<name>")
    return parts[1], parts[2]


def parse_saveconfig(text: str, origin: str = "saveconfig.json",
                     identity: dict[str, dict[str, str]] | None = None) -> Manifest:
    """``identity`` (from configfs, keyed by storage object name) overrides the defaults that
    saveconfig.json cannot carry: company_id, vendor_id, product_id, revision."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{origin}:{e.lineno}:{e.colno}: malformed JSON: {e.msg}") from e
    if not isinstance(data, dict) or "storage_objects" not in data:
        raise ManifestError(f"{origin}: no storage_objects: not a targetcli saveconfig.json")
    m = Manifest(source=Source(stack=STACK, notes=[]))
    identity = identity or {}
    by_so: dict[tuple[str, str], LogicalUnit] = {}
    guessed = False
    for i, so in enumerate(data.get("storage_objects") or []):
        where = f"{origin}: storage_objects[{i}]"
        plugin, name = so.get("plugin"), so.get("name")
        if plugin not in ("block", "fileio"):
            m.source.notes.append(f"{where}: plugin {plugin!r} ({name}) skipped: only block and fileio LUs "
                                  "carry a VMFS datastore")
            continue
        wwn = so.get("wwn")
        if not wwn:
            raise ManifestError(f"{where}: {name} has no wwn (vpd_unit_serial), so its NAA is unknown")
        ident = identity.get(name, {})
        if not ident.get("company_id"):
            guessed = True
        company = (ident.get("company_id") or DEFAULT_COMPANY_ID).lower().removeprefix("0x").rjust(6, "0")
        attrs = so.get("attributes") or {}
        path = so.get("dev") or ""
        kind = "zvol" if path.startswith("/dev/zvol/") else ("block" if path.startswith("/dev/") else "file")
        dataset = path[len("/dev/zvol/"):] if kind == "zvol" else None
        bs = int(attrs.get("block_size", 512))
        size = int(so.get("size") or 0)
        product = ident.get("product_id") or (name[:16] if attrs.get("emulate_model_alias") else
                                              PLUGIN_PRODUCT.get(plugin, plugin.upper()))
        lu = LogicalUnit(naa=naa_from_serial(wwn, company), backing=Backing(kind, path, dataset),
                         size_bytes=size - size % bs, block_size=bs, serial=wwn,
                         vendor_id=ident.get("vendor_id") or DEFAULT_VENDOR, product_id=product,
                         revision=ident.get("revision") or DEFAULT_REVISION,
                         read_only=bool(so.get("readonly", False)), alias=name)
        by_so[(plugin, name)] = lu
        m.logical_units.append(lu)
    if guessed and m.logical_units:
        m.source.notes.append("saveconfig.json does not record company_id, vendor or product: assumed LIO's "
                              f"defaults ({DEFAULT_COMPANY_ID}, {DEFAULT_VENDOR}); check against the live "
                              "configfs (esxdr target export reads it)")
    groups: dict[str, InitiatorGroup] = {}
    for ti, t in enumerate(data.get("targets") or []):
        if t.get("fabric") != "iscsi":
            continue
        target = Target(iqn=t.get("wwn", ""))
        for gi, tpg in enumerate(t.get("tpgs") or []):
            where = f"{origin}: targets[{ti}].tpgs[{gi}]"
            tag = int(tpg.get("tag", 1))
            target.tpgs.append(Tpg(tag=tag, portals=[Portal(p.get("ip_address", "0.0.0.0"), int(p.get("port", 3260)))
                                                     for p in tpg.get("portals") or []]))
            attrs = tpg.get("attributes") or {}
            if int(attrs.get("authentication", 0)):
                target.auth = Auth(mode="chap")
            lun_map: dict[int, LogicalUnit] = {}
            for lun in tpg.get("luns") or []:
                key = _so_name(lun.get("storage_object", ""))
                found = by_so.get(key)
                if found is None:
                    raise ManifestError(f"{where}: LUN {lun.get('index')} names {lun.get('storage_object')}, "
                                        "which is not among the storage_objects")
                lun_map[int(lun["index"])] = found
                found.views.append(View(lun=int(lun["index"]), target=target.iqn))
            if not int(attrs.get("generate_node_acls", 0)):
                for acl in tpg.get("node_acls") or []:
                    iqn = acl.get("node_wwn", "")
                    g = groups.get(iqn)
                    if g is None:
                        user = acl.get("chap_userid") or None
                        g = InitiatorGroup(name=iqn, members=[iqn], chap_user=user,
                                           secret_ref=f"secrets:{user}" if user else None)
                        groups[iqn] = g
                        m.initiator_groups.append(g)
                    if iqn not in target.acl:
                        target.acl.append(iqn)
                    if acl.get("chap_mutual_userid"):
                        mu = acl["chap_mutual_userid"]
                        target.auth = Auth(mode="mutual-chap", mutual_user=mu, mutual_secret_ref=f"secrets:{mu}")
                    for ml in acl.get("mapped_luns") or []:
                        tl, idx = int(ml.get("tpg_lun", -1)), int(ml.get("index", -1))
                        if tl in lun_map and tl != idx:
                            m.source.notes.append(f"{iqn} sees LUN {tl} of {target.iqn} as LUN {idx}; "
                                                  "the manifest keeps the TPG's LUN number")
        m.targets.append(target)
    return m


def parse(files: list[tuple[str, str]]) -> Manifest:
    if len(files) != 1:
        raise ManifestError("lio: give exactly one saveconfig.json")
    return parse_saveconfig(files[0][1], files[0][0])


# --------------------------------------------------------------------------- render
def _so_names(manifest: Manifest) -> dict[str, tuple[str, str]]:
    """Storage object (plugin, name) per NAA: the alias if it is a valid name, else from the dataset/path."""
    out: dict[str, tuple[str, str]] = {}
    used = set()
    for lu in manifest.logical_units:
        plugin = "fileio" if lu.backing.kind == "file" else "block"
        base = lu.alias or lu.backing.dataset or lu.backing.path.rsplit("/", 1)[-1]
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", base).strip("-")[:50] or f"lu-{lu.naa.hex[-8:]}"
        if name in used:
            name = f"{name}-{lu.naa.hex[-6:]}"
        used.add(name)
        out[lu.naa.hex] = (plugin, name)
    return out


def render_saveconfig(manifest: Manifest, secrets: Secrets | None = None) -> dict:
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    names = _so_names(manifest)
    sos = []
    for lu in manifest.logical_units:
        plugin, name = names[lu.naa.hex]
        so = {"attributes": {"block_size": lu.block_size, "emulate_model_alias": 0}, "name": name,
              "plugin": plugin, "readonly": lu.read_only, "wwn": serial_for(lu), "dev": lu.backing.path}
        if plugin == "fileio":
            so.update({"size": lu.size_bytes, "write_back": False, "aio": False})
        else:
            so.update({"write_back": False})
        sos.append(so)
    targets = []
    for t in manifest.targets:
        luns = [{"index": n, "storage_object": "/backstores/{}/{}".format(*names[lu.naa.hex])}
                for n, lu in manifest.luns_of(t.iqn)]
        acls = []
        for gname in t.acl:
            g = manifest.group(gname)
            for iqn in (g.members if g else []):
                acl = {"node_wwn": iqn, "mapped_luns": [{"index": lun["index"], "tpg_lun": lun["index"],
                                                         "write_protect": False} for lun in luns]}
                if g and g.chap_user:
                    acl["chap_userid"] = g.chap_user
                    acl["chap_password"] = secrets.resolve(g.secret_ref, f"initiator {iqn}") if secrets \
                        else f"<{g.secret_ref}>"
                if t.auth.mode == "mutual-chap" and t.auth.mutual_user:
                    acl["chap_mutual_userid"] = t.auth.mutual_user
                    acl["chap_mutual_password"] = secrets.resolve(t.auth.mutual_secret_ref, t.iqn) if secrets \
                        else f"<{t.auth.mutual_secret_ref}>"
                acls.append(acl)
        tpgs = t.tpgs or [Tpg(tag=1, portals=[Portal("0.0.0.0", 3260)])]
        targets.append({"fabric": "iscsi", "wwn": t.iqn, "tpgs": [{
            "tag": g.tag, "enable": True,
            "attributes": {"authentication": 1 if t.auth.mode != "none" else 0,
                           "generate_node_acls": 0 if t.acl else 1, "demo_mode_write_protect": 0},
            "parameters": {"AuthMethod": "CHAP" if t.auth.mode != "none" else "None"},
            "portals": [{"ip_address": p.address, "port": p.port, "iser": False, "offload": False}
                        for p in g.portals],
            "luns": luns if i == 0 else [], "node_acls": acls if i == 0 else [],
        } for i, g in enumerate(tpgs)]})
    return {"fabric_modules": [], "storage_objects": sos, "targets": targets}


def identity_commands(manifest: Manifest) -> list[Command]:
    """configfs writes for what saveconfig.json cannot carry; each before the LU is exported."""
    names = _so_names(manifest)
    cmds = []
    for lu in manifest.logical_units:
        plugin, name = names[lu.naa.hex]
        base = f"{CONFIGFS}/{HBA_GLOB[plugin]}/{name}/wwn"
        for attr, value in (("company_id", f"0x{lu.naa.company_id}"), ("vendor_id", lu.vendor_id),
                            ("product_id", lu.product_id), ("revision", lu.revision)):
            if value:
                # The glob picks the HBA directory (iblock_0, fileio_1 …) that targetcli chose.
                cmds.append(Command(["sh", "-c", f'printf %s "$1" > {base}/{attr}', "sh", value],
                                    f"{lu.naa.esxi_name}: {attr} = {value}"))
    return cmds


def commands(manifest: Manifest, secrets: Secrets | None = None, existing: Manifest | None = None) -> list[Command]:
    """targetcli + configfs commands in the order the kernel requires. Pure."""
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    names = _so_names(manifest)
    have = {lu.naa.hex for lu in existing.logical_units} if existing else set()
    have_targets = {t.iqn for t in existing.targets} if existing else set()
    cmds: list[Command] = []
    by_naa: dict[str, list[Command]] = {}
    for c in identity_commands(manifest):
        by_naa.setdefault(c.reason.split(":")[0], []).append(c)
    for lu in manifest.logical_units:
        if lu.naa.hex in have:
            continue
        plugin, name = names[lu.naa.hex]
        if plugin == "fileio":
            create = ["targetcli", f"/backstores/fileio create name={name} file_or_dev={shlex.quote(lu.backing.path)} "
                      f"size={lu.size_bytes} write_back=false wwn={serial_for(lu)}"]
        else:
            create = ["targetcli", f"/backstores/block create name={name} dev={shlex.quote(lu.backing.path)} "
                      f"readonly={'true' if lu.read_only else 'false'} wwn={serial_for(lu)}"]
        cmds.append(Command(create, f"{lu.naa.esxi_name}: backstore with vpd_unit_serial from the NAA"))
        if lu.block_size != 512:
            cmds.append(Command(["targetcli", f"/backstores/{plugin}/{name} set attribute block_size={lu.block_size}"],
                                f"{lu.naa.esxi_name}: block size"))
        cmds += by_naa.get(lu.naa.esxi_name, [])
    for t in manifest.targets:
        tag = t.tpgs[0].tag if t.tpgs else 1
        tpg = f"/iscsi/{t.iqn}/tpg{tag}"
        if t.iqn not in have_targets:
            cmds.append(Command(["targetcli", f"/iscsi create {t.iqn}"], f"target {t.iqn}"))
            if t.tpgs and t.tpgs[0].portals:
                cmds.append(Command(["targetcli", f"{tpg}/portals delete 0.0.0.0 3260"],
                                    "replace the default portal with the manifest's"))
                for p in t.tpgs[0].portals:
                    cmds.append(Command(["targetcli", f"{tpg}/portals create {p.address} {p.port}"],
                                        f"portal {p}"))
        for n, lu in manifest.luns_of(t.iqn):
            if lu.naa.hex in have:
                continue
            cmds.append(Command(["targetcli", "{}/luns create /backstores/{}/{} lun={} add_mapped_luns=false".format(
                tpg, *names[lu.naa.hex], n)], f"{lu.naa.esxi_name} as LUN {n}"))
        cmds.append(Command(["targetcli", f"{tpg} set attribute authentication={1 if t.auth.mode != 'none' else 0} "
                                          f"generate_node_acls={0 if t.acl else 1}"], f"access mode of {t.iqn}"))
        for gname in t.acl:
            g = manifest.group(gname)
            for iqn in (g.members if g else []):
                cmds.append(Command(["targetcli", f"{tpg}/acls create {iqn} add_mapped_luns=true"],
                                    f"allow {iqn}"))
                if g and g.chap_user:
                    secret = secrets.resolve(g.secret_ref, f"initiator {iqn}") if secrets else f"<{g.secret_ref}>"
                    cmds.append(Command(["targetcli", f"{tpg}/acls/{iqn} set auth userid={g.chap_user}"],
                                        f"CHAP user for {iqn}"))
                    # The secret goes to the ACL's configfs attribute on stdin: on targetcli's argv it
                    # would be in /proc/PID/cmdline for every local user (issue #14). saveconfig reads
                    # it back from configfs like everything else.
                    auth = f"/sys/kernel/config/target/iscsi/{t.iqn}/tpgt_{tag}/acls/{iqn}/auth/password"
                    cmds.append(Command(["sh", "-c", 'cat > "$1"', "sh", auth],
                                        f"CHAP secret for {iqn} (on stdin)", input=secret))
    cmds.append(Command(["targetcli", "saveconfig"], "persist (company_id/vendor/product are re-applied by esxdr)"))
    return cmds


def render(manifest: Manifest, secrets: Secrets | None = None) -> str:
    """saveconfig.json followed by nothing else: use `commands` for the configfs identity writes."""
    return json.dumps(render_saveconfig(manifest, secrets), indent=2) + "\n"


def identity_settings(manifest: Manifest) -> list[dict]:
    """Per LU, the configfs identity a saveconfig.json cannot carry, and the NAA a plain restore
    of that file would present instead (``restored_as``). ``lost_on_restore`` names the attributes
    whose value differs from what LIO puts there by itself."""
    names = _so_names(manifest)
    out = []
    for lu in manifest.logical_units:
        if lu.naa.naa_type != 6:
            continue  # render/commands refuse these with the reason
        plugin, name = names[lu.naa.hex]
        wanted = {"company_id": f"0x{lu.naa.company_id}", "vendor_id": (lu.vendor_id or "").strip(),
                  "product_id": (lu.product_id or "").strip(), "revision": (lu.revision or "").strip()}
        lio_default = {"company_id": f"0x{DEFAULT_COMPANY_ID}", "vendor_id": DEFAULT_VENDOR,
                       "product_id": PLUGIN_PRODUCT[plugin], "revision": DEFAULT_REVISION}
        out.append({
            "naa": lu.naa.esxi_name, "storage_object": f"/backstores/{plugin}/{name}", "wwn": serial_for(lu),
            "configfs": f"{CONFIGFS}/{HBA_GLOB[plugin]}/{name}/wwn",
            **{k: v for k, v in wanted.items() if v},
            "restored_as": naa_from_serial(serial_for(lu)).esxi_name,
            "lost_on_restore": [k for k, v in wanted.items() if v and v.lower() != lio_default[k].lower()],
        })
    return out


def restore_notes(manifest: Manifest) -> list[str]:
    """What an admin must know beside a rendered saveconfig.json: which LUs come back with another
    identity when that file is restored as written, and what to set, in which order."""
    lost = [d for d in identity_settings(manifest) if d["lost_on_restore"]]
    if not lost:
        return []
    notes = ["saveconfig.json cannot hold wwn/company_id, vendor_id or product_id. Restored as written, "
             f"{len(lost)} LU(s) come back with another identity, so ESXi sees new devices and their VMFS "
             "volumes as unresolved snapshots (the product id is part of the VMFS device id too):"]
    for d in lost:
        sets = ", ".join(f"{k}={d[k]}" for k in ("company_id", "vendor_id", "product_id", "revision") if k in d)
        notes.append(f"  {d['naa']}: restored as {d['restored_as']}; {d['storage_object']} needs "
                     f"{sets} (in {d['configfs']}/)")
    notes.append("these can only be written before the LU is mapped to a LUN (the kernel refuses them on an "
                 "exported device), so a restore followed by the writes fails: use `--to lio-script` for a "
                 "script that does it in order, or `esxdr target import` on the DR box")
    return notes


def script(manifest: Manifest, secrets: Secrets | None = None) -> str:
    """A shell script running :func:`commands` in order: backstores, their configfs identity,
    then LUNs and ACLs, then ``targetcli saveconfig``. Pure."""
    cmds = commands(manifest, secrets)
    lines = [
        "#!/bin/sh",
        "# LIO configuration written by `esxdr target convert --to lio-script`.",
        "# Run as root on the DR box with an empty LIO configuration (targetcli clearconfig confirm=True).",
        "# saveconfig.json cannot hold wwn/company_id, vendor_id or product_id, and the kernel takes them",
        "# only before an LU is exported, so each backstore gets its identity before its LUN is created.",
        "# At boot LIO restores saveconfig.json and exports at once, without that identity: after a",
        "# reboot, clear the configuration and run this script again before ESXi rescans.",
        "set -eu",
    ]
    for d in identity_settings(manifest):
        lines.append(f"# {d['naa']}: {d['storage_object']} (plain restore would give {d['restored_as']})")
    for c in cmds:
        reason = c.reason
        if c.argv == ["targetcli", "saveconfig"]:
            reason = "persist (without the identity above: see the top of this script)"
        # printf is the shell's builtin: the script's stdin data never becomes a process's argv
        feed = f"printf %s {shlex.quote(c.input)} | " if c.input is not None else ""
        lines += [f"# {reason}", feed + shlex.join(c.argv)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- live
def company_id_supported(probe_output: str) -> bool:
    """Whether wwn/company_id exists: seen on an existing device, else judged by the kernel release.

    The attribute appeared around Linux 5.9 (assumption; an existing device's
    configfs directory is the real evidence and wins when present).
    """
    if "/wwn/company_id" in probe_output:
        return True
    m = re.search(r"^(\d+)\.(\d+)", probe_output.strip().splitlines()[-1] if probe_output.strip() else "")
    return m is not None and (int(m.group(1)), int(m.group(2))) >= (5, 9)


def observe(transport: Transport) -> Manifest:
    """saveconfig.json plus the configfs identity attributes it lacks (two commands)."""
    text = transport.run(["cat", "/etc/target/saveconfig.json"]).stdout
    r = transport.run(["sh", "-c", f"grep -H . {CONFIGFS}/*/*/wwn/company_id {CONFIGFS}/*/*/wwn/vendor_id "
                                   f"{CONFIGFS}/*/*/wwn/product_id {CONFIGFS}/*/*/wwn/revision"], check=False)
    identity: dict[str, dict[str, str]] = {}
    for line in r.stdout.splitlines():
        path, _, value = line.partition(":")
        parts = path.split("/")
        if len(parts) >= 3:
            identity.setdefault(parts[-3], {})[parts[-1]] = value.strip()
    m = parse_saveconfig(text, f"{transport.name}:/etc/target/saveconfig.json", identity)
    m.source.host = transport.name
    return m


def apply(transport: Transport, manifest: Manifest, *, dry_run: bool = False, secrets: Secrets | None = None,
          check_backing: bool = True, company_id_settable: bool | None = None) -> ApplyResult:
    manifest.validate()
    if company_id_settable is None:
        r = transport.run(["sh", "-c", f"ls -d {CONFIGFS}/*/*/wwn/company_id 2>/dev/null | head -1; "
                                       "uname -r"], check=False)
        company_id_settable = company_id_supported(r.stdout)
    refuse_identity(STACK, identity_problems(manifest, company_id_settable))
    if check_backing:
        missing_backing(stat_paths(transport, sorted({u.backing.path for u in manifest.logical_units})),
                        manifest, transport.name)
    existing = None
    r = transport.run(["cat", "/etc/target/saveconfig.json"], check=False)
    if r.returncode == 0 and r.stdout.strip():
        existing = parse_saveconfig(r.stdout, "existing saveconfig.json")
    cmds = commands(manifest, secrets, existing)
    if not dry_run:
        for c in cmds:
            transport.run(c.argv, input=c.input)
    return ApplyResult(STACK, cmds, dry_run, serial_notes(manifest))
