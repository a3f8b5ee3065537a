"""The vSphere adapter replayed from cassettes recorded against esxsim (no Go, no tgtd needed).

Recording (scripts/record-cassettes sets ESXDR_RECORD_CASSETTES=1) starts tgtd + esxsim, runs each
scenario with record_mode="all" and writes cassettes/<name>.yaml plus cassettes/<name>.json (the
inputs the scenario needs to replay: portal, expected LUNs). Replay uses record_mode="none":
a request the cassette does not hold fails the test loudly — re-record, never hand-edit.
Bodies are matched after scrubbing, so the replayed Login needs no real password.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
from pathlib import Path

import pytest

vcr = pytest.importorskip("vcr")
pytest.importorskip("pyVmomi")

ROOT = Path(__file__).resolve().parents[2]
CASSETTES = ROOT / "cassettes"
RECORD = os.environ.get("ESXDR_RECORD_CASSETTES") == "1"

_PASSWORD = re.compile(rb"(<password[^>]*>)[^<]*(</password>)")
_COOKIE = re.compile(r'vmware_soap_session="?([^";]*)"?')
_LOGIN_KEY = re.compile(rb"<LoginResponse.*?<key>([^<]+)</key>", re.S)
_THUMB = re.compile(rb"([0-9A-F]{2}:){31}[0-9A-F]{2}")
SESSION_PLACEHOLDER = b"00000000-0000-0000-0000-5c2bbed5e551"
# Session keys seen while recording. The simulator puts the key into session-scoped morefs
# (ContainerView "session[<key>]…"), so it is replaced everywhere, not only in the cookie.
_SESSION_KEYS: set[bytes] = set()


def _scrub_body(body: bytes) -> bytes:
    body = _PASSWORD.sub(rb"\1*\2", body)
    body = _THUMB.sub(b"<thumbprint-scrubbed/>", body)
    for key in _SESSION_KEYS:
        body = body.replace(key, SESSION_PLACEHOLDER)
    return body


def scrub_request(request):
    if request.body:
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        request.body = _scrub_body(body)
    for h in list(request.headers):
        if h.lower() == "cookie":
            del request.headers[h]
    return request


def scrub_response(response):
    headers = response.get("headers", {})
    for k in list(headers):
        if k.lower() == "set-cookie":
            for v in headers[k]:
                m = _COOKIE.search(v)
                if m and m.group(1) and m.group(1) != "scrubbed":
                    _SESSION_KEYS.add(m.group(1).encode())
            headers[k] = [_COOKIE.sub('vmware_soap_session="scrubbed"', v) for v in headers[k]]
    body = response.get("body", {}).get("string")
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes):
        m = _LOGIN_KEY.search(body)
        if m:
            _SESSION_KEYS.add(m.group(1))
        response["body"]["string"] = _scrub_body(body)
    return response


def _body(r1, r2):
    assert r1.body == r2.body, "SOAP request differs from the cassette: re-record (scripts/record-cassettes)"


def cassette(name: str):
    my = vcr.VCR(record_mode="all" if RECORD else "none", match_on=["method", "path", "soapbody"],
                 before_record_request=scrub_request, before_record_response=scrub_response,
                 decode_compressed_response=True)
    my.register_matcher("soapbody", _body)
    return my.use_cassette(str(CASSETTES / f"{name}.yaml"))


def session_for(url: str, password: str):
    """A Session whose connections vcrpy sees (pyVmomi binds HTTPConnection at import time)."""
    from esxdr.site.model import VsphereEndpoint
    from esxdr.vsphere.session import Session, make_stub

    ep = VsphereEndpoint(name="esx-dr", role="dr", url=url, user="root")
    stub = make_stub(ep)
    stub.scheme = http.client.HTTPConnection  # vcrpy's patched class inside the cassette context
    s = Session(ep, stub, password)
    s.login()
    return s


def desired_for(portal: str):
    from esxdr.site.model import HostNetwork, IscsiSpec, Portal, PortGroupSpec, VmkernelNic, VSwitch

    addr, port = portal.rsplit(":", 1)
    return HostNetwork(
        host="esx-dr",
        vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic1", "vmnic2"), 9000, ("vmnic1",), ("vmnic2",))},
        port_groups={"iSCSI-A": PortGroupSpec("iSCSI-A", "vSwitch1", 20, ("vmnic1",), ()),
                     "Repl": PortGroupSpec("Repl", "vSwitch1", 30),
                     "Prod-LAN": PortGroupSpec("Prod-LAN", "vSwitch1", 310, isolated=True)},
        vmkernel={"vmk1": VmkernelNic("vmk1", "iSCSI-A", "127.0.0.21/8", 9000)},
        iscsi=IscsiSpec(bind=("vmk1",), send_targets=(Portal(addr, int(port)),)))


@pytest.fixture(scope="module")
def live():
    """Recording only: a DR lab (tgtd + esxsim) with two VMFS LUNs."""
    if not RECORD:
        yield None
        return
    sys.path.insert(0, str(ROOT / "tests" / "integration"))
    import tempfile

    from vsphere_fixtures import start_lab

    from esxdr.lab import esxsim

    lab = start_lab(Path(tempfile.mkdtemp(prefix="esxdr-cassettes-")), binary=esxsim.build(ROOT))
    lab.add_lun(1)
    lab.add_lun(2, label="prod-ds2")
    yield lab
    lab.stop()


def params(name: str, live, **values):
    path = CASSETTES / f"{name}.json"
    if RECORD:
        path.write_text(json.dumps(values, indent=2) + "\n")
        return values
    if not path.exists():
        pytest.fail(f"{path} missing: run scripts/record-cassettes")
    return json.loads(path.read_text())


def test_host_bootstrap_then_noop(live):
    from esxdr.vsphere import host as H

    p = params("host_bootstrap", live, portal=live.portal if live else None,
               url=live.esx.url if live else None)
    url = p["url"] if RECORD else "http://127.0.0.1:9/sdk"
    with cassette("host_bootstrap"):
        s = session_for(url, live.esx.password if live else "replayed")
        first = H.ensure(s, desired_for(p["portal"]))
        boot = s.requests
        plan, _ = H.plan(s, desired_for(p["portal"]))
        s.close()
    assert [st.action.kind for st in first.steps][:2] == ["add_vswitch", "add_port_group"]
    assert plan.empty
    assert boot <= 30


def test_verify_storage(live):
    from esxdr.plan.host import ExpectedLun
    from esxdr.vsphere import host as H
    from esxdr.vsphere import storage as ST

    if RECORD:
        from esxdr.targets import manifest as mf

        with session_for(live.esx.url, live.esx.password) as s:  # not recorded: bring the host up
            H.ensure(s, desired_for(live.portal))
        expected = [e.__dict__ for e in ST.expected_luns(mf.load(live.manifest()))]
    p = params("verify_storage", live, url=live.esx.url if live else None, expected=expected if RECORD else None)
    url = p["url"] if RECORD else "http://127.0.0.1:9/sdk"
    with cassette("verify_storage"):
        s = session_for(url, live.esx.password if live else "replayed")
        result = ST.verify_storage(s, None, [ExpectedLun(**e) for e in p["expected"]])
        s.close()
    assert result.report.ok, result.report.render()
    assert [c.datastore for c in result.report.checks] == ["ds1", "prod-ds2"]
    assert s.requests <= 10
