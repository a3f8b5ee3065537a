"""COMSTAR (illumos, OmniOS, Solaris 11): parse stmfadm/sbdadm/itadm output, render and apply.

Identity: an LU's GUID is its NAA-6 designator (``600144F0`` + host id + time +
counter). ``stmfadm create-lu -p guid=<32 hex>`` recreates an LU with the old
identity, so any NAA-6 can be reproduced; NAA-2/3/5 cannot. Views live in SMF,
not on the zvol, so they are always re-added.

Inputs understood by :func:`parse` (several files, recognised by content):
``stmfadm list-lu -v``, ``stmfadm list-view -l <GUID>`` (the GUID is taken from a
preceding ``# stmfadm list-view -l GUID`` / ``$ stmfadm list-view -l GUID`` line,
or from the file name), ``sbdadm list-lu``, ``itadm list-target -v``,
``itadm list-tpg -v``, ``stmfadm list-hg -v`` and ``stmfadm list-tg -v``.
``list-lu -v`` prints GUIDs in upper case and sbdadm in lower case; both are
normalised. "not set" values become absent fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from esxdr import templating
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

STACK = "comstar"
_GUID = re.compile(r"\b([0-9A-Fa-f]{32})\b")
_NOT_SET = {"not set", "-", "unset", ""}


@dataclass
class StmfLu:
    guid: str
    props: dict[str, str] = field(default_factory=dict)
    views: list[dict[str, str]] = field(default_factory=list)
    views_known: bool = False


@dataclass
class ComstarState:
    lus: dict[str, StmfLu] = field(default_factory=dict)
    sbd: dict[str, tuple[int, str]] = field(default_factory=dict)
    targets: list[dict[str, str]] = field(default_factory=list)
    tpgs: dict[str, list[str]] = field(default_factory=dict)
    host_groups: dict[str, list[str]] = field(default_factory=dict)
    target_groups: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _value(v: str | None) -> str | None:
    if v is None:
        return None
    v = v.strip()
    return None if v.lower() in _NOT_SET else v


# --------------------------------------------------------------------------- parsers
def parse_list_lu(text: str, st: ComstarState) -> None:
    lu = None
    for line in text.splitlines():
        m = re.match(r"^LU Name:\s*([0-9A-Fa-f]{32})\s*$", line.strip())
        if m:
            guid = m.group(1).lower()
            lu = st.lus.setdefault(guid, StmfLu(guid))
            continue
        if lu is not None and ":" in line:
            key, _, value = line.partition(":")
            lu.props[key.strip()] = value.rstrip("\n")


def parse_list_view(text: str, st: ComstarState, guid: str | None) -> None:
    current = guid.lower() if guid else None
    view: dict[str, str] | None = None
    for line in text.splitlines():
        s = line.strip()
        m = re.match(r"^[#$]\s*(?:pfexec\s+|sudo\s+)?stmfadm\s+list-view\s+(?:-v\s+)?-l\s+([0-9A-Fa-f]{32})", s)
        if m:
            current = m.group(1).lower()
            st.lus.setdefault(current, StmfLu(current)).views_known = True
            view = None
            continue
        if re.search(r"no views? found", s, re.I):
            g = _GUID.search(s)
            key = (g.group(1).lower() if g else current)
            if key:
                st.lus.setdefault(key, StmfLu(key)).views_known = True
            continue
        m = re.match(r"^View Entry:\s*(\d+)", s)
        if m:
            if current is None:
                raise ManifestError("stmfadm list-view output without the LU it belongs to",
                                    hint="save it as `stmfadm list-view -l <GUID>` with a first line "
                                         "'# stmfadm list-view -l <GUID>', or put the GUID in the file name")
            view = {"entry": m.group(1)}
            lu = st.lus.setdefault(current, StmfLu(current))
            lu.views.append(view)
            lu.views_known = True
            continue
        if view is not None and ":" in s:
            key, _, value = s.partition(":")
            view[key.strip()] = value.strip()


def parse_sbdadm(text: str, st: ComstarState) -> None:
    for line in text.splitlines():
        m = re.match(r"^([0-9A-Fa-f]{32})\s+(\d+)\s+(\S.*?)\s*$", line.strip())
        if m:
            st.sbd[m.group(1).lower()] = (int(m.group(2)), m.group(3))


def parse_itadm_targets(text: str, st: ComstarState) -> None:
    t: dict[str, str] | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("TARGET NAME"):
            continue
        if not line[0].isspace():
            parts = line.split()
            t = {"iqn": parts[0], "state": parts[1] if len(parts) > 1 else ""}
            st.targets.append(t)
        elif t is not None and ":" in line:
            key, _, value = line.strip().partition(":")
            t[key.strip()] = value.strip()


def parse_itadm_tpgs(text: str, st: ComstarState) -> None:
    name = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("TARGET PORTAL GROUP"):
            continue
        if not line[0].isspace():
            name = line.split()[0]
            st.tpgs[name] = []
        elif name and line.strip().startswith("portals:"):
            value = line.split(":", 1)[1]
            st.tpgs[name] += [p.strip() for p in value.split(",") if p.strip()]


def parse_groups(text: str, kind: str, st: ComstarState) -> None:
    table = st.host_groups if kind == "Host" else st.target_groups
    name = None
    for line in text.splitlines():
        m = re.match(rf"^{kind} Group:\s*(\S+)", line.strip())
        if m:
            name = m.group(1)
            table[name] = []
            continue
        m = re.match(r"^Member:\s*(\S+)", line.strip())
        if m and name:
            table[name].append(m.group(1))


def parse_text(name: str, text: str, st: ComstarState) -> None:
    """Recognise one saved output by content (a file may hold several, one after the other)."""
    if re.search(r"^\s*LU Name:", text, re.M):
        parse_list_lu(text, st)
    if re.search(r"^\s*View Entry:|no views? found|list-view", text, re.M | re.I):
        g = _GUID.search(name)
        parse_list_view(text, st, g.group(1) if g else None)
    if re.search(r"^\s*GUID\s+DATA SIZE\s+SOURCE", text, re.M) or re.search(r"Found \d+ LU\(s\)", text):
        parse_sbdadm(text, st)
    if re.search(r"^TARGET NAME\s+STATE", text, re.M):
        parse_itadm_targets(text, st)
    if re.search(r"^TARGET PORTAL GROUP", text, re.M):
        parse_itadm_tpgs(text, st)
    if re.search(r"^\s*Host Group:", text, re.M):
        parse_groups(text, "Host", st)
    if re.search(r"^\s*Target Group:", text, re.M):
        parse_groups(text, "Target", st)


def backing_of(path: str) -> Backing:
    for prefix in ("/dev/zvol/rdsk/", "/dev/zvol/dsk/"):
        if path.startswith(prefix):
            return Backing("zvol", path, path[len(prefix):])
    return Backing("block" if path.startswith("/dev/") else "file", path)


def to_manifest(st: ComstarState, host: str | None = None) -> Manifest:
    m = Manifest(source=Source(stack=STACK, host=host, notes=list(st.notes)))
    for name, members in st.host_groups.items():
        m.initiator_groups.append(InitiatorGroup(name=name, members=list(members)))
    tpg_tags: dict[str, int] = {}
    for t in st.targets:
        target = Target(iqn=t["iqn"], alias=_value(t.get("alias")))
        auth = (t.get("auth") or "none").split()[0]
        chapuser = _value(t.get("targetchapuser"))
        if auth == "chap":
            # COMSTAR CHAP: initiators prove themselves with per-initiator secrets (itadm
            # create-initiator); targetchapuser/secret is the target's side of mutual CHAP.
            target.auth = Auth(mode="mutual-chap" if chapuser else "chap", mutual_user=chapuser,
                               mutual_secret_ref=f"secrets:{chapuser}" if chapuser else None)
        elif auth == "radius":
            m.source.notes.append(f"{t['iqn']}: RADIUS authentication is not carried; set CHAP on DR")
        tags = (t.get("tpg-tags") or "default").strip()
        if tags != "default":
            for part in tags.split(","):
                if "=" in part:
                    tpg_name, _, tag = part.partition("=")
                    tpg_name = tpg_name.strip()
                    tpg_tags[tpg_name] = int(tag)
                    target.tpgs.append(Tpg(tag=int(tag), name=tpg_name,
                                           portals=[Portal.parse(p) for p in st.tpgs.get(tpg_name, [])]))
        m.targets.append(target)
    known_iqns = {t.iqn for t in m.targets}
    for guid in st.sbd:
        st.lus.setdefault(guid, StmfLu(guid))
    for guid, lu in sorted(st.lus.items()):
        p = lu.props
        data_file = _value(p.get("Data File")) or (st.sbd.get(guid, (0, ""))[1] or None)
        if not data_file:
            raise ManifestError(f"LU {guid.upper()}: no data file in `stmfadm list-lu -v` or `sbdadm list-lu`",
                                hint="include `stmfadm list-lu -v` (or `sbdadm list-lu`) in the saved files")
        size = _value(p.get("Size"))
        size_bytes = int(size) if size and size.isdigit() else st.sbd.get(guid, (0, ""))[0]
        bs = _value(p.get("Block Size"))
        alias = _value(p.get("Alias"))
        serial = _value(p.get("Serial Num"))
        try:
            naa = Naa.parse(guid)
        except ValueError as e:
            raise ManifestError(f"LU {guid}: {e}") from e
        unit = LogicalUnit(
            naa=naa, backing=backing_of(data_file), size_bytes=size_bytes, block_size=int(bs) if bs else 512,
            serial=serial, vendor_id=_value(p.get("Vendor ID")), product_id=_value(p.get("Product ID")),
            read_only=(_value(p.get("Write Protect")) or "Disabled").lower() == "enabled",
            alias=alias if alias and alias != data_file else None)
        if not lu.views_known and lu.props:
            m.source.notes.append(f"naa.{guid}: no `stmfadm list-view -l` output; the LU has no views "
                                  "in this manifest (ESXi will not see it until one is added)")
        for v in lu.views:
            hg = v.get("Host group", "All")
            tg = v.get("Target group", "All")
            lun = int(v.get("LUN", "0"))
            group = None if hg == "All" else hg
            if group and group not in st.host_groups:
                m.initiator_groups.append(InitiatorGroup(name=group))
                st.host_groups[group] = []
                m.source.notes.append(f"host group {group}: members unknown (add `stmfadm list-hg -v`)")
            if tg == "All":
                unit.views.append(View(lun=lun, initiator_group=group))
            elif tg in st.target_groups:
                for iqn in st.target_groups[tg]:
                    if iqn not in known_iqns:
                        m.targets.append(Target(iqn=iqn))
                        known_iqns.add(iqn)
                    unit.views.append(View(lun=lun, target=iqn, initiator_group=group))
            else:
                raise ManifestError(f"LU {guid.upper()} view {v.get('entry')}: target group {tg!r} is unknown",
                                    hint="include `stmfadm list-tg -v` in the saved files")
        m.logical_units.append(unit)
    return m


def _counts(st: ComstarState) -> tuple[int, ...]:
    """What a file can add. Views and properties count too: files come in any order, so a
    `list-view -l GUID` file may only add views to an LU that `list-lu -v` introduced, and
    `list-lu -v` may only add properties to LUs that view files named first."""
    return (len(st.lus), len(st.sbd), len(st.targets), len(st.tpgs), len(st.host_groups),
            sum(len(lu.views) for lu in st.lus.values()), sum(lu.views_known for lu in st.lus.values()),
            sum(len(lu.props) for lu in st.lus.values()))


def parse(files: list[tuple[str, str]]) -> Manifest:
    st = ComstarState()
    for name, text in files:
        before = _counts(st)
        parse_text(name, text, st)
        if before == _counts(st) and not re.search(r"no views? found|Target Group:", text, re.I):
            raise ManifestError(f"{name}: not recognised as stmfadm/sbdadm/itadm output",
                                hint="expected `stmfadm list-lu -v`, `stmfadm list-view -l GUID`, `sbdadm list-lu`, "
                                     "`itadm list-target -v` or `itadm list-tpg -v`")
    if not st.lus and not st.targets and not st.sbd:
        raise ManifestError("no COMSTAR LUs or targets found in the given files")
    return to_manifest(st)


# --------------------------------------------------------------------------- identity + render
def identity_problems(manifest: Manifest) -> list[str]:
    return [f"{lu.naa.esxi_name}: COMSTAR GUIDs are NAA-6; this LU has an NAA-{lu.naa.naa_type}"
            for lu in manifest.logical_units if lu.naa.naa_type != 6]


def rdsk_path(b: Backing) -> str:
    """COMSTAR wants the raw zvol device path."""
    if b.kind == "zvol" and b.dataset and not b.path.startswith("/dev/zvol/rdsk/"):
        return f"/dev/zvol/rdsk/{b.dataset}"
    return b.path


def _tg_name(iqn: str) -> str:
    return "tg-" + re.sub(r"[^A-Za-z0-9]+", "-", iqn.split(":")[-1])[-40:].strip("-")


def commands(manifest: Manifest, secrets: Secrets | None = None,
             existing: ComstarState | None = None) -> tuple[list[Command], list[str]]:
    """stmfadm/itadm commands that create the manifest's configuration on COMSTAR. Pure.

    LUs already present with the same GUID and data file are kept (their views
    are re-added only if missing); the same GUID on another data file is an
    IdentityConflict.
    """
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    existing = existing or ComstarState()
    notes: list[str] = []
    cmds: list[Command] = []
    conflicts = []
    for lu in manifest.logical_units:
        have = existing.lus.get(lu.naa.hex)
        path = _value(have.props.get("Data File")) if have else None
        if have and path and path != rdsk_path(lu.backing):
            conflicts.append(f"{lu.naa.esxi_name} exists on {path}, the manifest wants {rdsk_path(lu.backing)}")
    if conflicts:
        raise IdentityConflict("COMSTAR already has LUs with these GUIDs; nothing was changed:\n  "
                               + "\n  ".join(conflicts), hint="delete the old LU (stmfadm delete-lu) first")
    for g in manifest.initiator_groups:
        if g.name not in existing.host_groups:
            cmds.append(Command(["stmfadm", "create-hg", g.name], f"host group {g.name}"))
        for member in g.members:
            if member not in existing.host_groups.get(g.name, []):
                cmds.append(Command(["stmfadm", "add-hg-member", "-g", g.name, member], f"{member} in {g.name}"))
    made: set[str] = set()
    for t in manifest.targets:
        for tpg in t.tpgs:
            name = tpg.name or f"tpg{tpg.tag}"
            if name not in existing.tpgs and name not in made and tpg.portals:
                made.add(name)
                cmds.append(Command(["itadm", "create-tpg", name, *[str(p) for p in tpg.portals]],
                                    f"portal group {name}"))
    have_targets = {t["iqn"] for t in existing.targets}
    target_groups: dict[str, str] = {}
    for t in manifest.targets:
        if t.iqn in have_targets:
            continue
        argv = ["itadm", "create-target", "-n", t.iqn]
        if t.alias:
            argv += ["-l", t.alias]
        if t.tpgs:
            argv += ["-t", ",".join(g.name or f"tpg{g.tag}" for g in t.tpgs)]
        if t.auth.mode in ("chap", "mutual-chap"):
            argv += ["-a", "chap"]
        if t.auth.mode == "mutual-chap" and t.auth.mutual_user:
            argv += ["-u", t.auth.mutual_user]
            ref = t.auth.mutual_secret_ref or ""
            if ref.startswith("file:"):
                argv += ["-S", ref[5:]]
            else:
                notes.append(f"{t.iqn}: set the target CHAP secret with `itadm modify-target -s {t.iqn}` "
                             f"(secret {ref} is not a file the command can read)")
        cmds.append(Command(argv, f"target {t.iqn}"))
        if any(v.target == t.iqn for lu in manifest.logical_units for v in lu.views):
            tg = _tg_name(t.iqn)
            target_groups[t.iqn] = tg
    for iqn, tg in target_groups.items():
        # A target must be offline while it is added to a target group.
        cmds += [Command(["stmfadm", "create-tg", tg], f"target group for views on {iqn}"),
                 Command(["stmfadm", "offline-target", iqn], "targets join groups only while offline"),
                 Command(["stmfadm", "add-tg-member", "-g", tg, iqn], f"{iqn} in {tg}"),
                 Command(["stmfadm", "online-target", iqn], f"bring {iqn} back online")]
    for lu in manifest.logical_units:
        if lu.naa.hex not in existing.lus:
            argv = ["stmfadm", "create-lu", "-p", f"guid={lu.naa.hex.upper()}"]
            if lu.alias:
                argv += ["-p", f"alias={lu.alias}"]
            if lu.serial:
                argv += ["-p", f"serial={lu.serial}"]
            if lu.vendor_id:
                argv += ["-p", f"vid={lu.vendor_id}"]
            if lu.product_id:
                argv += ["-p", f"pid={lu.product_id}"]
            if lu.block_size != 512:
                argv += ["-p", f"blk={lu.block_size}"]
            if lu.read_only:
                argv += ["-p", "wp=true"]
            argv.append(rdsk_path(lu.backing))
            cmds.append(Command(argv, f"{lu.naa.esxi_name} with its production GUID"))
        have_views = {(v.get("Host group", "All"), v.get("Target group", "All"), v.get("LUN"))
                      for v in (existing.lus[lu.naa.hex].views if lu.naa.hex in existing.lus else [])}
        for v in lu.views:
            hg = v.initiator_group or "All"
            tg = target_groups.get(v.target, _tg_name(v.target)) if v.target else "All"
            if (hg, tg, str(v.lun)) in have_views:
                continue
            argv = ["stmfadm", "add-view"]
            if v.initiator_group:
                argv += ["-h", v.initiator_group]
            if v.target:
                argv += ["-t", tg]
            argv += ["-n", str(v.lun), lu.naa.hex.upper()]
            cmds.append(Command(argv, f"{lu.naa.esxi_name} as LUN {v.lun}"))
    return cmds, notes


def render(manifest: Manifest, secrets: Secrets | None = None) -> str:
    cmds, notes = commands(manifest, secrets)
    return templating.render("comstar.sh.j2", commands=cmds, notes=notes + manifest.source.notes,
                             source=manifest.source.stack or "manifest")


# --------------------------------------------------------------------------- live
def observe_state(transport: Transport) -> ComstarState:
    """stmfadm list-lu -v, list-hg -v, list-tg -v, itadm list-target -v, list-tpg -v, then list-view per LU."""
    st = ComstarState()
    parse_list_lu(transport.run(["stmfadm", "list-lu", "-v"]).stdout, st)
    parse_groups(transport.run(["stmfadm", "list-hg", "-v"]).stdout, "Host", st)
    parse_groups(transport.run(["stmfadm", "list-tg", "-v"]).stdout, "Target", st)
    parse_itadm_targets(transport.run(["itadm", "list-target", "-v"]).stdout, st)
    parse_itadm_tpgs(transport.run(["itadm", "list-tpg", "-v"]).stdout, st)
    for guid in list(st.lus):
        r = transport.run(["stmfadm", "list-view", "-l", guid.upper()], check=False)
        st.lus[guid].views_known = True
        if r.returncode == 0:
            parse_list_view(r.stdout, st, guid)
    return st


def observe(transport: Transport) -> Manifest:
    return to_manifest(observe_state(transport), host=transport.name)


def apply(transport: Transport, manifest: Manifest, *, dry_run: bool = False, secrets: Secrets | None = None,
          check_backing: bool = True) -> ApplyResult:
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    if check_backing:
        paths = {lu.backing.path: rdsk_path(lu.backing) for lu in manifest.logical_units}
        sizes = stat_paths(transport, sorted(set(paths.values())))
        missing_backing({k: sizes.get(v, -1) for k, v in paths.items()}, manifest, transport.name)
    cmds, notes = commands(manifest, secrets, observe_state(transport))
    if not dry_run:
        for c in cmds:
            transport.run(c.argv)
    return ApplyResult(STACK, cmds, dry_run, notes)
