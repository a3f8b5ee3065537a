"""The DR host workflow: HOST (a standalone ESXi, a host of a DR vCenter, or the vCenter itself)
observed, planned against the site file's dr_network (esxdr.plan.host), applied and verified
(esxdr.vsphere.host). A vCenter's hosts are read at once and applied in parallel. `esxdr host`
only parses, calls and prints.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from esxdr.errors import ConflictError, UsageError, VsphereError
from esxdr.plan.host import plan_host, plan_hosts, select_hosts
from esxdr.vsphere.chap import ChapRecords
from esxdr.vsphere.host import CreatedRecords, apply_plan, apply_plans, observe, observe_hosts, verify_hosts
from esxdr.vsphere.session import connect
from esxdr.vsphere.storage import verify_storage

if TYPE_CHECKING:
    from esxdr.site.model import Site

Say = Callable[[str], None]


# --------------------------------------------------------------------------- what HOST names
def _pick_host(site: Site, name: str | None, need_network: bool = True) -> tuple[str, Any, Any]:
    """(host name, endpoint, HostNetwork or None) for HOST, or the only DR host."""
    if name is None:
        candidates = list(site.dr_network) or [n for n, e in site.vsphere.items() if e.role == "dr" and e.kind == "esxi"]
        if len(candidates) != 1:
            vcs = [n for n, e in site.vsphere.items() if e.role == "dr" and e.kind == "vcenter"]
            raise UsageError("name the host: " + (f"one of {', '.join(candidates + vcs)}" if candidates or vcs
                                                  else "the site file has no dr_network hosts"),
                             hint="esxdr host plan HOST (a DR vCenter's name acts on all its hosts)")
        name = candidates[0]
    network = site.dr_network.get(name)
    if network is None and need_network:
        raise UsageError(f"no dr_network entry for host {name!r} in {site.path}",
                         hint="known: " + (", ".join(site.dr_network) or "none"))
    endpoint = site.vsphere.get(network.endpoint) if network is not None and network.endpoint else None
    endpoint = endpoint or site.endpoint_for_host(name)
    if endpoint is None:
        raise UsageError(f"no vsphere endpoint manages host {name!r}",
                         hint="add it under vsphere: (kind esxi), or list it in a DR vCenter's hosts:")
    return name, endpoint, network


@dataclass
class HostTarget:
    """What a command acts on: one standalone host, or hosts of a vCenter (``names``)."""

    endpoint: Any
    name: str = ""  # standalone: the host; vCenter: the endpoint
    network: Any = None  # standalone: its HostNetwork
    names: list[str] | None = None  # vCenter: the hosts, in site order
    networks: dict[str, Any] = field(default_factory=dict)

    @property
    def vcenter(self) -> bool:
        return self.names is not None


def resolve(site: Site, name: str | None, only: str | None, need_network: bool = True) -> HostTarget:
    """Resolve HOST / --host to a standalone host or to hosts of a DR vCenter."""

    def vcenter(ep: Any, pick: str | None) -> HostTarget:
        names = select_hosts(ep.name, ep.hosts, list(site.dr_network), pick, need_network=need_network)
        return HostTarget(endpoint=ep, name=ep.name, names=names,
                       networks={n: site.dr_network[n] for n in names if n in site.dr_network})

    ep = site.vsphere.get(name) if name else None
    if ep is not None and ep.kind == "vcenter":
        return vcenter(ep, only)
    if name is not None and only is not None and only != name:
        raise UsageError(f"--host {only} does not narrow {name}: it is a host, not a vCenter",
                         hint=f"esxdr host ... {only}, or name the vCenter that manages both")
    name = name or only
    if name is None:
        # No HOST: the only DR host, or the only DR vCenter all dr_network hosts belong to.
        owners = {e.name: e for h in site.dr_network if (e := site.endpoint_for_host(h)) is not None}
        if len(site.dr_network) > 1 and len(owners) == 1:
            only_ep = next(iter(owners.values()))
            if only_ep.kind == "vcenter":
                return vcenter(only_ep, None)
    host_name, endpoint, network = _pick_host(site, name, need_network)
    if endpoint.kind == "vcenter":
        return vcenter(endpoint, host_name)
    return HostTarget(endpoint=endpoint, name=host_name, network=network)


def _host_name(endpoint: object, name: str) -> str | None:
    # On a standalone ESXi the endpoint name need not be the host's own name.
    return None if getattr(endpoint, "kind", "esxi") == "esxi" else name


# --------------------------------------------------------------------------- plan, apply, verify
def plan(site: Site, t: HostTarget, *, prune: bool) -> tuple[Any, int]:
    """The plan (a host's, or every host's of a vCenter from one read) and the SOAP requests it took."""
    with connect(t.endpoint) as session:
        if t.vcenter:
            _, result, _, _ = _plan_all(site, t, session, prune)
        else:
            network = t.network
            state = observe(session, _host_name(t.endpoint, t.name),
                            bindings=bool(network.iscsi and (network.iscsi.bind or prune)))
            result = plan_host(network, state, prune=prune,
                               chap_secret=_chap(site, t).state(t.name, _chap_spec(network)),
                               created=_created(site, t).load(t.name))
        return result, session.requests


def raise_for_refusals(t: HostTarget, result: Any) -> None:
    """Exit 3 when the plan refuses something (a decision is needed first)."""
    if not result.refusals:
        return
    host_name, r = result.refusals[0] if t.vcenter else (t.name, result.refusals[0])
    raise ConflictError(f"{host_name}: {len(result.refusals)} refusal(s); first: {r.target}: {r.message}",
                        hint=r.hint or None)


def apply(site: Site, t: HostTarget, *, prune: bool, dry_run: bool, say: Say) -> Any:
    """Make the host(s) match the site file; the result carries its SOAP request count."""
    result: Any
    with connect(t.endpoint) as session:
        if t.vcenter:
            states, plans, chap, records = _plan_all(site, t, session, prune, applying=not dry_run)
            for p in plans.plans:
                for n in p.notes:
                    say(f"{p.host}: note: {n}")
            result = apply_plans(session, states, plans.plans, endpoint=t.name, dry_run=dry_run, progress=say,
                                 records=None if dry_run else records)
            for r in result.results:
                _record_chap(chap, r, t.networks.get(r.host))
        else:
            network = t.network
            state = observe(session, _host_name(t.endpoint, t.name),
                            bindings=bool(network.iscsi and (network.iscsi.bind or prune)))
            chap = _chap(site, t)
            records = _created(site, t)
            created = records.load(t.name) if dry_run else records.forget_absent(t.name, state)
            host_plan = plan_host(network, state, prune=prune, chap_secret=chap.state(t.name, _chap_spec(network)),
                                  created=created)
            for n in host_plan.notes:
                say(f"note: {n}")
            result = apply_plan(session, state, host_plan, dry_run=dry_run, progress=say,
                                records=None if dry_run else records)
            _record_chap(chap, result, network)
        result.requests = session.requests
        return result


def verify(t: HostTarget, expected: list[Any], *, timeout: float, rescan_mode: str, resolve: str | None,
           say: Say) -> tuple[dict[str, Any], Callable[[], str], Exception | None]:
    """Every expected LUN seen by its NAA and its VMFS volume mounted as itself, on the host or on
    every host of the vCenter: (the report as data, as text, the error to exit with or None)."""
    from esxdr.vsphere.storage import raise_for

    with connect(t.endpoint) as session:
        if not t.vcenter:
            result = verify_storage(session, _host_name(t.endpoint, t.name), expected, timeout=timeout,
                                    rescan_mode=rescan_mode, resolve=resolve, progress=say)
            result.requests = session.requests
            try:
                raise_for(result)
                error = None
            except (ConflictError, VsphereError) as e:
                error = e
            return result.to_dict(), result.render, error
        assert t.names is not None
        report, rescans, resolved = verify_hosts(session, t.names, expected, endpoint=t.name, timeout=timeout,
                                                 rescan_mode=rescan_mode, resolve=resolve, progress=say)
        requests = session.requests

    def render() -> str:
        return "\n".join([f"done: {a.describe()}" for a in resolved] + [report.render()])

    data = {**report.to_dict(), "resolved": [a.to_dict() for a in resolved], "rescans": rescans, "requests": requests}
    bad = [(r.host, c) for r in report.reports for c in r.checks if not c.ok]
    if not bad:
        return data, render, None
    host_name, first = bad[0]
    hosts_bad = sorted({h for h, _ in bad})
    if any(c.status == "unresolved" for _, c in bad):
        return data, render, ConflictError(f"{host_name}: VMFS volume(s) unresolved on {', '.join(hosts_bad)}; "
                                           f"{first.message}", hint=first.hint)
    return data, render, VsphereError(f"{len(bad)} LUN check(s) failed on {', '.join(hosts_bad)}; {host_name}: "
                                      f"naa.{first.naa}: {first.message}", hint=first.hint)


# --------------------------------------------------------------------------- CHAP secrets, records
def _chap(site: Site, t: HostTarget) -> ChapRecords:
    return ChapRecords(site.state_dir, getattr(t.endpoint, "name", t.name))


def _created(site: Site, t: HostTarget) -> CreatedRecords:
    """What esxdr created on the hosts of this endpoint (what --prune may remove)."""
    return CreatedRecords(site.state_dir, getattr(t.endpoint, "name", t.name))


def _chap_spec(network: Any) -> Any:
    return network.iscsi.chap if network is not None and network.iscsi is not None and network.iscsi.enabled \
        else None


def _record_chap(chap: Any, result: Any, network: Any) -> None:
    """Remember the fingerprint of the secret a done set_chap step put on the host."""
    spec = _chap_spec(network)
    if spec is not None and any(st.action.kind == "set_chap" and st.status == "done" for st in result.steps):
        chap.record(result.host, spec)


# --------------------------------------------------------------------------- vCenter: several hosts
def _bindings(t: HostTarget, prune: bool) -> bool:
    return any(n.iscsi and (n.iscsi.bind or prune) for n in t.networks.values())


def _plan_all(site: Site, t: HostTarget, session: Any, prune: bool, applying: bool = False) -> tuple[Any, Any, Any, Any]:
    """One read of all the vCenter's hosts, then a plan per host: (states, MultiHostPlan, ChapRecords,
    CreatedRecords). ``applying``: records of objects since removed by hand are dropped first."""
    assert t.names is not None
    states = observe_hosts(session, t.names, bindings=_bindings(t, prune))
    chap = _chap(site, t)
    records = _created(site, t)
    created = {h: records.forget_absent(h, st) if applying else records.load(h) for h, st in states.items()}
    plans = plan_hosts(t.name, t.networks, states, prune=prune,
                       chap_secrets={h: chap.state(h, _chap_spec(n)) for h, n in t.networks.items()},
                       created=created)
    return states, plans, chap, records
