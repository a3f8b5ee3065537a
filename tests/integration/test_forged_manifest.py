"""A forged shipped manifest on the lab (issue #14, item 3): DR refuses it, names the field, exports nothing.

Whoever holds production's replication key can set the DR root's `esxdr:manifest.*` properties
(`esxdr serve` accepts `zfs set esxdr:manifest.N=…`). Here they are forged with the zfs command
itself, as that account would write them, after a real replication:

- a backing path with `..` (the review's `/sp1/iscsi/lun0/../../../../etc/shadow`): failover, its
  dry run, the drill, present-clone, `target shipped` and `target accept` all refuse (exit 2) naming
  `logical_units[0].backing.path`, and DR is unchanged (tgtd, datasets, journals, no pin taken);
- a changed NAA after the pin: drill and failover refuse (exit 3) naming the change and
  `esxdr target accept`; `target accept --dry-run` shows it and changes nothing;
- the genuine presentation (present-clone) admits only the DR host's initiator, and every backing
  store tgtd serves lies directly inside a DR dataset's mount.
"""

from __future__ import annotations

import copy
import json
import subprocess
from pathlib import Path

import pytest

from esxdr.model.manifest import Naa
from esxdr.replication import shipping
from esxdr.site import load_site
from esxdr.targets import tgt

pytestmark = pytest.mark.integration
pytest_plugins = ["drill_fixtures"]

DR_INITIATOR = "iqn.1998-01.com.vmware:esx-dr"
ZFS_TIMEOUT = 120


def zfs(*args: str) -> str:
    return subprocess.run(["zfs", *args], capture_output=True, text=True, check=True, timeout=ZFS_TIMEOUT).stdout


def dr_root(dl) -> str:
    return load_site(dl.site).group("core").dr_root


def shipped_props(dl) -> dict[str, str]:
    """The DR root's esxdr:manifest* properties, as `zfs get` prints them."""
    names = ",".join([shipping.SHA_PROP, shipping.COUNT_PROP, *shipping.chunk_props()])
    out = zfs("get", "-Hp", "-o", "property,value", names, dr_root(dl))
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def forge(dl, mutate) -> None:
    """Rewrite the shipped manifest on the DR root with plain `zfs set`, sha and count consistent, the
    way a production key holder can (one property per call: pool v23's zfs sets one at a time)."""
    genuine = shipping.decode(shipped_props(dl))
    assert genuine is not None and genuine.logical_units, "the lab's replication shipped no manifest"
    forged = copy.deepcopy(genuine)
    mutate(forged)
    _, props = shipping.encode(forged)
    for name, value in props.items():  # encode() orders the sha last, as replication writes it
        zfs("set", f"{name}={value}", dr_root(dl))


def reship_genuine(dl) -> None:
    """Replication writes the genuine manifest back (its sha differs from the forged one)."""
    dl.ok("replicate", "core")
    m = shipping.decode(shipped_props(dl), load_site(dl.site).group("core"))
    assert m is not None and ".." not in json.dumps(m.to_dict())


def dr_targets(dl) -> list[tgt.TgtTarget]:
    port = load_site(dl.site).storage["ss2"].target.control_port
    out = subprocess.run(["tgtadm", "-C", str(port), "--lld", "iscsi", "--op", "show", "--mode", "target"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return tgt.parse_show(out)


def dr_mounts(dl) -> dict[str, str]:
    """Mount point -> dataset of every mounted dataset under the DR root (replicas and drill clones)."""
    out = zfs("list", "-H", "-o", "name,mountpoint,mounted", "-r", dr_root(dl))
    rows = [line.split("\t") for line in out.splitlines()]
    return {mp: name for name, mp, mounted in rows if mounted == "yes" and mp.startswith("/")}


def assert_serves_only_dr_files(dl) -> None:
    """Every LUN tgtd serves is one file directly inside a mounted DR dataset, and no target admits ALL."""
    mounts = dr_mounts(dl)
    for t in dr_targets(dl):
        assert "ALL" not in t.acl, f"{t.iqn} admits every initiator: {t.acl}"
        for n, lu in t.luns.items():
            if lu.device_type == "controller" or not lu.path:
                continue
            parent = str(Path(lu.path).parent)
            assert parent in mounts and Path(lu.path).resolve() == Path(lu.path), \
                f"{t.iqn} LUN {n} serves {lu.path}, outside the DR dataset mounts {sorted(mounts)}"


def dr_state(dl) -> tuple:
    """What a refused run must leave exactly as it was on DR."""
    s = load_site(dl.site)
    pool = zfs("list", "-H", "-t", "all", "-o", "name,readonly,mounted,userrefs", "-r", dr_root(dl))
    files = sorted(str(p.relative_to(s.state_dir)) for p in Path(s.state_dir).rglob("*")
                   if p.is_file() and p.parts[-2] in ("failover", "drills", "pins"))
    return pool, files, [(t.iqn, sorted(t.luns), t.acl) for t in dr_targets(dl)]


REFUSERS = [
    ("failover", "core", "--disaster", "--dry-run"),
    ("failover", "core", "--disaster"),
    ("test", "start", "core", "--dry-run"),
    ("test", "start", "core"),
    ("target", "present-clone", "core"),
    ("target", "shipped", "core"),
    ("target", "accept", "core", "--dry-run"),
    ("target", "accept", "core"),
]


def test_a_dotdot_backing_path_is_refused_everywhere_naming_the_field(drill_lab):
    dl = drill_lab
    before = dr_state(dl)
    assert not shipping.pin_path(load_site(dl.site).state_dir, "core").exists()

    def escape(m):
        lu = m.logical_units[0]
        lu.backing.path = lu.backing.path.rsplit("/", 1)[0] + "/../../../../etc/shadow"

    forge(dl, escape)
    for command in REFUSERS:
        r = dl.esxdr(*command)
        assert r.returncode == 2, (command, r.returncode, r.stdout, r.stderr)
        assert "shipped manifest for core" in r.stderr, (command, r.stderr)
        assert "logical_units[0].backing.path" in r.stderr and "leaves its dataset" in r.stderr, (command, r.stderr)
        assert "/etc/shadow" in r.stderr and "Traceback" not in r.stderr, (command, r.stderr)
        assert dr_state(dl) == before, command  # nothing presented, promoted, cloned, held or pinned
        assert_serves_only_dr_files(dl)
    assert not shipping.pin_path(load_site(dl.site).state_dir, "core").exists()
    reship_genuine(dl)


def test_a_forged_acl_or_zvol_elsewhere_is_refused_too(drill_lab):
    dl = drill_lab
    before = dr_state(dl)

    def zvol_elsewhere(m):
        lu = m.logical_units[0]
        lu.backing.kind, lu.backing.path = "zvol", "/dev/zvol/" + dr_root(dl).split("/")[0] + "/other"

    def open_acl(m):
        from esxdr.model.manifest import InitiatorGroup

        m.initiator_groups = [InitiatorGroup("everyone", ["ALL"])]
        m.targets[0].acl = ["everyone"]

    for mutate, field, why in ((zvol_elsewhere, "logical_units[0].backing.path", "zvol"),
                               (open_acl, "initiator_groups[0].members[0]", "would admit every initiator")):
        forge(dl, mutate)
        r = dl.esxdr("failover", "core", "--disaster")
        assert r.returncode == 2 and field in r.stderr and why in r.stderr, r.stderr
        assert dr_state(dl) == before
        assert_serves_only_dr_files(dl)
    reship_genuine(dl)


def test_a_changed_naa_after_the_pin_needs_target_accept(drill_lab):
    dl = drill_lab
    pin = shipping.pin_path(load_site(dl.site).state_dir, "core")
    r = dl.ok("--json", "target", "accept", "core")
    assert json.loads(r.stdout)["first_pin"] and pin.exists()
    pinned = pin.read_text()
    before = dr_state(dl)
    old = shipping.decode(shipped_props(dl)).logical_units[0].naa.hex  # type: ignore[union-attr]
    new = old[:-4] + ("ffff" if old[-4:] != "ffff" else "eeee")

    def renumber(m):
        m.logical_units[0].naa = Naa(new)

    forge(dl, renumber)
    for command in (("test", "start", "core", "--dry-run"), ("failover", "core", "--disaster", "--dry-run"),
                    ("test", "start", "core")):
        r = dl.esxdr(*command)
        assert r.returncode == 3, (command, r.stdout, r.stderr)
        assert "differs from the one pinned" in r.stderr and f"naa {old} → {new}" in r.stderr, r.stderr
        assert "esxdr target accept core" in r.stderr and str(pin) in r.stderr
        assert dr_state(dl) == before
    r = dl.ok("--json", "target", "accept", "core", "--dry-run")
    out = json.loads(r.stdout)
    assert [(c["field"], c["pinned"], c["shipped"]) for c in out["changes"]] == [("naa", old, new)]
    assert not out["accepted"] and pin.read_text() == pinned
    assert_serves_only_dr_files(dl)
    reship_genuine(dl)
    dl.ok("test", "start", "core", "--dry-run")  # the genuine manifest matches the pin again


def test_the_genuine_presentation_admits_only_the_dr_host(drill_lab):
    from esxdr.errors import EsxdrError
    from esxdr.targets.probe import Session

    dl = drill_lab
    dl.ok("target", "present-clone", "core")
    try:
        drill = [t for t in dr_targets(dl) if t.iqn.endswith(".esxdr-test-core")]
        assert drill and all(t.acl == [DR_INITIATOR] for t in drill), [(t.iqn, t.acl) for t in drill]
        assert_serves_only_dr_files(dl)
        portal = load_site(dl.site).storage["ss2"].target
        with Session(portal.portal_address, portal.portal_port, target=drill[0].iqn, initiator=DR_INITIATOR) as s:
            assert s.report_luns()
        with pytest.raises((EsxdrError, OSError)):  # another initiator on the same network: not admitted
            with Session(portal.portal_address, portal.portal_port, target=drill[0].iqn,
                         initiator="iqn.2024-01.lab.esxdr:intruder") as s:
                s.report_luns()
    finally:
        dl.ok("target", "present-clone", "core", "--remove")
    assert not [t for t in dr_targets(dl) if t.iqn.endswith(".esxdr-test-core")]
