"""What the cassette tests share: recording and strict replay with vcrpy, scrubbing, sessions.

Recording (scripts/record-cassettes sets ESXDR_RECORD_CASSETTES=1) writes each cassette once,
from scratch: a cassette file that already exists is refused, because vcrpy's record_mode="all"
keeps the old interactions that the new run did not repeat, and those would never be played.

Replay is strict in both directions. record_mode="none" fails a request the cassette does not
hold (the product sends something new or different), and :func:`cassette` fails when the
scenario leaves an interaction unplayed (the product stopped making a call it made when
recorded: a removed BindVnic must not pass). allow_playback_repeats=False makes each recorded
interaction answer exactly one request, so play_count == len(cassette) means one-to-one.

Bodies are matched after scrubbing, so a replay needs no real password or CHAP secret.
"""

from __future__ import annotations

import http.client
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

vcr = pytest.importorskip("vcr")

ROOT = Path(__file__).resolve().parents[2]
CASSETTES = ROOT / "cassettes"
RECORD = os.environ.get("ESXDR_RECORD_CASSETTES") == "1"

# --------------------------------------------------------------------------- secrets of a recording
# scripts/record-cassettes names a 0600 file here; every secret the recording used (vSphere and
# guest passwords, the CHAP secret, session keys) is appended to it, one a line, and the script
# greps the written cassettes for each of them.
SECRETS_FILE_ENV = "ESXDR_RECORD_SECRETS_FILE"
CHAP_ENV = "ESXDR_RECORD_CHAP_SECRET"
CHAP_NAME = "esxdr-rec"
REPLAYED_CHAP_SECRET = "replayed-chap-secret"  # replay sends this; scrubbed to "*" like the recorded one
# The guests' password while recording (throwaway; scripts/record-cassettes picks it).
GUEST_PASSWORD_ENV = "ESXDR_RECORD_GUEST_PASSWORD"
WIN = "windows9Server64Guest"


def note_secret(value: str | bytes | None) -> None:
    if not value:
        return
    text = value.decode() if isinstance(value, bytes) else value
    path = os.environ.get(SECRETS_FILE_ENV)
    if RECORD and path and "\n" not in text:
        with open(path, "a", encoding="utf-8") as f:
            f.write(text + "\n")


def chap_secret() -> str:
    """Recording: the CHAP secret the recording's tgtd demands (scripts/record-cassettes picks a
    throwaway one; a random one without it), exported under CHAP_ENV for the product to read."""
    assert RECORD
    value = os.environ.get(CHAP_ENV) or os.urandom(12).hex()
    os.environ[CHAP_ENV] = value
    note_secret(value)
    return value


@contextmanager
def _chap_env() -> Iterator[None]:
    """The desired state names CHAP_ENV; a replay sends a stand-in secret (both scrub to "*")."""
    if RECORD:
        chap_secret()
        yield
        return
    old = os.environ.get(CHAP_ENV)
    os.environ[CHAP_ENV] = REPLAYED_CHAP_SECRET
    try:
        yield
    finally:
        if old is None:
            del os.environ[CHAP_ENV]
        else:
            os.environ[CHAP_ENV] = old


# --------------------------------------------------------------------------- scrubbing
# Any element whose (local) name ends in password or secret: Login's <password>, a guest's
# NamePasswordAuthentication <password>, CHAP's <chapSecret> and <mutualChapSecret>.
_SECRET_ELEMENT = re.compile(
    rb"(<((?:[\w.-]+:)?[\w.-]*(?:[Pp]assword|[Ss]ecret))(?:\s[^>]*)?>)[^<]*(</\2>)")
_COOKIE = re.compile(r'vmware_soap_session="?([^";]*)"?')
_LOGIN_KEY = re.compile(rb"<LoginResponse.*?<key>([^<]+)</key>", re.S)
# Certificate thumbprints in every spelling: SHA-1 (20 bytes) or SHA-256 (32 bytes), hex pairs
# separated by one consistent ":", "-" or " ", any case; or bare hex of 40 or 64 digits; or
# "SHA1:"/"SHA256:" base64 (OpenSSH's fingerprint form). A NAA (32 hex digits), a MAC (6 pairs)
# or a UUID (8-4-4-4-12) is none of these and stays.
_HEX = rb"[0-9A-Fa-f]"
_THUMB_PAIRS = re.compile(
    rb"(?<![0-9A-Fa-f:-])" + _HEX + rb"{2}([:\- ])(?:" + _HEX + rb"{2}\1){18}" + _HEX + rb"{2}"
    rb"(?:(?:\1" + _HEX + rb"{2}){12})?(?![0-9A-Fa-f:-])")
_THUMB_BARE = re.compile(rb"(?<![0-9A-Za-z])(?:" + _HEX + rb"{64}|" + _HEX + rb"{40})(?![0-9A-Za-z])")
_THUMB_B64 = re.compile(rb"(?i)\bSHA(?:1|256):[A-Za-z0-9+/]{27,43}=?")
THUMB_PLACEHOLDER = b"scrubbed-thumbprint"
SESSION_PLACEHOLDER = b"00000000-0000-0000-0000-5c2bbed5e551"
# Session keys seen while recording. The simulator puts the key into session-scoped morefs
# (ContainerView "session[<key>]…"), so it is replaced everywhere, not only in the cookie.
_SESSION_KEYS: set[bytes] = set()


def scrub_body(body: bytes) -> bytes:
    body = _SECRET_ELEMENT.sub(rb"\1*\3", body)
    for rx in (_THUMB_PAIRS, _THUMB_BARE, _THUMB_B64):
        body = rx.sub(THUMB_PLACEHOLDER, body)
    for key in _SESSION_KEYS:
        body = body.replace(key, SESSION_PLACEHOLDER)
    return body


def _session_key(key: bytes) -> None:
    if key and key != b"scrubbed" and key != SESSION_PLACEHOLDER:
        _SESSION_KEYS.add(key)
        note_secret(key)


def scrub_request(request):
    if request.body:
        body = request.body if isinstance(request.body, bytes) else request.body.encode()
        request.body = scrub_body(body)
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
                if m:
                    _session_key(m.group(1).encode())
            headers[k] = [_COOKIE.sub('vmware_soap_session="scrubbed"', v) for v in headers[k]]
    body = response.get("body", {}).get("string")
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes):
        m = _LOGIN_KEY.search(body)
        if m:
            _session_key(m.group(1))
        response["body"]["string"] = scrub_body(body)
    return response


# --------------------------------------------------------------------------- record / replay
def _body(r1, r2):
    assert r1.body == r2.body, "SOAP request differs from the cassette: re-record (scripts/record-cassettes)"


_SOAP_METHOD = re.compile(rb"<(?:[\w-]+:)?Body[^>]*>\s*<(?:[\w-]+:)?(\w+)")


def call_name(request) -> str:
    """The SOAP method of a recorded request, else "GET /path" (datastore and guest file HTTP)."""
    body = request.body or b""
    m = _SOAP_METHOD.search(body if isinstance(body, bytes) else body.encode())
    return m.group(1).decode() if m else f"{request.method} {request.path}"


def unplayed(cass) -> list[tuple[int, str]]:
    """(index, call name) of every recorded interaction the replay has not used."""
    return [(i, call_name(req)) for i, req in enumerate(cass.requests) if not cass.play_counts[i]]


def assert_all_played(cass, name: str) -> None:
    left = unplayed(cass)
    assert cass.all_played and cass.play_count == len(cass) and not left, (
        f"cassettes/{name}.yaml: {len(left)} of {len(cass)} recorded interactions were not played "
        f"({cass.play_count} played): " + ", ".join(f"#{i} {n}" for i, n in left)
        + ". The product no longer makes these calls (a removed call?), or the cassette is stale: "
        "re-record with scripts/record-cassettes, never hand-edit.")


# The cassette each `cassette(name)` opened last, so a test can look at what a failed replay left
# unplayed (tests/cassette/test_mutation.py).
opened: dict[str, Any] = {}


@contextmanager
def cassette(name: str) -> Iterator[Any]:
    """Record ``name`` from scratch, or replay it strictly: on leaving the block every recorded
    interaction must have been played exactly once (assert_all_played)."""
    path = CASSETTES / f"{name}.yaml"
    if RECORD and path.exists():
        pytest.fail(f"{path} exists: recording appends to it and keeps stale interactions; "
                    "scripts/record-cassettes deletes the cassettes first")
    my = vcr.VCR(record_mode="all" if RECORD else "none", match_on=["method", "path", "soapbody"],
                 before_record_request=scrub_request, before_record_response=scrub_response,
                 decode_compressed_response=True)
    my.register_matcher("soapbody", _body)
    with my.use_cassette(str(path), allow_playback_repeats=False) as cass:
        opened[name] = cass
        try:
            yield cass
        except BaseException as e:
            if not RECORD:
                e.add_note(f"cassettes/{name}.yaml: not played: "
                           + (", ".join(f"#{i} {n}" for i, n in unplayed(cass)) or "nothing"))
            raise
    if not RECORD:
        assert_all_played(cass, name)


def params(name: str, **values):
    """The scenario's inputs: written beside the cassette when recording, read back on replay."""
    path = CASSETTES / f"{name}.json"
    if RECORD:
        path.write_text(json.dumps(values, indent=2) + "\n")
        return values
    if not path.exists():
        pytest.fail(f"{path} missing: run scripts/record-cassettes")
    return json.loads(path.read_text())


def replay_url(p: dict[str, Any]) -> str:
    # Requests are matched on method and path, never on host and port: replay needs no listener.
    return p["url"] if RECORD else "http://127.0.0.1:9/sdk"


def session_for(url: str, password: str):
    """A Session whose connections vcrpy sees (pyVmomi binds HTTPConnection at import time)."""
    from esxdr.site.model import VsphereEndpoint
    from esxdr.vsphere.session import Session, make_stub

    note_secret(password)
    ep = VsphereEndpoint(name="esx-dr", role="dr", url=url, user="root")
    stub = make_stub(ep)
    stub.scheme = http.client.HTTPConnection  # vcrpy's patched class inside the cassette context
    s = Session(ep, stub, password)
    s.login()
    return s


# --------------------------------------------------------------------------- the host scenario
def desired_for(portal: str):
    from esxdr.site.model import ChapSpec, HostNetwork, IscsiSpec, Portal, PortGroupSpec, VmkernelNic, VSwitch

    addr, port = portal.rsplit(":", 1)
    return HostNetwork(
        host="esx-dr",
        vswitches={"vSwitch1": VSwitch("vSwitch1", ("vmnic1", "vmnic2"), 9000, ("vmnic1",), ("vmnic2",))},
        port_groups={"iSCSI-A": PortGroupSpec("iSCSI-A", "vSwitch1", 20, ("vmnic1",), ()),
                     "Repl": PortGroupSpec("Repl", "vSwitch1", 30),
                     "Prod-LAN": PortGroupSpec("Prod-LAN", "vSwitch1", 310, isolated=True)},
        vmkernel={"vmk1": VmkernelNic("vmk1", "iSCSI-A", "127.0.0.21/8", 9000)},
        # CHAP: the recording's tgtd demands it, so the secret really travels (and is scrubbed).
        iscsi=IscsiSpec(bind=("vmk1",), send_targets=(Portal(addr, int(port)),),
                        chap=ChapSpec(CHAP_NAME, secret_env=CHAP_ENV)))


def host_bootstrap(live=None, host_module: Any = None) -> None:
    """Bootstrap an empty host (ensure), then plan again: nothing left to do.

    ``host_module`` replaces esxdr.vsphere.host (the mutation test passes a copy with a call removed)."""
    if host_module is None:
        from esxdr.vsphere import host as host_module
    H = host_module
    p = params("host_bootstrap", portal=live.portal if live else None, url=live.esx.url if live else None)
    with _chap_env(), cassette("host_bootstrap"):
        s = session_for(replay_url(p), live.esx.password if live else "replayed")
        first = H.ensure(s, desired_for(p["portal"]))
        boot = s.requests
        plan, _ = H.plan(s, desired_for(p["portal"]))
        s.close()
    kinds = [st.action.kind for st in first.steps]
    assert kinds[:2] == ["add_vswitch", "add_port_group"], kinds
    assert "set_chap" in kinds and "bind_vnic" in kinds, kinds
    assert plan.empty, plan
    assert boot <= 30
