"""A vSphere session: connect, verify TLS, count requests, re-login, translate faults.

Everything that crosses into pyVmomi goes through a :class:`Session`, so this is where
foreign exceptions become esxdr errors (:func:`translate`) and where SOAP requests are
counted (the benchmarks and the request budget in docs/vsphere.md rely on it).

Design choices, and why:

- The stub is a ``SoapStubAdapter`` subclass, not ``SmartConnect``: SmartConnect spends an
  extra HTTP round trip on version negotiation and hides the stub we want to count on.
  We speak the vSphere 6.5 API (``vim.version.version11``), which every ESXi and vCenter
  since 6.5 accepts.
- Every SOAP call (methods and lazy property reads alike, pyVmomi turns both into
  ``InvokeMethod``) is counted. A call answered with ``NotAuthenticated`` (an expired or
  restarted session) logs in again once and repeats the call, so long runbooks survive
  host-agent restarts and idle timeouts.
- Secrets: the password comes from the environment or a 0600 file named by the site file,
  never from argv, and it is only ever handed to ``Login``.
- TLS: a pinned SHA-256 thumbprint (checked by pyVmomi against the peer's DER certificate),
  a CA bundle, or the system CAs. Plain http is accepted for loopback (the lab's esxsim) only.
- Socket timeouts per call, not one for all: an ordinary call that gets no answer within
  ``SOCKET_TIMEOUT_S`` means the host is unreachable, but a real host legitimately holds some
  calls open much longer. ``WaitForUpdatesEx`` is held until something changes or
  ``maxWaitSeconds`` passes, so waits ask for :func:`long_poll_seconds` of the socket timeout
  (derived from it, always below it) and loop up to their own deadline. The synchronous storage
  calls (``RescanAllHba``, ``RescanHba``, ``RescanVmfs``, resolving unresolved volumes) last as
  long as the host's scan, minutes on hosts with many LUNs or a dead path, so they get
  ``SLOW_CALL_TIMEOUT_S`` (:data:`SLOW_CALLS`).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import socket
import ssl
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlparse

from pyVmomi import SoapStubAdapter, vim, vmodl

from esxdr.errors import EsxdrError, UsageError, VsphereError

API_VERSION = "vim.version.version11"  # vSphere 6.5: the oldest API esxdr speaks

# An ordinary call (a property read, a reconfiguration) unanswered for this long: the host is gone.
SOCKET_TIMEOUT_S = 30.0


def long_poll_seconds(socket_timeout: float) -> int:
    """``maxWaitSeconds`` for a WaitForUpdatesEx on a connection with ``socket_timeout``.

    A real host holds the call open that long when nothing changes, and answers a little
    after it (its own latency, a large update set on the wire), so the call must end well
    before the socket gives up: two thirds of it (20 s of 30), never less than one second.
    """
    return max(1, int(socket_timeout * 2 / 3))


LONG_POLL_S = long_poll_seconds(SOCKET_TIMEOUT_S)

# Synchronous calls a real host holds open for as long as its storage scan takes: every path of
# every adapter is probed (iSCSI logins, SCSI inquiries; a dead path waits out its own timeouts),
# minutes on hosts with many LUNs. Cut at the ordinary socket timeout, a rescan that is merely slow
# would look like an unreachable host, and the run would stop half-way.
SLOW_CALL_TIMEOUT_S = 900.0
SLOW_CALLS: dict[str, float] = {
    "RescanAllHba": SLOW_CALL_TIMEOUT_S,
    "RescanHba": SLOW_CALL_TIMEOUT_S,
    "RescanVmfs": SLOW_CALL_TIMEOUT_S,
    "RefreshStorageSystem": SLOW_CALL_TIMEOUT_S,
    "QueryUnresolvedVmfsVolumes": SLOW_CALL_TIMEOUT_S,
    "QueryUnresolvedVmfsVolume": SLOW_CALL_TIMEOUT_S,
    "ResolveMultipleUnresolvedVmfsVolumes": SLOW_CALL_TIMEOUT_S,
}


class VsphereUnreachable(VsphereError):
    """The endpoint did not answer (connection refused/reset, timeout): worth retrying."""

    transient = True


# --------------------------------------------------------------------------- secrets, TLS
def read_password(endpoint: Any) -> str:
    """The endpoint's password from ``password_env`` or ``password_file`` (mode 0600/0400)."""
    if endpoint.password_env:
        value = os.environ.get(endpoint.password_env)
        if value is None:
            raise UsageError(f"vsphere.{endpoint.name}: environment variable {endpoint.password_env} is not set",
                             hint=f"export {endpoint.password_env}=… (the password of {endpoint.user})")
        return value
    if endpoint.password_file:
        path = endpoint.password_file
        try:
            st = os.stat(path)
        except OSError as e:
            raise UsageError(f"vsphere.{endpoint.name}: cannot read password file {path}: {e.strerror}") from e
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(f"vsphere.{endpoint.name}: password file {path} is readable by others "
                             f"(mode {stat.S_IMODE(st.st_mode):04o})", hint=f"chmod 600 {path}")
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    raise UsageError(f"vsphere.{endpoint.name}: no password_env or password_file",
                     hint="name an environment variable (password_env) or a 0600 file (password_file)")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def normalize_thumbprint(text: str) -> str:
    """``AA:BB:…`` upper case with colons; SHA-1 (20 bytes) is refused."""
    raw = text.replace(":", "").replace(" ", "").strip().lower()
    try:
        digest = bytes.fromhex(raw)
    except ValueError:
        raise UsageError(f"thumbprint {text!r} is not hex") from None
    if len(digest) != 32:
        raise UsageError(f"thumbprint {text!r} has {len(digest)} bytes; esxdr pins SHA-256 (32 bytes)",
                         hint="get it with: esxdr host thumbprint HOST")
    return ":".join(f"{b:02X}" for b in digest)


def fetch_thumbprint(host: str, port: int = 443, timeout: float = 10.0) -> str:
    """The SHA-256 thumbprint of the certificate a TLS server presents (for pinning).

    The certificate is deliberately not verified here: the point is to show the user what to
    pin, to be compared out of band (the ESXi DCUI or ``openssl x509 -fingerprint -sha256``).
    """
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock, \
                ctx.wrap_socket(sock, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
    except (OSError, ssl.SSLError) as e:
        raise VsphereUnreachable(f"cannot read the TLS certificate of {host}:{port}: {e}",
                                 hint="check the address and port (ESXi and vCenter serve https on 443)") from e
    if not der:
        raise VsphereError(f"{host}:{port} presented no certificate")
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


# --------------------------------------------------------------------------- the counting stub
class CountingStub(SoapStubAdapter):
    """SoapStubAdapter that counts requests, re-logs in once on NotAuthenticated, and gives each
    call its own socket timeout (:data:`SLOW_CALLS`, else ``socket_timeout``)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.requests = 0
        self.by_method: Counter[str] = Counter()
        self.relogin: Any = None  # set by Session once logged in
        self.relogins = 0
        self._lock = threading.Lock()
        self.socket_timeout = float(kwargs.get("httpConnectionTimeout") or SOCKET_TIMEOUT_S)
        # The timeout of the call this thread is making; read by GetConnection, which pyVmomi
        # calls inside InvokeMethod on the same thread (parallel rescans each have their own).
        self._call = threading.local()

    def _count(self, name: str) -> None:
        with self._lock:
            self.requests += 1
            self.by_method[name] += 1

    def call_timeout(self, method: str) -> float:
        """The socket timeout of one call of ``method``: long for the slow storage calls."""
        return max(self.socket_timeout, SLOW_CALLS.get(method, 0.0))

    def GetConnection(self):  # noqa: N802 - pyVmomi's name
        conn = super().GetConnection()
        # Pooled connections keep the timeout of their last call: set this call's on every one.
        timeout = getattr(self._call, "timeout", None) or self.socket_timeout
        conn.timeout = timeout
        sock = getattr(conn, "sock", None)
        if sock is not None:
            sock.settimeout(timeout)
        return conn

    def InvokeMethod(self, mo, info, args, outerStub=None):  # noqa: N802 - pyVmomi's name
        name = info.wsdlName
        self._call.timeout = self.call_timeout(name)
        if name == "Fetch" and args:
            name = f"Fetch({args[0]})"
        self._count(name)
        try:
            return super().InvokeMethod(mo, info, args, outerStub)
        except vim.fault.NotAuthenticated:
            if self.relogin is None or info.wsdlName in ("Login", "Logout", "LoginExtensionByCertificate"):
                raise
            # The session expired (idle timeout, hostd restart): log in again and repeat once.
            self.relogin()
            self.relogins += 1
            self._count(name)
            self._call.timeout = self.call_timeout(info.wsdlName)  # Login set its own
            return super().InvokeMethod(mo, info, args, outerStub)


# --------------------------------------------------------------------------- fault translation
_NAMES = {
    "InvalidLogin": "the login was refused",
    "NoPermission": "permission denied",
    "NotAuthenticated": "the session is not authenticated",
}


def fault_name(exc: BaseException) -> str:
    return type(exc).__name__.rsplit(".", 1)[-1]


def fault_message(exc: BaseException) -> str:
    msg = getattr(exc, "msg", None) or ""
    if not msg and getattr(exc, "faultMessage", None):
        msg = "; ".join(m.message for m in getattr(exc, "faultMessage", ()) if getattr(m, "message", None))
    # str() of a pyVmomi fault dumps the whole data object: never show that to a user.
    return msg or fault_name(exc)


def translate(exc: BaseException, doing: str, hints: dict[str, str] | None = None,
              endpoint: str = "") -> EsxdrError:
    """Turn a pyVmomi fault or a socket error into an esxdr error naming object, cause, next step.

    ``hints`` maps a fault name (``ResourceInUse``) to the explanation the caller can give
    from the state it observed (e.g. which vSwitch holds an uplink).
    """
    if isinstance(exc, EsxdrError):
        return exc
    hints = hints or {}
    name = fault_name(exc)
    where = f" on {endpoint}" if endpoint else ""
    if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError, http.client.HTTPException)) or \
            (isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError)):
        return VsphereUnreachable(f"{doing}{where}: {exc}",
                                  hint="check that the endpoint URL is right and the host is up")
    if isinstance(exc, ssl.SSLError) or "ThumbprintMismatch" in name:
        return VsphereError(f"{doing}{where}: TLS verification failed: {exc}",
                            hint="pin the certificate with `thumbprint:` (esxdr host thumbprint HOST) "
                                 "or name the CA with `ca_file:`")
    msg = fault_message(exc)
    detail = hints.get(name)
    text = f"{doing}{where}: {name}: {detail or msg}"
    if name == "InvalidLogin":
        return VsphereError(text, hint="check the user and the password (password_env / password_file)")
    if name == "NoPermission":
        return VsphereError(text, hint="give the esxdr user the privilege named above, or use an admin account")
    if name in ("IscsiFaultVnicHasMultipleUplinks", "IscsiFaultVnicHasNoUplinks"):
        return VsphereError(text, hint=detail or "give the VMkernel NIC's port group exactly one active uplink "
                                                 "and no standby uplink (active_uplinks: [vmnicN], standby_uplinks: [])")
    if name == "ResourceInUse":
        return VsphereError(text, hint=detail or "free the resource first (see the message), or choose another")
    if name == "AlreadyExists":
        return VsphereError(text, hint="someone else created it meanwhile: run `esxdr host plan` again")
    if name == "NotFound":
        return VsphereError(text, hint="the object vanished or was never there: run `esxdr host plan` again")
    if isinstance(exc, vmodl.MethodFault):
        return VsphereError(text, hint=detail)
    return VsphereError(f"{doing}{where}: {type(exc).__name__}: {exc}")


@contextmanager
def vsphere_errors(doing: str, hints: dict[str, str] | None = None, endpoint: str = "") -> Iterator[None]:
    """``with vsphere_errors("adding vSwitch1 on esx-dr"): ...`` — the translation boundary."""
    try:
        yield
    except EsxdrError:
        raise
    except (vmodl.MethodFault, OSError, http.client.HTTPException, ssl.SSLError) as e:
        raise translate(e, doing, hints, endpoint) from e
    except Exception as e:  # pyVmomi raises plain Exception for thumbprint mismatches and bad XML
        if "thumbprint" in str(e).lower():
            raise translate(ssl.SSLError(str(e)), doing, hints, endpoint) from e
        raise


# --------------------------------------------------------------------------- the session
class Session:
    """A logged-in vSphere session. Use as a context manager (logs out at the end)."""

    def __init__(self, endpoint: Any, stub: CountingStub, password: str):
        self.endpoint = endpoint
        self.name = endpoint.name
        self.stub = stub
        self._password = password
        self.si = vim.ServiceInstance("ServiceInstance", stub)
        self.content: Any = None
        self._keepalive: threading.Thread | None = None
        self._stop = threading.Event()
        self._view_cache: dict[str, Any] = {}

    # -- lifecycle ----------------------------------------------------------
    def login(self) -> None:
        with vsphere_errors(f"logging in to {self.endpoint.url} as {self.endpoint.user}", endpoint=self.name):
            if self.content is None:
                self.content = self.si.RetrieveContent()
            self.content.sessionManager.Login(self.endpoint.user, self._password, None)
        self.stub.relogin = self._relogin

    def _relogin(self) -> None:
        self.stub.relogin = None  # no recursion if Login itself fails
        self._view_cache.clear()  # views die with the old session
        try:
            self.content.sessionManager.Login(self.endpoint.user, self._password, None)
        finally:
            self.stub.relogin = self._relogin

    def close(self) -> None:
        self._stop.set()
        if self.content is None:
            return
        self.stub.relogin = None
        try:
            self.content.sessionManager.Logout()
        except Exception:  # noqa: BLE001 - logging out of a dead session is not an error
            pass
        self.content = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start_keepalive(self, interval: float = 300.0) -> None:
        """Ping (CurrentTime) every ``interval`` s so a long wait does not hit the idle timeout."""
        if self._keepalive is not None:
            return

        def run() -> None:
            while not self._stop.wait(interval):
                try:
                    self.si.CurrentTime()
                except Exception:  # noqa: BLE001 - the next real call re-logs in or reports
                    pass

        self._keepalive = threading.Thread(target=run, name=f"keepalive-{self.name}", daemon=True)
        self._keepalive.start()

    # -- counters -----------------------------------------------------------
    @property
    def requests(self) -> int:
        return self.stub.requests

    @property
    def long_poll_s(self) -> int:
        """``maxWaitSeconds`` for this session's WaitForUpdatesEx (below its socket timeout)."""
        return long_poll_seconds(self.stub.socket_timeout)

    def by_method(self) -> dict[str, int]:
        return dict(self.stub.by_method)

    # -- helpers ------------------------------------------------------------
    def errors(self, doing: str, hints: dict[str, str] | None = None):  # -> context manager
        return vsphere_errors(doing, hints, endpoint=self.name)

    def ref(self, kind: str, moid: str) -> Any:
        """A managed object by type name and id (as stored in observed state), bound to this session."""
        cls = getattr(vim, kind) if "." not in kind else _vim_type(kind)
        return cls(moid, self.stub)

    def drop_views(self) -> None:
        self._view_cache.clear()

    def container_view(self, kind: str = "HostSystem") -> Any:
        """A ContainerView over every object of ``kind``, created once per session and reused."""
        view = self._view_cache.get(kind)
        if view is None:
            with self.errors(f"creating a view of {kind}"):
                view = self.content.viewManager.CreateContainerView(
                    self.content.rootFolder, [getattr(vim, kind)], True)
            self._view_cache[kind] = view
        return view


def _vim_type(dotted: str) -> Any:
    obj: Any = vim
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def make_stub(endpoint: Any, timeout: float = SOCKET_TIMEOUT_S) -> CountingStub:
    u = urlparse(endpoint.url)
    host = u.hostname or ""
    if u.scheme not in ("http", "https") or not host:
        raise UsageError(f"vsphere.{endpoint.name}: bad url {endpoint.url!r}", hint="e.g. https://esxi-dr.example.com/sdk")
    path = u.path if u.path not in ("", "/") else "/sdk"
    kwargs: dict[str, Any] = {"host": host, "path": path, "version": API_VERSION,
                              "httpConnectionTimeout": timeout, "connectionPoolTimeout": -1}
    if u.scheme == "http":
        if not is_loopback(host):
            raise UsageError(f"vsphere.{endpoint.name}: plain http to {host} refused",
                             hint="use https with a pinned thumbprint or ca_file; http is for the loopback lab only")
        kwargs["port"] = -(u.port or 80)  # pyVmomi: a negative port means plain http
    else:
        kwargs["port"] = u.port or 443
        pin = normalize_thumbprint(endpoint.thumbprint) if endpoint.thumbprint else None
        if pin:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the pin checked on every connection is the verification
        else:
            ctx = ssl.create_default_context(cafile=endpoint.ca_file) if endpoint.ca_file \
                else ssl.create_default_context()
        kwargs["sslContext"] = ctx
        stub = CountingStub(**kwargs)
        if pin:
            # pyVmomi's own thumbprint check only runs when CA verification fails, so a CA-signed
            # certificate would bypass the pin: check it ourselves on every new connection.
            stub.scheme = type("PinnedHTTPSConnection", (_PinnedHTTPSConnection,), {"pin": pin})
        return stub
    return CountingStub(**kwargs)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    pin = ""

    def connect(self) -> None:
        super().connect()
        der = self.sock.getpeercert(binary_form=True) or b""  # type: ignore[union-attr]
        got = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
        if got != self.pin:
            self.close()
            raise ssl.SSLError(f"the certificate's SHA-256 thumbprint {got} does not match the pinned {self.pin}")


def connect(endpoint: Any, password: str | None = None, timeout: float = SOCKET_TIMEOUT_S) -> Session:
    """Log in to a :class:`~esxdr.site.model.VsphereEndpoint`. ``password`` overrides the site's
    reference (tests and the lab); otherwise it comes from ``password_env``/``password_file``."""
    pw = password if password is not None else read_password(endpoint)
    session = Session(endpoint, make_stub(endpoint, timeout), pw)
    session.login()
    return session


def retry_transient(fn: Any, attempts: int = 3, delay: float = 1.0) -> Any:
    """Call ``fn()`` again after a transient failure (connection reset), up to ``attempts`` times."""
    for i in range(attempts):
        try:
            return fn()
        except VsphereUnreachable:
            if i == attempts - 1:
                raise
            time.sleep(delay * (2 ** i))
    return None
