"""Pull mode's hand-off runbook: the side that holds no key to the other stops and publishes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from esxdr.plan.runbook.core import Runbook, Step
from esxdr.plan.runbook.shared import shutdown_step, with_callouts

HANDOFF_PROP = "esxdr:handoff"  # on production's source root: the final snapshot of a hand-off


@dataclass
class HandOffInputs:
    group: Any  # esxdr.site.model.ProtectionGroup as the handing side sees it (failback: reversed_group)
    naas: list[str]  # the group's LUNs on the handing side's own target, observed now (hex)
    target: str | None = None  # that target's stack; None: no target in the site file
    reverse: bool = False  # the DR box hands back (failback in pull mode)


def plan_handoff(inp: HandOffInputs) -> Runbook:
    return with_callouts(_plan_handoff(inp), inp.group)


def _plan_handoff(inp: HandOffInputs) -> Runbook:
    """Production's half of a planned failover in pull mode (``esxdr failover --planned --hand-off``,
    on production). What DR does itself in push mode, production does here, because DR's send-only
    key cannot: stop the VMs, take the final snapshot, stop taking snapshots, remove production's
    presentation. Then it publishes the final snapshot's name on the source root; DR's planned
    failover pulls exactly that snapshot and refuses without it."""
    g, back = inp.group, inp.reverse
    rb = Runbook(kind="failback-hand-off" if back else "hand-off", group=g.name)
    here, there = ("DR", "production") if back else ("production", "DR")
    rb.steps.append(shutdown_step(g, here))
    rb.steps.append(Step("snapshot", "snapshot", f"final snapshot of {g.name} on {g.source} (atomic)"
                         + ("" if back else f", target manifest published on {g.source_root}"),
                         f"the VMs are down: this snapshot holds every write, and {there} recovers it with RPO 0",
                         {}))
    if not back:  # DR's replication has been stopped since the failover
        rb.steps.append(Step("stop-replication", "stop-replication", f"stop taking snapshots of {g.name} on {g.source}",
                             "the final snapshot stays the newest, and production's own retention cannot prune it "
                             "before DR pulled it", {}))
    rb.steps.append(Step("unpresent-production", "unpresent-production",
                         f"remove {here}'s presentation of {len(inp.naas)} LUN(s) from {g.source}",
                         f"only one site may serve the NAAs; {there}'s split-brain guard checks they are gone"
                         + ("" if inp.target else " (no target in the site file: nothing to remove)"),
                         {"naas": sorted(inp.naas)}))
    if back:
        rb.steps.append(Step("seal", "seal", f"seal {len(g.datasets)} DR dataset(s) as replicas again at the final "
                             f"snapshot; unregister the stopped VMs from {g.vsphere_production}",
                             "from here production is the live copy: DR keeps the final snapshot read-only and "
                             "unmounted, and its pull resumes by itself once production is home",
                             {"datasets": list(g.datasets)}))
    rb.steps.append(Step("publish-handoff", "publish-handoff",
                         f"publish the hand-off on {g.source_root} ({HANDOFF_PROP}=<final snapshot>)",
                         (f"production's failback (esxdr failback {g.name} --planned --pull, on production) pulls exactly "
                          "this snapshot, and refuses without it") if back else
                         (f"DR's planned failover (esxdr failover {g.name} --planned, on the DR box) pulls exactly "
                          "this snapshot, and refuses without it"), {}))
    return rb
