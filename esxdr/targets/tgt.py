"""Linux tgt (tgtd/tgtadm 1.0.x): parse `tgtadm --op show` and targets.conf, render, observe, apply.

Identity: tgt's VPD 0x83 carries an NAA-6 designator parsed from ``scsi_id``
character by character (usr/spc.c), so setting ``scsi_id=<the 32 hex NAA>``
reproduces any NAA-6 exactly. tgt cannot present an NAA-2/3/5 (its only other
NAA designator is an NAA-3 built from tid and LUN, which ESXi ranks below the
NAA-6), so those LUs are refused with IdentityConflict before anything runs.

LUN 0 of every tgt target is its controller LU and cannot be replaced, so an
LU that production presents as LUN 0 gets the lowest free LUN on that target.
ESXi identifies a datastore's device by NAA, not by LUN number, so this is
safe; the plan says so in a note.

`tgtadm --op show` does not print vendor/product/revision and rounds the size to
MB, so observe() reads exact sizes from the backing stores and leaves vendor,
product and revision unknown (verify reads them from the wire).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from esxdr import templating
from esxdr.errors import EsxdrError, IdentityConflict, ManifestError
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Portal, Target
from esxdr.targets.base import (
    ApplyResult,
    Command,
    Secrets,
    missing_backing,
    param_value,
    refuse_identity,
    stat_paths,
)
from esxdr.targets.probe import DEFAULT_INITIATOR, Session
from esxdr.targets.tgt_native import (
    NAME_ACL,
    SCSI_SN_LEN,
    STACK,
    TgtLu,
    TgtTarget,
    backing_kind,
    naa_from_scsi_id,
    parse_conf,
    parse_show,
    to_manifest,
)

if TYPE_CHECKING:
    from esxdr.transport.base import Transport


# --------------------------------------------------------------------------- identity
def identity_problems(manifest: Manifest) -> list[str]:
    out = []
    for lu in manifest.logical_units:
        if lu.naa.naa_type != 6:
            out.append(f"{lu.naa.esxi_name}: tgt presents only NAA-6 designators from scsi_id; "
                       f"this LU has an NAA-{lu.naa.naa_type}")
        if lu.serial and len(lu.serial) > SCSI_SN_LEN:
            out.append(f"{lu.naa.esxi_name}: serial {lu.serial!r} is longer than tgt's {SCSI_SN_LEN} characters")
    return out


def _check_params(manifest: Manifest) -> None:
    for lu in manifest.logical_units:
        for name in ("serial", "vendor_id", "product_id", "revision"):
            param_value(STACK, lu, name, getattr(lu, name), forbidden=",=")


# --------------------------------------------------------------------------- layout
@dataclass
class Placement:
    """Where each manifest target and LU goes on tgt: tids and LUN numbers (LUN 0 moved)."""

    tids: dict[str, int]
    luns: dict[str, list[tuple[int, LogicalUnit]]]
    notes: list[str]


def place(manifest: Manifest, observed: list[TgtTarget] | None = None) -> Placement:
    observed = observed or []
    existing = {t.iqn: t.tid for t in observed}
    used = set(existing.values())
    tids: dict[str, int] = {}
    next_tid = 1
    for t in manifest.targets:
        if t.iqn in existing:
            tids[t.iqn] = existing[t.iqn]
            continue
        if t.name and t.name.isdigit() and int(t.name) not in used and int(t.name) not in tids.values():
            tids[t.iqn] = int(t.name)
        else:
            while next_tid in used or next_tid in tids.values():
                next_tid += 1
            tids[t.iqn] = next_tid
        used.add(tids[t.iqn])
    luns: dict[str, list[tuple[int, LogicalUnit]]] = {}
    notes: list[str] = [f"{lu.naa.esxi_name}: no view in the manifest, so tgt does not present it"
                        for lu in manifest.logical_units if not lu.views]
    for t in manifest.targets:
        pairs = manifest.luns_of(t.iqn)
        taken = {n for n, _ in pairs}
        placed = []
        for n, lu in pairs:
            if n == 0:
                k = 1
                while k in taken:
                    k += 1
                taken.add(k)
                notes.append(f"{lu.naa.esxi_name}: LUN 0 is tgt's controller on {t.iqn}; presented as LUN {k} "
                             "(ESXi identifies the device by NAA, so the datastore is unaffected)")
                n = k
            if any(v.initiator_group for v in lu.views):
                notes.append(f"{lu.naa.esxi_name}: tgt cannot mask LUNs per initiator; every initiator "
                             f"admitted to {t.iqn} sees it")
            placed.append((n, lu))
        luns[t.iqn] = sorted(placed, key=lambda p: p[0])
    return Placement(tids, luns, notes)


# --------------------------------------------------------------------------- render
def render(manifest: Manifest, secrets: Secrets | None = None) -> str:
    """targets.conf for tgt-admin. Secrets are filled in only when a Secrets table is given."""
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    _check_params(manifest)
    pl = place(manifest)
    targets = []
    for t in manifest.targets:
        addresses, names = _acl_members(manifest, t)
        targets.append({
            "iqn": t.iqn, "alias": t.alias,
            "luns": [{"lun": n, "path": lu.backing.path, "scsi_id": lu.naa.hex, "serial": lu.serial,
                      "vendor_id": lu.vendor_id, "product_id": lu.product_id, "revision": lu.revision,
                      "block_size": lu.block_size, "read_only": lu.read_only} for n, lu in pl.luns[t.iqn]],
            "addresses": addresses, "names": names,
            "incoming": _cred(t.auth.user, t.auth.secret_ref, secrets, t.iqn) if t.auth.mode != "none" else None,
            "outgoing": _cred(t.auth.mutual_user, t.auth.mutual_secret_ref, secrets, t.iqn)
            if t.auth.mode == "mutual-chap" else None,
        })
    return templating.render("targets.conf.j2", targets=targets, notes=pl.notes,
                             source=f"from {manifest.source.stack or 'manifest'}"
                                    f"{' on ' + manifest.source.host if manifest.source.host else ''}")


def _cred(user: str | None, ref: str | None, secrets: Secrets | None, what: str) -> dict:
    if not user:
        raise ManifestError(f"{what}: CHAP on tgt needs a user name (auth.user / auth.mutual_user)",
                            hint="give one with --chap-user USER --chap-secret-ref secrets:KEY")
    if secrets is None:
        return {"user": user, "secret": f"<{ref}>"}
    return {"user": user, "secret": secrets.resolve(ref, f"{what} CHAP user {user}")}


def _acl_members(manifest: Manifest, t: Target) -> tuple[list[str], list[str]]:
    if not t.acl:
        return ["ALL"], []
    addresses: list[str] = []
    names: list[str] = []
    for gname in t.acl:
        g = manifest.group(gname)
        for member in g.members if g else []:
            (names if NAME_ACL.match(member) else addresses).append(member)
    return addresses, names


def _admitted(manifest: Manifest, t: Target) -> tuple[list[str], list[str]]:
    """(addresses, initiator names) a live target admits; refused when there are none.

    tgt treats a target without ACL entries as closed and ``ALL`` as open to every initiator;
    esxdr binds neither ``ALL`` nor an empty list: a target it applies admits the initiators the
    manifest names, deduplicated (tgtadm refuses a rule bound twice)."""
    addresses: list[str] = []
    names: list[str] = []
    for gname in t.acl:
        g = manifest.group(gname)
        for member in g.members if g else []:  # "ALL" as a member is refused by the manifest's validation
            bucket = names if NAME_ACL.match(member) else addresses
            if member not in bucket:
                bucket.append(member)
    if not addresses and not names:
        raise ManifestError(f"{t.iqn}: the target's ACL admits no initiator, and esxdr never presents a target to "
                            "every initiator (tgt's ALL); nothing was changed",
                            hint="name the initiators that may log in: --allow-initiator IQN (repeatable), "
                                 "or an initiator group in targets[].acl")
    return addresses, names


# --------------------------------------------------------------------------- live
class Tgtadm:
    """argv builder for one tgtd instance (selected by its control port)."""

    def __init__(self, control_port: int | None = None):
        self.control_port = control_port

    def __call__(self, *args: str) -> list[str]:
        base = ["tgtadm"]
        if self.control_port is not None:
            base += ["-C", str(self.control_port)]
        return base + ["--lld", "iscsi", *args]


def observe(transport: Transport, control_port: int | None = None, *, with_sizes: bool = True,
            portal: str | None = None, initiator: str | None = None) -> Manifest:
    """Read the live tgt configuration: one tgtadm command, plus one stat for exact sizes.

    `tgtadm --op show` does not print vendor, product or revision, yet the
    product id is part of the VMFS device id. With ``portal``, they are read
    over iSCSI (one session per target, INQUIRY per LU); LUs that cannot be
    read that way are named in the manifest's notes.
    """
    adm = Tgtadm(control_port)
    out = transport.run(adm("--op", "show", "--mode", "target")).stdout
    targets = parse_show(out)
    sizes = stat_paths(transport, sorted({lu.path for t in targets for lu in t.luns.values() if lu.path})) \
        if with_sizes else {}
    m = to_manifest(targets, sizes, host=transport.name)
    if portal:
        _inquiry_identities(m, portal, initiator)
    elif m.logical_units:
        m.source.notes.append("vendor/product/revision unknown: tgtadm does not show them (export with the "
                              "target's portal to read them over iSCSI)")
    return m


def _inquiry_identities(m: Manifest, portal: str, initiator: str | None) -> None:
    p = Portal.parse(portal)
    missing = {lu.naa.hex for lu in m.logical_units}
    for t in m.targets:
        if not m.luns_of(t.iqn):
            continue
        try:
            with Session(p.address, p.port, target=t.iqn, initiator=initiator or DEFAULT_INITIATOR) as s:
                for n, lu in m.luns_of(t.iqn):
                    std = s.inquiry(n, None, 36)
                    lu.vendor_id = std[8:16].decode("ascii", "replace").strip() or None
                    lu.product_id = std[16:32].decode("ascii", "replace").strip() or None
                    lu.revision = std[32:36].decode("ascii", "replace").strip() or None
                    missing.discard(lu.naa.hex)
        except EsxdrError as e:
            m.source.notes.append(f"{t.iqn}: vendor/product not read over iSCSI: {e.message}")
    for naa in sorted(missing):
        m.source.notes.append(f"naa.{naa}: vendor/product/revision unknown")


def plan(manifest: Manifest, observed: list[TgtTarget], secrets: Secrets | None, *,
         control_port: int | None = None, accounts: set[str] | None = None) -> tuple[list[Command], list[str]]:
    """The tgtadm commands that turn ``observed`` into ``manifest``. Pure: no I/O.

    Targets on the host that the manifest does not name are left alone. Raises
    IdentityConflict when an NAA of the manifest is already served by an LU this
    plan does not replace (two different disks with one NAA).
    """
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    _check_params(manifest)
    adm = Tgtadm(control_port)
    pl = place(manifest, observed)
    obs = {t.iqn: t for t in observed}
    cmds: list[Command] = []
    desired_at: dict[tuple[int, int], str] = {}
    for t in manifest.targets:
        for n, lu in pl.luns[t.iqn]:
            desired_at[(pl.tids[t.iqn], n)] = lu.naa.hex
    # Split-brain guard: the NAA must not stay on some other LU.
    conflicts = []
    for ot in observed:
        for n, olu in ot.luns.items():
            if olu.device_type == "controller":
                continue
            naa = naa_from_scsi_id(olu.scsi_id, ot.tid, n).hex
            if desired_at.get((ot.tid, n)) is None and manifest.lu(naa) is not None and ot.iqn not in pl.tids:
                conflicts.append(f"naa.{naa} is already served by {ot.iqn} LUN {n} ({olu.path}), "
                                 "a target this manifest does not manage")
    if conflicts:
        raise IdentityConflict("refusing to present an NAA twice; nothing was changed:\n  " + "\n  ".join(conflicts),
                               hint="remove the other LU first (or run present-clone with --new-naa)")
    accounts = set(accounts or set())
    for t in manifest.targets:
        tid = str(pl.tids[t.iqn])
        cur = obs.get(t.iqn)
        if cur is None:
            cmds.append(Command(adm("--op", "new", "--mode", "target", "--tid", tid, "-T", t.iqn),
                                f"create target {t.iqn}"))
            cur = TgtTarget(int(tid), t.iqn)
        wanted = dict(pl.luns[t.iqn])
        for n, old in sorted(cur.luns.items()):
            if old.device_type == "controller":
                continue
            new = wanted.get(n)
            if new is None or old.path != new.backing.path or old.block_size != new.block_size:
                cmds.append(Command(adm("--op", "delete", "--mode", "logicalunit", "--tid", tid, "--lun", str(n)),
                                    f"LUN {n} of {t.iqn} is {'not in the manifest' if new is None else 'different'}"))
        for n, lu in pl.luns[t.iqn]:
            have: TgtLu | None = cur.luns.get(n)
            recreate = have is None or have.path != lu.backing.path or have.block_size != lu.block_size
            if recreate:
                argv = adm("--op", "new", "--mode", "logicalunit", "--tid", tid, "--lun", str(n),
                           "-b", lu.backing.path)
                if lu.block_size != 512:
                    argv += ["--blocksize", str(lu.block_size)]
                cmds.append(Command(argv, f"{lu.naa.esxi_name}: present {lu.backing.path} as LUN {n}"))
            if recreate or have is None or have.scsi_id.lower() != lu.naa.hex or \
                    (have.serial or None) != (lu.serial or have.serial or None) or have.read_only != lu.read_only:
                cmds.append(Command(adm("--op", "update", "--mode", "logicalunit", "--tid", tid, "--lun", str(n),
                                        "--params", lu_params(lu)),
                                    f"{lu.naa.esxi_name}: set identity (scsi_id = NAA, serial, vendor, product)"))
        # ACL: explicit, never empty, never ALL (an "ALL" bound before is unbound below)
        addresses, names = _admitted(manifest, t)
        for a in addresses:
            if a not in cur.acl:
                cmds.append(Command(adm("--op", "bind", "--mode", "target", "--tid", tid, "-I", a),
                                    f"allow {a} to log in to {t.iqn}"))
        for q in names:
            if q not in cur.acl:
                cmds.append(Command(adm("--op", "bind", "--mode", "target", "--tid", tid, "-Q", q),
                                    f"allow initiator {q} to log in to {t.iqn}"))
        for entry in cur.acl:
            if entry not in addresses and entry not in names:
                opt = "-Q" if NAME_ACL.match(entry) else "-I"
                cmds.append(Command(adm("--op", "unbind", "--mode", "target", "--tid", tid, opt, entry),
                                    f"{entry} is not in the manifest's ACL for {t.iqn}"))
        # CHAP accounts
        creds = []
        if t.auth.mode in ("chap", "mutual-chap"):
            creds.append((t.auth.user, t.auth.secret_ref, False))
        if t.auth.mode == "mutual-chap":
            creds.append((t.auth.mutual_user, t.auth.mutual_secret_ref, True))
        for user, ref, outgoing in creds:
            if not user:
                raise ManifestError(f"{t.iqn}: auth.user is required for CHAP on tgt (one incoming account "
                                    "per target)", hint="set targets[].auth.user and secret_ref, e.g. "
                                    "--chap-user USER --chap-secret-ref secrets:KEY")
            bound = user in (cur.outgoing if outgoing else cur.incoming)
            if user not in accounts and not bound:
                secret = secrets.resolve(ref, f"{t.iqn} CHAP user {user}") if secrets else f"<{ref}>"
                cmds.append(Command(adm("--op", "new", "--mode", "account", "--user", user, "--password", secret),
                                    f"create CHAP account {user}"))
                accounts.add(user)
            if not bound:
                argv = adm("--op", "bind", "--mode", "account", "--tid", tid, "--user", user)
                if outgoing:
                    argv.append("--outgoing")
                cmds.append(Command(argv, f"{'mutual ' if outgoing else ''}CHAP for {t.iqn} as {user}"))
    return cmds, pl.notes


def lu_params(lu: LogicalUnit) -> str:
    params = [f"scsi_id={lu.naa.hex}"]
    if lu.serial:
        params.append(f"scsi_sn={lu.serial}")
    if lu.vendor_id:
        params.append(f"vendor_id={lu.vendor_id}")
    if lu.product_id:
        params.append(f"product_id={lu.product_id}")
    if lu.revision:
        params.append(f"product_rev={lu.revision}")
    params.append(f"readonly={1 if lu.read_only else 0}")
    return ",".join(params)


def observe_native(transport: Transport, control_port: int | None = None) -> tuple[list[TgtTarget], set[str]]:
    adm = Tgtadm(control_port)
    targets = parse_show(transport.run(adm("--op", "show", "--mode", "target")).stdout)
    accounts: set[str] = set()
    for t in targets:
        accounts.update(t.incoming)
        accounts.update(t.outgoing)
    return targets, accounts


def delete_target(transport: Transport, tid: int, control_port: int | None = None) -> None:
    """Remove a whole target. --force: an initiator may still hold a session; its LUNs are unused."""
    transport.run(Tgtadm(control_port)("--op", "delete", "--mode", "target", "--tid", str(tid), "--force"))


def remove_naas(transport: Transport, naas: set[str], control_port: int | None = None) -> list[str]:
    """Stop serving the LUs with these NAAs (hex): a target left with none of its own LUs goes
    whole, otherwise only those LUs. Returns what was removed, one line per target."""
    adm = Tgtadm(control_port)
    targets, _ = observe_native(transport, control_port)
    out = []
    for tg in targets:
        mine = {n: lu for n, lu in tg.luns.items() if lu.device_type != "controller" and lu.path
                and naa_from_scsi_id(lu.scsi_id, tg.tid, n).hex in naas}
        if not mine:
            continue
        others = [n for n, lu in tg.luns.items() if lu.device_type != "controller" and lu.path and n not in mine]
        if not others:
            delete_target(transport, tg.tid, control_port)
            out.append(f"target {tg.iqn} removed ({len(mine)} LU(s))")
        else:
            for n in sorted(mine):
                transport.run(adm("--op", "delete", "--mode", "logicalunit", "--tid", str(tg.tid), "--lun", str(n)))
            out.append(f"{tg.iqn}: LUN(s) {', '.join(map(str, sorted(mine)))} removed")
    return out


def apply(transport: Transport, manifest: Manifest, *, dry_run: bool = False, secrets: Secrets | None = None,
          control_port: int | None = None, check_backing: bool = True) -> ApplyResult:
    """Make the live tgt match the manifest. Every refusal happens before the first change.

    Reads: one `tgtadm --op show`, one `stat` of the backing stores (and
    `tgtadm --op show --mode account` when CHAP is used). Writes: per new LU, two
    tgtadm commands (tgtadm refuses --params on `--op new`).
    """
    manifest.validate()
    refuse_identity(STACK, identity_problems(manifest))
    if check_backing:
        missing_backing(stat_paths(transport, sorted({u.backing.path for u in manifest.logical_units})),
                        manifest, transport.name)
    observed, accounts = observe_native(transport, control_port)
    if any(t.auth.mode != "none" for t in manifest.targets):
        out = transport.run(Tgtadm(control_port)("--op", "show", "--mode", "account")).stdout
        accounts |= {ln.strip() for ln in out.splitlines()[1:] if ln.strip()}
    if secrets is None and not dry_run and any(t.auth.mode != "none" for t in manifest.targets):
        secrets = Secrets()
    cmds, notes = plan(manifest, observed, secrets, control_port=control_port, accounts=accounts)
    if not dry_run:
        for c in cmds:
            transport.run(c.argv, input=c.input)
    return ApplyResult(STACK, cmds, dry_run, notes)


def swap_backing_commands(tid: int, lun: int, lu: LogicalUnit, new_path: str, *,
                          control_port: int | None = None, new_naa: Naa | None = None) -> list[Command]:
    """tgtadm commands that present ``new_path`` (e.g. a ZFS clone) in place of LU ``lun`` of ``tid``.

    tgt cannot change a LU's backing store in place, so the LU is deleted and
    recreated with the same identity (or ``new_naa`` for a clone that ESXi must
    resignature).
    """
    adm = Tgtadm(control_port)
    unit = LogicalUnit(naa=new_naa or lu.naa, backing=Backing(kind=backing_kind(new_path), path=new_path),
                       size_bytes=lu.size_bytes, block_size=lu.block_size, serial=lu.serial,
                       vendor_id=lu.vendor_id, product_id=lu.product_id, revision=lu.revision,
                       read_only=lu.read_only)
    argv = adm("--op", "new", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun), "-b", new_path)
    if lu.block_size != 512:
        argv += ["--blocksize", str(lu.block_size)]
    return [
        Command(adm("--op", "delete", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun)),
                f"remove LUN {lun} ({lu.backing.path}) to swap its backing store"),
        Command(argv, f"present {new_path} as LUN {lun}"),
        Command(adm("--op", "update", "--mode", "logicalunit", "--tid", str(tid), "--lun", str(lun),
                    "--params", lu_params(unit)),
                f"{unit.naa.esxi_name}: {'new identity for the clone' if new_naa else 'same identity as before'}"),
    ]


def parse(files: list[tuple[str, str]]) -> Manifest:
    """Saved `tgtadm --op show` output or targets.conf files (detected by content)."""
    targets: list[TgtTarget] = []
    extras: dict[str, dict[str, str]] = {}
    for name, text in files:
        if re.search(r"^Target \d+: ", text, re.M):
            targets += parse_show(text)
        elif "<target" in text:
            ts, ex = parse_conf(text, name)
            targets += ts
            extras.update(ex)
        else:
            raise ManifestError(f"{name}: neither `tgtadm --op show` output nor a targets.conf",
                                hint="save `tgtadm --lld iscsi --op show --mode target` or /etc/tgt/targets.conf")
    # targets.conf has no tids; number its targets after those of saved `tgtadm --op show` output.
    seen: set[int] = set()
    for t in targets:
        if t.tid in seen:
            t.tid = max(seen) + 1
        seen.add(t.tid)
    return to_manifest(targets, extras=extras)
