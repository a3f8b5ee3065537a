"""The target manifest travels with the replica, as user properties of the DR root dataset.

The DR side must always know the identities (NAA, serial, product id) its LUNs
had in production, even when production is gone. Every replication run
captures the production target's manifest for the group's datasets and, when
it changed, stores it zlib-compressed and base64-encoded in
``esxdr:manifest.0``…``esxdr:manifest.N`` of the DR root dataset, with
``esxdr:manifest-sha`` to tell whether it changed (a ZFS user property value
holds at most 8 KiB, hence the chunks).

**Untrusted on DR.** Whoever holds production's replication key can write these
properties (``esxdr serve`` accepts ``zfs set esxdr:manifest.N=…``), so DR treats
them as hostile input:

- :func:`decode` bounds the sizes, checks the sha and validates every field
  (:func:`check_for_group`: backing files one plain name inside their dataset,
  zvols exactly ``/dev/zvol/<dataset>``, datasets under the group's root, only
  ``secrets:`` references); a failure names the field and nothing is presented.
- The identity (NAAs, serials, vendor/product/revision, LU ↔ dataset ↔ file,
  target IQNs and their CHAP references) is **pinned** on DR, in the state dir of
  the box that runs drills and failover, the first time DR uses a shipped
  manifest (trust on first use). Later, drills and failover present the pinned
  manifest and refuse while the shipped one differs in identity;
  ``esxdr target accept GROUP`` shows the difference and takes the new pin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esxdr.errors import ConflictError, ManifestError
from esxdr.model.identity import ZVOL_DIRS, relative_file
from esxdr.model.manifest import Manifest, dumps, load, manifest_from_dict, manifest_to_dict
from esxdr.plan.runbook import lu_dataset
from esxdr.targets import backend
from esxdr.util import atomic_write

if TYPE_CHECKING:
    from esxdr.model import Dataset
    from esxdr.replication.sides import Side
    from esxdr.site.model import ProtectionGroup, StorageServer
    from esxdr.transport.base import Transport
    from esxdr.zfs import Zfs

CHUNK = 7000
MAX_CHUNKS = 32
SHA_PROP = "esxdr:manifest-sha"
COUNT_PROP = "esxdr:manifest-chunks"


def chunk_props() -> list[str]:
    return [f"esxdr:manifest.{i}" for i in range(MAX_CHUNKS)]


def for_group(m: Manifest, datasets: list[str]) -> Manifest:
    """Only the logical units backed by the group's datasets (and the targets presenting them)."""
    wanted = set(datasets)

    def backed_by_group(u) -> bool:
        ds = u.backing.dataset
        if ds:
            return ds in wanted
        return any(f"/{d.split('/', 1)[-1]}/" in u.backing.path or u.backing.path.endswith("/" + d) for d in wanted)

    units = [u for u in m.logical_units if backed_by_group(u)]
    used_targets = {v.target for u in units for v in u.views}
    targets = [t for t in m.targets if t.iqn in used_targets or None in used_targets]
    return Manifest(targets=targets, initiator_groups=m.initiator_groups, logical_units=units, source=m.source,
                    version=m.version)


def encode(m: Manifest) -> tuple[str, dict[str, str]]:
    """(sha, properties) for a manifest; the sha ignores when it was exported."""
    d = manifest_to_dict(m)
    d.get("source", {}).pop("exported_at", None)
    raw = json.dumps(d, sort_keys=True, separators=(",", ":")).encode()
    sha = hashlib.sha256(raw).hexdigest()[:32]
    blob = base64.b64encode(zlib.compress(raw, 9)).decode()
    chunks = [blob[i:i + CHUNK] for i in range(0, len(blob), CHUNK)]
    if len(chunks) > MAX_CHUNKS:
        raise ValueError(f"manifest too large to ship ({len(blob)} bytes encoded)")
    props = {f"esxdr:manifest.{i}": c for i, c in enumerate(chunks)}
    props[COUNT_PROP] = str(len(chunks))
    props[SHA_PROP] = sha  # last: a run killed half-way leaves the old sha, so the next run rewrites
    return sha, props


# A shipped manifest decompresses to a few KiB per LU; anything beyond this is not a manifest but
# an attempt to exhaust the DR box's memory (a zlib bomb in a ZFS property).
MAX_DECODED = 4 << 20


def decode(props: dict[str, str], group: ProtectionGroup | None = None) -> Manifest | None:
    """The manifest in ``esxdr:manifest.*`` properties; None when nothing was shipped.

    The properties are untrusted (see the module docstring): a malformed, torn or forged set raises
    ManifestError naming the property or field; with ``group`` the LUs must also fit the group
    (:func:`check_for_group`)."""
    origin = f"shipped manifest for {group.name}" if group is not None else "shipped manifest"
    count = props.get(COUNT_PROP)
    if count is None or count in ("", "-"):
        return None
    if not count.isdigit() or not 1 <= int(count) <= MAX_CHUNKS:
        raise _bad(origin, f"{COUNT_PROP} {count[:20]!r} is not a chunk count 1..{MAX_CHUNKS}")
    n = int(count)
    missing = [f"esxdr:manifest.{i}" for i in range(n) if props.get(f"esxdr:manifest.{i}", "-") in ("", "-")]
    if missing:
        raise _bad(origin, f"{', '.join(missing)} missing ({COUNT_PROP} says {n} chunks)")
    blob = "".join(props[f"esxdr:manifest.{i}"] for i in range(n))
    try:
        packed = base64.b64decode(blob, validate=True)
        z = zlib.decompressobj()
        raw = z.decompress(packed, MAX_DECODED)
        if z.unconsumed_tail or not z.eof:
            raise _bad(origin, f"esxdr:manifest.* decompresses to more than {MAX_DECODED >> 20} MiB, or is cut")
        data = json.loads(raw)
    except (binascii.Error, zlib.error, ValueError, RecursionError) as e:
        raise _bad(origin, f"esxdr:manifest.* is not a compressed JSON manifest ({type(e).__name__})") from None
    sha = props.get(SHA_PROP)
    if sha != hashlib.sha256(raw).hexdigest()[:32]:
        raise _bad(origin, f"{SHA_PROP} {str(sha)[:40]!r} does not match the chunks (a replication cut while "
                           "shipping, or the properties were written by something other than esxdr)")
    try:
        m = manifest_from_dict(data, origin=origin)
    except ManifestError as e:
        raise ManifestError(e.message, hint=refusal_hint(None, None)) from None
    return check_for_group(m, group, origin) if group is not None else m


def _bad(origin: str, why: str) -> ManifestError:
    return ManifestError(f"{origin}: {why}", hint=refusal_hint(None, None))


def refusal_hint(state_dir: str | None, group_name: str | None) -> str:
    """What to do about a shipped manifest DR refused: never trust it blindly."""
    pin = pin_path(state_dir, group_name) if state_dir and group_name else None
    where = (f"--manifest {pin}" if pin is not None and pin.exists() else
             "--manifest <state_dir>/pins/<group>.manifest.json, the pin on the DR box" if pin is None else
             "--manifest FILE, a manifest you trust (no pin on this box yet)")
    return ("nothing was presented. esxdr's replication never ships this: if production may be compromised, "
            f"recover with the identities you trust ({where}); once production is sound, esxdr replicate "
            "ships a fresh manifest. See docs/target-manifest.md#untrusted-shipped-manifests")


def check_for_group(m: Manifest, group: ProtectionGroup, origin: str, *, untrusted: bool = True) -> Manifest:
    """Refuse a manifest whose LUs could make DR present anything but the group's own LUN files.

    For every LU of the group: its dataset lies under the group's production root; a file LU's path
    yields exactly one plain file name inside the dataset (the DR path is ``<DR mount>/<name>``); a zvol
    LU is exactly the zvol of its dataset; no bare block devices (ZFS does not replicate them). When
    ``untrusted`` (shipped or pinned, not the operator's own ``--manifest``), CHAP references only
    name keys of the DR secrets file (``secrets:KEY``): ``env:``/``file:`` would let production choose
    what DR reads. LUs of other datasets are dropped (:func:`for_group`)."""

    problems = []
    root = group.source_root
    for i, lu in enumerate(m.logical_units):
        where = f"logical_units[{i}].backing"
        declared = lu.backing.dataset
        if declared is not None and declared != root and not declared.startswith(root + "/"):
            problems.append(f"{where}.dataset: {declared!r} is not under the group's root {root}")
            continue
        ds = lu_dataset(lu, group)
        if ds is None or ds not in group.datasets:
            continue
        if lu.backing.kind == "block":
            problems.append(f"{where}.kind: a block device ({lu.backing.path!r}) is not replicated by ZFS")
        elif lu.backing.kind == "zvol":
            if lu.backing.path not in {d + ds for d in ZVOL_DIRS}:
                problems.append(f"{where}.path: {lu.backing.path!r} is not the zvol of {ds} (/dev/zvol/{ds})")
        else:
            try:
                relative_file(lu.backing.path, ds)
            except ValueError as e:
                problems.append(f"{where}.path: {e}")
    for i, t in enumerate(m.targets if untrusted else ()):
        for name in ("secret_ref", "mutual_secret_ref"):
            ref = getattr(t.auth, name)
            if ref is not None and ref.partition(":")[0] in ("env", "file"):
                problems.append(f"targets[{i}].auth.{name}: {ref!r}: a shipped manifest may only name "
                                "secrets:KEY (a key of the DR secrets file)")
    for i, g in enumerate(m.initiator_groups if untrusted else ()):
        if g.secret_ref is not None and g.secret_ref.partition(":")[0] in ("env", "file"):
            problems.append(f"initiator_groups[{i}].secret_ref: {g.secret_ref!r}: a shipped manifest may only name "
                            "secrets:KEY (a key of the DR secrets file)")
    if problems:
        raise ManifestError(f"{origin}: " + ("\n  ".join(problems) if len(problems) == 1 else
                                             "\n  " + "\n  ".join(problems)),
                            hint=refusal_hint(None, group.name) if untrusted else
                            "fix the fields named above (schema: docs/target-manifest.md)")
    return for_group(m, list(group.datasets))


def read(zfs: Zfs, dr_root: str, group: ProtectionGroup | None = None) -> Manifest | None:
    """The manifest shipped to a DR root dataset, or None; validated as :func:`decode` says."""
    r = zfs.t.run([*zfs.cmd, "get", "-Hp", "-o", "name,property,value", ",".join([SHA_PROP, COUNT_PROP, *chunk_props()]),
                   dr_root], check=False)
    if r.returncode != 0:
        return None
    props = {}
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == dr_root:
            props[parts[1]] = parts[2]
    return decode(props, group)


# --------------------------------------------------------------------------- the pin on DR
PIN_DIR = "pins"


def pin_path(state_dir: str, group_name: str) -> Path:
    """The pinned manifest: DR-local state, a manifest file ``--manifest`` also reads."""
    return Path(state_dir) / PIN_DIR / f"{group_name}.manifest.json"


def load_pin(state_dir: str, group: ProtectionGroup) -> Manifest | None:
    path = pin_path(state_dir, group.name)
    if not path.exists():
        return None
    try:
        return check_for_group(load(path), group, f"pinned manifest {path}")
    except ManifestError as e:
        raise ManifestError(e.message, hint=f"the pin is DR-local state that esxdr wrote; if it was edited, remove "
                                            f"{path} and take the pin again: esxdr target accept {group.name} "
                                            "--dry-run, then without --dry-run") from None


def save_pin(state_dir: str, group_name: str, m: Manifest) -> Path:
    """Write the pin atomically, readable by its owner only (tmp + fsync + rename)."""
    return atomic_write(pin_path(state_dir, group_name), dumps(m, "json"), mode=0o600, dir_mode=0o700)


_LU_FIELDS = ("dataset", "kind", "file", "serial", "vendor_id", "product_id", "revision", "block_size", "targets")
# Fields production may not know on a given run (tgt reads vendor/product over iSCSI, which an ACL
# can refuse): a shipped "unknown" is not a change, the pinned value stays.
_MAY_BE_UNKNOWN = {"serial", "vendor_id", "product_id", "revision"}


def identity(m: Manifest, group: ProtectionGroup) -> dict[str, Any]:
    """What the pin protects: per LU (by NAA) its SCSI identity and where it lives (dataset, file);
    per target its IQN and CHAP references. Sizes, aliases, LUN numbers, portals and ACLs are not
    identity (DR replaces portals and ACLs; tgt serves a file at its size)."""

    lus: dict[str, dict[str, Any]] = {}
    for lu in m.logical_units:
        ds = lu_dataset(lu, group)
        if ds is None or ds not in group.datasets:
            continue
        lus[lu.naa.hex] = {
            "dataset": ds, "kind": lu.backing.kind,
            "file": None if lu.backing.kind == "zvol" else relative_file(lu.backing.path, ds),
            "serial": lu.serial, "vendor_id": lu.vendor_id, "product_id": lu.product_id, "revision": lu.revision,
            "block_size": lu.block_size, "targets": sorted({v.target or "*" for v in lu.views}),
        }
    targets = {t.iqn: {"auth": [t.auth.mode, t.auth.user, t.auth.secret_ref, t.auth.mutual_user,
                                t.auth.mutual_secret_ref]} for t in m.targets}
    return {"logical_units": lus, "targets": targets}


def changes(pinned: dict[str, Any], shipped: dict[str, Any]) -> list[dict[str, Any]]:
    """Every identity difference, each with a line of text naming the LU (or target) and the field."""
    out: list[dict[str, Any]] = []
    old, new = pinned["logical_units"], shipped["logical_units"]

    def where(naa: str, lu: dict[str, Any]) -> str:
        return f"naa.{naa} ({lu['dataset']}{'' if lu['file'] is None else ' ' + lu['file']})"

    gone = {n: lu for n, lu in old.items() if n not in new}
    came = {n: lu for n, lu in new.items() if n not in old}
    # An NAA replaced on the same LUN file is one change ("the NAA of this file"), not two.
    for n, lu in sorted(gone.items()):
        twin = next((m for m, v in sorted(came.items()) if (v["dataset"], v["file"]) == (lu["dataset"], lu["file"])),
                    None)
        if twin is not None:
            came.pop(twin)
            out.append({"change": "changed", "naa": n, "field": "naa", "pinned": n, "shipped": twin,
                        "text": f"{where(n, lu)}: naa {n} → {twin}"})
        else:
            out.append({"change": "removed", "naa": n, "field": None, "pinned": lu, "shipped": None,
                        "text": f"{where(n, lu)}: no longer shipped"})
    for n, lu in sorted(came.items()):
        out.append({"change": "added", "naa": n, "field": None, "pinned": None, "shipped": lu,
                    "text": f"{where(n, lu)}: new LU"})
    for n in sorted(set(old) & set(new)):
        for f in _LU_FIELDS:
            a, b = old[n][f], new[n][f]
            if a != b and not (b is None and f in _MAY_BE_UNKNOWN):
                out.append({"change": "changed", "naa": n, "field": f, "pinned": a, "shipped": b,
                            "text": f"{where(n, old[n])}: {f} {a!r} → {b!r}"})
    ot, nt = pinned["targets"], shipped["targets"]
    for iqn in sorted(set(ot) | set(nt)):
        if iqn not in nt:
            out.append({"change": "removed", "target": iqn, "field": None, "pinned": ot[iqn], "shipped": None,
                        "text": f"target {iqn}: no longer shipped"})
        elif iqn not in ot:
            out.append({"change": "added", "target": iqn, "field": None, "pinned": None, "shipped": nt[iqn],
                        "text": f"target {iqn}: new"})
        elif ot[iqn] != nt[iqn]:
            out.append({"change": "changed", "target": iqn, "field": "auth", "pinned": ot[iqn]["auth"],
                        "shipped": nt[iqn]["auth"], "text": f"target {iqn}: CHAP {ot[iqn]['auth']} → "
                                                            f"{nt[iqn]['auth']}"})
    return out


def trusted(state_dir: str, group: ProtectionGroup, shipped: Manifest | None, *,
            pin_first_use: bool = True) -> tuple[Manifest, str] | None:
    """The manifest DR may present for ``group``, and where it came from; None without pin or shipment.

    No pin yet and a shipped manifest: it is pinned now (trust on first use), unless
    ``pin_first_use`` is off (a read-only command that may run off the DR box). A pin: it is what DR
    presents; a shipped manifest whose identity differs is refused (ConflictError naming each change
    and the accept command) until ``esxdr target accept`` takes it."""
    pinned = load_pin(state_dir, group)
    path = pin_path(state_dir, group.name)
    if pinned is None:
        if shipped is None:
            return None
        if not pin_first_use:
            return shipped, f"shipped with the replica ({group.dr_root} esxdr:manifest.*), validated, not pinned"
        save_pin(state_dir, group.name, shipped)
        return shipped, (f"shipped with the replica ({group.dr_root} esxdr:manifest.*), pinned on first use "
                         f"in {path}")
    if shipped is None:
        return pinned, f"pinned in {path} (no manifest shipped with the replica now)"
    diff = changes(identity(pinned, group), identity(shipped, group))
    if diff:
        raise ConflictError(f"the manifest shipped for {group.name} ({group.dr_root} esxdr:manifest.*) differs from "
                            f"the one pinned in {path}:\n  " + "\n  ".join(c["text"] for c in diff)
                            + "\nnothing was presented",
                            hint=f"if production changed these LUs on purpose: esxdr target accept {group.name} "
                                 "--dry-run, then esxdr target accept " + group.name + " (on the DR box). If "
                                 "production may be compromised, do not accept: recover with the pinned "
                                 f"identities, --manifest {path}")
    return pinned, f"pinned in {path} (the manifest shipped with the replica matches)"


# -- on a run: capture on production, store on DR ----------------------------------------------
def capture_manifest(server: StorageServer, group: ProtectionGroup, transport: Transport) -> Manifest | None:
    """What production's own target presents of this group now (None: no target, or none of its
    datasets), read through ``transport`` on production (``server``)."""

    if server.target is None:
        return None
    stack = server.target.stack
    kwargs: dict = {}
    if stack == "tgt":
        kwargs = {"control_port": server.target.control_port, "portal": server.target.portal,
                  "initiator": "iqn.2024-01.io.esxdr:replicate"}
    m = for_group(backend(stack).observe(transport, **kwargs), list(group.datasets))
    m.source.host = server.name
    return m if m.logical_units else None


def capture_encoded(server: StorageServer, group: ProtectionGroup,
                    transport: Transport) -> tuple[str, dict[str, str], int] | None:
    """The production target's manifest for this group, encoded: (sha, properties, LUs)."""
    m = capture_manifest(server, group, transport)
    if m is None:
        return None
    sha, props = encode(m)
    return sha, props, len(m.logical_units)


def store_manifest(zfs: Zfs, dataset: str, observed: dict[str, Dataset], sha: str, props: dict[str, str],
                   say: Callable[[str], None], saying: str, *, dry_run: bool = False) -> str:
    """Set an encoded target manifest on ``dataset`` unless it already carries that one (by sha)."""
    root = observed.get(dataset)
    if root is None or root.props.get(SHA_PROP) != sha:
        say(saying)
        if not dry_run:
            zfs.set_props(dataset, props)
    return sha


def ship_manifest(server: StorageServer, group: ProtectionGroup, src: Side, dst: Side, dst_obs: dict[str, Dataset],
                  *, failed_over: bool, say: Callable[[str], None]) -> str | None:
    """Capture the production target (``server``) for this group and store it on DR when it changed."""
    if src.guarded and failed_over:
        return None  # pull mode's way home: the DR root holds production's own manifest, not one to copy
    if src.guarded:
        return copy_published_manifest(group, src, dst, dst_obs, say)
    captured = capture_encoded(server, group, src.transport)
    if captured is None:
        if server.target is not None:
            say(f"{group.name}: the production target presents none of the group's datasets; no manifest shipped")
        return None
    sha, props, count = captured
    return store_manifest(dst.zfs, group.dr_root, dst_obs, sha, props, say,
                          f"{group.name}: ship the target manifest ({count} LUs) to {group.dr_root}")


def copy_published_manifest(group: ProtectionGroup, src: Side, dst: Side, dst_obs: dict[str, Dataset],
                            say: Callable[[str], None]) -> str | None:
    """Pull mode: DR cannot read production's target stack through a send-only key. Production
    publishes the manifest on its source root (`esxdr replicate --snapshot-only`); DR reads it
    with `zfs get`, validates it as the untrusted input it is, and stores it on the DR root.
    The pin on DR (`esxdr target accept`) still decides whether a failover presents it."""
    g = group
    m = read(src.zfs, g.source_root, g)  # raises ManifestError when forged
    if m is None:
        say(f"{g.name}: production published no target manifest on {g.source_root} "
            f"(esxdr replicate {g.name} --snapshot-only publishes it); none shipped")
        return None
    sha, props = encode(m)
    return store_manifest(dst.zfs, g.dr_root, dst_obs, sha, props, say,
                          f"{g.name}: copy the target manifest production published ({len(m.logical_units)} "
                          f"LUs) to {g.dr_root}")
