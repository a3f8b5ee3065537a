"""The target manifest travels with the replica, as user properties of the DR root dataset.

The DR side must always know the identities (NAA, serial, product id) its LUNs
had in production, even when production is gone. Every replication run
captures the production target's manifest for the group's datasets and, when
it changed, stores it zlib-compressed and base64-encoded in
``esxdr:manifest.0``…``esxdr:manifest.N`` of the DR root dataset, with
``esxdr:manifest-sha`` to tell whether it changed (a ZFS user property value
holds at most 8 KiB, hence the chunks).
"""

from __future__ import annotations

import base64
import hashlib
import json
import zlib

from esxdr.targets.manifest import Manifest, manifest_from_dict, manifest_to_dict

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


def decode(props: dict[str, str]) -> Manifest | None:
    try:
        n = int(props.get(COUNT_PROP, "0"))
    except ValueError:
        return None
    blob = "".join(props.get(f"esxdr:manifest.{i}", "") for i in range(n))
    if not blob or len(blob) < n:
        return None
    data = json.loads(zlib.decompress(base64.b64decode(blob)))
    return manifest_from_dict(data, origin="shipped manifest (esxdr:manifest.* on the DR root dataset)")


def read(zfs, dr_root: str) -> Manifest | None:  # esxdr.zfs.Zfs
    """The manifest shipped to a DR root dataset, or None."""
    r = zfs.t.run([*zfs.cmd, "get", "-Hp", "-o", "name,property,value", ",".join([SHA_PROP, COUNT_PROP, *chunk_props()]),
                   dr_root], check=False)
    if r.returncode != 0:
        return None
    props = {}
    for line in r.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0] == dr_root:
            props[parts[1]] = parts[2]
    return decode(props)
