"""The scrubber removes every secret form, including those the esxsim recordings cannot produce
(thumbprints: the lab speaks plain http on loopback; mutual CHAP: esxdr sets one-way CHAP),
and the committed cassettes hold nothing it would remove."""

from __future__ import annotations

import hashlib

import pytest
import vcr_kit
from vcr_kit import CASSETTES, RECORD, THUMB_PLACEHOLDER, scrub_body, scrub_response

DER = b"a certificate"
SHA1 = hashlib.sha1(DER).digest()
SHA256 = hashlib.sha256(DER).digest()


def _forms(digest: bytes) -> list[str]:
    hexes = [f"{b:02x}" for b in digest]
    out = []
    for sep in (":", "-", " ", ""):
        out += [sep.join(hexes), sep.join(hexes).upper()]
    return out


@pytest.mark.parametrize("thumb", _forms(SHA1) + _forms(SHA256))
def test_thumbprints_in_every_spelling(thumb):
    body = f"<x><sslThumbprint>{thumb}</sslThumbprint><t>sha256={thumb};</t></x>".encode()
    out = scrub_body(body)
    assert thumb.encode() not in out and thumb.replace(":", "").encode() not in out
    assert out == (b"<x><sslThumbprint>" + THUMB_PLACEHOLDER + b"</sslThumbprint><t>sha256="
                   + THUMB_PLACEHOLDER + b";</t></x>")


def test_openssh_style_fingerprints():
    import base64

    b64 = base64.b64encode(SHA256).decode().rstrip("=")
    for text in (f"SHA256:{b64}", f"sha256:{b64}", f"SHA1:{base64.b64encode(SHA1).decode()}"):
        assert text.split(":")[1].encode() not in scrub_body(f"<fp>{text}</fp>".encode()), text


def test_what_is_not_a_thumbprint_stays():
    keep = (b"<naa>naa.600144f0c0ffee000000000000000001</naa><mac>00:0c:29:79:4c:a0</mac>"
            b"<uuid>5f1e2d3c-00000001-8796-000c29aabbcc</uuid><ip>fe80::20c:29ff:fe79:4ca0</ip>"
            b"<id>96f68697206103777</id>")
    assert scrub_body(keep) == keep


@pytest.mark.parametrize("element", ["password", "chapSecret", "mutualChapSecret", "vim25:password"])
def test_secret_elements(element):
    body = (f'<Login><userName>root</userName><{element} xsi:type="xsd:string">s3cr&amp;t</{element}>'
            f"<chapName>esxdr-rec</chapName></Login>").encode()
    assert scrub_body(body) == (f'<Login><userName>root</userName><{element} xsi:type="xsd:string">*</{element}>'
                                f"<chapName>esxdr-rec</chapName></Login>").encode()


def test_chap_authentication_properties_as_pyvmomi_sends_them():
    """The body esxdr/vsphere/host.py's set_chap produces, serialized by pyVmomi itself."""
    from pyVmomi import SoapAdapter, vim

    props = vim.host.InternetScsiHba.AuthenticationProperties(
        chapAuthEnabled=True, chapName="esxdr-rec", chapSecret="one-secret-12",
        mutualChapSecret="other-secret-34", chapAuthenticationType="chapRequired")
    from esxdr.vsphere.session import API_VERSION

    body = SoapAdapter.Serialize(props, version=API_VERSION)
    body = body.encode() if isinstance(body, str) else body
    assert b"one-secret-12" in body and b"other-secret-34" in body
    out = scrub_body(body)
    assert b"one-secret-12" not in out and b"other-secret-34" not in out
    assert b"<chapSecret>*</chapSecret>" in out and b"esxdr-rec" in out


def test_session_key_everywhere_once_seen(monkeypatch):
    # A made-up key: kept out of the recording's key set and its list of secrets.
    monkeypatch.setattr(vcr_kit, "_SESSION_KEYS", set())
    monkeypatch.delenv(vcr_kit.SECRETS_FILE_ENV, raising=False)
    key = "52a8e3f1-0d4c-4b6e-9a7f-3c2d1e0f9a8b"
    response = {"headers": {"Set-Cookie": [f'vmware_soap_session="{key}"; Path=/; HttpOnly']},
                "body": {"string": f"<LoginResponse><returnval><key>{key}</key></returnval></LoginResponse>"}}
    out = scrub_response(response)
    assert key not in out["headers"]["Set-Cookie"][0]
    assert key.encode() not in out["body"]["string"]
    assert key.encode() not in scrub_body(f'<obj type="ContainerView">session[{key}]1234</obj>'.encode())


@pytest.mark.skipif(RECORD, reason="the cassettes are being written")
@pytest.mark.parametrize("name", sorted(p.stem for p in CASSETTES.glob("*.yaml")))
def test_cassettes_hold_nothing_the_scrubber_would_remove(name):
    from vcr.cassette import Cassette

    cass = Cassette.load(path=str(CASSETTES / f"{name}.yaml"), record_mode="none")
    for i, (req, resp) in enumerate(cass.data):
        for what, body in (("request", req.body), ("response", resp["body"]["string"])):
            if body:
                raw = body if isinstance(body, bytes) else body.encode()
                assert scrub_body(raw) == raw, f"{name}.yaml #{i} {what}: holds a secret form"
