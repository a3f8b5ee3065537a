"""VM steps of a recovery runbook: register, answer questions, power on in batches, heartbeats.

Every step is a batch: all RegisterVM_Task / PowerOnVM_Task calls of a priority group are
issued first, then awaited together on one property filter (:mod:`esxdr.vsphere.tasks`).
A power-on of a replicated VM stops at the ``msg.uuid.altered`` question; the same filter
watches ``runtime.question`` and answers it as soon as it appears: ``moved`` (keep the BIOS
UUID: failover) or ``copied`` (new UUID: a drill next to the running production VM).
"""

from __future__ import annotations

import http.client
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlparse

from pyVmomi import vim, vmodl

from esxdr.errors import ConflictError, EsxdrError, VsphereError
from esxdr.vsphere.observed import HostState
from esxdr.vsphere.session import Session
from esxdr.vsphere.tasks import TASK_PATHS, State, task_error, wait_tasks, watch

PC = vmodl.query.PropertyCollector
UUID_ALTERED = "msg.uuid.altered"
ANSWERS = {"cancel": "0", "moved": "1", "copied": "2"}


@dataclass
class Placement:
    """Where VMs of a host are registered, and how its datastores are browsed (one property read)."""

    folder: Any
    pool: Any
    host: Any
    datacenter: str = "ha-datacenter"  # the dcPath of datastore HTTP access
    browsers: dict[str, Any] = field(default_factory=dict)  # datastore name -> HostDatastoreBrowser
    drs: bool | None = None  # a cluster's DRS (None: not asked, a standalone host)


def placement(session: Session, host: HostState) -> tuple[Any, Any, Any]:
    """(vmFolder, resourcePool, host ref) to register VMs on ``host``."""
    p = placement_info(session, host)
    return p.folder, p.pool, p.host


def placement_info(session: Session, host: HostState, datastores: list[str] = (),  # type: ignore[assignment]
                   cluster: bool = False) -> Placement:
    """One property read that walks host → compute resource → folders → datacenter (VM folder,
    resource pool, datacenter name) and reads the ``browser`` of the named datastores; with
    ``cluster`` also whether DRS is on (``configurationEx`` of the ClusterComputeResource)."""
    up_folder = PC.TraversalSpec(name="folder-up", type=vim.Folder, path="parent", skip=False,
                                 selectSet=[PC.SelectionSpec(name="folder-up")])
    cr_up = PC.TraversalSpec(name="cr-up", type=vim.ComputeResource, path="parent", skip=False,
                             selectSet=[up_folder])
    host_up = PC.TraversalSpec(name="host-up", type=vim.HostSystem, path="parent", skip=False, selectSet=[cr_up])
    href = session.ref("HostSystem", host.moid)
    stores = {host.datastores[n].moid: n for n in datastores if n in host.datastores}
    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=href, skip=True, selectSet=[host_up])]
                         + [PC.ObjectSpec(obj=session.ref("Datastore", m), skip=False) for m in stores],
                         propSet=[PC.PropertySpec(type=vim.ComputeResource, pathSet=["resourcePool"]),
                                  PC.PropertySpec(type=vim.Datacenter, pathSet=["vmFolder", "name"])]
                         + ([PC.PropertySpec(type=vim.Datastore, pathSet=["browser"])] if stores else [])
                         + ([PC.PropertySpec(type=vim.ClusterComputeResource, pathSet=["configurationEx"])]
                            if cluster else []))
    from esxdr.vsphere.inventory import retrieve

    pool = folder = None
    dc = "ha-datacenter"
    browsers: dict[str, Any] = {}
    drs: bool | None = None
    for oc in retrieve(session, spec):
        for p in oc.propSet:
            if p.name == "configurationEx":
                drs = bool(getattr(getattr(p.val, "drsConfig", None), "enabled", False))
            elif p.name == "resourcePool":
                pool = p.val
            elif p.name == "vmFolder":
                folder = p.val
            elif p.name == "name":
                dc = str(p.val)
            elif p.name == "browser" and oc.obj._moId in stores:
                browsers[stores[oc.obj._moId]] = p.val
    if pool is None or folder is None:
        raise ConflictError(f"{host.name}: cannot find its datacenter VM folder and resource pool")
    return Placement(folder, pool, href, dc, browsers, drs)


def register_vms(session: Session, host: HostState, vmx_paths: list[str], *, timeout: float = 300,
                 where: Placement | None = None, after_issue: Any = None,
                 hosts: list[Any] | None = None) -> list[Any]:
    """Folder.RegisterVM_Task for every ``[datastore] dir/vm.vmx``, in parallel; returns the VMs.

    ``hosts`` (a cluster): per path the HostSystem to register on, or None to let DRS place it
    in the cluster's resource pool (vCenter refuses None when DRS is off)."""
    if not vmx_paths:
        return []
    folder, pool, href = (where.folder, where.pool, where.host) if where else placement(session, host)
    tasks = []
    for i, path in enumerate(vmx_paths):
        on = hosts[i] if hosts is not None else href
        with session.errors(f"registering {path} on {host.name}"):
            tasks.append(folder.RegisterVM_Task(path, None, False, pool, on))
    if after_issue is not None:
        after_issue()  # a crash point for the tests: registrations issued, not yet awaited
    return wait_tasks(session, tasks, timeout=timeout, what=f"registering {len(tasks)} VM(s) on {host.name}",
                      settle=0.25)


def answer_question(session: Session, vm: Any, question_id: str, answer: str) -> None:
    """VirtualMachine.AnswerVM; ``answer`` is a choice key or moved/copied/cancel."""
    with session.errors(f"answering question {question_id} of VM {vm._moId}"):
        vm.AnswerVM(question_id, ANSWERS.get(answer, answer))


def power_on(session: Session, vms: list[Any], *, uuid_answer: str = "moved", timeout: float = 300) -> dict[str, str]:
    """Power on a batch and answer ``msg.uuid.altered`` on the way, without waiting for the
    guests (:func:`boot` without heartbeats). Returns moid → question answered."""
    return boot(session, vms, {}, uuid_answer=uuid_answer, timeout=timeout, settle=0, heartbeats=False)


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


# --------------------------------------------------------------------------- boot a batch
def boot(session: Session, vms: list[Any], states: dict[str, tuple[str, str | None]], *, uuid_answer: str,
         timeout: float, settle: float = 0.2, after_issue: Any = None, heartbeats: bool = True) -> dict[str, str]:
    """Power on a priority batch and wait until every guest's heartbeat is green, on ONE property
    filter: the PowerOnVM_Task of every VM that is off (issued together), the VMs'
    ``runtime.question`` (``msg.uuid.altered`` answered on the way; any other question stops the
    batch with its text) and ``guestHeartbeatStatus`` (not with ``heartbeats=False``: then only
    until the power-ons ended).

    ``states``: moid -> (power state, pending question id), as last observed. A VM already on is
    only waited for; a question left pending by a killed run is answered. A power-on refused with
    InvalidPowerState (someone powered it on meanwhile) counts as on. ``settle`` lets the changes
    of a batch gather before the next WaitForUpdatesEx (forty tasks finishing within a second are
    then a few requests, not forty). Returns moid -> question answered.
    """
    if not vms:
        return {}
    answered: dict[str, str] = {}
    for vm in vms:
        power, qid = states.get(vm._moId, ("poweredOff", None))
        if qid:
            answer_question(session, vm, qid, uuid_answer)
            answered[vm._moId] = uuid_answer
    tasks = []
    for vm in vms:
        power, qid = states.get(vm._moId, ("poweredOff", None))
        if power != "poweredOn" and not qid:
            with session.errors(f"powering on VM {vm._moId}"):
                tasks.append(vm.PowerOnVM_Task())
    if after_issue is not None:
        after_issue()  # a crash point for the tests: power-ons issued, questions pending
    by_id = {vm._moId: vm for vm in vms}
    task_ids = [t._moId for t in tasks]
    what = f"powering on {len(tasks)} VM(s)"

    def tasks_done(state: State) -> bool:
        return all(str(state.get(t, {}).get("info.state")) in ("success", "error") for t in task_ids)

    def done(state: State) -> bool:
        return tasks_done(state) and (not heartbeats or
                                      all(str(state.get(m, {}).get("guestHeartbeatStatus")) == "green" for m in by_id))

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
        for t in task_ids:
            props = state.get(t, {})
            if str(props.get("info.state")) == "error":
                err = props.get("info.error")
                fault = getattr(err, "fault", None) or err
                if type(fault).__name__.rsplit(".", 1)[-1] == "InvalidPowerState":
                    continue  # on already: it is only waited for
                raise task_error(session, err, what)
        if settle and not done(state):
            # Only heartbeats left: guests come up over seconds (minutes on real hosts), one wake-up
            # per guest would cost a request each; gather them longer than task and question changes.
            waiting_guests = tasks_done(state) and not any(
                state.get(m, {}).get("runtime.question") is not None and m not in answered for m in by_id)
            time.sleep(settle * 2 if waiting_guests else settle)

    # Per type (a real host refuses a filter asking a Task for runtime.question): one filter.
    paths: dict[Any, list[str]] = {type(t): TASK_PATHS for t in tasks}
    paths.update({type(vm): ["runtime.question"] + (["guestHeartbeatStatus"] if heartbeats else []) for vm in vms})
    watch(session, list(tasks) + list(vms), paths, done, timeout=timeout,
          what=f"power-on and guest heartbeats of {len(vms)} VM(s)" if heartbeats else what, on_change=on_change)
    return answered


def vm_states(session: Session, vms: list[Any]) -> dict[str, tuple[str, str | None]]:
    """moid -> (power state, pending question id): one RetrievePropertiesEx."""
    if not vms:
        return {}
    from esxdr.vsphere.inventory import retrieve

    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=v, skip=False) for v in vms],
                         propSet=[PC.PropertySpec(type=vim.VirtualMachine,
                                                  pathSet=["runtime.powerState", "runtime.question"])])
    out: dict[str, tuple[str, str | None]] = {}
    for oc in retrieve(session, spec):
        props = {p.name: p.val for p in oc.propSet}
        q = props.get("runtime.question")
        out[oc.obj._moId] = (str(props.get("runtime.powerState")), q.id if q is not None else None)
    return out


# --------------------------------------------------------------------------- datastore files (HTTP)
class DatastoreFiles:
    """The host's datastore HTTP access (``/folder/PATH?dcPath=DC&dsName=DS``), as the vSphere
    client's datastore browser uses it: read and write small files such as a .vmx, with the
    session's cookie and the endpoint's TLS policy (pinned thumbprint or CA). Every request is
    counted (``requests``): they are not SOAP calls, but they are work for the host."""

    def __init__(self, session: Session, datacenter: str = "ha-datacenter"):
        self.session = session
        self.datacenter = datacenter
        self.requests = 0
        u = urlparse(session.endpoint.url)
        self.scheme, self.host, self.port = u.scheme, u.hostname or "", u.port

    def _connection(self) -> http.client.HTTPConnection:
        if self.scheme == "http":
            return http.client.HTTPConnection(self.host, self.port or 80, timeout=30)
        ep = self.session.endpoint
        from esxdr.vsphere.session import _PinnedHTTPSConnection, normalize_thumbprint

        if ep.thumbprint:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pin, checked on connect, is the verification
            cls = type("Pinned", (_PinnedHTTPSConnection,), {"pin": normalize_thumbprint(ep.thumbprint)})
            return cls(self.host, self.port or 443, timeout=30, context=ctx)
        ctx = ssl.create_default_context(cafile=ep.ca_file) if ep.ca_file else ssl.create_default_context()
        return http.client.HTTPSConnection(self.host, self.port or 443, timeout=30, context=ctx)

    def _url(self, ds_path: str) -> str:
        if not ds_path.startswith("[") or "]" not in ds_path:
            raise VsphereError(f"not a datastore path: {ds_path!r}")
        ds, _, rel = ds_path[1:].partition("]")
        return (f"/folder/{quote(rel.strip().lstrip('/'))}?dcPath={quote(self.datacenter, safe='')}"
                f"&dsName={quote(ds, safe='')}")

    def _request(self, method: str, ds_path: str, body: bytes | None = None) -> bytes:
        conn = self._connection()
        self.requests += 1
        try:
            headers = {"Cookie": self.session.stub.cookie} if getattr(self.session.stub, "cookie", "") else {}
            if body is not None:
                headers["Content-Type"] = "application/octet-stream"
            conn.request(method, self._url(ds_path), body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if r.status not in (200, 201, 204):
                raise VsphereError(f"{self.session.name}: {method} {ds_path} over datastore HTTP: {r.status} {r.reason}")
            return data
        except (OSError, http.client.HTTPException) as e:
            raise VsphereError(f"{self.session.name}: {method} {ds_path} over datastore HTTP failed: {e}") from e
        finally:
            conn.close()

    def get(self, ds_path: str) -> bytes:
        return self._request("GET", ds_path)

    def put(self, ds_path: str, data: bytes) -> None:
        self._request("PUT", ds_path, data)


def prepare_vmx_files(files: DatastoreFiles, vmx_paths: list[str], net_map: dict[str, str],
                      uuid_action: str | None, *, parallel: int = 8) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Before registering: point each .vmx's NICs at the mapped port groups and say what to do with
    its UUID (``uuid.action``), so that neither a ReconfigVM_Task nor the msg.uuid.altered question
    is needed on a real ESXi host. Returns (path -> changes made, path -> why it could not be
    prepared); a VM that could not be prepared is still registered, and the NIC step and the
    power-on's question handling do the work through the API instead."""
    from esxdr.plan.runbook import rewrite_vmx

    done: dict[str, list[str]] = {}
    failed: dict[str, str] = {}

    def one(path: str) -> None:
        try:
            raw = files.get(path)
            text = raw.decode("utf-8", errors="surrogateescape")
            new, changes = rewrite_vmx(text, net_map, uuid_action)
            if changes:
                files.put(path, new.encode("utf-8", errors="surrogateescape"))
            done[path] = changes
        except EsxdrError as e:
            failed[path] = e.message

    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(vmx_paths) or 1))) as pool:
        list(pool.map(one, vmx_paths))
    return done, failed
