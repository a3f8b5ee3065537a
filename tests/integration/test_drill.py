"""The monthly drill on a lab of its own: replicate, `test start`, replicate during the drill,
`test cleanup`, SIGKILL half-way and recover. Every claim is checked on the real peers:
esx-dr's inventory (one property read), the DR pool (zfs list) and the DR tgtd (tgtadm).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from esxdr.site import load_site

pytestmark = pytest.mark.integration

pytest_plugins = ["drill_fixtures"]


def esx_dr(dl) -> dict:
    """What a drill may touch on esx-dr, comparable before/after."""
    from esxdr.vsphere import inventory
    from esxdr.vsphere.session import connect

    site = load_site(dl.site)
    with connect(site.endpoint("esx-dr")) as s:
        h = inventory.read_host(s, "esx-dr")
    return {"port_groups": {n: (p.vswitch, p.vlan) for n, p in h.port_groups.items()},
            "vswitches": {n: v.uplinks for n, v in h.vswitches.items()},
            "datastores": {n: (d.vmfs_uuid, d.extents) for n, d in h.datastores.items()},
            "vms": {n: (v.vmx_path, v.power_state, v.heartbeat) for n, v in h.vms.items()},
            "luns": sorted(h.luns)}


def dr_pool(dl) -> dict:
    """DR datasets (not snapshots: replication goes on) and every hold (the drill's must be gone)."""
    out = subprocess.run(["zfs", "list", "-H", "-t", "all", "-o", "name,userrefs", "-r", dl.dr_pool],
                         capture_output=True, text=True, check=True).stdout
    rows = [line.split("\t") for line in out.splitlines()]
    return {"datasets": sorted(n for n, _ in rows if "@" not in n),
            "held": sorted(n for n, refs in rows if "@" in n and refs not in ("0", "-"))}


def dr_targets(dl) -> str:
    port = load_site(dl.site).storage["ss2"].target.control_port
    return subprocess.run(["tgtadm", "-C", str(port), "--lld", "iscsi", "--op", "show", "--mode", "target"],
                          capture_output=True, text=True, check=True).stdout


def last_report(dl, kind: str = "test-start") -> dict:
    r = dl.ok("report", "list", "--json")
    items = [i for i in json.loads(r.stdout) if i["kind"] == kind]
    return json.loads(open(items[0]["json"]).read())


def test_drill_end_to_end(drill_lab):
    from drill_fixtures import all_vms, kill_chain

    dl = drill_lab
    dl.use_test_network("Drill-LAN")  # not on esx-dr: the drill creates it, isolated, and removes it
    before_esx, before_pool, before_tgt = esx_dr(dl), dr_pool(dl), dr_targets(dl)
    assert not before_esx["vms"] and "Drill-LAN" not in before_esx["port_groups"]

    dry = dl.ok("test", "start", "core", "--dry-run")
    assert "because" in dry.stdout and "I copied it" in dry.stdout
    assert esx_dr(dl) == before_esx and dr_pool(dl) == before_pool  # dry-run changes nothing

    # SIGKILLed after every step and inside register and each power batch, one run per kill,
    # each resuming the last: then one more run finishes, with nothing repeated or left half-done.
    points = kill_chain(dl, ("test", "start", "core"), "drill", ("register", "power"))
    assert len(points) >= 14 and "drill-after-verify" in points
    r = dl.ok("test", "start", "core")
    assert "resuming" in r.stderr and "RTO" in r.stdout and "report:" in r.stdout

    rep = last_report(dl)
    assert rep["outcome"] == "ok" and rep["resumed"]
    assert {s["outcome"] for s in rep["steps"]} == {"done earlier"}  # every step was finished by a killed run
    assert all_vms(dl, "esx-dr") == sorted((v, p) for v, p in all_vms(dl, "esx-dr"))
    assert len(all_vms(dl, "esx-dr")) == len(dl.seed["vms"])  # registered once each, despite the kills
    seeded = dl.seed["datastores"]
    assert {d["name"] for d in rep["datastores"]} == set(seeded)
    for d in rep["datastores"]:
        # Evidence: mounted as-is with the production UUID, from the LUN with the production NAA.
        assert d["vmfs_uuid"] == seeded[d["name"]]["uuid"] and d["uuid_unchanged"]
        assert d["naa_matches_extent"] and "naa." + d["naa"] == seeded[d["name"]]["naa"]
    assert rep["rto_seconds"] is not None and rep["rpo_seconds"] is not None
    assert open(rep["report"]["html"]).read().count("<rect") == len(rep["steps"])

    # The clones carry the production NAAs on the wire, as a third-party initiator (libiscsi) reads them.
    import libiscsi

    libiscsi.assert_served(load_site(dl.site).storage["ss2"].target.portal, [d["naa"] for d in seeded.values()],
                           initiator="iqn.1998-01.com.vmware:esx-dr")

    esx = esx_dr(dl)
    vms = {v["name"] for v in dl.seed["vms"]}
    assert set(esx["vms"]) == vms
    assert all(v[1] == "poweredOn" and v[2] == "green" for v in esx["vms"].values())
    assert esx["port_groups"]["Drill-LAN"] == ("vSwitch1", 311)  # the isolated VLAN of the site file
    assert all(v["networks"] == ["Drill-LAN"] for v in rep["vms"])
    for name, (uuid, extents) in seeded_view(esx, seeded).items():
        assert (uuid, extents) == (seeded[name]["uuid"], (seeded[name]["naa"],))

    # Replication keeps running during the drill: the clones are datasets of their own.
    dl.ok("replicate", "core")
    assert len(dr_pool(dl)["datasets"]) == len(before_pool["datasets"]) + 1 + len(seeded)  # container + clones

    dl.ok("test", "cleanup", "core")
    assert esx_dr(dl) == before_esx
    assert dr_pool(dl)["datasets"] == before_pool["datasets"]
    assert dr_targets(dl) == before_tgt
    again = dl.ok("test", "cleanup", "core")
    assert "no drill left" in again.stdout

    # Killed right after presenting the clones: cleanup alone removes every trace.
    killed = dl.esxdr("test", "start", "core", env={"ESXDR_FAULT_KILL": "drill-after-present"})
    assert killed.returncode == -9
    assert "esxdr-test-core" in dr_targets(dl)
    dl.ok("test", "cleanup", "core")
    assert esx_dr(dl) == before_esx
    assert dr_pool(dl)["datasets"] == before_pool["datasets"]
    assert dr_targets(dl) == before_tgt
    # Only replication's own holds are left (DR prunes and releases them itself): the drill's are gone.
    # zfs-fuse has no `zfs holds`; releasing a tag a snapshot does not carry fails.
    for snap in dr_pool(dl)["held"]:
        r = subprocess.run(["zfs", "release", "esxdr-test-core", snap], capture_output=True, text=True)
        assert r.returncode != 0, f"{snap} still carried the drill's hold"


def seeded_view(esx: dict, seeded: dict) -> dict:
    return {n: (u, tuple(x for x in ex)) for n, (u, ex) in esx["datastores"].items() if n in seeded}


def test_callouts_post_runs_after_a_failure_and_a_failing_pre_stops(drill_lab, tmp_path):
    """Pre/post callouts around drill steps: the post-callout of a step that failed (an injected
    failure) still runs, with ESXDR_OUTCOME=failed; a failing pre-callout stops the run (exit 3)
    before its step; everything is in the report."""
    from drill_fixtures import set_callouts

    dl = drill_lab
    log = tmp_path / "callouts.log"
    before = esx_dr(dl)
    set_callouts(dl, f"""\
      register: {{pre: [sh, -c, 'echo "pre $ESXDR_RUN $ESXDR_STEP" >> {log}']}}
      power: {{post: [sh, -c, 'echo "post $ESXDR_STEP $ESXDR_OUTCOME $ESXDR_VMS" >> {log}; echo logged']}}
      unregister: {{pre: [sh, -c, 'echo "maintenance window closed" >&2; exit 7'], runs: [test-cleanup]}}
""")
    try:
        dry = dl.ok("test", "start", "core", "--dry-run")
        assert "pre-callout: sh -c" in dry.stdout and "post-callout: sh -c" in dry.stdout
        assert not log.exists()  # dry-run shows callouts, runs none

        failed = dl.esxdr("test", "start", "core", env={"ESXDR_FAULT_FAIL": "drill-in-power"})
        assert failed.returncode == 4 and "injected failure at drill-in-power" in failed.stderr, failed.stderr
        first_power = next(s for s in json.loads(dl.ok("test", "start", "core", "--dry-run", "--json").stdout)
                           ["runbook"]["steps"] if s["kind"] == "power")
        assert log.read_text().splitlines() == [
            "pre test-start register", f"post {first_power['id']} failed {' '.join(first_power['params']['vms'])}"]
        rep = last_report(dl)
        assert rep["outcome"] == "failed"
        step = next(s for s in rep["steps"] if s["id"] == first_power["id"])
        assert step["outcome"] == "failed"
        assert [(c["phase"], c["outcome"], c["rc"], c["output"]) for c in step["callouts"]] == \
            [("post", "ok", 0, "logged")]
        assert "post-callout" in open(rep["report"]["html"]).read()

        # Re-run: continues at the failed step; register (done) is not repeated, nor its pre-callout.
        dl.ok("test", "start", "core")
        lines = log.read_text().splitlines()
        assert lines.count("pre test-start register") == 1
        powers = [s["id"] for s in last_report(dl)["steps"] if s["kind"] == "power"]
        assert [ln.split()[1:3] for ln in lines[2:]] == [[p, "done"] for p in powers]

        # A failing pre-callout stops cleanup before it unregisters anything (exit 3, named, with output).
        r = dl.esxdr("test", "cleanup", "core")
        assert r.returncode == 3, r.stderr
        assert "pre-callout of step unregister failed (exit 7)" in r.stderr and "maintenance window closed" in r.stderr
        assert set(esx_dr(dl)["vms"]) == {v["name"] for v in dl.seed["vms"]}  # still registered
    finally:
        set_callouts(dl, None)
    dl.ok("test", "cleanup", "core")
    assert esx_dr(dl) == before


def test_a_vm_missing_from_the_datastores_is_named_with_what_each_held(drill_lab):
    """The site file lists a VM that no datastore holds: the drill stops at register (exit 3) and
    says what each datastore held, so a wrong site file is told from a volume that came up empty."""
    from pathlib import Path

    dl = drill_lab
    before = esx_dr(dl)
    p = Path(dl.site)
    text = p.read_text()
    vms = text.index("    vms:\n")
    networks = text[text.index("        networks: ", vms):].split("\n", 1)[0]  # as the other VMs map theirs
    ghost = f"      ghost:\n        priority: 1\n{networks}\n"
    p.write_text(text.replace("    vms:\n", "    vms:\n" + ghost, 1))
    try:
        r = dl.esxdr("test", "start", "core")
        assert r.returncode == 3, r.stderr
        held: dict[str, list[str]] = {}
        for vm in dl.seed["vms"]:
            held.setdefault(vm["datastore"], []).append(vm["name"])
        seen = "; ".join(f"{ds}: {', '.join(sorted(held.get(ds, [])))}" for ds in sorted(dl.seed["datastores"]))
        assert f"VM(s) ghost not found on the drill datastores ({seen})" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
    finally:
        p.write_text(text)
    dl.ok("test", "cleanup", "core")
    assert esx_dr(dl) == before


def test_plan_discover_maps_production(drill_lab, tmp_path):
    """`esxdr plan discover` on the lab's production: datasets ↔ NAAs ↔ datastores ↔ VMs with one
    property read, stubs where the site file says nothing, YAML that merges into a valid site file."""
    import shutil

    import yaml
    from drill_fixtures import ESXDR, all_vms

    dl = drill_lab
    # The site file without its recovery plan: discover must find it all by itself.
    site = tmp_path / "site.yaml"
    shutil.copy(dl.site, site)
    text = site.read_text()
    start, end = text.index("    vms:\n"), text.index("    retention:\n")
    site.write_text(text[:start] + text[end:])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([ESXDR, "--site", str(site), *args], capture_output=True, text=True, timeout=120)

    r = run("--json", "plan", "discover", "core")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["requests"]["vsphere"] == 4  # service content, login, the host view, ONE RetrievePropertiesEx
    seeded = dl.seed["datastores"]
    assert {x["datastore"]: (x["naa"], x["vmfs_uuid"]) for x in d["datasets"]} == \
        {n: (s["naa"], s["uuid"]) for n, s in seeded.items()}
    prod = all_vms(dl, "esx-prod")
    assert {n: v["vmx"] for n, v in d["vms"].items()} == dict(prod)
    for v in d["vms"].values():
        assert v["priority"] == 3 and v["stub_priority"]
        assert v["networks"] == {"Prod-LAN": {"failover": "Prod-LAN", "test": "Prod-LAN", "stub": True}}

    out = tmp_path / "plan.yaml"
    w = run("plan", "discover", "core", "--write", str(out))
    assert w.returncode == 0 and f"wrote {out}" in w.stdout, w.stderr
    again = run("plan", "discover", "core", "--write", str(out))
    assert again.returncode == 2 and "not overwritten" in again.stderr and "--force" in again.stderr
    assert run("plan", "discover", "core", "--write", str(out), "--force").returncode == 0
    frag = yaml.safe_load(out.read_text())["protection_groups"]["core"]
    assert set(frag["vms"]) == {n for n, _ in prod}
    # Merged into the site file (its vms: block), the site validates and carries the .vmx paths.
    block = out.read_text().split("\n    vms:\n", 1)[1]
    merged = site.read_text().replace("    retention:\n", "    vms:\n" + block + "    retention:\n", 1)
    site.write_text(merged)
    assert run("site", "validate").returncode == 0
    assert {v.name: v.vmx for v in load_site(str(site)).group("core").vms} == dict(prod)
    bad = run("plan", "discover", "nosuch")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
