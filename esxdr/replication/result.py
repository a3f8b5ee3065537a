"""What a replication run did: per dataset and per group, its record in the state dir, its summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from esxdr.errors import ReplicationConflict
from esxdr.fmt import human_bytes
from esxdr.plan.replication import Action, UpToDate
from esxdr.replication.consistency import describe
from esxdr.util import atomic_write


@dataclass
class DatasetResult:
    source: str
    dest: str
    actions: list[Action]
    bytes: int = 0
    seconds: float = 0.0
    retries: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "dest": self.dest, "actions": [a.to_dict() for a in self.actions],
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "retries": self.retries,
                "error": self.error}


@dataclass
class GroupResult:
    group: str
    snapshot: str | None
    dry_run: bool
    datasets: list[DatasetResult] = field(default_factory=list)
    pruned: dict[str, list[str]] = field(default_factory=dict)  # side -> snapshots destroyed (or to destroy)
    seconds: float = 0.0
    compression: str | None = None
    remote_commands: dict[str, int] = field(default_factory=dict)
    manifest: str | None = None  # sha of the target manifest on DR
    consistency: dict | None = None  # how the snapshot was taken (crash / application / mixed)
    mode: str = "push"  # push | pull (on DR, from production's send-only account) | snapshot-only (production)
    # "full": both sides listed; "quick": a targeted read found the last full observation still
    # true (replication/quick.py), so nothing was listed and retention was left to the next full run
    observation: str = "full"

    @property
    def bytes(self) -> int:
        return sum(d.bytes for d in self.datasets)

    def to_dict(self) -> dict[str, object]:
        return {"group": self.group, "snapshot": self.snapshot, "dry_run": self.dry_run,
                "bytes": self.bytes, "seconds": round(self.seconds, 3), "compression": self.compression,
                "datasets": [d.to_dict() for d in self.datasets], "pruned": self.pruned, "manifest": self.manifest,
                "consistency": self.consistency, "mode": self.mode,
                "commands": self.remote_commands, "observation": self.observation}


@dataclass
class Options:
    dry_run: bool = False
    rollback_dr: bool = False
    take_snapshot: bool = True
    prune: bool = True
    progress: bool = True
    # 2, 4, 8, 16 and 32 s apart: about a minute of patience after a stream is cut, so a network
    # that went away for a while (the stream's ssh notices after up to 60 s of silence) is
    # outlasted in the same run; longer outages are the next scheduled run's to resume.
    retries: int = 5
    backoff: float = 2.0
    say: Callable[[str], None] = lambda s: None
    now: datetime | None = None
    failed_over: bool = False  # reprotect/failback replicate DR → production while the marker exists
    # Pull mode: this run is on the DR box and reads production through `esxdr serve --send-only`;
    # production takes its own snapshots (snapshot_only, on production) and prunes itself.
    pull: bool = False
    snapshot_only: bool = False


def combine(conflicts: list) -> ReplicationConflict:
    """Several datasets' conflicts as one error (the first one's kind and hint, every message)."""
    if len(conflicts) == 1:
        return conflicts[0]
    first = conflicts[0]
    msg = "\n".join(c.message for c in conflicts)
    return ReplicationConflict(first.kind, msg, hint=first.hint,
                               evidence={"conflicts": [c.to_dict() for c in conflicts]})


def record_run(state_dir: str, result: GroupResult) -> None:
    runs = Path(state_dir) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    entry = {**result.to_dict(), "finished": datetime.now(UTC).isoformat()}
    atomic_write(runs / f"{result.group}.last.json", json.dumps(entry, indent=2))
    with open(runs / f"{result.group}.history.jsonl", "a") as f:
        f.write(json.dumps({k: entry[k] for k in ("group", "snapshot", "bytes", "seconds", "finished")}) + "\n")


def summary_text(result: GroupResult) -> str:
    lines = []
    if result.mode == "snapshot-only":
        lines.append(f"{result.group}: {'would take' if result.dry_run else 'took'} @{result.snapshot}"
                     + (", target manifest published" if result.manifest else "")
                     + f"; DR pulls it (esxdr replicate {result.group} --pull on the DR box)")
    else:
        verb = {("pull", True): "would pull", ("pull", False): "pulled", ("push", True): "would replicate",
                ("push", False): "replicated"}[(result.mode, result.dry_run)]
        moved = [d for d in result.datasets if any(not isinstance(a, UpToDate) for a in d.actions)]
        lines.append(f"{result.group}: {verb} {len(moved)} of {len(result.datasets)} datasets"
                     + (f" to @{result.snapshot}" if result.snapshot else "")
                     + ("" if result.dry_run else f", {human_bytes(result.bytes)} in {result.seconds:.1f}s"))
    for side, snaps in result.pruned.items():
        if snaps:
            lines.append(f"{result.group}: {'would prune' if result.dry_run else 'pruned'} {len(snaps)} "
                         f"snapshot(s) on {side}")
    if result.consistency and result.consistency.get("level") != "crash" or \
            (result.consistency and result.consistency.get("vms")):
        lines += [f"{result.group}: {line}" for line in describe(result.consistency)]
    return "\n".join(lines)
