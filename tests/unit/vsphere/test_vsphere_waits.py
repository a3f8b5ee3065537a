"""Socket timeouts against a host that holds calls open, as a real ESXi does.

The host here is a small SOAP server on loopback, talked to by esxdr's own pyVmomi stub
(:func:`esxdr.vsphere.session.make_stub`) over real HTTP, so the socket timeout that pyVmomi
applies is the one that fires. It behaves as the vSphere API reference says a host does:

- ``WaitForUpdatesEx`` is held open until a watched property changes or ``maxWaitSeconds``
  passes (then an empty answer: pyVmomi returns None);
- ``RescanHba`` / ``RescanAllHba`` are synchronous: the answer comes when the scan is over.

The socket timeout is scaled down (1.5 s instead of 30 s) so that a wait of "no change for
longer than the socket timeout" takes seconds, not minutes.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest
from pyVmomi import vim, vmodl

from esxdr.model.host import HostState, ObservedIscsi
from esxdr.site.model import VsphereEndpoint
from esxdr.vsphere import storage
from esxdr.vsphere.session import (
    LONG_POLL_S,
    SLOW_CALLS,
    SOCKET_TIMEOUT_S,
    Session,
    VsphereUnreachable,
    long_poll_seconds,
    make_stub,
)
from esxdr.vsphere.tasks import wait_task

SOCKET_S = 1.5  # the stub's socket timeout in these tests
ENVELOPE = ('<?xml version="1.0" encoding="UTF-8"?>\n<soapenv:Envelope '
            'xmlns:soapenc="http://schemas.xmlsoap.org/soap/encoding/" '
            'xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns:xsd="http://www.w3.org/2001/XMLSchema" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
            '<soapenv:Body>{}</soapenv:Body>\n</soapenv:Envelope>')


@dataclass
class Host:
    """What the fake host does and saw. ``task_done_at``: seconds after the first request when the
    task's info.state turns success; ``hold``: method -> seconds it holds the call open."""

    task_done_at: float = 0.0
    hold: dict[str, float] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)  # (method, the request body)
    started: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def since(self) -> float:
        return time.monotonic() - self.started

    def answer(self, method: str, body: str) -> str:
        with self.lock:
            if not self.calls:
                self.started = time.monotonic()
            self.calls.append((method, body))
        time.sleep(self.hold.get(method, 0.0))
        if method == "CreateFilter":
            return '<CreateFilterResponse xmlns="urn:vim25"><returnval type="PropertyFilter">filter-1</returnval>' \
                   '</CreateFilterResponse>'
        if method == "WaitForUpdatesEx":
            return self.wait_for_updates(body)
        return f'<{method}Response xmlns="urn:vim25"></{method}Response>'

    def wait_for_updates(self, body: str) -> str:
        version = re.search(r"<version[^>]*>([^<]*)</version>", body)
        max_wait = re.search(r"<maxWaitSeconds>(\d+)</maxWaitSeconds>", body)
        if version is None or not version.group(1):
            return self.update("1", "running")  # the first call: the current state at once
        deadline = time.monotonic() + (int(max_wait.group(1)) if max_wait else 3600)
        while time.monotonic() < deadline:  # held open: nothing changed yet
            if self.since() >= self.task_done_at:
                return self.update("2", "success")
            time.sleep(0.02)
        return '<WaitForUpdatesExResponse xmlns="urn:vim25"></WaitForUpdatesExResponse>'  # maxWaitSeconds passed

    @staticmethod
    def update(version: str, state: str) -> str:
        return ('<WaitForUpdatesExResponse xmlns="urn:vim25"><returnval>'
                f'<version>{version}</version><filterSet><filter type="PropertyFilter">filter-1</filter>'
                '<objectSet><kind>enter</kind><obj type="Task">task-1</obj>'
                f'<changeSet><name>info.state</name><op>assign</op><val xsi:type="TaskInfoState">{state}</val>'
                '</changeSet></objectSet></filterSet></returnval></WaitForUpdatesExResponse>')

    def methods(self) -> list[str]:
        return [m for m, _ in self.calls]


@pytest.fixture
def host() -> Iterator[tuple[Host, Session]]:
    h = Host()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"])).decode()
            method = re.search(r"<soapenv:Body><(\w+)", body).group(1)  # type: ignore[union-attr]
            try:
                out = ENVELOPE.format(h.answer(method, body)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/xml; charset=utf-8")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its socket timed out): what some tests expect

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    ep = VsphereEndpoint(name="esx-test", role="dr", url=f"http://127.0.0.1:{server.server_address[1]}/sdk",
                         user="root")
    stub = make_stub(ep, timeout=SOCKET_S)
    session = Session(ep, stub, "unused")
    session.content = SimpleNamespace(propertyCollector=vmodl.query.PropertyCollector("propertyCollector", stub))
    try:
        yield h, session
    finally:
        server.shutdown()
        server.server_close()


def test_long_poll_stays_below_the_socket_timeout():
    # The default pair (20 s of 30), and any socket timeout a caller may choose: a third of it is
    # left for the host's latency. maxWaitSeconds is whole seconds, at least 1.
    assert LONG_POLL_S < SOCKET_TIMEOUT_S
    for socket_s in (1.5, 2, 5, 30, 60, 300):
        assert 1 <= long_poll_seconds(socket_s) <= socket_s * 2 / 3


def test_a_wait_outlasts_the_socket_timeout_when_nothing_changes(host):
    """The task ends 3 s in, twice than the 1.5 s socket timeout with no change in between:
    a guest heartbeat minutes after power-on, a long quiesce. esxdr asked for maxWaitSeconds
    up to 60, the host held the call that long and the socket gave up (VsphereUnreachable)."""
    h, session = host
    h.task_done_at = 3.0
    started = time.monotonic()
    assert wait_task(session, vim.Task("task-1", session.stub), timeout=20, what="a slow task") is None
    assert time.monotonic() - started >= 2.5
    waits = [int(re.search(r"<maxWaitSeconds>(\d+)<", b).group(1))  # type: ignore[union-attr]
             for m, b in h.calls if m == "WaitForUpdatesEx"]
    assert len(waits) >= 3, waits  # held open, answered empty, asked again until the change
    assert all(w < SOCKET_S for w in waits), waits
    assert h.methods()[0] == "CreateFilter" and h.methods()[-1] == "DestroyPropertyFilter"


def test_a_wait_still_ends_at_its_own_deadline(host):
    h, session = host
    h.task_done_at = 3600.0
    from esxdr.vsphere.tasks import WaitTimeout

    started = time.monotonic()
    with pytest.raises(WaitTimeout, match="timed out after 2s waiting for a stuck task"):
        wait_task(session, vim.Task("task-1", session.stub), timeout=2, what="a stuck task")
    # The last long poll is cut to what is left (rounded up to a whole second), plus slack for a busy machine.
    assert time.monotonic() - started < 2 + 1 + 1


def dr_host(iscsi: ObservedIscsi | None) -> HostState:
    return HostState(name="esx-test", moid="host-1", refs={"storageSystem": "storageSystem"}, iscsi=iscsi)


def test_a_slow_rescan_is_not_taken_for_an_unreachable_host(host):
    """A rescan is synchronous: a real host answers when its scan is over, minutes on hosts
    with many LUNs. Under the ordinary socket timeout it raised VsphereUnreachable."""
    h, session = host
    h.hold = {"RescanHba": 2.0, "RescanAllHba": 2.0}
    storage.rescan(session, dr_host(ObservedIscsi(device="vmhba65", iqn="iqn.1998-01.com.vmware:esx-test")))
    assert h.methods() == ["RescanHba", "RescanVmfs"]
    assert {"RescanHba", "RescanAllHba", "RescanVmfs"} <= set(SLOW_CALLS)


def test_an_ordinary_call_still_times_out(host):
    h, session = host
    h.hold = {"CurrentTime": 2.0}
    with pytest.raises(VsphereUnreachable, match="timed out"), session.errors("asking the time"):
        session.si.CurrentTime()
    # The connection the slow call left behind does not keep its long timeout for the next one.
    h.hold = {"RescanHba": 0.0, "CurrentTime": 2.0}
    storage.rescan(session, dr_host(ObservedIscsi(device="vmhba65", iqn="iqn.x")), vmfs=False)
    with pytest.raises(VsphereUnreachable), session.errors("asking the time"):
        session.si.CurrentTime()


def test_rescan_targets_the_software_iscsi_adapter(host):
    h, session = host
    storage.rescan(session, dr_host(ObservedIscsi(device="vmhba64", iqn="iqn.1998-01.com.vmware:esx-test")))
    assert h.methods() == ["RescanHba", "RescanVmfs"]
    assert re.search(r"<hbaDevice[^>]*>vmhba64</hbaDevice>", h.calls[0][1])
    # No software iSCSI adapter (esxdr host apply has not run): every adapter.
    h.calls.clear()
    storage.rescan(session, dr_host(None))
    assert h.methods() == ["RescanAllHba", "RescanVmfs"]
