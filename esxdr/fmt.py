"""How esxdr writes sizes and durations for people: one spelling everywhere (CLI, reports, progress)."""

from __future__ import annotations


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "?"
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(v) < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{v:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    """``5s``, ``3m41s``, ``2h02m``, ``3d04h``; ``n/a`` when unknown; negatives read as 0."""
    if seconds is None:
        return "n/a"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def clock(seconds: float) -> str:
    """``mm:ss`` since a run started: the timestamps of a run's log lines."""
    s = max(0, int(seconds))
    return f"{s // 60:02d}:{s % 60:02d}"
