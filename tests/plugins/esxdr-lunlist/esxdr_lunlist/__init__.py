"""Target stack ``lunlist``: the CSV inventory some shops keep of their LUNs, one row per LU.

    naa,target,lun,dataset,file
    600144f0a1b2c3d4e5f6071829304051,iqn.2024-01.com.example:core,1,sp1/iscsi/lun0,/sp1/iscsi/lun0/lun.img

A backend module gives esxdr ``STACK``, ``parse``, ``render`` and ``identity_problems``
(docs/plugins.md). This one holds no live target, so it has no ``observe`` or ``apply``.

The package also adds a kind of runbook callout, :func:`note`.
"""

from __future__ import annotations

import csv
import io

from esxdr.errors import ManifestError
from esxdr.model.manifest import Backing, LogicalUnit, Manifest, Naa, Source, Target, View

STACK = "lunlist"
COLUMNS = ["naa", "target", "lun", "dataset", "file"]


def parse(files: list[tuple[str, str]]) -> Manifest:
    targets: dict[str, Target] = {}
    units: list[LogicalUnit] = []
    for name, text in files:
        rows = csv.DictReader(io.StringIO(text))
        if rows.fieldnames != COLUMNS:
            raise ManifestError(f"{name}: the header must be {','.join(COLUMNS)}, not {','.join(rows.fieldnames or [])}")
        for i, row in enumerate(rows, start=2):
            try:
                lun = int(row["lun"])
            except (TypeError, ValueError):
                raise ManifestError(f"{name}:{i}: lun {row['lun']!r} is not a number") from None
            try:
                naa = Naa.parse(row["naa"])
            except ValueError as e:
                raise ManifestError(f"{name}:{i}: {e}") from None
            targets.setdefault(row["target"], Target(iqn=row["target"]))
            units.append(LogicalUnit(naa=naa,
                                     backing=Backing(kind="file", path=row["file"], dataset=row["dataset"]),
                                     size_bytes=0, alias=row["dataset"].rsplit("/", 1)[-1],
                                     views=[View(lun=lun, target=row["target"])]))
    return Manifest(targets=list(targets.values()), logical_units=units,
                    source=Source(stack=STACK, notes=["lunlist holds no vendor, product or size: the target that "
                                                      "serves these LUs keeps its own"]))


def render(manifest: Manifest, secrets: object = None) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for lu in manifest.logical_units:
        for v in lu.views:
            for t in ([v.target] if v.target else [t.iqn for t in manifest.targets]):
                w.writerow([lu.naa.hex, t, v.lun, lu.backing.dataset or "", lu.backing.path])
    return out.getvalue()


def identity_problems(manifest: Manifest) -> list[str]:
    # The NAA is a column of its own: nothing of a LU's identity is lost in this format but the
    # SCSI inquiry strings, which ESXi does not key a VMFS volume on.
    return []


def note(env, args, timeout):
    """Callout ``lunlist-note``: append where the run is to ``args["file"]`` (one line per call)."""
    fields = ("ESXDR_RUN", "ESXDR_GROUP", "ESXDR_STEP", "ESXDR_PHASE", "ESXDR_OUTCOME")
    line = " ".join(f"{k.removeprefix('ESXDR_').lower()}={env.get(k, '')}" for k in fields)
    with open(args["file"], "a") as f:
        f.write(line + "\n")
    return 0, f"noted in {args['file']}"
