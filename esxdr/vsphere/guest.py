"""Guest-side vSphere calls: VM guest facts, customization events, guest operations.

- :func:`read_vms` — every VM's guest facts (guest OS id, power, tools) in ONE
  RetrievePropertiesEx over a VirtualMachine ContainerView.
- :func:`customization_events` — vCenter's Customization* events through an
  EventHistoryCollector (CreateCollectorForEvents → RewindCollector → ReadNextEvents
  pages → DestroyCollector). ``EventManager.QueryEvents`` is avoided: standalone ESXi
  (and the simulator's ESX model) answer it with NotImplemented, and it returns one page only.
- :class:`GuestOps` — GuestOperationsManager: StartProgramInGuest, then ListProcessesInGuest
  until the process has an end time (guest processes are not properties, so there is no
  WaitForUpdates for them: a short back-off poll is the only way), and file transfers
  from/to the guest over the HTTPS URL the host hands out. Its process and file managers
  are read with the PropertyCollector, never as lazy attributes.

TLS of the transfers: an ESXi host hands out ``https://*/…`` ("the host you are talking to"),
checked like the session (the stub's connection class: the pinned thumbprint or the CA). A
vCenter hands out the URL of the ESXi host that runs the VM, whose certificate is not the
vCenter's: with a pinned vCenter, the transfer is pinned to that host's own certificate as the
vCenter reports it (``HostSystem.config.certificate``, vSphere 6.0+), read over the already
verified session; with a CA, the host's certificate must chain to it and match its name.

``CustomizationFailed.reason`` exists only since vSphere 7.0 (vim 7.0) and a server leaves it
out of answers to older API versions, so esxdr, which speaks 6.5, never gets it: the event's
``fullFormattedMessage`` and its type (``CustomizationSysprepFailed``, …) say what failed, and
``logLocation`` (since 2.5) where the guest's log is.

Guest credentials are only ever handed to the guest-operation calls (NamePasswordAuthentication);
they are never logged.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlparse

from pyVmomi import vim, vmodl

from esxdr.errors import ConflictError, RemoteError, UsageError, VsphereError
from esxdr.vsphere.session import Session, is_loopback

PC = vmodl.query.PropertyCollector

VM_GUEST_PROPS = ["name", "config.guestId", "config.guestFullName", "runtime.powerState",
                  "guest.toolsRunningStatus", "guest.guestFamily", "datastore"]

STARTED = "CustomizationStartedEvent"
SUCCEEDED = "CustomizationSucceeded"
# CustomizationFailed and the subclasses vCenter actually posts (a type filter matches exact names).
FAILED = ("CustomizationFailed", "CustomizationSysprepFailed", "CustomizationUnknownFailure",
          "CustomizationNetworkSetupFailed", "CustomizationLinuxIdentityFailed")
EVENT_TYPES = [STARTED, SUCCEEDED, *FAILED]
PAGE = 100


@dataclass(frozen=True)
class GuestVm:
    name: str
    moid: str
    guest_id: str = ""
    guest_full_name: str = ""
    power_state: str = "poweredOff"
    tools_running: bool = False
    guest_family: str = ""
    datastores: tuple[str, ...] = ()  # datastore moids

    @property
    def windows(self) -> bool:
        return self.guest_id.lower().startswith("win") or self.guest_family == "windowsGuest"

    @property
    def family(self) -> str:
        """windows / linux / other, from the configured guest OS (the .vmx guestOS)."""
        if self.windows:
            return "windows"
        gid = self.guest_id.lower()
        if any(k in gid for k in ("linux", "rhel", "centos", "debian", "ubuntu", "sles", "oracle", "photon",
                                  "fedora", "suse", "rocky", "alma")) or self.guest_family == "linuxGuest":
            return "linux"
        return "other"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "moid": self.moid, "guest_id": self.guest_id, "family": self.family,
                "power_state": self.power_state, "tools_running": self.tools_running}


def read_vms(session: Session) -> dict[str, GuestVm]:
    """Every VM the endpoint sees, by name, from one property read."""
    from esxdr.vsphere.inventory import retrieve

    view = session.container_view("VirtualMachine")
    spec = PC.FilterSpec(
        objectSet=[PC.ObjectSpec(obj=view, skip=True, selectSet=[
            PC.TraversalSpec(name="view-vms", type=vim.view.ContainerView, path="view", skip=False)])],
        propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=VM_GUEST_PROPS)])
    out: dict[str, GuestVm] = {}
    for oc in retrieve(session, spec):
        p = {x.name: x.val for x in oc.propSet}
        vm = GuestVm(name=p.get("name", oc.obj._moId), moid=oc.obj._moId, guest_id=p.get("config.guestId") or "",
                     guest_full_name=p.get("config.guestFullName") or "",
                     power_state=str(p.get("runtime.powerState", "poweredOff")),
                     tools_running=p.get("guest.toolsRunningStatus") == "guestToolsRunning",
                     guest_family=p.get("guest.guestFamily") or "",
                     datastores=tuple(d._moId for d in (p.get("datastore") or ())))
        out[vm.name] = vm
    return out


def find_vm(session: Session, name: str) -> GuestVm:
    vms = read_vms(session)
    if name in vms:
        return vms[name]
    import difflib

    close = difflib.get_close_matches(name, list(vms), n=3)
    raise UsageError(f"no VM named {name!r} on {session.name}",
                     hint=("did you mean " + ", ".join(close) + "?") if close else
                     "list them with: esxdr guest check --json")


# --------------------------------------------------------------------------- events
@dataclass(frozen=True)
class CustomizationEvent:
    vm: str
    moid: str
    kind: str  # started / succeeded / failed
    type: str  # the vSphere event type
    key: int
    created: datetime | None
    message: str = ""
    reason: str = ""
    log_location: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"vm": self.vm, "kind": self.kind, "type": self.type, "key": self.key,
                "created": self.created.isoformat() if self.created else None, "message": self.message,
                "reason": self.reason, "log_location": self.log_location}


def _kind(type_name: str) -> str:
    if type_name == STARTED:
        return "started"
    if type_name == SUCCEEDED:
        return "succeeded"
    return "failed"


def customization_events(session: Session, *, since: datetime | None = None, max_events: int = 1000
                         ) -> list[CustomizationEvent]:
    """Customization events (oldest first) through an EventHistoryCollector."""
    em = session.content.eventManager
    spec = vim.event.EventFilterSpec(eventTypeId=EVENT_TYPES, maxCount=max_events)
    if since is not None:
        spec.time = vim.event.EventFilterSpec.ByTime(beginTime=since)
    out: list[CustomizationEvent] = []
    with session.errors("reading the guest customization events"):
        collector = em.CreateCollectorForEvents(spec)
        try:
            collector.RewindCollector()
            while True:
                page = collector.ReadNextEvents(PAGE) or []
                if not page:
                    break
                for e in page:
                    type_name = type(e).__name__.rsplit(".", 1)[-1]
                    vm_arg = getattr(e, "vm", None)
                    out.append(CustomizationEvent(
                        vm=vm_arg.name if vm_arg is not None else "", moid=vm_arg.vm._moId if vm_arg is not None
                        and vm_arg.vm is not None else "", kind=_kind(type_name), type=type_name,
                        key=int(e.key or 0), created=e.createdTime, message=e.fullFormattedMessage or "",
                        # reason: vim 7.0 only, absent at esxdr's 6.5 API (see the module doc)
                        reason=getattr(e, "reason", None) or "", log_location=getattr(e, "logLocation", None) or ""))
                if len(page) < PAGE:
                    break
        finally:
            try:
                collector.DestroyCollector()
            except Exception:  # noqa: BLE001 - collectors die with the session anyway
                pass
    out.sort(key=lambda ev: (ev.created or datetime.min, ev.key))
    return out


# --------------------------------------------------------------------------- guest operations
@dataclass(frozen=True)
class GuestCredentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never show the password, not even in a traceback's locals
        return f"GuestCredentials(user={self.user!r}, password='***')"


class GuestOps:
    """Guest operations on one VM (one ``GuestOps`` per VM)."""

    def __init__(self, session: Session, vm: GuestVm, creds: GuestCredentials, *, poll: float = 0.1):
        self.session = session
        self.vm = vm
        self.ref = session.ref("VirtualMachine", vm.moid)
        self._auth = vim.vm.guest.NamePasswordAuthentication(username=creds.user, password=creds.password,
                                                             interactiveSession=False)
        self.poll = poll
        self._pm: Any = None
        self._fm: Any = None
        self._host_pin: str | None = None

    def _managers(self) -> tuple[Any, Any]:
        """The process and file managers: ONE RetrievePropertiesEx of the GuestOperationsManager
        (``gom.processManager`` would be a lazy read each, a ``Fetch`` on pyVmomi >= 8.0.1)."""
        if self._pm is None:
            gom = self.session.content.guestOperationsManager  # ServiceContent: already read at login
            if gom is None:
                raise VsphereError(f"{self.session.name} has no guest operations manager")
            from esxdr.vsphere.inventory import retrieve

            spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=gom, skip=False)],
                                 propSet=[PC.PropertySpec(type=vim.vm.guest.GuestOperationsManager,
                                                          pathSet=["processManager", "fileManager"])])
            props = {p.name: p.val for oc in retrieve(self.session, spec) for p in oc.propSet}
            if props.get("processManager") is None or props.get("fileManager") is None:
                raise VsphereError(f"{self.session.name}: the guest operations manager has no process or file "
                                   "manager", hint="guest operations need ESXi or vCenter 5.0 or later")
            self._pm, self._fm = props["processManager"], props["fileManager"]
        return self._pm, self._fm

    def _errors(self, doing: str):
        return self.session.errors(f"{doing} in the guest of {self.vm.name}", hints={
            "InvalidGuestLogin": "the guest refused the credentials (ESXDR_GUEST_USER / ESXDR_GUEST_PASSWORD "
                                 "or ESXDR_GUEST_PASSWORD_FILE)",
            "GuestOperationsUnavailable": "VMware Tools are not running in the guest",
        })

    def start(self, program: str, arguments: str) -> int:
        pm, _ = self._managers()
        spec = vim.vm.guest.ProcessManager.ProgramSpec(programPath=program, arguments=arguments)
        with self._errors(f"starting {program}"):
            return int(pm.StartProgramInGuest(self.ref, self._auth, spec))

    def wait(self, pid: int, *, timeout: float = 120.0, what: str = "a guest process") -> int:
        """The exit code of ``pid`` once it has ended."""
        pm, _ = self._managers()
        deadline = time.monotonic() + timeout
        delay = self.poll
        while True:
            with self._errors(f"waiting for {what}"):
                infos = pm.ListProcessesInGuest(self.ref, self._auth, [pid]) or []
            info = next((i for i in infos if int(i.pid) == pid), None)
            if info is not None and info.endTime is not None:
                return int(info.exitCode or 0)
            if time.monotonic() > deadline:
                raise RemoteError(f"{what} (pid {pid}) in {self.vm.name} did not end within {timeout:.0f}s",
                                  hint="look at the guest: the process may wait for input")
            time.sleep(delay)
            delay = min(delay * 2, 2.0)

    def run(self, program: str, arguments: str, *, timeout: float = 120.0) -> int:
        return self.wait(self.start(program, arguments), timeout=timeout, what=program)

    # -- files ------------------------------------------------------------------------
    def _vm_host_pin(self) -> str:
        """SHA-256 thumbprint of the certificate of the ESXi host running the VM, as the vCenter
        reports it (``runtime.host``, then that host's ``config.certificate``): two property
        reads over the session whose own certificate was verified."""
        if self._host_pin is None:
            from esxdr.vsphere.inventory import retrieve

            vm_spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=self.ref, skip=False)],
                                    propSet=[PC.PropertySpec(type=vim.VirtualMachine, pathSet=["runtime.host"])])
            host = next((p.val for oc in retrieve(self.session, vm_spec) for p in oc.propSet
                         if p.name == "runtime.host"), None)
            cert = None
            if host is not None:
                host_spec = PC.FilterSpec(objectSet=[PC.ObjectSpec(obj=host, skip=False)],
                                          propSet=[PC.PropertySpec(type=vim.HostSystem,
                                                                   pathSet=["config.certificate"])])
                cert = next((p.val for oc in retrieve(self.session, host_spec) for p in oc.propSet
                             if p.name == "config.certificate"), None)
            if not cert:
                raise VsphereError(f"{self.session.name} does not report the certificate of the host running "
                                   f"{self.vm.name}: the guest file transfer to that host cannot be verified",
                                   hint="give the vCenter endpoint ca_file: (the CA that signs the hosts' "
                                        "certificates) instead of a pinned thumbprint")
            self._host_pin = certificate_thumbprint(cert)
        return self._host_pin

    def _connection(self, url: str) -> tuple[Any, str]:
        """(HTTP connection, request path) for a transfer URL, with the right TLS check."""
        stub = self.session.stub
        u = urlparse(url)
        path = u.path + (f"?{u.query}" if u.query else "")
        session_host = (urlparse(self.session.endpoint.url).hostname or "").lower()
        # The host hands out https://*/… : "*" means "the host you are talking to".
        if u.hostname in (None, "*", session_host) or (u.scheme == "http" and is_loopback(u.hostname or "")):
            host = stub.host if u.hostname in (None, "*") else u.netloc
            return stub.scheme(host, **stub.schemeArgs), path
        # A vCenter's URL names the ESXi host itself: its certificate, not the vCenter's.
        from esxdr.vsphere.session import SOCKET_TIMEOUT_S, _PinnedHTTPSConnection

        if u.scheme != "https":
            raise VsphereError(f"{self.session.name} handed out a plain http transfer URL for {u.hostname}",
                               hint="guest file transfers to a remote host must use https")
        timeout = stub.schemeArgs.get("timeout", SOCKET_TIMEOUT_S)
        if self.session.endpoint.thumbprint:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the host's own pin, checked on connect, is the verification
            cls = type("HostPinnedHTTPSConnection", (_PinnedHTTPSConnection,), {"pin": self._vm_host_pin()})
            return cls(u.hostname or "", u.port or 443, timeout=timeout, context=ctx), path
        ep = self.session.endpoint
        ctx = ssl.create_default_context(cafile=ep.ca_file) if ep.ca_file else ssl.create_default_context()
        return http.client.HTTPSConnection(u.hostname or "", u.port or 443, timeout=timeout, context=ctx), path

    def _http(self, method: str, url: str, body: bytes | None = None) -> bytes:
        doing = f"{'downloading from' if method == 'GET' else 'uploading to'} the guest of {self.vm.name}"
        try:
            conn, path = self._connection(url)
            try:
                headers = {"Content-Length": str(len(body))} if body is not None else {}
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            finally:
                conn.close()
        except (OSError, http.client.HTTPException) as e:
            from esxdr.vsphere.session import translate

            raise translate(e, doing, endpoint=self.session.name) from e
        if resp.status >= 300:
            raise VsphereError(f"{doing}: HTTP {resp.status} {resp.reason}",
                               hint="the transfer URL expired or the guest refused the file")
        return data

    def download(self, guest_path: str) -> bytes:
        _, fm = self._managers()
        with self._errors(f"reading {guest_path}"):
            info = fm.InitiateFileTransferFromGuest(self.ref, self._auth, guest_path)
        return self._http("GET", info.url)

    def upload(self, guest_path: str, data: bytes, *, overwrite: bool = True) -> None:
        _, fm = self._managers()
        attrs = vim.vm.guest.FileManager.WindowsFileAttributes() if self.vm.windows \
            else vim.vm.guest.FileManager.PosixFileAttributes()
        with self._errors(f"writing {guest_path}"):
            url = fm.InitiateFileTransferToGuest(self.ref, self._auth, guest_path, attrs, len(data), overwrite)
        self._http("PUT", url, data)

    def delete(self, guest_path: str) -> None:
        _, fm = self._managers()
        try:
            with self._errors(f"deleting {guest_path}"):
                fm.DeleteFileInGuest(self.ref, self._auth, guest_path)
        except VsphereError:
            pass  # a leftover temp file is not worth failing the command for

    def cmd(self, command: str, *, out_file: str, timeout: float = 120.0) -> tuple[int, str]:
        """``cmd.exe /c COMMAND > out_file 2>&1``; returns (exit code, output). Windows only."""
        code = self.run(r"C:\Windows\System32\cmd.exe", f'/c {command} > "{out_file}" 2>&1', timeout=timeout)
        try:
            raw = self.download(out_file)
        finally:
            self.delete(out_file)
        return code, decode_output(raw)

    def reboot(self) -> None:
        with self.session.errors(f"rebooting the guest of {self.vm.name}"):
            self.ref.RebootGuest()


def certificate_thumbprint(cert: Any) -> str:
    """SHA-256 thumbprint (``AA:BB:…``) of a certificate given as PEM or DER, in bytes or as the
    signed bytes of a vSphere ``xsd:byte[]`` (how pyVmomi hands ``config.certificate`` over)."""
    raw = cert if isinstance(cert, (bytes, bytearray)) else bytes(b & 0xFF for b in cert)
    if raw.lstrip().startswith(b"-----BEGIN"):
        raw = ssl.PEM_cert_to_DER_cert(raw.decode("ascii"))
    return ":".join(f"{b:02X}" for b in hashlib.sha256(raw).digest())


def decode_output(raw: bytes) -> str:
    """Console output redirected to a file: UTF-16 (with BOM) from some tools, else OEM/UTF-8."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("cp437", errors="replace")


def require_guest_ops(vm: GuestVm) -> None:
    """Refuse what cannot work, before touching the guest (exit 2 non-Windows, 3 tools not running)."""
    if not vm.windows:
        raise UsageError(f"{vm.name} runs {vm.guest_full_name or vm.guest_id or 'an unknown guest OS'}, not Windows: "
                         "the sysprepDecrypter boot loop only happens on Windows guests",
                         hint="nothing to fix here; check the VM's console if it does not boot")
    if vm.power_state != "poweredOn":
        raise ConflictError(f"{vm.name} is {vm.power_state}: guest operations need it running",
                            hint="power it on (it may loop through sysprepDecrypter at boot), then rerun")
    if not vm.tools_running:
        raise ConflictError(f"VMware Tools are not running in {vm.name}: guest operations are not possible",
                            hint="wait for the guest to finish booting (tools start late during a boot loop), "
                                 "or fix BootExecute from the recovery console: reg load + reg add")
