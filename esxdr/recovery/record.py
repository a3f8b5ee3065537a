"""What a recovery run keeps: its journal (resumable, intent first) and its record (the report's data)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from esxdr.plan import runbook as rb
from esxdr.replication.sides import state_path
from esxdr.util import write_json


# --------------------------------------------------------------------------- journal
class Journal:
    """A run's journal: a JSON file, saved after every change, that a re-run resumes from."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = {}

    @classmethod
    def of_drill(cls, state_dir: str, group: str) -> Journal:
        return cls(Path(state_dir) / "drills" / f"{group}.json")

    @classmethod
    def of(cls, state_dir: str, group: str, kind: str) -> Journal:
        """Failover, failback, the hand-offs: ``<state_dir>/failover/<group>.<kind>.json``."""
        return cls(state_path(state_dir, group, kind))

    def load(self) -> dict[str, Any] | None:
        try:
            self.data = json.loads(self.path.read_text())
            return self.data
        except (OSError, ValueError):
            self.data = {}
            return None

    def save(self) -> None:
        write_json(self.path, self.data)

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)

    def step(self, sid: str) -> dict[str, Any]:
        return self.data.setdefault("steps", {}).setdefault(sid, {})

    def done(self, sid: str) -> bool:
        return self.data.get("steps", {}).get(sid, {}).get("outcome") == "done"

    def intend(self, key: str, value: str) -> None:
        """Record an object BEFORE creating it, so a kill right after creation cannot orphan it."""
        items = self.data.setdefault("created", {}).setdefault(key, [])
        if value not in items:
            items.append(value)
            self.save()


# --------------------------------------------------------------------------- result
@dataclass
class RunRecord:
    kind: str
    group: str
    site: str
    started: float
    dry_run: bool = False
    runbook: rb.Runbook | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    datastores: list[dict[str, Any]] = field(default_factory=list)
    vms: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    snapshot: str | None = None
    snapshot_created: float | None = None
    last_heartbeat: float | None = None
    finished: float | None = None
    outcome: str = "running"
    error: str | None = None
    resumed: bool = False
    requests: dict[str, int] = field(default_factory=dict)
    requests_by_method: dict[str, int] = field(default_factory=dict)  # vSphere SOAP, by method (budgeting)
    manifest_origin: str | None = None
    new_naa: bool = False
    consistency: str | None = None  # of the recovered snapshot, as recorded by replication
    report_json: str | None = None
    report_html: str | None = None

    def take_outcome(self, journal: dict[str, Any]) -> None:
        """The datastores and VMs a completed run's journal holds, and its last heartbeat (the RTO's end)."""
        self.datastores = journal.get("datastores", [])
        vms = journal.get("vms", {})
        self.vms = [{"name": n, **v, "heartbeat_after_s": round(v["heartbeat_at"] - self.started, 1)
                     if v.get("heartbeat_at") else None} for n, v in vms.items()]
        beats = [v["heartbeat_at"] for v in vms.values() if v.get("heartbeat_at")]
        self.last_heartbeat = max(beats) if beats else None

    @property
    def rpo_seconds(self) -> float | None:
        return (self.started - self.snapshot_created) if self.snapshot_created else None

    @property
    def rto_seconds(self) -> float | None:
        return (self.last_heartbeat - self.started) if self.last_heartbeat else None

    def to_dict(self) -> dict[str, Any]:
        def iso(t: float | None) -> str | None:
            return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds") if t else None

        return {"kind": self.kind, "group": self.group, "site": self.site, "dry_run": self.dry_run,
                "outcome": self.outcome, "error": self.error, "resumed": self.resumed,
                "started": iso(self.started), "finished": iso(self.finished),
                "duration_seconds": round(self.finished - self.started, 1) if self.finished else None,
                "snapshot": self.snapshot, "snapshot_created": iso(self.snapshot_created),
                "rpo_seconds": round(self.rpo_seconds) if self.rpo_seconds is not None else None,
                "rto_seconds": round(self.rto_seconds, 1) if self.rto_seconds is not None else None,
                "new_naa": self.new_naa, "manifest": self.manifest_origin, "consistency": self.consistency,
                "steps": self.steps, "datastores": self.datastores, "vms": self.vms, "notes": self.notes,
                "requests": self.requests, "requests_by_method": self.requests_by_method,
                "runbook": self.runbook.to_dict() if self.runbook else None,
                "report": {"json": self.report_json, "html": self.report_html}}


# --------------------------------------------------------------------------- the record
@dataclasses.dataclass
class FailoverRecord(RunRecord):
    mode: str = "disaster"
    # Pull mode: the VMs went down at the other side's hand-off, before this run started. From the
    # hand-off's final snapshot (created after they stopped) to the last heartbeat here: a lower
    # bound of the outage, which this run's RTO (from its own start) does not show.
    outage_at_least_seconds: float | None = None

    @property
    def rpo_seconds(self) -> float | None:
        if self.mode == "planned" and self.snapshot_created:
            return 0.0  # the VMs were stopped before the final snapshot: nothing is lost
        return super().rpo_seconds

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "mode": self.mode, "outage_at_least_seconds": self.outage_at_least_seconds}



@dataclasses.dataclass
class ReprotectRecord(RunRecord):
    """Reprotect's run: production rolled back, then DR → production up to a new replication point.
    It boots nothing (no RTO); its RPO is that point's age when the run finished: what production's
    copy lacks of DR's writes until the next replication."""

    direction: str = ""
    bytes: int | None = None

    @property
    def rpo_seconds(self) -> float | None:
        if self.finished and self.snapshot_created:
            return max(0.0, self.finished - self.snapshot_created)
        return None

    @property
    def rto_seconds(self) -> float | None:
        return None

    @contextmanager
    def step(self, sid: str, kind: str, title: str, reason: str) -> Iterator[list[str]]:
        """One step of the report's timeline: yields the evidence list to fill; failed on an exception."""
        t0 = time.time()
        entry: dict[str, Any] = {"id": sid, "kind": kind, "title": title, "reason": reason,
                                 "start": t0 - self.started, "evidence": []}
        self.steps.append(entry)
        try:
            yield entry["evidence"]
        except BaseException as e:
            entry.update(end=time.time() - self.started, outcome="failed",
                         evidence=[*entry["evidence"], getattr(e, "message", None) or str(e) or type(e).__name__])
            raise
        entry.update(end=time.time() - self.started, outcome="done")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "direction": self.direction, "bytes": self.bytes}
