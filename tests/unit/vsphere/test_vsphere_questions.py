"""VM questions at power-on: recognised by message id, answered by choice label, never by a fixed key.

On a real host ``runtime.question.id`` is opaque (``_vmx1``: what ``vim-cmd vmsvc/message``
prints), what the question asks is in ``question.message[].id`` (``msg.uuid.altered``), and the
choices are ``ElementDescription``s whose labels are ``button.uuid.cancel`` /
``button.uuid.movedTheVM`` / ``button.uuid.copiedTheVM`` (``vim-cmd`` lists them as
"1. button.uuid.movedTheVM (I Moved It)"). The questions here are real pyVmomi data objects in
that shape; the host is a fake pyVmomi stub (a small in-memory ESXi: power-on tasks, questions,
AnswerVM and a PropertyCollector that reports the watched properties), so esxdr's own
:func:`esxdr.vsphere.vms.boot` runs unchanged against it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from pyVmomi import vim, vmodl

from esxdr.errors import ConflictError
from esxdr.vsphere import vms as vv
from esxdr.vsphere.session import Session

PC = vmodl.query.PropertyCollector

UUID_TEXT = ("This virtual machine might have been moved or copied. In order to configure certain management "
             "and networking features, VMware ESX needs to know if this virtual machine was moved or copied. "
             "If you don't know, answer \"I Copied It\".")
LOCK_TEXT = ("The lock protecting app01.vmdk has been lost, possibly due to underlying storage issues. "
             "If this virtual machine is configured to be highly available, ensure that the virtual machine "
             "is running on some other host before clicking OK.")


def question(qid: str, message_ids: list[str], text: str, choices: list[tuple[str, str, str]],
             default: int = 0) -> Any:
    """A vim.vm.QuestionInfo as a host sends it: choices are (key, label, summary)."""
    return vim.vm.QuestionInfo(
        id=qid, text=text,
        choice=vim.option.ChoiceOption(
            choiceInfo=[vim.ElementDescription(key=k, label=lab, summary=s) for k, lab, s in choices],
            defaultIndex=default),
        message=[vim.vm.Message(id=m, text=text) for m in message_ids])


REAL_UUID_CHOICES = [("0", "button.uuid.cancel", "Cancel"), ("1", "button.uuid.movedTheVM", "I Moved It"),
                     ("2", "button.uuid.copiedTheVM", "I Copied It")]


def uuid_question(qid: str = "_vmx1", choices: list[tuple[str, str, str]] | None = None) -> Any:
    return question(qid, ["msg.uuid.altered"], UUID_TEXT, choices or REAL_UUID_CHOICES, default=2)


# --------------------------------------------------------------------------- a fake host behind a pyVmomi stub
@dataclass
class FakeVm:
    moid: str
    ask: Any = None  # the question its next power-on stops at (None: powers on at once)
    question: Any = None  # pending runtime.question
    power: str = "poweredOff"
    heartbeat: str = "gray"
    task: str | None = None  # the power-on task waiting on the question


@dataclass
class FakeHost:
    """Just enough of ESXi for a power-on batch: PowerOnVM_Task, runtime.question, AnswerVM,
    guest heartbeats, and CreateFilter / WaitForUpdatesEx reporting the watched paths."""

    vms: dict[str, FakeVm] = field(default_factory=dict)
    tasks: dict[str, str] = field(default_factory=dict)  # task moid -> info.state
    answers: list[tuple[str, str, str]] = field(default_factory=list)  # (vm, question id, key)
    watched: list[tuple[Any, list[str]]] = field(default_factory=list)
    waits: int = 0
    requests: int = 0
    socket_timeout: float = 30.0
    by_method: dict[str, int] = field(default_factory=dict)
    relogin: Any = None
    cookie: str = ""

    def add(self, vm: FakeVm) -> Any:
        self.vms[vm.moid] = vm
        return vim.VirtualMachine(vm.moid, self)

    def _boot(self, vm: FakeVm) -> None:
        vm.power, vm.heartbeat = "poweredOn", "green"
        if vm.task:
            self.tasks[vm.task] = "success"
            vm.task = None

    def InvokeMethod(self, mo: Any, info: Any, args: list[Any]) -> Any:  # noqa: N802 - pyVmomi's stub interface
        self.requests += 1
        name = info.wsdlName
        if name == "PowerOnVM_Task":
            vm = self.vms[mo._moId]
            tid = f"task-{len(self.tasks) + 1}"
            self.tasks[tid] = "running"
            vm.task = tid
            if vm.ask is not None:
                vm.question, vm.ask = vm.ask, None
            else:
                self._boot(vm)
            return vim.Task(tid, self)
        if name == "AnswerVM":
            vm = self.vms[mo._moId]
            qid, key = args
            q = vm.question
            if q is None or q.id != qid:
                # AnswerVM's documented fault for a question id that does not apply (answered already)
                raise vmodl.fault.InvalidArgument(invalidProperty="questionId")
            if key not in {c.key for c in q.choice.choiceInfo}:
                raise vmodl.fault.InvalidArgument(invalidProperty="answerChoice")
            self.answers.append((vm.moid, qid, key))
            vm.question = None
            label = next(c.label for c in q.choice.choiceInfo if c.key == key)
            if label == "button.uuid.cancel":
                if vm.task:
                    self.tasks[vm.task] = "error"
            else:
                self._boot(vm)
            return None
        if name == "CreateFilter":
            spec = args[0]
            paths = {p.type: list(p.pathSet) for p in spec.propSet}
            self.watched = [(o.obj, paths[type(o.obj)]) for o in spec.objectSet]
            return PC.Filter("filter-1", self)
        if name == "WaitForUpdatesEx":
            self.waits += 1
            assert self.waits < 20, "the wait never ended"
            objs = []
            for obj, paths in self.watched:
                changes = [PC.Change(name=p, op="assign", val=self._value(obj, p)) for p in paths]
                objs.append(PC.ObjectUpdate(kind="modify", obj=obj, changeSet=changes))
            return PC.UpdateSet(version=str(self.waits),
                                filterSet=[PC.FilterUpdate(filter=PC.Filter("filter-1", self), objectSet=objs)])
        if name == "DestroyPropertyFilter":
            return None
        if name == "RetrievePropertiesEx":
            spec = args[0][0]
            paths = {p.type: list(p.pathSet) for p in spec.propSet}
            return PC.RetrieveResult(objects=[
                PC.ObjectContent(obj=o.obj, propSet=[vmodl.DynamicProperty(name=path, val=self._value(o.obj, path))
                                                     for path in paths[type(o.obj)]])
                for o in spec.objectSet])
        raise AssertionError(f"unexpected call {name}")

    def _value(self, obj: Any, path: str) -> Any:
        if isinstance(obj, vim.Task):
            return {"info.state": self.tasks[obj._moId]}.get(path)
        vm = self.vms[obj._moId]
        return {"runtime.question": vm.question, "guestHeartbeatStatus": vm.heartbeat,
                "runtime.powerState": vm.power}.get(path)


def session_on(host: FakeHost) -> Session:
    s = Session(SimpleNamespace(name="esx-dr", url="https://esx-dr/sdk", user="root"), host, "pw")  # type: ignore[arg-type]
    s.content = SimpleNamespace(propertyCollector=PC("propertyCollector", host))
    return s


# --------------------------------------------------------------------------- the tests
def test_the_answer_is_the_key_of_the_choice_labelled_moved_or_copied_whatever_the_keys():
    """The keys are the host's: with keys other than 0/1/2 the labelled choice still wins."""
    host = FakeHost()
    shuffled = [("7", "button.uuid.copiedTheVM", "I Copied It"), ("3", "button.uuid.cancel", "Cancel"),
                ("5", "button.uuid.movedTheVM", "I Moved It")]
    a = host.add(FakeVm("vm-1", ask=uuid_question("_vmx1", shuffled)))
    b = host.add(FakeVm("vm-2", ask=uuid_question("_vmx1", shuffled)))
    s = session_on(host)
    assert vv.boot(s, [a], {}, uuid_answer="moved", timeout=5, settle=0) == {"vm-1": "moved"}
    assert vv.boot(s, [b], {}, uuid_answer="copied", timeout=5, settle=0) == {"vm-2": "copied"}
    assert host.answers == [("vm-1", "_vmx1", "5"), ("vm-2", "_vmx1", "7")]  # by label, not a fixed key
    assert (host.vms["vm-1"].power, host.vms["vm-2"].heartbeat) == ("poweredOn", "green")


def test_the_real_shape_is_answered_with_the_opaque_id():
    """question.id "_vmx1" says nothing; message[].id says msg.uuid.altered. The opaque id is
    what AnswerVM gets back, with key "1" (button.uuid.movedTheVM) as the real host lists it."""
    host = FakeHost()
    vm = host.add(FakeVm("vm-1", ask=uuid_question("_vmx1")))
    assert vv.boot(session_on(host), [vm], {}, uuid_answer="moved", timeout=5, settle=0) == {"vm-1": "moved"}
    assert host.answers == [("vm-1", "_vmx1", "1")]


def test_an_unknown_question_is_left_unanswered_and_reported_with_its_text():
    host = FakeHost()
    lock = question("_vmx1", ["msg.hbacommon.locklost"], LOCK_TEXT, [("0", "button.ok", "OK")])
    vm = host.add(FakeVm("vm-1", ask=lock))
    with pytest.raises(ConflictError) as e:
        vv.boot(session_on(host), [vm], {}, uuid_answer="copied", timeout=5, settle=0)
    assert host.answers == []  # nothing answered
    assert host.vms["vm-1"].question is lock  # still pending for the operator
    assert "The lock protecting app01.vmdk has been lost" in e.value.message
    assert "msg.hbacommon.locklost" in e.value.message and "vm-1" in e.value.message
    assert "vSphere client" in (e.value.hint or "")


def test_a_pending_question_of_an_earlier_run_is_checked_before_it_is_answered():
    """A killed run left a power-on waiting on a question. The rerun knows only its id from the
    inventory; before answering it looks at what the question asks: a CD-ROM lock is not the
    moved-or-copied question, so it is reported and left alone; the real one is answered."""
    host = FakeHost()
    cdrom = question("_vmx1", ["msg.cdromdisconnect.locked"],
                     "The guest operating system has locked the CD-ROM door and is probably using the CD-ROM.",
                     [("0", "button.yes", "Yes"), ("1", "button.no", "No")])
    stuck = host.add(FakeVm("vm-1", question=cdrom, task="task-0"))
    host.tasks["task-0"] = "running"
    s = session_on(host)
    with pytest.raises(ConflictError) as e:
        vv.boot(s, [stuck], {"vm-1": ("poweredOff", "_vmx1")}, uuid_answer="moved", timeout=5, settle=0)
    assert host.answers == [] and "locked the CD-ROM door" in e.value.message

    pending = host.add(FakeVm("vm-2", question=uuid_question("_vmx4"), task="task-9"))
    host.tasks["task-9"] = "running"
    assert vv.boot(s, [pending], {"vm-2": ("poweredOff", "_vmx4")}, uuid_answer="copied", timeout=5,
                   settle=0) == {"vm-2": "copied"}
    assert host.answers == [("vm-2", "_vmx4", "2")]
    assert host.tasks["task-9"] == "success"  # the earlier run's own power-on went on; none was issued again
    assert len(host.tasks) == 2


def test_a_question_whose_id_merely_says_msg_uuid_altered_is_not_taken_for_it():
    """Recognition reads message[].id only. An id that spells msg.uuid.altered (esxsim's old shape)
    with a message that asks something else is not the moved-or-copied question."""
    host = FakeHost()
    odd = question("msg.uuid.altered", ["msg.hbacommon.outofspace"],
                   "There is no more space for virtual disk app01.vmdk.",
                   [("0", "button.retry", "Retry"), ("1", "button.abort", "Cancel")])
    vm = host.add(FakeVm("vm-1", ask=odd))
    with pytest.raises(ConflictError) as e:
        vv.boot(session_on(host), [vm], {}, uuid_answer="moved", timeout=5, settle=0)
    assert host.answers == [] and "no more space" in e.value.message

    no_message = vim.vm.QuestionInfo(id="msg.uuid.altered", text=UUID_TEXT,
                                     choice=vim.option.ChoiceOption(choiceInfo=[
                                         vim.ElementDescription(key=k, label=lab, summary=s)
                                         for k, lab, s in REAL_UUID_CHOICES]))
    q = vv.read_question(no_message)
    assert q is not None and not q.moved_or_copied
    with pytest.raises(ConflictError):
        vv.uuid_answer_key(q, "moved", "vm-1")


def test_a_uuid_question_without_the_wanted_label_is_not_answered_by_position():
    host = FakeHost()
    old_labels = [("0", "button.uuid.cancel", "Cancel"), ("1", "button.uuid.moveit", "I Moved It"),
                  ("2", "button.uuid.copyit", "I Copied It")]
    vm = host.add(FakeVm("vm-1", ask=uuid_question("_vmx1", old_labels)))
    with pytest.raises(ConflictError) as e:
        vv.boot(session_on(host), [vm], {}, uuid_answer="moved", timeout=5, settle=0)
    assert host.answers == []
    assert "no choice labelled button.uuid.movedTheVM" in e.value.message


def test_read_question_keeps_what_the_host_said():
    q = vv.read_question(uuid_question("_vmx2"))
    assert q == vv.Question(id="_vmx2", text=UUID_TEXT, messages=("msg.uuid.altered",),
                            choices=tuple(REAL_UUID_CHOICES))
    assert q.moved_or_copied and q.key_for("button.uuid.copiedTheVM") == "2"
    assert "I Moved It (button.uuid.movedTheVM)" in q.describe() and "_vmx2" in q.describe()
    assert vv.read_question(None) is None
    assert [vv.uuid_answer_key(q, a, "vm-1") for a in ("cancel", "moved", "copied")] == ["0", "1", "2"]
    with pytest.raises(ValueError):
        vv.uuid_answer_key(q, "maybe", "vm-1")


def test_cleanup_cancels_a_pending_uuid_question_by_its_cancel_label_and_nothing_else():
    """The drill cleanup cancels the power-on a killed run left waiting: the choice labelled
    button.uuid.cancel (here not key 0), read again before answering; a lock-lost question is
    left for the operator with its text."""
    from esxdr.vsphere.recovery import cancel_question

    host = FakeHost()
    shuffled = [("2", "button.uuid.movedTheVM", "I Moved It"), ("9", "button.uuid.cancel", "Cancel"),
                ("0", "button.uuid.copiedTheVM", "I Copied It")]
    stuck = host.add(FakeVm("vm-1", question=uuid_question("_vmx1", shuffled), task="task-0"))
    host.tasks["task-0"] = "running"
    s = session_on(host)
    cancel_question(s, stuck, "_vmx1")
    assert host.answers == [("vm-1", "_vmx1", "9")] and host.tasks["task-0"] == "error"
    assert vv.cancel_pending(s, stuck) is None  # nothing pending any more: nothing sent
    assert len(host.answers) == 1

    lock = question("_vmx1", ["msg.hbacommon.locklost"], LOCK_TEXT, [("0", "button.ok", "OK")])
    other = host.add(FakeVm("vm-2", question=lock))
    with pytest.raises(ConflictError) as e:
        cancel_question(s, other, "_vmx1")
    assert len(host.answers) == 1 and "has been lost" in e.value.message
