"""Replay real recorded vSphere responses to esxdr's own Session, without esxsim.

The data are vcrpy cassettes from pyvmomi 6.7.3's sdist (``tests/fixtures``), recorded by VMware
against a real vCenter 6.7 (build 9433931) that manages a real Dell PowerEdge ESXi 6.7 host
(``host-14``, named ``10.0.0.5``). Those cassettes hold one RetrievePropertiesEx per property
(pyVmomi's lazy reads), while esxdr asks for many paths of many objects in one call, so the
cassettes cannot be replayed byte for byte. Instead:

* every recorded RetrievePropertiesEx response is deserialized by pyVmomi's own
  ``SoapResponseDeserializer`` (with esxdr's API version, as esxdr's stub would) into the value of
  one top-level property of one object: the "world";
* :class:`ReplayStub` is esxdr's :class:`~esxdr.vsphere.session.CountingStub` with the HTTP
  transport replaced. Every request is still serialized by pyVmomi (so a method or argument the
  6.5 API does not know fails as it would on the wire), then answered:

  - RetrieveServiceContent and Login: the real recorded response bodies, deserialized;
  - RetrievePropertiesEx: esxdr's FilterSpec evaluated over the world as a property collector
    does it (ObjectSpec, TraversalSpec by type and path, SelectionSpec by name, PropertySpec by
    type, sub-paths like ``config.network`` walked inside the recorded top-level value, unset
    values left out of the propSet, an unknown path refused with InvalidProperty);
  - CreateContainerView: a view whose ``view`` is every recorded object of the asked types
    (the replay's own answer: the cassettes hold no ContainerView of this vCenter);
  - Logout: nothing. Any other method fails the test (:class:`ReplayMiss`).

What the replay invents is limited to that evaluation. Objects a recorded reference names but
the cassettes never describe (the host lists six VMs and two datastores; one VM and one datastore
were recorded) are left out of results and listed in :attr:`ReplayStub.unrecorded`, so a test can
say exactly what was left out. A path esxdr asks of a recorded object whose top-level property was
never recorded fails the test: the data cannot answer it, and guessing would prove nothing.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pyVmomi import SoapStubAdapter, VmomiSupport, vim, vmodl
from pyVmomi.SoapAdapter import SoapResponseDeserializer

from esxdr.site.model import VsphereEndpoint
from esxdr.vsphere.session import API_VERSION, CountingStub, Session

DATA = Path(__file__).resolve().parent / "data"
PYVMOMI = DATA / "pyvmomi-6.7.3"
PC = vmodl.query.PropertyCollector

# The cassettes of one vCenter (the same session cookie realm, the same host-14 / datastore-15 /
# vm-22 ids, recorded on 2018-12-18).
WORLD_CASSETTES = ("test_json_host_explode.yaml", "test_json_datastore_explode.yaml",
                   "test_json_vm_explode_type.yaml")
SESSION_CASSETTE = "test_json_host_explode.yaml"  # its RetrieveServiceContent and Login


class ReplayMiss(AssertionError):
    """esxdr asked something the recorded data cannot answer."""


# --------------------------------------------------------------------------- the cassettes
class _CassetteLoader(yaml.SafeLoader):
    """vcrpy 1.x wrote ``!!python/unicode`` tags (Python 2); they are plain strings."""


_CassetteLoader.add_constructor("tag:yaml.org,2002:python/unicode", lambda loader, node: loader.construct_scalar(node))


@dataclass(frozen=True)
class Interaction:
    method: str  # the SOAP method of the request, or the HTTP method for a GET
    request: str
    response: str


@functools.cache
def interactions(name: str) -> tuple[Interaction, ...]:
    doc = yaml.load((PYVMOMI / name).read_text(encoding="utf-8"), Loader=_CassetteLoader)
    out = []
    for it in doc["interactions"]:
        body = it["request"]["body"] or ""
        m = re.search(r"<soapenv:Body><(\w+)", body)
        out.append(Interaction(m.group(1) if m else it["request"]["method"], body, it["response"]["body"]["string"]))
    return tuple(out)


def recorded_response(name: str, method: str) -> str:
    """The first recorded response body of ``method`` in cassette ``name``."""
    for it in interactions(name):
        if it.method == method:
            return it.response
    raise ReplayMiss(f"{name} records no {method}")


_OBJ = re.compile(r'<objectSet><obj type="(\w+)">([^<]+)</obj>')
_PATH = re.compile(r"<pathSet>([^<]+)</pathSet>")


@dataclass
class Recorded:
    """One managed object as recorded: its type and its top-level properties (None = unset)."""

    ref: Any
    props: dict[str, Any] = field(default_factory=dict)


def _deserialize(body: str, result_type: Any, stub: Any) -> Any:
    return SoapResponseDeserializer(stub).Deserialize(body, result_type)


@functools.cache
def world() -> dict[str, Recorded]:
    """moid -> what the cassettes recorded of it, deserialized by pyVmomi with esxdr's API version."""
    stub = SoapStubAdapter(host="recorded-vcenter", port=443, version=API_VERSION)
    out: dict[str, Recorded] = {}
    for name in WORLD_CASSETTES:
        for it in interactions(name):
            if it.method != "RetrievePropertiesEx":
                continue
            objs, paths = _OBJ.findall(it.request), _PATH.findall(it.request)
            if len(objs) != 1 or len(paths) != 1:
                raise ReplayMiss(f"{name}: a RetrievePropertiesEx of {objs} {paths} is not one property of one object")
            (kind, moid), (path,) = objs[0], paths
            res = _deserialize(it.response, PC.RetrieveResult, stub)
            rec = out.get(moid)
            if rec is None:
                rec = out[moid] = Recorded(getattr(vim, kind)(moid, stub))
            if path in rec.props:
                continue  # the same property recorded twice in one cassette: the first answer stands
            val = None
            for oc in (res.objects if res else ()):
                for p in oc.propSet or ():
                    if p.name == path:
                        val = p.val
            rec.props[path] = val
    return out


# --------------------------------------------------------------------------- paths, as a collector walks them
def _prop_info(cls: Any, name: str) -> Any:
    try:
        return cls._GetPropertyInfo(name)
    except AttributeError:
        return None


def check_path(kind: Any, path: str) -> None:
    """Raise InvalidProperty, as a real property collector does, for a path ``kind`` lacks."""
    cls = kind
    for seg in path.split("."):
        info = _prop_info(cls, seg) if cls is not None else None
        if info is None:
            raise vmodl.query.InvalidProperty(name=path, msg=f"{path} is not a property path of {kind.__name__}")
        cls = info.type
        if issubclass(cls, list):
            cls = getattr(cls, "Item", None)


def resolve(rec: Recorded, path: str) -> Any:
    head, _, rest = path.partition(".")
    if head not in rec.props:
        raise ReplayMiss(f"{rec.ref} was recorded, but not its property {head!r} (asked: {path}); the replay cannot "
                         "answer it: record it, or do not assert what depends on it")
    val = rec.props[head]
    for seg in rest.split(".") if rest else ():
        if val is None:
            return None
        val = getattr(val, seg)
    return val


# --------------------------------------------------------------------------- the stub
class _ReplayTransport(SoapStubAdapter):
    """Stands where SoapStubAdapter's HTTP exchange is: CountingStub's ``super().InvokeMethod`` lands here."""

    recorded_session: str = SESSION_CASSETTE
    unrecorded: set[str]
    calls: list[str]
    synthetic: dict[str, Any]
    _views: dict[str, tuple[Any, ...]]

    def InvokeMethod(self, mo: Any, info: Any, args: Any, outerStub: Any = None) -> Any:  # noqa: N802 - pyVmomi's name
        stub = outerStub or self
        # pyVmomi builds the request as it would for the wire (raises MethodNotFound for a method
        # newer than the stub's version); the text itself is not needed further.
        self.SerializeRequest(mo, info, args)
        name = info.wsdlName
        self.calls.append(name)
        if name in ("RetrieveServiceContent", "Login"):
            return _deserialize(recorded_response(self.recorded_session, name), info.result, stub)
        if name == "Logout":
            return None
        if name == "CreateContainerView":
            _container, types, _recursive = args
            view = vim.view.ContainerView(f"session[fidelity-replay]view-{len(self._views) + 1}", stub)
            self._views[view._moId] = tuple(types)
            return view
        if name == "RetrievePropertiesEx":
            return self._retrieve(args[0], stub)
        if name in self.synthetic:
            # Only a test that exercises a parser for its field reads (not for values) sets these.
            return self.synthetic[name](*args)
        raise ReplayMiss(f"the recorded data hold no answer to {name} (esxdr called it on {mo})")

    # -- the property collector
    def _value(self, ref: Any, path: str) -> Any:
        if ref._moId in self._views:
            if path != "view":
                raise ReplayMiss(f"a ContainerView of the replay has only 'view', asked {path!r}")
            types = self._views[ref._moId]
            return [r.ref for r in world().values() if isinstance(r.ref, types)]
        rec = world().get(ref._moId)
        if rec is None:
            return None
        return resolve(rec, path)

    def _known(self, ref: Any) -> bool:
        return ref._moId in self._views or ref._moId in world()

    def _retrieve(self, specs: Iterable[Any], stub: Any) -> Any:
        objects = [oc for spec in specs for oc in self._evaluate(spec, stub)]
        return PC.RetrieveResult(objects=objects) if objects else None

    def _evaluate(self, spec: Any, stub: Any) -> list[Any]:
        """One FilterSpec, as a property collector evaluates it."""
        named: dict[str, Any] = {}

        def collect(sel: Iterable[Any]) -> None:
            for s in sel or ():
                if isinstance(s, PC.TraversalSpec) and s.name and s.name not in named:
                    named[s.name] = s
                    collect(s.selectSet)

        for os_ in spec.objectSet:
            collect(os_.selectSet)
        reached: dict[str, Any] = {}
        seen: set[tuple[str, str]] = set()

        def visit(ref: Any, skip: bool, select: Iterable[Any]) -> None:
            if not self._known(ref):
                self.unrecorded.add(f"{type(ref).__name__.rsplit('.', 1)[-1]}:{ref._moId}")
                return
            if not skip:
                reached.setdefault(ref._moId, ref)
            for s in select or ():
                ts = s if isinstance(s, PC.TraversalSpec) else named.get(s.name)
                if ts is None:
                    raise ReplayMiss(f"SelectionSpec {s.name!r} names no TraversalSpec of the filter")
                if not isinstance(ref, ts.type) or (ref._moId, ts.name or ts.path) in seen:
                    continue
                seen.add((ref._moId, ts.name or ts.path))
                check_path(ts.type, ts.path)
                val = self._value(ref, ts.path)
                for nxt in (val if isinstance(val, list) else [val] if val is not None else []):
                    visit(nxt, bool(ts.skip), ts.selectSet)

        for os_ in spec.objectSet:
            visit(os_.obj, bool(os_.skip), os_.selectSet)
        out = []
        for moid, ref in reached.items():
            props = []
            for ps in spec.propSet:
                if not isinstance(ref, ps.type):
                    continue
                if ps.all:
                    raise ReplayMiss("PropertySpec all=True: esxdr never asks for every property")
                for path in ps.pathSet or ():
                    check_path(ps.type, path)
                    val = self._value(ref, path)
                    if val is not None:  # a collector leaves unset properties out
                        props.append(vmodl.DynamicProperty(name=path, val=val))
            out.append(PC.ObjectContent(obj=type(ref)(moid, stub), propSet=props))
        return out


class ReplayStub(CountingStub, _ReplayTransport):
    """esxdr's CountingStub (request counting, re-login) over the recorded vCenter."""

    def __init__(self) -> None:
        super().__init__(host="recorded-vcenter", port=443, version=API_VERSION)
        self.unrecorded = set()
        self.calls = []
        self.synthetic = {}  # method -> answer built by a test; never recorded data
        self._views = {}


def endpoint(kind: str = "vcenter") -> VsphereEndpoint:
    return VsphereEndpoint(name="recorded-vc67", role="dr", url="https://recorded-vcenter/sdk",
                           user="my_user", kind=kind)  # type: ignore[arg-type]


def session(kind: str = "vcenter") -> Session:
    """esxdr's Session, logged in through the recorded RetrieveServiceContent and Login."""
    s = Session(endpoint(kind), ReplayStub(), password="my_pass")
    s.login()
    return s


def version_name(version: str) -> str:
    """``vim.version.version11`` -> ``6.5`` (pyVmomi's own map), for messages."""
    return VmomiSupport.versionIdMap.get(version, version)
