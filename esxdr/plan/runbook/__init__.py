"""Recovery runbooks: observations in, ordered steps with reasons out. PURE (no pyVmomi, no I/O).

``core`` (the values, names, the recovery point), ``shared`` (callouts, .vmx, power order, LUNs,
networks), and one module per runbook: ``drill`` (test start, cleanup), ``failover`` (and
failback), ``handoff`` (pull mode). This module only re-exports.

A runbook is the whole of a drill (``esxdr test start``), its cleanup, or a failover,
as data. Dry-run prints it; apply (:mod:`esxdr.recovery`) walks the very same list and
records every step in a journal, so a killed run resumes at the first step not done.

Step ids are stable across re-plans of the same drill (``clone:rp1/iscsi/lun0``,
``power:2:1``): the journal keys completed work by id, and re-planning after a crash
must produce the same ids for the same work.

The identity rule everything here serves: ESXi mounts a VMFS volume as-is only when the
LUN it sits on has the NAA (and product id) stored in the volume's LVM header. A drill
therefore presents each clone with the production NAA to a DR host that sees no other
LUN with that NAA; where it could (the replica is already presented, or the host has
another path), the clone gets a new NAA and the volume is resignatured instead.
"""

from esxdr.plan.runbook.core import (  # noqa: F401
    DRILL_VSWITCH,
    HOLD_PREFIX,
    TEST_PREFIX,
    HostView,
    Point,
    Runbook,
    ServedLun,
    Step,
    check_hosts,
    choose_point,
    clone_of,
    cluster_params,
    cluster_view,
    describe_callout,
    hold_tag,
    into_text,
    is_test_iqn,
    norm_vmx,
    safe_name,
    split_brain,
    spread_vms,
    test_iqn,
    test_root,
    vmx_datastore,
)
from esxdr.plan.runbook.drill import (  # noqa: F401
    CleanupInputs,
    DrillInputs,
    plan_test_cleanup,
    plan_test_start,
)
from esxdr.plan.runbook.failover import (  # noqa: F401
    FAILOVER_ACL_GROUP,
    FAILOVER_MODES,
    FailoverInputs,
    Promotion,
    failover_luns,
    failover_manifest,
    failover_networks,
    plan_failover,
    promotions,
    reversed_group,
)
from esxdr.plan.runbook.handoff import (  # noqa: F401
    HANDOFF_PROP,
    HandOffInputs,
    plan_handoff,
)
from esxdr.plan.runbook.shared import (  # noqa: F401
    UUID_ACTIONS,
    DrillLun,
    admitted_initiators,
    drill_luns,
    drill_manifest,
    lu_dataset,
    lu_relative_file,
    mount_base,
    only_admitted,
    port_group_map,
    power_steps,
    power_waves,
    rewrite_vmx,
    shutdown_step,
    test_networks,
    with_callouts,
)
