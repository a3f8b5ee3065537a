"""The site file loader: the invalid corpus, the example, defaults, paths, units and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from esxdr.cli.main import run
from esxdr.errors import SiteError, UsageError
from esxdr.site import (
    DEFAULT_STATE_DIR,
    Invalid,
    KeepRules,
    Portal,
    ProtectionGroup,
    Schedule,
    format_duration,
    load_site,
    parse_duration,
    parse_keep_rules,
    parse_size,
)

HERE = Path(__file__).parent
CORPUS = HERE / "site_corpus"
EXAMPLE = HERE.parents[2] / "examples" / "site.yaml"

MINIMAL = """\
version: 1
name: lab
storage:
  ss1:
    role: production
    local: true
  ss2:
    role: dr
    address: 127.0.0.2
    user: esxdr
    key: keys/id_ed25519
    host_key: SHA256:HYfOdYYK61d+0O8KfPYpweuLx8FB4tWQiemG1Yi2yOw
protection_groups:
  core:
    source: ss1
    destination: ss2
    source_root: sp1/iscsi
    dr_root: rp1/iscsi
    datasets: [lun0, lun1, sp1/iscsi/lun2]
    retention: "48h 30d"
    rpo: 4h
"""


def write(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def with_key(tmp_path: Path, text: str = MINIMAL, mode: int = 0o600) -> Path:
    key = tmp_path / "keys" / "id_ed25519"
    key.parent.mkdir(exist_ok=True)
    key.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    key.chmod(mode)
    return write(tmp_path, text)


def problems(path: Path, **kw) -> list[str]:
    with pytest.raises(SiteError) as e:
        load_site(path, **kw)
    return [str(p) for p in e.value.problems]


# ---------------------------------------------------------------- the invalid corpus

def _corpus() -> list[Path]:
    return sorted(CORPUS.glob("*.yaml"))


def _expectations(path: Path) -> tuple[list[tuple[int, int, str]], bool]:
    expected, check_files = [], False
    for line in path.with_suffix(".expect").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.strip() == "check_files":
            check_files = True
            continue
        where, _, text = line.partition(" ")
        ln, col = where.split(":")
        expected.append((int(ln), int(col), text.strip()))
    return expected, check_files


def test_every_case_has_its_expectations_and_every_expectation_its_case():
    # test_corpus runs one test per .yaml: a .yaml without .expect would error there, but an .expect
    # whose .yaml was renamed or removed would silently check nothing.
    cases = {f.stem for f in _corpus()}
    expects = {f.stem for f in CORPUS.glob("*.expect")}
    assert sorted(cases - expects) == [], "site files without a .expect"
    assert sorted(expects - cases) == [], ".expect files without their site file"
    assert sorted(f.name for f in CORPUS.iterdir() if f.suffix not in (".yaml", ".expect")) == ["README.md"]


@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.stem)
def test_corpus(path: Path):
    expected, check_files = _expectations(path)
    assert expected, f"{path.name}.expect lists no problem"
    with pytest.raises(SiteError) as e:
        load_site(path, check_files=check_files)
    got = e.value.problems
    rendered = "\n".join(str(p) for p in got)
    assert len(got) == len(expected), f"expected {len(expected)} problem(s), got:\n{rendered}"
    unmatched = list(got)
    for line, col, text in expected:
        match = next((p for p in unmatched if (p.line, p.column) == (line, col) and text in str(p)), None)
        assert match is not None, f"no problem at {line}:{col} containing {text!r} in:\n{rendered}"
        unmatched.remove(match)
    for p in got:
        assert p.file == str(path)
        assert p.message and "\n" not in p.message


# ---------------------------------------------------------------- the example

def test_example_is_valid_without_file_checks():
    site = load_site(EXAMPLE, check_files=False)
    assert site.name == "acme"
    ss1, ss2 = site.storage["ss1"], site.storage["ss2"]
    assert (ss1.role, ss1.local, ss1.target.stack) == ("production", True, "comstar")
    assert ss1.zfs_command == ("pfexec", "zfs")
    assert (ss2.role, ss2.target.stack, ss2.serve_prefix) == ("dr", "tgt", "rp1/iscsi")
    assert ss2.key == str(EXAMPLE.parent / "keys" / "esxdr_ed25519")
    core = site.group("core")
    assert core.datasets == ("sp1/iscsi/lun0", "sp1/iscsi/lun1", "sp1/iscsi/lun2")
    assert core.dr_datasets == ("rp1/iscsi/lun0", "rp1/iscsi/lun1", "rp1/iscsi/lun2")
    assert core.retention.destination == KeepRules(hourly=48, daily=30, weekly=12, monthly=12)
    assert core.luns["sp1/iscsi/lun2"].naa == "naa.600144f0928c010000004fc511ec0003"
    assert core.schedule == Schedule(every_seconds=3600, timezone="Europe/Berlin")
    assert core.bandwidth_limit == 200 * 2**20
    assert [vm.priority for vm in core.vms] == sorted(vm.priority for vm in core.vms)
    assert core.vm("sql01").depends_on == ("dc01",)
    net = site.dr_network["esxi-dr"]
    assert net.endpoint == "esxi-dr"
    assert net.vswitches["vSwitch1"].mtu == 9000 and net.vswitches["vSwitch1"].uplinks == ("vmnic1",)
    assert net.port_groups["iSCSI-Net0"].vlan == 20
    assert net.vmkernel["vmk1"].ip == "10.20.0.11/24"
    assert net.port_groups["Prod-LAN"].vlan == 310 and net.port_groups["Prod-LAN"].isolated
    assert net.iscsi.send_targets == (Portal("10.20.0.5", 3260),)
    assert len({site, core, *core.vms, net, *site.storage.values()}) == 12  # all hashable


def test_example_only_misses_its_files(tmp_path: Path):
    found = problems(EXAMPLE)
    assert len(found) == 2 and all("does not exist" in p for p in found)
    shutil.copy(EXAMPLE, tmp_path / "site.yaml")
    for rel in ("keys/esxdr_ed25519", "secrets/esxi-dr.password"):
        f = tmp_path / rel
        f.parent.mkdir(exist_ok=True)
        f.write_text("x\n")
        f.chmod(0o600)
    site = load_site(tmp_path / "site.yaml")
    assert site.vsphere["esxi-dr"].password_file == str(tmp_path / "secrets" / "esxi-dr.password")


def test_loading_is_fast():
    load_site(EXAMPLE, check_files=False)  # warm imports and zoneinfo
    start = time.perf_counter()
    for _ in range(20):
        load_site(EXAMPLE, check_files=False)
    assert (time.perf_counter() - start) / 20 < 0.1


# ---------------------------------------------------------------- defaults and resolution

def test_defaults(tmp_path: Path):
    site = load_site(with_key(tmp_path))
    assert site.version == 1 and site.state_dir == DEFAULT_STATE_DIR == "/var/lib/esxdr"
    assert site.path == str(tmp_path / "site.yaml")
    assert site.vsphere == {} and site.dr_network == {}
    ss2 = site.storage["ss2"]
    assert (ss2.port, ss2.zfs, ss2.zfs_command, ss2.target, ss2.serve_prefix) == (22, "auto", ("zfs",), None, None)
    assert site.storage["ss1"].address is None
    g = site.group("core")
    assert (g.incremental, g.parallel, g.compression, g.mbuffer, g.consistency) == (
        "intermediate", 4, "auto", "auto", "crash")
    assert g.bandwidth_limit is None and g.vsphere_production is None and g.vms == ()
    assert g.schedule == Schedule(None, None, "UTC") and g.schedule.manual
    assert g.rpo_seconds == 4 * 3600
    assert g.retention.source == g.retention.destination == KeepRules(hourly=48, daily=30, last=1)
    assert g.retention.prune_foreign is False


def test_drill_max_age_per_group_or_site_wide(tmp_path: Path):
    assert load_site(with_key(tmp_path)).group("core").drill_max_age_seconds is None  # no limit by default
    text = MINIMAL.replace("name: lab\n", "name: lab\ndrill_max_age: 90d\n")
    text += """  web:
    source: ss1
    destination: ss2
    source_root: sp1/web
    dr_root: rp1/web
    datasets: [lun0]
    retention: "48h 30d"
    rpo: 4h
    drill_max_age: 2w
"""
    site = load_site(with_key(tmp_path, text))
    assert site.drill_max_age_seconds == 90 * 86400
    assert site.group("core").drill_max_age_seconds == 90 * 86400  # the site's
    assert site.group("web").drill_max_age_seconds == 14 * 86400  # its own wins
    assert site.to_dict()["protection_groups"]["web"]["drill_max_age_seconds"] == 14 * 86400


def test_network_defaults(tmp_path: Path):
    text = MINIMAL + """\
    vsphere_dr: dr-vc
    vms:
      app01: {}
vsphere:
  dr-vc:
    role: dr
    kind: vcenter
    url: https://vc-dr.example.com/sdk
    user: esxdr@vsphere.local
    password_env: VC_PASSWORD
    ca_file: /etc/ssl/certs/ca-certificates.crt
    hosts: [esx-dr-1, esx-dr-2]
dr_network:
  esx-dr-1:
    vswitches:
      vSwitch1:
        uplinks: [vmnic1, vmnic2]
        standby: [vmnic2]
    port_groups:
      iSCSI-A: {vswitch: vSwitch1, active_uplinks: [vmnic1], standby_uplinks: []}
    vmkernel:
      vmk1: {port_group: iSCSI-A}
    iscsi:
      bind: [vmk1]
      send_targets: ["[fd00::5]:3261", {address: ss2.example.com}]
      static_targets: [{address: 10.20.0.5, iqn: IQN.2010-09.org.Example:lun0}]
      chap: {name: esx-dr, secret_env: CHAP_SECRET}
"""
    site = load_site(with_key(tmp_path, text), check_files=False)
    net = site.dr_network["esx-dr-1"]
    assert net.endpoint == "dr-vc"
    sw = net.vswitches["vSwitch1"]
    assert (sw.mtu, sw.active, sw.standby, sw.ports) == (1500, ("vmnic1",), ("vmnic2",), 128)
    pg = net.port_groups["iSCSI-A"]
    assert (pg.vlan, pg.isolated, pg.active_uplinks, pg.standby_uplinks) == (0, False, ("vmnic1",), ())
    assert (net.vmkernel["vmk1"].ip, net.vmkernel["vmk1"].mtu) == (None, 1500)
    assert net.iscsi.enabled is True
    assert net.iscsi.send_targets == (Portal("fd00::5", 3261), Portal("ss2.example.com", 3260))
    assert net.iscsi.static_targets[0].port == 3260
    assert net.iscsi.static_targets[0].iqn == "iqn.2010-09.org.example:lun0"
    assert net.iscsi.chap.secret_env == "CHAP_SECRET"
    vm = site.group("core").vms[0]
    assert (vm.priority, vm.depends_on, vm.networks, vm.boot_timeout_seconds, vm.shutdown_timeout_seconds) == (
        3, (), {}, 300, 300)
    assert site.endpoint_for_host("esx-dr-2").name == "dr-vc"


def test_relative_paths_resolve_against_the_site_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sub = tmp_path / "conf"
    sub.mkdir()
    (tmp_path / "shared").mkdir()
    key = tmp_path / "shared" / "k"
    key.write_text("k")
    key.chmod(0o400)
    text = MINIMAL.replace("key: keys/id_ed25519", "key: ../shared/k\n    known_hosts: ~/kh") \
        .replace("name: lab", "name: lab\nstate_dir: state")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "kh").write_text("")
    monkeypatch.chdir(tmp_path)  # the site path is relative to the working directory, its contents are not
    write(sub, text)
    site = load_site(Path("conf") / "site.yaml")
    assert site.storage["ss2"].key == str(key)
    assert site.storage["ss2"].known_hosts == str(tmp_path / "kh")
    assert site.state_dir == str(sub / "state")
    assert os.path.isabs(site.path)


def test_relative_site_path_is_shown_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    write(tmp_path, MINIMAL.replace("rpo: 4h", "rpo: soon"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SiteError) as e:
        load_site("site.yaml", check_files=False)
    assert str(e.value.problems[0]).startswith("site.yaml:21:10: protection_groups.core.rpo: ")


# ---------------------------------------------------------------- files and secrets

@pytest.mark.parametrize("mode, ok", [(0o600, True), (0o400, True), (0o700, True), (0o640, False), (0o644, False)])
def test_key_file_mode(tmp_path: Path, mode: int, ok: bool):
    path = with_key(tmp_path, mode=mode)
    if ok:
        load_site(path)
    else:
        [p] = problems(path)
        assert f"has mode {mode:04o}" in p and "chmod 600" in p and p.startswith(f"{path}:11:10:")


def test_missing_files_are_reported_with_their_path(tmp_path: Path):
    text = MINIMAL.replace("    host_key:", "    known_hosts: /nonexistent/known_hosts\n    host_key:")
    found = problems(write(tmp_path, text))
    assert len(found) == 2
    assert f"SSH key {tmp_path}/keys/id_ed25519 does not exist" in found[0]
    assert "known_hosts file /nonexistent/known_hosts does not exist" in found[1]
    load_site(tmp_path / "site.yaml", check_files=False)


def test_password_file_mode(tmp_path: Path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    pw.chmod(0o644)
    text = MINIMAL + """\
vsphere:
  esx-dr:
    role: dr
    url: http://127.0.0.1:8989/sdk
    user: root
    password_file: pw
"""
    [p] = problems(with_key(tmp_path, text))
    assert "password file" in p and "mode 0644" in p
    pw.chmod(0o600)
    assert load_site(tmp_path / "site.yaml").vsphere["esx-dr"].password_file == str(pw)


@pytest.mark.parametrize("key", ["password", "secret", "passphrase", "api_token", "chap_secret"])
def test_inline_secrets_are_refused(tmp_path: Path, key: str):
    text = MINIMAL.replace("    user: esxdr\n", f"    user: esxdr\n    {key}: hunter2\n")
    [p] = problems(write(tmp_path, text), check_files=False)
    assert "secrets must not be written into the site file" in p
    assert "hunter2" not in p


# ---------------------------------------------------------------- YAML details

def test_duplicate_keys_are_found_at_every_level(tmp_path: Path):
    text = MINIMAL.replace("    rpo: 4h\n", "    rpo: 4h\n    rpo: 8h\n").replace(
        "  ss2:\n", "  ss1:\n    role: production\n    local: true\n  ss2:\n")
    found = problems(write(tmp_path, text), check_files=False)
    assert len(found) == 2
    assert "storage.ss1: duplicate key 'ss1' (first at line 4)" in found[0]
    assert "protection_groups.core.rpo: duplicate key 'rpo' (first at line 24)" in found[1]


def test_merge_keys_and_aliases(tmp_path: Path):
    text = MINIMAL + """\
    vsphere_dr: esx-dr
    vms:
      a: &vm {priority: 2, boot_timeout: 1m}
      b:
        <<: *vm
        priority: 4
vsphere:
  esx-dr: {role: dr, url: "http://127.0.0.9/sdk", user: root, password_env: PW}
"""
    g = load_site(write(tmp_path, text), check_files=False).group("core")
    assert [(vm.priority, vm.boot_timeout_seconds) for vm in g.vms] == [(2, 60), (4, 60)]


def test_yaml_words_are_read_as_written(tmp_path: Path):
    text = MINIMAL.replace("    rpo: 4h\n", "    rpo: 4h\n    mbuffer: off\n    compression: none\n")
    g = load_site(write(tmp_path, text), check_files=False).group("core")
    assert (g.mbuffer, g.compression) == ("off", "none")


def test_not_utf8(tmp_path: Path):
    path = tmp_path / "site.yaml"
    path.write_bytes(b"version: 1\nname: caf\xe9\n")
    [p] = problems(path)
    assert p.startswith(f"{path}:2:10: ") and "not UTF-8" in p


def test_missing_site_file(tmp_path: Path):
    with pytest.raises(UsageError) as e:
        load_site(tmp_path / "nope.yaml")
    assert "not found" in e.value.message and e.value.exit_code == 2


def test_problems_are_sorted_by_position(tmp_path: Path):
    text = MINIMAL.replace("rpo: 4h", "rpo: x").replace("role: production", "role: x")
    with pytest.raises(SiteError) as e:
        load_site(write(tmp_path, text), check_files=False)
    lines = [p.line for p in e.value.problems]
    assert lines == sorted(lines) and len(lines) == 2
    assert e.value.message.endswith("\n2 problems")


# ---------------------------------------------------------------- values

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("15m", 900), ("1h", 3600), ("4h30m", 16200), ("2d", 172800), ("1w", 604800),
    ("1d 2h", 93600), ("300", 300), (45, 45), ("0s", 0), ("1H", 3600),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "4 hours", "30m4h", "1h1h", "1.5h", "-5m", "5x", True, -1])
def test_parse_duration_rejects(text):
    with pytest.raises(Invalid):
        parse_duration(text)


@pytest.mark.parametrize("seconds, text", [(16200, "4h30m"), (604800, "1w"), (864000, "10d"), (0, "0s"),
                                           (90, "1m30s")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text, size", [
    ("512K", 512 * 1024), ("50M", 50 * 2**20), ("1G", 2**30), ("2T", 2 * 2**40), ("1.5G", 3 * 2**29),
    ("50MiB", 50 * 2**20), ("50MB", 50 * 2**20), ("50m", 50 * 2**20), ("1024", 1024), (4096, 4096),
])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "50 megs", "1E", "-1M", "iB", False])
def test_parse_size_rejects(text):
    with pytest.raises(Invalid):
        parse_size(text)


@pytest.mark.parametrize("text, rules", [
    ("48h 30d 12w 12m", KeepRules(hourly=48, daily=30, weekly=12, monthly=12)),
    ("48 hourly, 30 daily, 12 weekly, 12 monthly", KeepRules(hourly=48, daily=30, weekly=12, monthly=12)),
    ("7d 5y 3 last", KeepRules(daily=7, yearly=5, last=3)),
    ("24h, 0 last", KeepRules(hourly=24, last=0)),
])
def test_parse_keep_rules(text, rules):
    assert parse_keep_rules(text) == rules


@pytest.mark.parametrize("text", ["48", "48h 48h", "12q", "hourly", "48h; 30d"])
def test_parse_keep_rules_rejects(text):
    with pytest.raises(Invalid):
        parse_keep_rules(text)


def test_keep_rules_describe():
    assert KeepRules(hourly=48, daily=30, weekly=12, monthly=12).describe() == \
        "48 hourly, 30 daily, 12 weekly, 12 monthly, 1 last"


# ---------------------------------------------------------------- dataset mapping

def test_dr_dataset_mapping():
    g = ProtectionGroup("core", "ss1", "ss2", "sp1/iscsi", "rp1/dr/iscsi")
    assert g.dr_dataset("sp1/iscsi/lun0") == "rp1/dr/iscsi/lun0"
    assert g.dr_dataset("sp1/iscsi/vm/disk1") == "rp1/dr/iscsi/vm/disk1"
    assert g.dr_dataset("sp1/iscsi") == "rp1/dr/iscsi"
    assert g.source_dataset("rp1/dr/iscsi/vm/disk1") == "sp1/iscsi/vm/disk1"
    for outside in ("sp1/iscsi2/lun0", "sp1/other", "sp1"):
        with pytest.raises(ValueError):
            g.dr_dataset(outside)


def test_unknown_group_suggests(tmp_path: Path):
    site = load_site(write(tmp_path, MINIMAL), check_files=False)
    with pytest.raises(UsageError) as e:
        site.group("cor")
    assert "did you mean 'core'" in e.value.hint
    assert site.groups() == [site.group("core")]


# ---------------------------------------------------------------- the CLI

def test_cli_validate_reports_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, MINIMAL.replace("role: production", "role: prod").replace("rpo: 4h", "rpo: 4 hours"))
    assert run(["site", "validate", "--no-file-checks", "--site", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert f"{path}:5:11: storage.ss1.role: 'prod' is not one of production, dr — did you mean 'production'?" in err
    assert f"{path}:21:10: protection_groups.core.rpo:" in err
    assert err.rstrip().endswith("2 problems")
    assert "Traceback" not in err


def test_cli_validate_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, MINIMAL)  # the key file is missing
    assert run(["--json", "site", "validate", str(path)]) == 2
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["error"] == "SiteError" and data["exit_code"] == 2
    [p] = data["problems"]
    assert (p["line"], p["column"], p["path"]) == (11, 10, "storage.ss2.key")
    assert "does not exist" in p["message"]
    assert "1 problem" in err


def test_cli_validate_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = with_key(tmp_path)
    assert run(["site", "validate", "--site", str(path)]) == 0
    out, _ = capsys.readouterr()
    assert out.strip() == f"{path}: ok (2 storage servers, 0 vSphere endpoints, 1 protection group, 3 datasets, " \
                          "0 VMs, 0 DR host networks)"
    assert run(["--site", str(path), "site", "validate", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is True and data["counts"]["datasets"] == 3


def test_cli_show_keeps_secrets_as_references(capsys: pytest.CaptureFixture[str]):
    os.environ.pop("ESXDR_VCENTER_PASSWORD", None)
    assert run(["site", "show", "--no-file-checks", "--site", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "password_env: ESXDR_VCENTER_PASSWORD" in out
    assert "sp1/iscsi/lun0: rp1/iscsi/lun0" in out
    assert run(["site", "show", "--no-file-checks", "--json", str(EXAMPLE)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["protection_groups"]["core"]["rpo_seconds"] == 14400
    assert data["storage"]["ss2"]["key"] == str(EXAMPLE.parent / "keys" / "esxdr_ed25519")


def test_cli_missing_site_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    assert run(["site", "validate", "--site", str(tmp_path / "none.yaml")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


def test_cli_yaml_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = write(tmp_path, "version: 1\nstorage: [a\n")
    assert run(["site", "validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:1: not valid YAML" in err and "Traceback" not in err


# ---------------------------------------------------------------- robustness

_ODD_VALUES = ["[]", "{}", "null", "-1", "x", "'@#'"]


def test_no_mutation_of_the_example_crashes_the_loader(tmp_path: Path):
    """Dropping any line, or giving any key an odd value, gives problems (or a site) but never a traceback."""
    lines = EXAMPLE.read_text().splitlines()
    variants = [lines[:i] + lines[i + 1:] for i in range(len(lines))]
    for i, line in enumerate(lines):
        key, sep, value = line.partition(": ")
        if sep and not line.lstrip().startswith("#") and value.strip():
            variants += [lines[:i] + [f"{key}: {odd}"] + lines[i + 1:] for odd in _ODD_VALUES]
    path = tmp_path / "site.yaml"
    outcomes = {"ok": 0, "problems": 0}
    for variant in variants:
        path.write_text("\n".join(variant) + "\n")
        try:
            load_site(path, check_files=False)
            outcomes["ok"] += 1
        except SiteError as e:
            assert e.problems and all(p.line >= 1 and p.column >= 1 for p in e.problems)
            outcomes["problems"] += 1
    assert outcomes["problems"] > len(variants) // 2
