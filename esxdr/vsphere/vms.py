"""VM steps of a recovery runbook: register, answer questions, power on in batches, heartbeats.

Every step is a batch: all RegisterVM_Task / PowerOnVM_Task calls of a priority group are
issued first, then awaited together on one property filter (:mod:`esxdr.vsphere.tasks`).
A power-on of a replicated VM stops at the "moved or copied" question; the same filter
watches ``runtime.question`` and answers it as soon as it appears: ``moved`` (keep the BIOS
UUID: failover) or ``copied`` (new UUID: a drill next to the running production VM).

What a question asks is read from ``question.message[].id`` (``msg.uuid.altered``), never from
``question.id``: on a real host that id is opaque (``_vmx1``, what ``vim-cmd vmsvc/message``
prints). The answer is the key of the choice whose *label* is the wanted one
(``button.uuid.movedTheVM`` / ``button.uuid.copiedTheVM`` / ``button.uuid.cancel``), read from
``choice.choiceInfo`` each time, never a fixed key. Any other question (lock lost, no space
left, a locked CD-ROM, ...) is left unanswered and reported with its text.
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
from esxdr.model.host import HostState
from esxdr.plan.runbook import rewrite_vmx
from esxdr.vsphere.session import Session
from esxdr.vsphere.tasks import TASK_PATHS, State, task_error, wait_tasks, watch

PC = vmodl.query.PropertyCollector
UUID_ALTERED = "msg.uuid.altered"
# The labels of the msg.uuid.altered choices on ESXi 5.x and later, as `vim-cmd vmsvc/message`
# lists them ("1. button.uuid.movedTheVM (I Moved It)") and PowerCLI's Set-VMQuestion -Option
# takes them. The keys that go with them are the host's: read from choiceInfo every time.
UUID_LABELS = {"cancel": "button.uuid.cancel", "moved": "button.uuid.movedTheVM",
               "copied": "button.uuid.copiedTheVM"}


@dataclass(frozen=True)
class Question:
    """A VM's pending ``runtime.question`` as plain values."""

    id: str  # opaque (_vmx1): only good to answer this very question
    text: str
    messages: tuple[str, ...] = ()  # message ids, e.g. ("msg.uuid.altered",): what it asks
    choices: tuple[tuple[str, str, str], ...] = ()  # (key, label, summary)

    @property
    def moved_or_copied(self) -> bool:
        return UUID_ALTERED in self.messages

    def key_for(self, label: str) -> str | None:
        return next((k for k, lab, _ in self.choices if lab == label), None)

    def describe(self) -> str:
        what = ", ".join(self.messages) or "no message id"
        opts = "; ".join(f"{summary or label} ({label})" for _, label, summary in self.choices)
        text = " ".join(self.text.split())  # the host's text may span lines
        return f"{text} [question {self.id}: {what}; choices: {opts or 'none'}]"


def read_question(q: Any) -> Question | None:
    """``runtime.question`` (vim.vm.QuestionInfo) as a :class:`Question`; None when none is pending."""
    if q is None:
        return None
    choice = getattr(q, "choice", None)
    infos = getattr(choice, "choiceInfo", None) or ()
    return Question(
        id=str(getattr(q, "id", "") or ""), text=str(getattr(q, "text", "") or ""),
        messages=tuple(str(m.id) for m in getattr(q, "message", None) or () if getattr(m, "id", None)),
        choices=tuple((str(c.key), str(getattr(c, "label", "") or ""), str(getattr(c, "summary", "") or ""))
                      for c in infos))


def uuid_answer_key(question: Question, answer: str, vm: str) -> str:
    """The choice key that answers ``moved`` / ``copied`` / ``cancel`` to a msg.uuid.altered
    question, found by its label. Any other question, or no such choice, is a ConflictError
    carrying the question's text: esxdr answers nothing it did not understand."""
    if not question.moved_or_copied:
        raise ConflictError(f"VM {vm} is waiting for an answer esxdr does not give: {question.describe()}",
                            hint="answer it in the vSphere client (or remove its cause), then rerun")
    label = UUID_LABELS.get(answer)
    if label is None:
        raise ValueError(f"unknown answer {answer!r}: one of {', '.join(UUID_LABELS)}")
    key = question.key_for(label)
    if key is None:
        raise ConflictError(f"VM {vm} asks whether it was moved or copied, but offers no choice labelled {label}: "
                            f"{question.describe()}", hint="answer it in the vSphere client, then rerun")
    return key


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


def answer_question(session: Session, vm: Any, question: Any, answer: str) -> str:
    """Answer ``moved`` / ``copied`` / ``cancel`` to VM's pending msg.uuid.altered question
    (``question``: its ``runtime.question`` or a :class:`Question`) with VirtualMachine.AnswerVM.
    The choice key is looked up by label; any other question raises ConflictError with its text
    and nothing is sent. Returns the key sent."""
    q = question if isinstance(question, Question) else read_question(question)
    if q is None:
        raise ConflictError(f"VM {vm._moId} has no pending question to answer")
    key = uuid_answer_key(q, answer, vm._moId)
    with session.errors(f"answering question {q.id} of VM {vm._moId}"):
        vm.AnswerVM(q.id, key)
    return key


def cancel_pending(session: Session, vm: Any) -> str | None:
    """Cancel the power-on a killed run left waiting at the moved-or-copied question (cleanup then
    powers the VM off), with the choice labelled ``button.uuid.cancel``. The question is read
    again (one RetrievePropertiesEx) and judged by what it asks: any other question is left for
    the operator (ConflictError with its text). Returns the id of the question cancelled, or None
    when none is pending."""
    from esxdr.vsphere.inventory import retrieve

    spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=vm, skip=False)],
                         propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=["runtime.question"])])
    q = next((read_question(p.val) for oc in retrieve(session, spec) for p in oc.propSet
              if p.name == "runtime.question"), None)
    if q is None:
        return None
    answer_question(session, vm, q, "cancel")
    return q.id


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
    ``runtime.question`` (msg.uuid.altered answered on the way; any other question stops the
    batch with its text, unanswered) and ``guestHeartbeatStatus`` (not with ``heartbeats=False``:
    then only until the power-ons ended).

    ``states``: moid -> (power state, pending question id), as last observed. A VM already on is
    only waited for. A VM with a question pending (left by a killed run, whose power-on task is
    still waiting on it) gets no new power-on: its question arrives with the filter's first
    update and is judged by what it asks, like any other, before anything is answered. A
    power-on refused with InvalidPowerState (someone powered it on meanwhile) counts as on.
    ``settle`` lets the changes of a batch gather before the next WaitForUpdatesEx (forty tasks
    finishing within a second are then a few requests, not forty). Returns moid -> answer given.
    """
    if not vms:
        return {}
    if uuid_answer not in UUID_LABELS:
        raise ValueError(f"unknown answer {uuid_answer!r}: one of {', '.join(UUID_LABELS)}")
    answered: dict[str, str] = {}
    answered_ids: set[tuple[str, str]] = set()  # (moid, question id): each question is answered once
    wave_start: list[float | None] = [None]  # when a guest of the batch was first seen green (heartbeat_gather)
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
            q = read_question(state.get(moid, {}).get("runtime.question"))
            if q is None or (moid, q.id) in answered_ids:
                continue  # none pending, or answered and not yet cleared by the host
            answer_question(session, vm, q, uuid_answer)  # raises, unanswered, for any other question
            answered_ids.add((moid, q.id))
            answered[moid] = uuid_answer
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
                (q := read_question(state.get(m, {}).get("runtime.question"))) is not None
                and (m, q.id) not in answered_ids for m in by_id)
            green = sum(1 for m in by_id if str(state.get(m, {}).get("guestHeartbeatStatus")) == "green")
            if green and wave_start[0] is None:
                wave_start[0] = time.monotonic()
            wave_s = time.monotonic() - wave_start[0] if wave_start[0] is not None else 0.0
            time.sleep(heartbeat_gather(settle, len(by_id) - green, green, wave_s) if waiting_guests else settle)

    # Per type (a real host refuses a filter asking a Task for runtime.question): one filter.
    paths: dict[Any, list[str]] = {type(t): TASK_PATHS for t in tasks}
    paths.update({type(vm): ["runtime.question"] + (["guestHeartbeatStatus"] if heartbeats else []) for vm in vms})
    watch(session, list(tasks) + list(vms), paths, done, timeout=timeout,
          what=f"power-on and guest heartbeats of {len(vms)} VM(s)" if heartbeats else what, on_change=on_change)
    return answered


HEARTBEAT_GATHER_MAX = 10  # x settle: 2 s with the default 0.2 s


def heartbeat_gather(settle: float, pending: int, green: int, wave_s: float) -> float:
    """How long a batch lets guest heartbeats gather before its next WaitForUpdatesEx, once nothing
    but heartbeats is awaited: ``pending`` guests not green yet, ``green`` green, the first of them
    seen ``wave_s`` seconds ago.

    Heartbeats of a batch arrive as a wave: on a real host 45 to 120 s after each power-on, spread
    by how long each guest takes to boot. Woken every ``2 x settle`` through a wave of 67 guests
    spread over 10 s, a batch spent about 25 WaitForUpdatesEx (benchmarks/failover.py, 200 VMs);
    over a minute it would be about one per guest. Only the last heartbeat's delay counts (it ends
    the step and the RTO), so the gather is a quarter of the time the wave still needs at the rate
    seen so far, between ``2 x settle`` and ``HEARTBEAT_GATHER_MAX x settle``: long in the middle
    of a long wave, short near its end, and short for a burst (no rate seen yet) or a small batch."""
    if settle <= 0:
        return 0.0
    short, longest = settle * 2, settle * HEARTBEAT_GATHER_MAX
    if green <= 0 or wave_s <= 0 or pending <= 0:
        return short
    still = pending * wave_s / green  # seconds the wave needs yet at the rate seen so far
    return min(longest, max(short, still / 4))


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
