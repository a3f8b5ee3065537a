"""Replication, the workflow: snapshot, plan, stream, hold, prune — for one protection group.

- ``sides``: what a run opens on each storage server, and which site view it runs through;
- ``engine``: the run (``Engine``), from the lock to the record;
- ``holds``, ``seal``, ``prune``: what keeps a base, what keeps a replica untouched, retention;
- ``shipping``: the target manifest that travels with the replica, untrusted on DR;
- ``consistency``: quiesced VMware snapshots around the ZFS snapshot;
- ``result``: what a run did, its record and its summary.

This module only re-exports.
"""

from esxdr.replication.engine import Engine, plan_group, take_snapshot
from esxdr.replication.prune import DrPrune, dr_decisions, prune_decisions, prune_dr_side
from esxdr.replication.result import DatasetResult, GroupResult, Options, record_run, summary_text
from esxdr.replication.sides import (
    Side,
    both,
    dr_side_site,
    failover_marker,
    hold_tag,
    open_side,
    pull_site,
    refuse_unreachable,
    snapshot_name,
)

__all__ = [
    "DatasetResult", "DrPrune", "Engine", "GroupResult", "Options", "Side", "both", "dr_decisions", "dr_side_site",
    "failover_marker", "hold_tag", "open_side", "plan_group", "prune_decisions", "prune_dr_side", "pull_site",
    "record_run", "refuse_unreachable", "snapshot_name", "summary_text", "take_snapshot",
]
