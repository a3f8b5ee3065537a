"""What esxdr asks a host for, checked on a fake host behind a pyVmomi stub (no network).

- No lazy managed-object attribute reads. ``datastore.browser``, ``task.info`` or
  ``guestOperationsManager.processManager`` make pyVmomi call its stub's ``InvokeAccessor``,
  which since pyVmomi 8.0.1 sends the undocumented ``Fetch`` method (older ones a
  RetrieveContents). Nothing proves ``Fetch`` on ESXi 6.5/6.7, so every read goes through the
  PropertyCollector. The fake records every accessor call and fails it.
- The quiesced snapshots of a consistency group are removed even when the wait for them
  fails half-way (the connection drops): before, they were left on production VMs.
- A guest file transfer that a vCenter sends to the ESXi host is checked against that host's own
  certificate (as the vCenter reports it), not against the vCenter's pinned thumbprint.

The fake answers RetrievePropertiesEx like a PropertyCollector (object specs, property specs
per type, traversal specs by path, named selection specs), CreateFilter / WaitForUpdatesEx
with the watched properties, and the few methods each test needs.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pyVmomi import VmomiSupport, vim, vmodl

from esxdr.model.host import HostState, ObservedDatastore
from esxdr.vsphere.session import Session

PC = vmodl.query.PropertyCollector


class FakeHost:
    """A pyVmomi stub over an in-memory inventory: ``props[moid][path]``."""

    def __init__(self) -> None:
        self.props: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, tuple]] = []  # (method, moid, args)
        self.lazy: list[str] = []  # accessor reads: must stay empty
        self.methods: dict[str, Callable[..., Any]] = {}
        self.filters: dict[str, Any] = {}
        self.entities: list[Any] = []
        self.on_wait: Callable[[str], Any] | None = None  # version -> None (no change) / raise / "report"
        self.waits = 0
        # what esxdr's Session reads from its stub
        self.requests = 0
        self.by_method: Counter[str] = Counter()
        self.socket_timeout = 30.0
        self.relogin: Any = None

    # -- the stub interface -----------------------------------------------------------
    def InvokeAccessor(self, mo: Any, info: Any) -> Any:  # noqa: N802 - pyVmomi's stub interface
        self.lazy.append(f"{type(mo).__name__}.{info.name}")
        raise AssertionError(f"lazy read of {type(mo).__name__}.{info.name} (a Fetch on pyVmomi >= 8.0.1)")

    def InvokeMethod(self, mo: Any, info: Any, args: Any) -> Any:  # noqa: N802 - pyVmomi's stub interface
        name = info.wsdlName
        self.requests += 1
        self.by_method[name] += 1
        self.calls.append((name, mo._moId, tuple(args)))
        if name == "Fetch":
            self.lazy.append(f"Fetch({args[0]})")
            raise AssertionError(f"Fetch of {args[0]}")
        if name in self.methods:
            return self.methods[name](mo, *args)
        handler = {"RetrievePropertiesEx": self._retrieve_properties_ex, "CreateFilter": self._create_filter,
                   "DestroyPropertyFilter": self._destroy_property_filter,
                   "WaitForUpdatesEx": self._wait_for_updates_ex,
                   "CreateContainerView": self._create_container_view}.get(name)
        if handler is None:
            raise AssertionError(f"the fake host has no {name}")
        return handler(mo, *args)

    # -- inventory --------------------------------------------------------------------
    def add(self, ref: Any, **props: Any) -> Any:
        """``ref`` with properties (``runtime__powerState=…`` is the path ``runtime.powerState``)."""
        self.props.setdefault(ref._moId, {}).update({k.replace("__", "."): typed(v) for k, v in props.items()})
        if isinstance(ref, vim.ManagedEntity) and ref not in self.entities:
            self.entities.append(ref)  # what a ContainerView of its type lists
        return ref

    def task(self, moid: str, state: str = "running", result: Any = None, error: Any = None) -> Any:
        return self.add(vim.Task(moid, self), info__state=state, info__result=result, info__error=error)

    def called(self, method: str) -> list[tuple[str, tuple]]:
        return [(moid, args) for m, moid, args in self.calls if m == method]

    # -- PropertyCollector ------------------------------------------------------------
    def _collect(self, spec: Any) -> list[Any]:
        found: dict[str, tuple[Any, set[str]]] = {}
        named = {}

        def index(selects: Any) -> None:
            for s in selects or ():
                if isinstance(s, PC.TraversalSpec) and s.name:
                    named[s.name] = s
                index(getattr(s, "selectSet", None))

        for o in spec.objectSet:
            index(o.selectSet)

        def visit(ref: Any, skip: bool, selects: Any) -> None:
            if not skip:
                paths = {p for ps in spec.propSet if isinstance(ref, ps.type) for p in ps.pathSet or ()}
                found.setdefault(ref._moId, (ref, set()))[1].update(paths)
            for s in selects or ():
                t = s if isinstance(s, PC.TraversalSpec) else named[s.name]
                if not isinstance(ref, t.type):
                    continue
                nxt = self.props.get(ref._moId, {}).get(t.path)
                for r in nxt if isinstance(nxt, list) else [nxt] if nxt is not None else []:
                    visit(r, t.skip, t.selectSet)

        for o in spec.objectSet:
            visit(o.obj, o.skip, o.selectSet)
        return [PC.ObjectContent(obj=ref, propSet=[vmodl.DynamicProperty(name=p, val=self.props[ref._moId][p])
                                                   for p in sorted(paths) if p in self.props.get(ref._moId, {})])
                for ref, paths in found.values()]

    def _retrieve_properties_ex(self, _pc: Any, specs: list[Any], _options: Any) -> Any:
        return PC.RetrieveResult(objects=[oc for spec in specs for oc in self._collect(spec)])

    def _create_filter(self, _pc: Any, spec: Any, _partial: bool) -> Any:
        f = PC.Filter(f"filter-{len(self.filters) + 1}", self)
        self.filters[f._moId] = spec
        return f

    def _destroy_property_filter(self, f: Any) -> None:
        self.filters.pop(f._moId, None)

    def _wait_for_updates_ex(self, _pc: Any, version: str, options: Any) -> Any:
        self.waits += 1
        assert self.waits < 500, "the wait never ended"
        if version and self.on_wait is not None and self.on_wait(version) is None:
            import time

            time.sleep(0.01)
            return None  # maxWaitSeconds passed, nothing changed
        sets = []
        for fid, spec in self.filters.items():
            objs = [PC.ObjectUpdate(kind="enter" if not version else "modify", obj=oc.obj,
                                    changeSet=[PC.Change(name=p.name, op="assign", val=p.val) for p in oc.propSet])
                    for oc in self._collect(spec)]
            sets.append(PC.FilterUpdate(filter=PC.Filter(fid, self), objectSet=objs))
        return PC.UpdateSet(version=str(self.waits), filterSet=sets)

    def _create_container_view(self, _vm: Any, _root: Any, types: list[Any], _recursive: bool) -> Any:
        view = vim.view.ContainerView(f"view-{types[0].__name__}", self)
        return self.add(view, view=[r for r in self.entities if isinstance(r, tuple(types))])


def typed(value: Any) -> Any:
    """A list as pyVmomi hands arrays over: typed (``vim.Datastore[]``, ``byte[]``), so that it
    can travel as a property value (anyType) the way a deserialized answer does."""
    if not isinstance(value, list) or not value:
        return value
    if all(isinstance(v, int) for v in value):
        return VmomiSupport.GetVmodlType("byte[]")(value)
    return type(value[0]).Array(value)


@pytest.fixture
def host() -> Iterator[tuple[FakeHost, Session]]:
    fake = FakeHost()
    session = session_on(fake)
    yield fake, session
    assert fake.lazy == [], f"lazy managed-object reads: {fake.lazy}"


def session_on(fake: FakeHost, url: str = "http://127.0.0.2/sdk", thumbprint: str | None = None) -> Session:
    ep = SimpleNamespace(name="esx-test", url=url, user="root", thumbprint=thumbprint, ca_file=None)
    s = Session(ep, fake, "unused")  # type: ignore[arg-type]
    s.content = vim.ServiceInstanceContent(
        propertyCollector=PC("propertyCollector", fake), viewManager=vim.view.ViewManager("ViewManager", fake),
        rootFolder=vim.Folder("ha-folder-root", fake),
        guestOperationsManager=vim.vm.guest.GuestOperationsManager("ha-guest-operations-manager", fake))
    return s


def test_the_fake_catches_a_lazy_read(host):
    fake, session = host
    with pytest.raises(AssertionError, match="lazy read of vim.Datastore.browser"):
        _ = session.ref("Datastore", "ds-1").browser
    assert fake.lazy == ["vim.Datastore.browser"]
    fake.lazy.clear()


# --------------------------------------------------------------------------- no lazy reads
def test_find_vmx_reads_the_browsers_with_the_property_collector(host):
    from esxdr.vsphere.recovery import find_vmx

    fake, session = host
    browsers = {n: fake.add(vim.host.DatastoreBrowser(f"browser-{n}", fake)) for n in ("ds1", "ds2")}
    for n in ("ds1", "ds2"):
        fake.add(vim.Datastore(f"ds-{n}", fake), browser=browsers[n])
    results = {f"browser-{n}": [vim.host.DatastoreBrowser.SearchResults(
        folderPath=f"[{n}] app-{n}", file=[vim.host.DatastoreBrowser.FileInfo(path=f"app-{n}.vmx")])]
        for n in ("ds1", "ds2")}
    fake.methods["SearchDatastoreSubFolders_Task"] = lambda b, path, spec: fake.task(
        f"task-{b._moId}", "success", results[b._moId])
    h = HostState(name="esx-test", moid="ha-host", datastores={
        n: ObservedDatastore(name=n, moid=f"ds-{n}") for n in ("ds1", "ds2")})

    assert find_vmx(session, h, ["ds1", "ds2", "gone"]) == {
        "app-ds1": "[ds1] app-ds1/app-ds1.vmx", "app-ds2": "[ds2] app-ds2/app-ds2.vmx"}
    assert fake.by_method["RetrievePropertiesEx"] == 1  # both browsers in one read
    # Browsers read with the placement are used as they are: no read at all.
    fake.by_method.clear()
    find_vmx(session, h, ["ds1"], browsers={"ds1": browsers["ds1"]})
    assert fake.by_method["RetrievePropertiesEx"] == 0


def test_guest_ops_read_their_managers_with_the_property_collector(host):
    from esxdr.vsphere.guest import GuestCredentials, GuestOps, GuestVm

    fake, session = host
    fake.add(session.content.guestOperationsManager,
             processManager=vim.vm.guest.ProcessManager("ha-guest-operations-process-manager", fake),
             fileManager=vim.vm.guest.FileManager("ha-guest-operations-file-manager", fake))
    fake.methods["StartProgramInGuest"] = lambda pm, vm, auth, spec: 4242
    fake.methods["ListProcessesInGuest"] = lambda pm, vm, auth, pids: [vim.vm.guest.ProcessManager.ProcessInfo(
        pid=4242, name="cmd.exe", owner="Administrator", cmdLine="cmd", startTime=datetime.now(UTC),
        endTime=datetime.now(UTC), exitCode=3)]
    ops = GuestOps(session, GuestVm(name="app01", moid="vm-1", guest_id="windows9Server64Guest"),
                   GuestCredentials("Administrator", "pw"))
    assert ops.run("cmd.exe", "/c exit 3") == 3
    assert ops.run("cmd.exe", "/c exit 3") == 3
    assert fake.by_method["RetrievePropertiesEx"] == 1  # read once per GuestOps
    assert [moid for moid, _ in fake.called("StartProgramInGuest")] == ["ha-guest-operations-process-manager"] * 2


def test_a_quiesce_past_its_deadline_is_read_with_the_property_collector(host):
    """Past the quiesce deadline, each snapshot task's outcome is read once: ``task.info`` was a
    lazy read per task."""
    from esxdr.replication.consistency import QUIESCED, quiesced

    fake, session = host
    group = consistency_lab(fake)

    def wait(version: str) -> None:
        # The task ends as the deadline comes, after the last answer that could report it:
        # only the read after the deadline sees it.
        fake.props["task-create"]["info.state"] = "success"
        return None  # nothing reported: maxWaitSeconds passed

    fake.on_wait = wait
    with quiesced(group.site, group, timeout=0.3, session=session) as c:
        assert [(v.name, v.outcome) for v in c.vms] == [("app01", QUIESCED)]
        assert c.level == "application"
    assert fake.by_method["WaitForUpdatesEx"] >= 2  # the deadline passed on empty answers
    assert [moid for moid, _ in fake.called("RemoveSnapshot_Task")] == ["snapshot-1"]
    assert c.vms[0].removed is True


# --------------------------------------------------------------------------- quiesce cleanup
def consistency_lab(fake: FakeHost) -> Any:
    """One datastore (by NAA) with one running VM with tools, and the snapshot methods."""
    naa = "600144f0aabbccdd0000000000000001"
    vm = fake.add(vim.VirtualMachine("vm-1", fake), name="app01", runtime__powerState="poweredOn",
                  guest__toolsRunningStatus="guestToolsRunning")
    ds = fake.add(vim.Datastore("ds-1", fake), name="ds-lun0", vm=[vm], info=vim.host.VmfsDatastoreInfo(
        name="ds-lun0", vmfs=vim.host.VmfsVolume(extent=[vim.host.ScsiDisk.Partition(diskName=f"naa.{naa}",
                                                                                      partition=1)])))
    assert ds in fake.entities
    snapshot = vim.vm.Snapshot("snapshot-1", fake)
    fake.methods["CreateSnapshot_Task"] = lambda v, *args: fake.task("task-create", "running", snapshot)
    fake.methods["RemoveSnapshot_Task"] = lambda s, *args: fake.task("task-remove", "success")
    luns = {"sp/iscsi/lun0": SimpleNamespace(datastore=None, naa=f"naa.{naa}")}
    site = SimpleNamespace(vsphere={"esx-prod": object()})
    return SimpleNamespace(name="core", vsphere_production="esx-prod", datasets=list(luns), luns=luns, site=site)


def test_snapshots_are_removed_when_the_wait_for_them_fails(host):
    """The connection drops while the quiesced snapshots are being taken (a real host goes on
    taking them). The snapshot is crash-consistent for the ZFS snapshot, and the cleanup waits
    for the task and removes what it made: before, the snapshot stayed on the production VM."""
    from esxdr.replication.consistency import FALLBACK, quiesced

    fake, session = host
    group = consistency_lab(fake)
    drops = []

    def wait(version: str) -> Any:
        if not drops:
            drops.append(version)
            fake.props["task-create"]["info.state"] = "success"  # the host finished meanwhile
            raise ConnectionResetError(104, "Connection reset by peer")
        return "report"

    fake.on_wait = wait
    said: list[str] = []
    with quiesced(group.site, group, say=said.append, session=session) as c:
        assert c.level == "crash" and "Connection reset by peer" in c.reason
    assert drops
    assert [moid for moid, _ in fake.called("RemoveSnapshot_Task")] == ["snapshot-1"]
    vm = c.vms[0]
    assert vm.outcome == FALLBACK and vm.removed is True
    assert c.to_dict()["leftover_snapshots"] == []


# --------------------------------------------------------------------------- guest transfers through vCenter
def make_cert(tmp: Path, name: str) -> tuple[Path, Path, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    (tmp / f"{name}.crt").write_bytes(pem)
    (tmp / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    return tmp / f"{name}.crt", tmp / f"{name}.key", pem


@pytest.fixture
def esxi_https(tmp_path: Path) -> Iterator[tuple[int, bytes]]:
    """An ESXi host's guest file endpoint: https on loopback with its own certificate."""
    crt, key, pem = make_cert(tmp_path, "esx-a")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                raw, _ = srv.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(65536)
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nsysprep")
            except (ssl.SSLError, OSError):
                pass  # the client refused our certificate: what one test expects

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    yield port, pem
    stop.set()
    th.join()
    srv.close()


def vcenter_guest(fake: FakeHost, port: int, reported_cert: bytes) -> Any:
    """A GuestOps through a pinned vCenter whose transfer URL names the ESXi host."""
    from esxdr.site.model import VsphereEndpoint
    from esxdr.vsphere.guest import GuestCredentials, GuestOps, GuestVm
    from esxdr.vsphere.session import make_stub

    vc_pin = ":".join(["AB"] * 32)  # the vCenter's own certificate: not the host's
    ep = VsphereEndpoint(name="vc-dr", role="dr", url="https://vc.example.com/sdk", user="root", thumbprint=vc_pin)
    real = make_stub(ep)  # the TLS policy esxdr builds for the vCenter
    fake.scheme, fake.schemeArgs, fake.host = real.scheme, real.schemeArgs, real.host  # type: ignore[attr-defined]
    session = session_on(fake, ep.url, vc_pin)
    session.endpoint = ep
    host_ref = fake.add(vim.HostSystem("host-10", fake),
                        # xsd:byte[] as pyVmomi hands it over: signed bytes
                        config__certificate=[b - 256 if b > 127 else b for b in reported_cert])
    fake.add(vim.VirtualMachine("vm-1", fake), runtime__host=host_ref)
    fake.add(session.content.guestOperationsManager,
             processManager=vim.vm.guest.ProcessManager("pm", fake), fileManager=vim.vm.guest.FileManager("fm", fake))
    fake.methods["InitiateFileTransferFromGuest"] = lambda fm, vm, auth, path: \
        vim.vm.guest.FileManager.FileTransferInformation(
            url=f"https://127.0.0.1:{port}/guestFile?id=17&token=x", size=7,
            attributes=vim.vm.guest.FileManager.FileAttributes())
    return GuestOps(session, GuestVm(name="app01", moid="vm-1", guest_id="windows9Server64Guest"),
                    GuestCredentials("Administrator", "pw"))


def test_guest_download_through_vcenter_is_pinned_to_the_hosts_own_certificate(host, esxi_https):
    fake, _ = host
    port, pem = esxi_https
    ops = vcenter_guest(fake, port, pem)
    assert ops.download(r"C:\Windows\Temp\out.txt") == b"sysprep"
    assert ops._vm_host_pin() == ":".join(f"{b:02X}" for b in hashlib.sha256(ssl.PEM_cert_to_DER_cert(
        pem.decode())).digest())


def test_guest_download_refuses_a_host_certificate_the_vcenter_does_not_report(host, esxi_https, tmp_path):
    from esxdr.errors import VsphereError

    fake, _ = host
    port, _pem = esxi_https
    _, _, other = make_cert(tmp_path, "not-esx-a")
    ops = vcenter_guest(fake, port, other)
    with pytest.raises(VsphereError, match="TLS verification failed"):
        ops.download(r"C:\Windows\Temp\out.txt")


# --------------------------------------------------------------------------- planned shutdown
def test_a_host_that_stops_answering_is_no_reason_to_pull_the_plug(host):
    """Only the shutdown deadline leads to the hard power-off. A socket timeout reads "timed
    out" too, and was taken for the deadline: the guests were powered off mid-shutdown."""
    from esxdr.vsphere.recovery import shutdown_vms
    from esxdr.vsphere.session import VsphereUnreachable

    fake, session = host
    vm = fake.add(vim.VirtualMachine("vm-1", fake), runtime__powerState="poweredOn")
    fake.methods["ShutdownGuest"] = lambda v: None
    fake.methods["PowerOffVM_Task"] = lambda v: fake.task("task-off", "success")

    def wait(version: str) -> Any:
        raise TimeoutError("timed out")  # what the socket raises when the host does not answer

    fake.on_wait = wait
    with pytest.raises(VsphereUnreachable, match="waiting for guest shutdown of 1 VM"):
        shutdown_vms(session, [(vm, True)], timeout=60)
    assert fake.called("PowerOffVM_Task") == []
    # The deadline passing, on the other hand, is what the hard power-off is for.
    fake.on_wait = lambda version: None
    assert shutdown_vms(session, [(vm, True)], timeout=0.2) == {"vm-1": "powered off"}
    assert [moid for moid, _ in fake.called("PowerOffVM_Task")] == ["vm-1"]
