"""Recovery, the workflow: drills, failover, the hand-offs of pull mode, reprotect and failback.

- ``runner``: what every run shares (journal walk, callouts, connections, the report at the end);
- ``drill``, ``failover``, ``handoff``: siblings over the runner, each with its plan and steps;
- ``steps``, ``cleanup``: the steps that bring a recovery point up on the DR host, and take a drill down;
- ``reprotect``: production becomes the replica of the live DR datasets;
- ``record``, ``report``: the journal and run record, and the JSON and HTML reports;
- ``sources``: the production identities of the LUNs and the DR target's admin transport;
- ``guest``: what the guests need around a failover (customization, boot loops).

This module only re-exports.
"""

from esxdr.recovery.drill import Drill
from esxdr.recovery.drill import summary as drill_summary
from esxdr.recovery.failover import Failover, forget_on_dr_host, probe_served
from esxdr.recovery.failover import summary as failover_summary
from esxdr.recovery.handoff import HandOff, handoff_summary
from esxdr.recovery.record import FailoverRecord, Journal, RunRecord, state_path
from esxdr.recovery.reprotect import Reprotect, ReprotectPlan, plan_reprotect, reprotect_summary
from esxdr.recovery.sources import resolve_manifest, site_manifest, target_transport

__all__ = [
    "Drill", "Failover", "FailoverRecord", "HandOff", "Journal", "Reprotect", "ReprotectPlan", "RunRecord",
    "drill_summary", "failover_summary", "forget_on_dr_host", "handoff_summary", "plan_reprotect", "probe_served",
    "reprotect_summary", "resolve_manifest", "site_manifest", "state_path", "target_transport",
]
