"""VM steps of a recovery runbook: register, answer questions, power on in batches, heartbeats.

Every step is a batch: all RegisterVM_Task / PowerOnVM_Task calls of a priority group are
issued first, then awaited together on one property filter (:mod:`esxdr.vsphere.tasks`).
A power-on of a replicated VM stops at the ``msg.uuid.altered`` question; the same filter
watches ``runtime.question`` and answers it as soon as it appears: ``moved`` (keep the BIOS
UUID: failover) or ``copied`` (new UUID: a drill next to the running production VM).
"""

from __future__ import annotations

from typing import Any

from pyVmomi import vim, vmodl

from esxdr.errors import ConflictError
from esxdr.vsphere.observed import HostState
from esxdr.vsphere.session import Session
from esxdr.vsphere.tasks import State, wait_tasks, watch

PC = vmodl.query.PropertyCollector
UUID_ALTERED = "msg.uuid.altered"
ANSWERS = {"cancel": "0", "moved": "1", "copied": "2"}


def placement(session: Session, host: HostState) -> tuple[Any, Any, Any]:
    """(vmFolder, resourcePool, host ref) to register VMs on ``host``: one property read
    that walks host → compute resource → folders → datacenter."""
    up_folder = PC.TraversalSpec(name="folder-up", type=vim.Folder, path="parent", skip=False,
                                 selectSet=[PC.SelectionSpec(name="folder-up")])
    cr_up = PC.TraversalSpec(name="cr-up", type=vim.ComputeResource, path="parent", skip=False,
                             selectSet=[up_folder])
    host_up = PC.TraversalSpec(name="host-up", type=vim.HostSystem, path="parent", skip=False, selectSet=[cr_up])
    href = session.ref("HostSystem", host.moid)
    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=href, skip=True, selectSet=[host_up])],
                         propSet=[PC.PropertySpec(type=vim.ComputeResource, pathSet=["resourcePool"]),
                                  PC.PropertySpec(type=vim.Datacenter, pathSet=["vmFolder"])])
    from esxdr.vsphere.inventory import retrieve

    pool = folder = None
    for oc in retrieve(session, spec):
        for p in oc.propSet:
            if p.name == "resourcePool":
                pool = p.val
            elif p.name == "vmFolder":
                folder = p.val
    if pool is None or folder is None:
        raise ConflictError(f"{host.name}: cannot find its datacenter VM folder and resource pool")
    return folder, pool, href


def register_vms(session: Session, host: HostState, vmx_paths: list[str], *, timeout: float = 300) -> list[Any]:
    """Folder.RegisterVM_Task for every ``[datastore] dir/vm.vmx``, in parallel; returns the VMs."""
    if not vmx_paths:
        return []
    folder, pool, href = placement(session, host)
    tasks = []
    for path in vmx_paths:
        with session.errors(f"registering {path} on {host.name}"):
            tasks.append(folder.RegisterVM_Task(path, None, False, pool, href))
    return wait_tasks(session, tasks, timeout=timeout, what=f"registering {len(tasks)} VM(s) on {host.name}")


def answer_question(session: Session, vm: Any, question_id: str, answer: str) -> None:
    """VirtualMachine.AnswerVM; ``answer`` is a choice key or moved/copied/cancel."""
    with session.errors(f"answering question {question_id} of VM {vm._moId}"):
        vm.AnswerVM(question_id, ANSWERS.get(answer, answer))


def power_on(session: Session, vms: list[Any], *, uuid_answer: str = "moved", timeout: float = 300) -> dict[str, str]:
    """Power on a batch and answer ``msg.uuid.altered`` on the way. Returns moid → question answered.

    Any other question stops the batch with its text: esxdr does not guess answers.
    """
    if not vms:
        return {}
    tasks = []
    for vm in vms:
        with session.errors(f"powering on VM {vm._moId}"):
            tasks.append(vm.PowerOnVM_Task())
    answered: dict[str, str] = {}
    by_id = {vm._moId: vm for vm in vms}

    def on_change(state: State) -> None:
        for moid, vm in by_id.items():
            q = state.get(moid, {}).get("runtime.question")
            if q is None or moid in answered:
                continue
            if UUID_ALTERED in (q.id or "") or UUID_ALTERED in str(getattr(q.message, "id", "") if q.message else ""):
                answer_question(session, vm, q.id, uuid_answer)
                answered[moid] = uuid_answer
            else:
                raise ConflictError(f"VM {moid} asks: {q.text}", hint="answer it in the vSphere client, then rerun")

    wait_tasks(session, tasks, timeout=timeout, what=f"powering on {len(tasks)} VM(s)", on_change=on_change,
               extra=vms, extra_paths=["runtime.question"])
    return answered


def wait_heartbeats(session: Session, vms: list[Any], *, timeout: float = 300) -> None:
    """Until every VM's guest heartbeat is green (VMware Tools up: the guest booted)."""
    ids = [vm._moId for vm in vms]
    watch(session, vms, ["guestHeartbeatStatus"],
          lambda s: all(str(s.get(i, {}).get("guestHeartbeatStatus")) == "green" for i in ids),
          timeout=timeout, what=f"guest heartbeats of {len(vms)} VM(s)")


def power_off(session: Session, vms: list[Any], *, timeout: float = 300) -> None:
    tasks = []
    for vm in vms:
        with session.errors(f"powering off VM {vm._moId}"):
            tasks.append(vm.PowerOffVM_Task())
    wait_tasks(session, tasks, timeout=timeout, what=f"powering off {len(tasks)} VM(s)")


def unregister(session: Session, vms: list[Any]) -> None:
    for vm in vms:
        with session.errors(f"unregistering VM {vm._moId}"):
            vm.UnregisterVM()
