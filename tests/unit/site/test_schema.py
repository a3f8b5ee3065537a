"""The site file's JSON Schema (esxdr.site.schema, `esxdr site schema`, docs/site.schema.json).

Checked with check-jsonschema (PyPI, the dev extra) as a CI job or an editor would: every valid site
file esxdr ships or writes passes, and the invalid corpus (site_corpus/) is refused wherever a
schema can say what is wrong, at the place the loader blames; the rest is listed with the reason.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import regress
from test_lab_site import _boxes_state, _state

from esxdr.cli.main import run
from esxdr.errors import SiteError
from esxdr.lab import Lab, LabConfig
from esxdr.site import groups, load_site, loader, network, schema, values
from esxdr.site.nodes import join

HERE = Path(__file__).parent
ROOT = HERE.parents[2]
CORPUS = HERE / "site_corpus"
COMMITTED = ROOT / "docs" / "site.schema.json"
CHECK_JSONSCHEMA = Path(sys.executable).parent / "check-jsonschema"
REGENERATE = ".venv/bin/esxdr site schema > docs/site.schema.json"

# Cases the YAML parser refuses before any schema is applied (check-jsonschema reads YAML 1.2
# with ruamel.yaml, which refuses duplicate keys as esxdr does).
PARSER = {"duplicate-entry", "duplicate-key", "two-documents", "undefined-alias", "yaml-flow-unclosed",
          "yaml-syntax", "yaml-tag"}

# Cases the schema accepts, with the reason it cannot (or the generator does not) express them.
REFERENCE = "a reference to another section's entry, or its role"
OTHER_VALUE = "depends on another key's value"
NOT_EXPRESSED = {
    "application-consistency": f"consistency: application needs vsphere_production: {OTHER_VALUE}",
    "bind-two-uplinks": "a bound NIC's port group must have one active uplink: across dr_network's sections",
    "bind-unknown-vmk": REFERENCE,
    "dataset-outside-root": "datasets are resolved against source_root (relative or full names), in code",
    "dataset-twice": "datasets are resolved against source_root (lun0 = sp1/iscsi/lun0), in code",
    "dataset-snapshot": "a dataset is read as text and checked in code once resolved against source_root",
    "dataset-space": "a dataset is read as text and checked in code once resolved against source_root",
    "destination-unknown": REFERENCE,
    "dr-root-outside-prefix": "dr_root against the destination server's serve_prefix",
    "dr-root-overlap": "dr_root against the other groups' dr_roots",
    "hosts-on-esxi": f"hosts only with kind: vcenter: {OTHER_VALUE}",
    "http-remote": "the url is read as text and checked in code (plain http only to a 127.x host)",
    "isolated-vlan-0": "VLAN isolation across the port groups of a vSwitch",
    "isolated-vlan-shared": "VLAN isolation across the port groups of a vSwitch",
    "key-missing-file": "whether a file exists is not in the site file",
    "network-host-production": REFERENCE,
    "network-host-unknown": REFERENCE,
    "network-host-vcenter": REFERENCE,
    "port-group-vswitch": REFERENCE,
    "retention-nothing": "keep rules whose counts add up to nothing",
    "rpo-below-interval": "rpo against schedule.every",
    "source-role": REFERENCE,
    "target-control-port": f"control_port only with stack: tgt: {OTHER_VALUE}",
    "target-portal-missing": "portal is required only when the server has no address: the enclosing section's key",
    "thumbprint-missing": f"thumbprint or ca_file only for an https url: {OTHER_VALUE}",
    "timezone": "the time zone database of the machine esxdr runs on decides",
    "uplink-twice": "an uplink in two vSwitches: across entries",
    "url-credentials": "the url is read as text and checked in code (no user:password@)",
    "version-2": "version is read as a whole number and compared with 1 in code",
    "vm-cycle": "dependencies between VMs",
    "vm-depends-priority": "dependencies between VMs",
    "vm-depends-unknown": REFERENCE,
    "vm-network-undefined": REFERENCE,
    "vm-self-dependency": "dependencies between VMs",
    "vm-test-not-isolated": "a port group's isolation on the DR hosts: " + REFERENCE,
    "vmk-ip": "ip is read as text (an address with its prefix, or dhcp) and checked in code",
    "vmk-ip-network": "ip is read as text (an address with its prefix, or dhcp) and checked in code",
    "vmk-mtu": "a VMkernel NIC's mtu against its vSwitch's",
    "vmk-port-group": REFERENCE,
    "vms-without-vsphere-dr": f"vms need vsphere_dr: {OTHER_VALUE}",
    "vsphere-dr-role": REFERENCE,
    "vswitch-active": "active and standby against the vSwitch's uplinks",
}


@pytest.fixture(scope="module")
def generated() -> dict:
    return schema.site_schema()


@pytest.fixture(scope="module")
def schema_file(generated, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("schema") / "site.schema.json"
    path.write_text(schema.dumps(generated))
    return path


def check_jsonschema(schema_file: Path, files: list[Path]) -> dict:
    """check-jsonschema's JSON report for ``files``, as CI or an editor's checker would run it."""
    if not CHECK_JSONSCHEMA.exists():
        pytest.fail(f"{CHECK_JSONSCHEMA} is missing: scripts/setup installs it (pyproject's dev extra)")
    r = subprocess.run([str(CHECK_JSONSCHEMA), "--schemafile", str(schema_file), "-o", "json", *map(str, files)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.stdout, r.stderr
    return json.loads(r.stdout)


def loader_path(jsonpath: str) -> str:
    """check-jsonschema's `$.storage['ss-1'].port` as the loader writes it: storage.ss-1.port."""
    out = ""
    for name, quoted, index in re.findall(r"\.([^.\[]+)|\['((?:[^'\\]|\\.)*)'\]|\[(\d+)\]", jsonpath[1:]):
        out = join(out, int(index)) if index else join(out, name or quoted)
    return out


# -------------------------------------------------------------------------- the committed copy

def test_the_committed_schema_is_what_esxdr_site_schema_prints(capsys):
    assert run(["site", "schema"]) == 0
    printed = capsys.readouterr().out
    assert COMMITTED.exists(), f"docs/site.schema.json is missing: {REGENERATE}"
    assert COMMITTED.read_text() == printed, f"docs/site.schema.json is stale: regenerate it with {REGENERATE}"
    assert run(["site", "schema", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(printed)


def test_the_schema_is_draft_07_and_valid_under_its_metaschema(schema_file, generated):
    assert generated["$schema"] == "http://json-schema.org/draft-07/schema#"
    r = subprocess.run([str(CHECK_JSONSCHEMA), "--check-metaschema", str(schema_file)], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr


# -------------------------------------------------------------------------- valid files pass

def _lab_site_files(tmp_path: Path) -> list[Path]:
    """Every site file the lab writes: the loopback lab (with vSphere over plain http on 127.x and
    a seeded recovery plan) and the two-box lab (https with thumbprints)."""
    seed = {"datastores": {"ds-lun0": {"dataset": "sp1/iscsi/lun0", "naa": "naa.60000000000000000e00000000010001",
                                       "uuid": "5b7ee5c9-1a2b3c4d-5e6f-001122334455"}},
            "vms": [{"name": "app0a", "priority": 1}, {"name": "app0b", "priority": 2}]}
    loop = Lab(LabConfig(dir=str(tmp_path / "loopback")))
    state = _state(tmp_path)
    state["sshd"]["home_key"] = str(tmp_path / "keys" / "home_ed25519")
    state["esxsim"] = {role: {"url": f"http://127.0.0.{n}:8989/sdk", "username": "root", "password": "x",
                              "host": f"esx-{role[:4]}"} for n, role in ((1, "production"), (2, "dr"))}
    state["seed"] = seed
    (tmp_path / "loopback").mkdir()
    loop._write_site(state)
    boxes = Lab(LabConfig(dir=str(tmp_path / "boxes"), boxes=True))
    (tmp_path / "boxes").mkdir()
    boxes._write_site({**_boxes_state(tmp_path), "seed": seed})
    files = [loop.site_path, loop.dr_site_path, loop.production_pull_site_path, loop.production_home_site_path,
             boxes.site_path, boxes.dr_site_path, boxes.production_pull_site_path, boxes.dr_push_site_path]
    for f in files:
        load_site(f, check_files=False)  # valid to esxdr: so the schema must take it
    return files


# What esxdr reads, written the way YAML 1.1 habits or a half-edited file have it: the schema takes
# it too (YAML 1.2 reads `yes` and "22" as strings, `2024` as a number; an empty key is null).
LENIENT = """\
version: "1"
name: 2024
vsphere:
storage:
  ss1: {role: production, local: yes, port: "22", zfs: }
  ss2:
    role: dr
    local: On
    zfs_command: sudo -n zfs
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0, {name: lun1, naa: 600144f0928c010000004fc511ec0001}]
    retention: {source: {last: 3}, destination: "3 last, 7 days"}
    schedule:
    rpo: 3600
    mbuffer: off
    parallel: 0x10
    bookmarks: no
    bandwidth_limit: 1.5
    callouts:
"""


def test_every_valid_site_file_passes(schema_file, tmp_path):
    examples = sorted((ROOT / "examples").glob("*.yaml"))
    assert examples
    files = [*examples, *_lab_site_files(tmp_path), tmp_path / "probe.yaml", tmp_path / "lenient.yaml"]
    (tmp_path / "probe.yaml").write_text(json.dumps(schema.PROBE))  # every key in every form
    (tmp_path / "lenient.yaml").write_text(LENIENT)
    load_site(tmp_path / "lenient.yaml", check_files=False)
    report = check_jsonschema(schema_file, files)
    assert report["status"] == "ok", json.dumps(report, indent=1)


def test_every_example_names_the_schema_in_its_modeline():
    for example in sorted((ROOT / "examples").glob("*.yaml")):
        first = example.read_text().splitlines()[0]
        m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
        assert m, f"{example.name}: the first line must be the modeline, not {first!r}"
        assert (example.parent / m.group(1)).resolve() == COMMITTED, f"{example.name} names {m.group(1)}"


# -------------------------------------------------------------------------- the invalid corpus

def test_the_schema_refuses_the_invalid_corpus_where_a_schema_can(schema_file):
    cases = {p.stem: p for p in sorted(CORPUS.glob("*.yaml"))}
    assert not (set(NOT_EXPRESSED) | PARSER) - set(cases), "classified cases that are gone from the corpus"
    report = check_jsonschema(schema_file, list(cases.values()))
    errors: dict[str, list[set[str]]] = {}
    for e in report["errors"]:  # where it failed, and, under an anyOf, the alternative that came closest
        paths = {loader_path(e["path"]), loader_path(e.get("best_deep_match", e)["path"])}
        errors.setdefault(Path(e["filename"]).stem, []).append(paths)
    unparsed = {Path(e["filename"]).stem for e in report["parse_errors"]}
    assert unparsed == PARSER, "the YAML parser (not the schema) refuses exactly these"

    accepted_but_expressible, misplaced = [], []
    for name, path in cases.items():
        if name in PARSER:
            continue
        if name in NOT_EXPRESSED:
            assert name not in errors, (f"{name} is refused now ({errors.get(name)}): take it off NOT_EXPRESSED")
            continue
        if name not in errors:
            accepted_but_expressible.append(name)
            continue
        check_files = "check_files" in path.with_suffix(".expect").read_text().split()
        with pytest.raises(SiteError) as e:
            load_site(path, check_files=check_files)
        blamed = [p.path for p in e.value.problems]
        # the schema points where the loader does, or at the mapping that lacks or has the key
        for paths in errors[name]:
            if not any(b == where or re.fullmatch(re.escape(where) + r"(\.[^.\[]+|\[\d+\])", b) or
                       (where == "" and "." not in b) for b in blamed for where in paths):
                misplaced.append(f"{name}: schema at {sorted(paths)}, loader at {blamed}")
    assert not accepted_but_expressible, ("accepted by the schema: make the schema refuse them, or list each in "
                                          f"NOT_EXPRESSED with the reason: {accepted_but_expressible}")
    assert not misplaced, "\n".join(misplaced)


# -------------------------------------------------------------------------- generated, not written

def test_a_key_the_loader_reads_appears_by_itself(monkeypatch):
    # drill_max_age was added to the loader without touching the schema: site-wide and per group
    s = schema.site_schema()
    group = s["properties"]["protection_groups"]["additionalProperties"]
    for where in (s, group):
        age = where["properties"]["drill_max_age"]
        assert age["pattern"] == schema.FORMATS["values.parse_duration"]({})[0]["pattern"]
        assert "drill_max_age" not in where.get("required", [])
    # and so does any key read through a typed getter
    original = groups.GroupReader.schedule

    def schedule(self, g):
        g.integer("copies", default=2, lo=1, hi=9, hint="how many copies")
        return original(self, g)

    monkeypatch.setattr(groups, "GROUP_KEYS", (*groups.GROUP_KEYS, "copies"))
    monkeypatch.setattr(groups.GroupReader, "schedule", schedule)
    copies = schema.site_schema()["properties"]["protection_groups"]["additionalProperties"]["properties"]["copies"]
    assert copies["description"].startswith("how many copies") and copies["default"] == 2
    assert {"type": "integer", "minimum": 1, "maximum": 9} in copies["anyOf"]


def test_a_plugins_target_stack_is_offered(monkeypatch):
    from esxdr import plugins

    names = plugins.names
    monkeypatch.setattr(plugins, "names", lambda group: (*names(group), "scst") if group == "esxdr.targets"
                        else names(group))
    storage = schema.site_schema()["properties"]["storage"]["additionalProperties"]
    assert set(storage["properties"]["target"]["properties"]["stack"]["enum"]) == {"comstar", "iscsitgt", "lio",
                                                                                  "scst", "tgt"}


def test_every_value_has_a_type(generated):
    """An empty schema (anything goes) means the probe never showed the loader that key in that form."""
    untyped = []

    def walk(node, where):
        if isinstance(node, dict):
            for key in ("properties", "additionalProperties", "items"):
                sub = node.get(key)
                if not isinstance(sub, dict):
                    continue
                for name, s in (sub.items() if key == "properties" else [(key, sub)]):
                    if s == {}:
                        untyped.append(f"{where}/{name}")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(generated, "")
    assert not untyped, f"give esxdr/site/schema/probe.py PROBE a value for: {untyped}"


def test_requirements_are_inferred_from_what_the_loader_misses(generated):
    storage = generated["properties"]["storage"]["additionalProperties"]
    assert storage["required"] == ["role"]
    # a remote server needs an address, a user and a key: a local or a pulling one does not
    met = [{k for alt in rule["anyOf"] for k in alt["required"]} for rule in storage["allOf"] if "anyOf" in rule]
    assert {"address", "local", "pulls"} in met and {"host_key", "known_hosts", "local", "pulls"} in met
    vsphere = generated["properties"]["vsphere"]["additionalProperties"]
    assert {"not": {"type": "object", "required": ["password_env", "password_file"],
                    "properties": {"password_env": schema._NOT_NULL, "password_file": schema._NOT_NULL}}} \
        in vsphere["allOf"]
    assert generated["required"] == ["version", "name", "storage"]


# -------------------------------------------------------------------------- formats against checkers

# Values each checker accepts (the pattern must too) and refuses (the pattern should too, where
# marked exact). Patterns are ECMA-262 (editors run them in JavaScript): matched with regress,
# the engine check-jsonschema uses.
SAMPLES: dict[str, tuple[list[str], list[str]]] = {
    "values.check_host": (["10.20.0.5", "ss2.example.com", "fd00::5", "esx-1", "a.b-c.d."],
                          ["10.0.0.300", "esx dr", "-bad.example", "1.2.3", "bad_name.example"]),
    "values.split_host_port": (["10.0.0.5:3260", "10.0.0.5", "[fd00::5]:3260", "ss2.example:860", "fd00::5",
                                " 10.0.0.5:03260 "], ["127.0.0.2:iscsi", "10.0.0.5:0", "10.0.0.5:70000", "a b:1"]),
    "values.check_host_key": (["SHA256:HYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw"],
                              ["16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48", "SHA256:short"]),
    "values.check_zfs_name": (["sp1", "sp1/iscsi/lun0", "a1/b.c:d-e_f"],
                              ["1sp/x", "c0t1", "mirror/x", "sp1//x", "sp1/./x", "sp1@snap", "sp1/x#b", "/sp1"]),
    "values.check_ciphers": (["auto", "default", "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com"],
                             ["aes128 gcm", "AES!"]),
    "values.check_env_name": (["ESXDR_PW", "_x1"], ["1X", "A-B"]),
    "values.check_thumbprint": ([":".join(["ab"] * 32), "AB" * 32], [":".join(["AB"] * 20), "AB" * 31 + "A"]),
    "values.check_naa": (["naa.600144f0928c010000004fc511ec0001", "600144F0928C010000004FC511EC0001",
                          "naa.5000c500a1b2c3d4"], ["naa.600144f0928c010000004fc511ec00", "naa.1000c500a1b2c3d4"]),
    "values.check_vmfs_uuid": (["5b7ee5c9-1a2b3c4d-5e6f-001122334455"], ["5b7ee5c9-1a2b3c4d-5e6f"]),
    "values.parse_duration": (["90s", "15m", "4h30m", "1d 2h", "2D", "3600", " 1w "], ["4 hours", "1m1h", "1h1h", "h"]),
    "values.parse_size": (["512K", "50M", "1.5G", "2TiB", "3mb", "100", "7b"], ["50 megs", "5ib", "-1"]),
    "values.parse_keep_rules": (["48h 30d 12w 12m", "48 hourly, 30 daily, 3 last", "7D", "1y"],
                                ["48x", "hourly 48", "48"]),
    "values.check_cron": (["0 */4 * * *", "15 1-5/2 1,15 jan-mar mon-fri", "* * * * 7", "05 00 31 12 sun"],
                          ["0 */4 * *", "0 24 * * *", "60 * * * *", "* * 0 * *", "* * * 13 *", "*/0 * * * *"]),
    "loader._check_user": (["esxdr", "svc_dr$", "a.b-c"], ["esx dr", "1abc"]),
    "groups._check_vmx_path": (["[DS1] dc01/dc01.vmx", "[DS 1]dc/x.vmx"], ["dc01/dc01.vmx", "[DS1] dc01.vmdk"]),
    "network._check_uplink": (["vmnic0", "vusb12"], ["eth0", "vmnic"]),
}
# checkers whose pattern is deliberately looser than the code (the extra is checked by esxdr):
LOOSE = {"values.check_timezone", "loader._check_nonblank", "groups._check_run"}


def _matches(fragment: dict, text: str) -> bool:
    if "enum" in fragment:
        return text in fragment["enum"]
    return regress.Regex(fragment["pattern"]).find(text) is not None


def test_every_checker_the_loader_uses_has_a_format(generated):
    builder = schema._Builder()
    used = {f[1][0] for slot in builder.rec.slots.values() for f in slot.forms if f[0] == "checked" and f[1]}
    assert not used - set(schema.FORMATS), "add their fragment to esxdr/site/schema/formats.py FORMATS"
    assert not set(schema.FORMATS) - used, "formats of checkers the loader no longer uses"
    assert set(schema.FORMATS) == set(SAMPLES) | LOOSE | {"values.check_object_name", "values.check_iqn"}, \
        "give each new format its samples here"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_format_takes_what_its_checker_takes(name):
    fragment = schema.FORMATS[name]({})[0]
    module, func = name.split(".")
    check = getattr({"values": values, "loader": loader, "groups": groups, "network": network}[module], func)
    if name == "values.split_host_port":
        check = lambda text: values.split_host_port(text, 3260)  # noqa: E731 - as the loader calls it
    good, bad = SAMPLES[name]
    for text in good:
        check(text)  # the sample is right about the checker
        assert _matches(fragment, text), f"{name}: the pattern refuses {text!r}, which esxdr accepts"
    for text in bad:
        with pytest.raises(values.Invalid):
            check(text)
        assert not _matches(fragment, text), f"{name}: the pattern takes {text!r}, which esxdr refuses"


def test_iscsi_names_and_prefixes():
    name, prefix = (schema.FORMATS["values.check_iqn"]({"prefix": p})[0] for p in (False, True))
    for text in ("iqn.2010-09.org.example:lun0", "IQN.2010-09.ORG.example", "eui.0123456789abcdef"):
        values.check_iqn(text)
        assert _matches(name, text)
    assert _matches(prefix, "iqn.2010-09.org.omnios") and not _matches(prefix, "eui.0123456789abcdef")
    assert not _matches(name, "iqn.2003-13.org.linux-iscsi") and not _matches(name, "lun0")
