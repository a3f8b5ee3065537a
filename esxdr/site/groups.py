"""protection_groups in the site file: datasets and their LUNs, retention, schedule, VMs and callouts."""

from __future__ import annotations

import dataclasses
import os
import re

import yaml

from esxdr import plugins  # esxdr's own kinds and those of installed plugins
from esxdr.site import values as v
from esxdr.site.model import (
    CALLOUT_RUNS,
    CALLOUT_STEP_KINDS,
    KEEP_PERIODS,
    Callout,
    KeepRules,
    LunSpec,
    NetworkMap,
    ProtectionGroup,
    RetentionPolicy,
    Schedule,
    VmSpec,
)
from esxdr.site.nodes import Mark, Reader, Section, did_you_mean, join, mark_of

GROUP_KEYS = ("source", "destination", "source_root", "dr_root", "datasets", "incremental", "retention",
              "schedule", "rpo", "parallel", "compression", "bandwidth_limit", "mbuffer", "consistency",
              "vsphere_production", "vsphere_dr", "vms", "callouts", "bookmarks", "drill_max_age")
CALLOUT_KEYS = ("pre", "post", "runs", "timeout")
LUN_KEYS = ("name", "naa", "datastore", "vmfs_uuid")
RETENTION_KEYS = ("source", "destination", "prune_foreign")
KEEP_KEYS = (*KEEP_PERIODS, "last")
SCHEDULE_KEYS = ("every", "cron", "timezone")
VM_KEYS = ("priority", "depends_on", "networks", "boot_timeout", "shutdown_timeout", "vmx")
NETMAP_KEYS = ("failover", "test")
INCREMENTAL = ("intermediate", "direct")
COMPRESSION = ("auto", "zstd", "lz4", "none")
MBUFFER = ("auto", "on", "off")
CONSISTENCY = ("crash", "application")


class GroupReader:
    """Reads ``protection_groups:``; every problem goes to the reader with its position."""

    def __init__(self, reader: Reader):
        self.r = reader

    def groups(self, node: yaml.Node | None) -> dict[str, ProtectionGroup]:
        out: dict[str, ProtectionGroup] = {}
        for name, vnode, where in self.r.entries(node, "protection_groups", "protection groups"):
            path = join("protection_groups", name)
            try:
                v.check_group_name(name)
            except v.Invalid as e:
                self.r.error(where, path, e.message, e.hint)
                continue
            group = self.group(name, vnode, path, where)
            if group is not None:
                out[name] = group
        return out

    def group(self, name: str, node: yaml.Node, path: str, where: Mark) -> ProtectionGroup | None:
        r = self.r
        g = r.mapping(node, path, GROUP_KEYS, where, "protection group settings")
        if g is None:
            return None
        source = g.text("source", required=True, hint="the production storage server, e.g. source: ss1")
        destination = g.text("destination", required=True, hint="the DR storage server, e.g. destination: ss2")
        source_root = g.text("source_root", required=True, check=v.check_zfs_name,
                             hint="the dataset the LUNs live under on the source, e.g. source_root: sp1/iscsi")
        dr_root = g.text("dr_root", required=True, check=v.check_zfs_name,
                         hint="where they go on the DR side, e.g. dr_root: rp1/iscsi")
        datasets, luns = self.datasets(g, source_root)
        incremental = g.choice("incremental", INCREMENTAL, default="intermediate")
        retention = self.retention(g)
        schedule = self.schedule(g)
        rpo = g.scalar("rpo", v.parse_duration, required=True, what="a duration",
                       hint="the recovery point objective, e.g. rpo: 4h (status fails when the newest "
                            "replicated snapshot is older)")
        if rpo == 0:
            r.error(g.node("rpo") or g.where, g.p("rpo"), "rpo must be longer than 0s")
        parallel = g.integer("parallel", default=4, lo=1, hi=64)
        compression = g.choice("compression", COMPRESSION, default="auto")
        bandwidth = g.scalar("bandwidth_limit", v.parse_size, what="a size")
        if bandwidth == 0:
            r.error(g.node("bandwidth_limit") or g.where, g.p("bandwidth_limit"),
                    "bandwidth_limit 0 would stop replication", "remove it (or set null) for no limit")
        mbuffer = g.choice("mbuffer", MBUFFER, default="auto")
        consistency = g.choice("consistency", CONSISTENCY, default="crash")
        vsphere_production = g.text("vsphere_production")
        vsphere_dr = g.text("vsphere_dr")
        vms = self.vms(g)
        callouts = self.callouts(g)
        return ProtectionGroup(
            name=name, source=source or "", destination=destination or "", source_root=source_root or "",
            dr_root=dr_root or "", datasets=datasets, incremental=incremental or "intermediate",  # type: ignore[arg-type]
            retention=retention, schedule=schedule, rpo_seconds=rpo or 0, parallel=parallel or 4,
            compression=compression or "auto", bandwidth_limit=bandwidth or None,  # type: ignore[arg-type]
            mbuffer=mbuffer or "auto", consistency=consistency or "crash",  # type: ignore[arg-type]
            vsphere_production=vsphere_production, vsphere_dr=vsphere_dr, vms=vms, line=where[0], luns=luns,
            callouts=callouts, bookmarks=bool(g.flag("bookmarks", default=False)),
            drill_max_age_seconds=drill_max_age_of(g))

    def datasets(self, g: Section, root: str | None) -> tuple[tuple[str, ...], dict[str, LunSpec]]:
        r = self.r
        node = g.node("datasets")
        if node is None:
            g.missing("datasets", "list the datasets (LUNs) replicated together, e.g. datasets: [lun0, lun1]")
            return (), {}
        out: list[str] = []
        luns: dict[str, LunSpec] = {}
        seen: dict[str, int] = {}
        items = r.sequence(node, g.p("datasets"), "dataset names")
        if isinstance(node, yaml.SequenceNode) and not items:
            r.error(node, g.p("datasets"), "lists no datasets")
        for i, item in enumerate(items):
            path = join(g.p("datasets"), i)
            r.marks[path] = mark_of(item)
            spec: LunSpec | None = None
            if isinstance(item, yaml.MappingNode):
                lun = r.mapping(item, path, LUN_KEYS, mark_of(item))
                assert lun is not None
                text = lun.text("name", required=True, hint="the dataset, e.g. name: lun0")
                spec = LunSpec(dataset="", naa=lun.text("naa", check=v.check_naa), datastore=lun.text("datastore"),
                               vmfs_uuid=lun.text("vmfs_uuid", check=v.check_vmfs_uuid), line=mark_of(item)[0])
            else:
                text = r.text(item, path, "a dataset name")
            if text is None or root is None:
                continue
            full = self._dataset_name(text, root, item, path)
            if full is None:
                continue
            if full in seen:
                r.error(item, path, f"{full} is listed twice (also datasets[{seen[full]}])")
                continue
            seen[full] = i
            out.append(full)
            if spec is not None:
                luns[full] = dataclasses.replace(spec, dataset=full)
        return tuple(out), luns

    def _dataset_name(self, text: str, root: str, node: yaml.Node, path: str) -> str | None:
        """Datasets are written relative to source_root (lun0) or in full (sp1/iscsi/lun0)."""
        pool = root.split("/", 1)[0]
        absolute = text == pool or text.startswith(pool + "/")
        full = text if absolute else f"{root}/{text}"
        try:
            v.check_zfs_name(full)
        except v.Invalid as e:
            self.r.error(node, path, e.message, e.hint)
            return None
        if absolute and not v.zfs_under(full, root):
            self.r.error(node, path, f"{full} is not under source_root {root}",
                         "datasets must live under source_root; write them relative to it (lun0) or in full")
            return None
        return full

    def retention(self, g: Section) -> RetentionPolicy:
        r = self.r
        node = g.node("retention")
        hint = 'e.g. retention: {source: "48h 7d", destination: "48h 30d 12w 12m"}'
        if node is None:
            g.missing("retention", hint)
            return RetentionPolicy()
        path = g.p("retention")
        if isinstance(node, yaml.ScalarNode):  # one rule for both sides
            rules = self.keep_rules(node, path)
            return RetentionPolicy(source=rules, destination=rules)
        sec = r.mapping(node, path, RETENTION_KEYS, g.key_mark("retention"))
        if sec is None:
            return RetentionPolicy()
        sides = {}
        for side in ("source", "destination"):
            if (snode := sec.node(side)) is None:
                sec.missing(side, f'keep rules for the {side} side, e.g. {side}: "48h 30d 12w 12m"')
                sides[side] = KeepRules()
            else:
                sides[side] = self.keep_rules(snode, sec.p(side), sec.key_mark(side))
        return RetentionPolicy(source=sides["source"], destination=sides["destination"],
                               prune_foreign=bool(sec.flag("prune_foreign", default=False)))

    def keep_rules(self, node: yaml.Node, path: str, where: Mark | None = None) -> KeepRules:
        r = self.r
        if isinstance(node, yaml.ScalarNode):
            rules = r.checked(node, path, v.parse_keep_rules, "keep rules")
            if rules is None:
                return KeepRules()
        else:
            sec = r.mapping(node, path, KEEP_KEYS, where or mark_of(node), "keep rules")
            if sec is None:
                return KeepRules()
            counts = {k: sec.integer(k, lo=0, default=None) for k in KEEP_KEYS}
            rules = KeepRules(**{k: n for k, n in counts.items() if n is not None})
        if not any(getattr(rules, k) for k in KEEP_KEYS):
            r.error(node, path, "keeps no snapshots at all",
                    "keep at least one, e.g. last: 1 (the newest common snapshot is never pruned anyway)")
        return rules

    def schedule(self, g: Section) -> Schedule:
        r = self.r
        s = g.section("schedule", SCHEDULE_KEYS)
        if s is None:
            return Schedule()
        every = s.scalar("every", v.parse_duration, what="a duration")
        if every == 0:
            r.error(s.node("every") or s.where, s.p("every"), "every must be longer than 0s")
        cron = s.text("cron", check=v.check_cron)
        timezone = s.text("timezone", default="UTC", check=v.check_timezone)
        if "every" in s and "cron" in s:
            r.error(s.key_mark("cron"), s.p("cron"), "every and cron are both set", "keep one of them")
        elif "every" not in s and "cron" not in s:
            s.missing("every", 'e.g. schedule: {every: 1h} or schedule: {cron: "0 */4 * * *"}')
        return Schedule(every_seconds=every or None, cron=cron, timezone=timezone or "UTC")

    def vms(self, g: Section) -> tuple[VmSpec, ...]:
        r = self.r
        out: list[VmSpec] = []
        for name, node, where in r.entries(g.node("vms"), g.p("vms"), "VMs"):
            path = join(g.p("vms"), name)
            vm = r.mapping(node, path, VM_KEYS, where, "VM settings")
            if vm is None:
                continue
            networks: dict[str, NetworkMap] = {}
            for pg, nnode, nwhere in r.entries(vm.node("networks"), vm.p("networks"), "port group mappings"):
                npath = join(vm.p("networks"), pg)
                m = r.mapping(nnode, npath, NETMAP_KEYS, nwhere, "failover/test port groups")
                if m is None:
                    continue
                failover = m.text("failover", required=True, hint="the DR port group used by a real failover")
                test = m.text("test", required=True, hint="the isolated DR port group used by drills")
                if failover and test:
                    networks[pg] = NetworkMap(failover=failover, test=test)
            boot = vm.scalar("boot_timeout", v.parse_duration, default=300, what="a duration")
            shutdown = vm.scalar("shutdown_timeout", v.parse_duration, default=300, what="a duration")
            for key, value in (("boot_timeout", boot), ("shutdown_timeout", shutdown)):
                if value == 0:
                    r.error(vm.node(key) or where, vm.p(key), f"{key} must be longer than 0s")
            out.append(VmSpec(name=name, priority=vm.integer("priority", default=3, lo=1, hi=5) or 3,
                              depends_on=vm.strings("depends_on", "VM names") or (), networks=networks,
                              boot_timeout_seconds=boot or 300, shutdown_timeout_seconds=shutdown or 300,
                              line=where[0], vmx=vm.text("vmx", check=_check_vmx_path)))
        return tuple(out)

    def callouts(self, g: Section) -> tuple[Callout, ...]:
        """``callouts: {STEP: {pre: CMD, post: CMD, runs: [KIND…], timeout: DURATION}}``."""
        r = self.r
        out: list[Callout] = []
        for step, node, where in r.entries(g.node("callouts"), g.p("callouts"), "step callouts"):
            path = join(g.p("callouts"), step)
            kind, _, rest = step.partition(":")
            if kind not in CALLOUT_STEP_KINDS or (_ and not rest):
                close = did_you_mean(kind, CALLOUT_STEP_KINDS)
                r.error(where, path, f"{step!r} is not a runbook step",
                        (f"{close} " if close else "")
                        + "name a step kind (" + ", ".join(CALLOUT_STEP_KINDS[:10])
                        + ", …) or one step id such as power:1:1 (esxdr test start --dry-run --json lists them)")
                continue
            c = r.mapping(node, path, CALLOUT_KEYS, where, "pre/post commands")
            if c is None:
                continue
            pre, pre_plugin = self._callout_action(c, "pre")
            post, post_plugin = self._callout_action(c, "post")
            if "pre" not in c and "post" not in c:
                r.error(where, path, "a callout needs a pre or a post command (or both)",
                        "e.g. post: [/usr/local/bin/notify, --channel, dr]")
            runs = c.strings("runs", "run kinds", check=_check_run) or ()
            timeout = c.scalar("timeout", v.parse_duration, default=300, what="a duration")
            if timeout == 0:
                r.error(c.node("timeout") or where, c.p("timeout"), "timeout must be longer than 0s")
            out.append(Callout(step=step, pre=pre, post=post, pre_plugin=pre_plugin, post_plugin=post_plugin,
                               runs=runs, timeout_seconds=timeout or 300, line=where[0]))
        return tuple(out)

    def _callout_action(self, c: Section, key: str) -> tuple[tuple[str, ...] | None,
                                                             tuple[str, tuple[tuple[str, str], ...]] | None]:
        """A command (a list of words or one string), or ``{plugin: NAME, with: {KEY: VALUE}}``: a
        kind of callout a plugin package registers (esxdr.callouts entry point, docs/plugins.md)."""
        node = c.node(key)
        if not isinstance(node, yaml.MappingNode):
            return self._callout_command(c, key), None
        r, path = self.r, c.p(key)
        p = r.mapping(node, path, ("plugin", "with"), mark_of(node), "a plugin callout")
        if p is None:
            return None, None
        name = p.text("plugin", required=True)
        if name is None:
            return None, None

        known = plugins.names("esxdr.callouts")
        if name not in known:
            r.error(p.node("plugin") or node, p.p("plugin"), f"no callout plugin {name!r} is installed",
                    f"installed: {', '.join(known) or 'none'}; a plugin package registers more (docs/plugins.md)")
        args: list[tuple[str, str]] = []
        for k, vnode, _w in r.entries(p.node("with"), p.p("with"), "plugin arguments"):
            value = r.text(vnode, join(p.p("with"), k), "a string")
            if value is not None:
                args.append((k, value))
        return None, (name, tuple(args))

    def _callout_command(self, c: Section, key: str) -> tuple[str, ...] | None:
        node = c.node(key)
        if node is None:
            return None
        argv = self.r.command(node, c.p(key))
        if not argv:
            return None
        prog = argv[0]
        if "/" in prog:  # a path: relative to the site file's directory, like every path in it
            full = os.path.normpath(os.path.join(self.r.base_dir, os.path.expanduser(prog)))
            if self.r.check_files and not (os.path.isfile(full) and os.access(full, os.X_OK)):
                self.r.error(node, c.p(key), f"{full} is not an executable file",
                             f"chmod +x {full}" if os.path.isfile(full) else
                             "the path is relative to the site file's directory" if not os.path.isabs(
                                 os.path.expanduser(prog)) else None)
            argv = (full, *argv[1:])
        return argv


def drill_max_age_of(sec: Section) -> int | None:
    """``drill_max_age`` of the site or of a group: a duration > 0, or None when not set."""
    age = sec.scalar("drill_max_age", v.parse_duration, what="a duration",
                     hint="how old the last successful drill may be, e.g. drill_max_age: 90d")
    if age == 0:
        sec.r.error(sec.node("drill_max_age") or sec.where, sec.p("drill_max_age"),
                    "drill_max_age must be longer than 0s", "remove it for no limit")
        return None
    return age


def _check_vmx_path(text: str) -> str:
    if not re.match(r"^\[[^\]]+\] ?\S.*\.vmx$", text):
        raise v.Invalid(f"{text!r} is not a datastore path of a .vmx file",
                        "write it as vSphere shows it: \"[datastore] dir/name.vmx\" (esxdr plan discover writes it)")
    return text


def _check_run(text: str) -> str:
    if text not in CALLOUT_RUNS:
        close = did_you_mean(text, CALLOUT_RUNS)
        raise v.Invalid(f"{text!r} is not one of {', '.join(CALLOUT_RUNS)}",
                        close)
    return text
