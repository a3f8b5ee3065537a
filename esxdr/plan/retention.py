"""Retention: grandfather/father/son, decided per snapshot with the reason.

For each rule (hourly, daily, …) the newest snapshot of each of the N most
recent periods that contain a snapshot is kept (borg's ``prune`` semantics).
Never pruned whatever the rules: the newest snapshot common with the other
side (the base of the next incremental), held snapshots, and snapshots esxdr
did not make (unless ``prune_foreign``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from esxdr.model import Snapshot

PERIODS = {
    "hourly": "%Y-%m-%d %H",
    "daily": "%Y-%m-%d",
    "weekly": "%G-W%V",
    "monthly": "%Y-%m",
    "yearly": "%Y",
}


@dataclass(frozen=True)
class Decision:
    snapshot: Snapshot
    keep: bool
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {"snapshot": self.snapshot.full_name, "keep": self.keep, "reasons": list(self.reasons)}


def esxdr_prefix(group: str) -> str:
    return f"esxdr_{group}_"


def decide(snapshots: list[Snapshot], rules: dict[str, int], *, last: int = 1, prefix: str,
           protected_guids: frozenset[int] = frozenset(), prune_foreign: bool = False,
           timezone: str = "UTC") -> list[Decision]:
    """One decision per snapshot of one dataset (oldest first in, same order out)."""
    tz = ZoneInfo(timezone) if timezone != "UTC" else UTC
    candidates = [s for s in snapshots if prune_foreign or s.name.startswith(prefix)]
    reasons: dict[int, list[str]] = {id(s): [] for s in snapshots}
    newest_first = sorted(candidates, key=lambda s: (s.createtxg, s.creation), reverse=True)
    for i, s in enumerate(newest_first[:last]):
        reasons[id(s)].append("newest" if i == 0 else f"last {last}")
    for rule, fmt in PERIODS.items():
        n = rules.get(rule, 0)
        if n <= 0:
            continue
        seen: set[str] = set()
        for s in newest_first:
            if len(seen) >= n:
                break
            bucket = datetime.fromtimestamp(s.creation, tz).strftime(fmt)
            if bucket in seen:
                continue
            seen.add(bucket)
            reasons[id(s)].append(f"{rule} {bucket}")
    out = []
    for s in snapshots:
        r = reasons[id(s)]
        if s.guid in protected_guids:
            r.insert(0, "newest common snapshot (base of the next incremental)")
        if s.held:
            r.insert(0, f"held ({s.userrefs} hold{'s' if (s.userrefs or 0) > 1 else ''})")
        if not prune_foreign and not s.name.startswith(prefix):
            r.insert(0, "not made by esxdr")
        keep = bool(r)
        out.append(Decision(snapshot=s, keep=keep, reasons=tuple(r) if keep else ("outside every keep rule",)))
    return out
