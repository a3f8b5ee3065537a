"""The vSphere API esxdr uses, checked against pyVmomi's type metadata and esxdr's minimum version.

esxdr speaks the vSphere 6.5 API (``API_VERSION`` in esxdr/vsphere/session.py, docs/vsphere.md):
every PropertyCollector path, method, method argument and data-object field it uses must exist
in that API. pyVmomi's metadata (VmomiSupport: each managed type's methods and properties, each
data type's properties, each with the version it appeared in) is VMware's, not ours.

Why it matters on the wire: pyVmomi silently leaves out of a request any data-object field newer
than the stub's version, refuses a newer method locally (MethodNotFound), and a server refuses a
property path it does not know (InvalidProperty). None of that shows against esxsim.

Coverage: the lists below are the test's data; tests here extract from esxdr's code (AST) every
call, construction and path-looking string literal, and fail when one is missing from the lists,
so a new use cannot slip past. Items newer than the minimum are allowed only in ``NEWER_ALLOWED``,
each with its reason.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyVmomi import VmomiSupport, vim, vmodl

from esxdr.vsphere.session import API_VERSION

ROOT = Path(__file__).resolve().parents[2]
SCANNED = sorted((ROOT / "esxdr" / "vsphere").glob("*.py")) + [ROOT / "esxdr" / "replication" / "consistency.py"]
MIN_VERSION = "vim.version.version11"
MIN_RELEASE = "6.5"

# --------------------------------------------------------------------------- the test's data
# Managed type -> the property paths esxdr asks of it (PropertySpec pathSet, TraversalSpec path,
# watch() paths). Type names are pyVmomi's, under vim / vmodl.
USED_PATHS: dict[str, tuple[str, ...]] = {
    "vim.HostSystem": ("name", "configManager.networkSystem", "configManager.storageSystem",
                       "configManager.datastoreSystem", "configManager.iscsiManager", "config.network",
                       "config.storageDevice", "config.certificate", "datastore", "vm", "network", "parent"),
    "vim.Datastore": ("name", "info", "summary.accessible", "summary.url", "vm", "browser"),
    "vim.VirtualMachine": ("name", "config.files.vmPathName", "config.guestId", "config.guestFullName",
                           "config.hardware.device", "runtime.powerState", "runtime.question", "runtime.host",
                           "guestHeartbeatStatus", "guest.toolsRunningStatus", "guest.guestFamily", "datastore",
                           "network"),
    "vim.Network": ("name",),
    "vim.Task": ("info.state", "info.error", "info.result"),
    "vim.view.ContainerView": ("view",),
    "vim.Folder": ("parent",),
    "vim.ComputeResource": ("parent", "resourcePool"),
    "vim.ClusterComputeResource": ("configurationEx",),
    "vim.Datacenter": ("vmFolder", "name"),
    "vim.vm.guest.GuestOperationsManager": ("processManager", "fileManager"),
}

# Method, as esxdr calls it (pyVmomi accepts the WSDL name or its own) -> the managed type.
METHODS: dict[str, str] = {
    "RetrieveContent": "vim.ServiceInstance",
    "CurrentTime": "vim.ServiceInstance",
    "Login": "vim.SessionManager",
    "Logout": "vim.SessionManager",
    "CreateContainerView": "vim.view.ViewManager",
    "RetrievePropertiesEx": "vmodl.query.PropertyCollector",
    "ContinueRetrievePropertiesEx": "vmodl.query.PropertyCollector",
    "CreateFilter": "vmodl.query.PropertyCollector",
    "WaitForUpdatesEx": "vmodl.query.PropertyCollector",
    "DestroyPropertyFilter": "vmodl.query.PropertyCollector.Filter",
    "AddVirtualSwitch": "vim.host.NetworkSystem",
    "UpdateVirtualSwitch": "vim.host.NetworkSystem",
    "RemoveVirtualSwitch": "vim.host.NetworkSystem",
    "AddPortGroup": "vim.host.NetworkSystem",
    "UpdatePortGroup": "vim.host.NetworkSystem",
    "RemovePortGroup": "vim.host.NetworkSystem",
    "AddVirtualNic": "vim.host.NetworkSystem",
    "UpdateVirtualNic": "vim.host.NetworkSystem",
    "RemoveVirtualNic": "vim.host.NetworkSystem",
    "UpdateSoftwareInternetScsiEnabled": "vim.host.StorageSystem",
    "UpdateInternetScsiAuthenticationProperties": "vim.host.StorageSystem",
    "AddInternetScsiSendTargets": "vim.host.StorageSystem",
    "RemoveInternetScsiSendTargets": "vim.host.StorageSystem",
    "AddInternetScsiStaticTargets": "vim.host.StorageSystem",
    "RemoveInternetScsiStaticTargets": "vim.host.StorageSystem",
    "RescanAllHba": "vim.host.StorageSystem",
    "RescanHba": "vim.host.StorageSystem",
    "RescanVmfs": "vim.host.StorageSystem",
    "ResolveMultipleUnresolvedVmfsVolumes": "vim.host.StorageSystem",
    "BindVnic": "vim.host.IscsiManager",
    "UnbindVnic": "vim.host.IscsiManager",
    "QueryBoundVnics": "vim.host.IscsiManager",
    "QueryUnresolvedVmfsVolumes": "vim.host.DatastoreSystem",
    "ResignatureUnresolvedVmfsVolume_Task": "vim.host.DatastoreSystem",
    "RenameDatastore": "vim.Datastore",
    "SearchDatastoreSubFolders_Task": "vim.host.DatastoreBrowser",
    "RegisterVM_Task": "vim.Folder",
    "UnregisterVM": "vim.VirtualMachine",
    "PowerOnVM_Task": "vim.VirtualMachine",
    "PowerOffVM_Task": "vim.VirtualMachine",
    "ShutdownGuest": "vim.VirtualMachine",
    "RebootGuest": "vim.VirtualMachine",
    "AnswerVM": "vim.VirtualMachine",
    "ReconfigVM_Task": "vim.VirtualMachine",
    "CreateSnapshot_Task": "vim.VirtualMachine",
    "RemoveSnapshot_Task": "vim.vm.Snapshot",
    "CancelTask": "vim.Task",
    "CreateCollectorForEvents": "vim.event.EventManager",
    "ReadNextEvents": "vim.event.EventHistoryCollector",
    "RewindCollector": "vim.event.EventHistoryCollector",
    "DestroyCollector": "vim.event.EventHistoryCollector",
    "StartProgramInGuest": "vim.vm.guest.ProcessManager",
    "ListProcessesInGuest": "vim.vm.guest.ProcessManager",
    "InitiateFileTransferToGuest": "vim.vm.guest.FileManager",
    "InitiateFileTransferFromGuest": "vim.vm.guest.FileManager",
    "DeleteFileInGuest": "vim.vm.guest.FileManager",
}

# Capitalised calls in the scanned code that are not vSphere methods, and what they are.
NOT_VSPHERE_CALLS: dict[str, str] = {
    "Event": "threading.Event",
    "Lock": "threading.Lock",
    "Thread": "threading.Thread",
    "GetConnection": "pyVmomi's stub connection pool (no request)",
    "InvokeMethod": "CountingStub's override of pyVmomi's dispatch",
    "HTTPConnection": "http.client (datastore and guest file HTTP)",
    "HTTPSConnection": "http.client (datastore and guest file HTTP)",
    "PEM_cert_to_DER_cert": "ssl",
    "SSLError": "ssl",
    "S_IMODE": "stat",
}

# Dotted string literals in the scanned code that are not property paths, and what they are.
NOT_PATHS: dict[str, str] = {
    "msg.uuid.altered": "a question's message id (vim.vm.Message.id)",
    "button.uuid.cancel": "a choice label of the msg.uuid.altered question",
    "button.uuid.movedTheVM": "a choice label of the msg.uuid.altered question",
    "button.uuid.copiedTheVM": "a choice label of the msg.uuid.altered question",
    "vim.version.version11": "the API version esxdr speaks",
}

# String values esxdr sends or compares, that vSphere defines as enums (the field itself is a
# plain string in the WSDL, so only this list ties the value to its enum).
ENUM_VALUES: dict[str, str] = {
    "chapRequired": "vim.host.InternetScsiHba.ChapAuthenticationType",
    "forceMount": "vim.host.UnresolvedVmfsResolutionSpec.VmfsUuidResolution",
    "sendTargetMethod": "vim.host.InternetScsiHba.StaticTarget.TargetDiscoveryMethod",
    "edit": "vim.vm.device.VirtualDeviceSpec.Operation",
    "guestToolsRunning": "vim.vm.GuestInfo.ToolsRunningStatus",
    "poweredOn": "vim.VirtualMachine.PowerState",
    "poweredOff": "vim.VirtualMachine.PowerState",
    "windowsGuest": "vim.vm.GuestOsDescriptor.GuestOsFamily",
    "linuxGuest": "vim.vm.GuestOsDescriptor.GuestOsFamily",
    "success": "vim.TaskInfo.State",
    "error": "vim.TaskInfo.State",
    "remove": "vmodl.query.PropertyCollector.Change.Op",
}

# Items newer than vSphere 6.5 that esxdr may use, and why that is safe. Keys: "Type.path",
# "Type.Method", "Type.Method(param)", "DataType.field".
NEWER_ALLOWED: dict[str, str] = {}


# --------------------------------------------------------------------------- pyVmomi metadata
def vtype(name: str) -> Any:
    return VmomiSupport.GetVmodlType(name)


def supported(version: str) -> bool:
    """Is an item of ``version`` part of the minimum API? (equal to it or older)"""
    return VmomiSupport.IsChildVersion(MIN_VERSION, version)


def release(version: str) -> str:
    return VmomiSupport.versionIdMap.get(version, version)


def method_info(type_name: str, name: str) -> Any:
    for m in vtype(type_name)._GetMethodList():
        if name in (m.name, m.wsdlName):
            return m
    return None


def walk_path(type_name: str, path: str) -> list[tuple[str, Any]]:
    """Each segment of ``path`` with its property info; AssertionError naming the first unknown one."""
    cls = vtype(type_name)
    out = []
    for i, seg in enumerate(path.split(".")):
        try:
            info = cls._GetPropertyInfo(seg)
        except AttributeError:
            raise AssertionError(f"{type_name}: {path!r}: {cls.__name__} has no property {seg!r}") from None
        out.append((seg, info))
        cls = info.type
        if issubclass(cls, list) and i < len(path.split(".")) - 1:
            raise AssertionError(f"{type_name}: {path!r}: {seg!r} is an array; a path cannot go through it")
    return out


# --------------------------------------------------------------------------- esxdr's code, parsed
Sources = list[tuple[str, ast.Module]]


@functools.cache
def _scanned() -> tuple[tuple[str, ast.Module], ...]:
    return tuple((str(p.relative_to(ROOT)), ast.parse(p.read_text(encoding="utf-8"), str(p))) for p in SCANNED)


def _trees(sources: Sources | None = None) -> Iterator[tuple[str, ast.Module]]:
    yield from (sources if sources is not None else _scanned())


def _chain(node: ast.AST) -> list[str] | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return parts[::-1]


def _where(label: str, node: ast.AST) -> str:
    return f"{label}:{node.lineno}"


_PC_ALIASES = ("PC", "pc")  # module or local aliases of vmodl.query.PropertyCollector


def _data_type(chain: list[str]) -> Any:
    """The pyVmomi data type a constructor chain names (vim.host.IpConfig, PC.FilterSpec), or None."""
    if chain[0] in _PC_ALIASES:
        chain = ["vmodl", "query", "PropertyCollector", *chain[1:]]
    if chain[0] not in ("vim", "vmodl"):
        return None
    obj: Any = vim if chain[0] == "vim" else vmodl
    for part in chain[1:]:
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, type) and issubclass(obj, VmomiSupport.DataObject) else None


def _strings(node: ast.AST | None) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)] \
        if node is not None else []


def _module_lists(tree: ast.Module) -> dict[str, ast.AST]:
    return {t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)}


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _type_name(node: ast.AST | None) -> str | None:
    chain = _chain(node) if node is not None else None
    if chain and chain[0] in ("vim", "vmodl"):
        return ".".join(chain)
    return None


def found_paths(sources: Sources | None = None) -> list[tuple[str | None, str, str]]:
    """(managed type or None when dynamic, path, where) for every path the code spells out."""
    out = []
    for p, tree in _trees(sources):
        consts = _module_lists(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            chain = _chain(node.func) or []
            last = chain[-1] if chain else ""
            if last == "PropertySpec":
                paths = _kw(node, "pathSet")
                if isinstance(paths, ast.Name) and paths.id in consts:
                    paths = consts[paths.id]
                for s in _strings(paths):
                    out.append((_type_name(_kw(node, "type")), s, _where(p, node)))
            elif last == "TraversalSpec":
                path = _kw(node, "path")
                vals = _strings(path)
                if isinstance(path, ast.Name):  # path=p in a comprehension over a literal tuple
                    for comp in ast.walk(tree):
                        for gen in getattr(comp, "generators", ()):
                            if isinstance(gen.target, ast.Name) and gen.target.id == path.id:
                                vals += _strings(gen.iter)
                for s in vals:
                    out.append((_type_name(_kw(node, "type")), s, _where(p, node)))
            elif last in ("watch", "wait_tasks"):
                arg = node.args[2] if last == "watch" and len(node.args) > 2 else \
                    _kw(node, "paths" if last == "watch" else "extra_paths")
                if isinstance(arg, ast.Name) and arg.id in consts:
                    arg = consts[arg.id]
                for s in _strings(arg):
                    out.append((None, s, _where(p, node)))
            elif chain[-2:] == ["paths", "update"]:
                for s in _strings(node):
                    out.append((None, s, _where(p, node)))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    re.fullmatch(r"[a-z][A-Za-z0-9]*(\.[a-z][A-Za-z0-9]*)+", node.value) and \
                    node.value not in NOT_PATHS:
                out.append((None, node.value, _where(p, node)))
    return out


def found_calls(sources: Sources | None = None) -> list[tuple[str, ast.Call, str]]:
    """(name, call, where) for every capitalised method-style call that is not a construction."""
    out = []
    for p, tree in _trees(sources):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr[:1].isupper():
                chain = _chain(node.func)
                if chain and chain[0] in ("vim", "vmodl"):
                    continue
                if chain and _data_type(chain) is not None:
                    continue
                out.append((node.func.attr, node, _where(p, node)))
    return out


def found_constructions(sources: Sources | None = None) -> list[tuple[Any, ast.Call, str]]:
    out = []
    for p, tree in _trees(sources):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                chain = _chain(node.func)
                t = _data_type(chain) if chain else None
                if t is not None:
                    out.append((t, node, _where(p, node)))
    return out


def found_field_writes(sources: Sources | None = None) -> list[tuple[Any, str, str]]:
    """``x.field = …`` where ``x`` was built from a vim/vmodl constructor in the same function."""
    out = []
    for p, tree in _trees(sources):
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            built: dict[str, Any] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
                    chain = _chain(node.value.func)
                    t = _data_type(chain) if chain else None
                    for tgt in node.targets:
                        if isinstance(tgt, ast.Name) and t is not None:
                            built[tgt.id] = t
            for node in ast.walk(fn):
                if isinstance(node, (ast.Assign, ast.AugAssign)):
                    for tgt in node.targets if isinstance(node, ast.Assign) else [node.target]:
                        if isinstance(tgt, ast.Attribute) and isinstance(tgt.value, ast.Name) and \
                                tgt.value.id in built:
                            out.append((built[tgt.value.id], tgt.attr, _where(p, node)))
    return out


def _listed_paths() -> set[str]:
    return {p for paths in USED_PATHS.values() for p in paths}


# --------------------------------------------------------------------------- the minimum version
def test_the_minimum_is_the_version_esxdr_speaks_and_documents():
    assert API_VERSION == MIN_VERSION
    assert release(MIN_VERSION) == MIN_RELEASE
    doc = (ROOT / "docs" / "vsphere.md").read_text(encoding="utf-8")
    assert f"vSphere {MIN_RELEASE} API (`{MIN_VERSION}`)" in doc
    assert "minimum" in doc.lower()


def test_newer_exceptions_are_really_newer_and_used():
    # An exception that is not needed, or no longer used, must go.
    assert all(reason.strip() for reason in NEWER_ALLOWED.values())
    needed = {k for k, _ in _newer_items()}
    assert set(NEWER_ALLOWED) == needed


# --------------------------------------------------------------------------- paths
@pytest.mark.parametrize("type_name,path", [(t, p) for t, ps in USED_PATHS.items() for p in ps])
def test_each_property_path_exists_in_the_minimum_api(type_name, path):
    t = vtype(type_name)
    assert issubclass(t, VmomiSupport.ManagedObject), f"{type_name} is not a managed type"
    assert supported(t._version) or f"{type_name}" in NEWER_ALLOWED, \
        f"{type_name} appeared in vSphere {release(t._version)}"
    for seg, info in walk_path(type_name, path):
        key = f"{type_name}.{path}"
        assert supported(info.version) or key in NEWER_ALLOWED, \
            f"{key}: {seg!r} appeared in vSphere {release(info.version)}, after {MIN_RELEASE}"


def path_problems(sources: Sources | None = None) -> list[str]:
    """Paths the code spells out that USED_PATHS lacks (under the type the code names)."""
    missing = []
    for type_name, path, where in found_paths(sources):
        ok = path in _listed_paths() if type_name is None else path in USED_PATHS.get(type_name, ())
        if not ok:
            missing.append(f"{where}: ({type_name or 'some type'}, {path!r}) is not in USED_PATHS")
    return missing


def test_every_path_the_code_spells_out_is_listed():
    missing = path_problems()
    assert not missing, ("add each to USED_PATHS in tests/fidelity/test_api_contract.py under its managed type "
                         "(the parametrized test then checks it against the API):\n" + "\n".join(missing))


def test_path_extraction_finds_the_inventory_read():
    # The extraction itself is checked on code whose paths are known (inventory.HOST_PROPS).
    from esxdr.vsphere import inventory

    got = {(t, p) for t, p, w in found_paths() if w.startswith("esxdr/vsphere/inventory.py")}
    assert {("vim.HostSystem", p) for p in inventory.HOST_PROPS} <= got
    assert {("vim.HostSystem", "datastore"), ("vim.view.ContainerView", "view")} <= got


# --------------------------------------------------------------------------- methods and their arguments
@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_exists_in_the_minimum_api(name):
    info = method_info(METHODS[name], name)
    assert info is not None, f"{METHODS[name]} has no method {name}"
    assert supported(info.version) or f"{METHODS[name]}.{name}" in NEWER_ALLOWED, \
        f"{METHODS[name]}.{name} appeared in vSphere {release(info.version)}, after {MIN_RELEASE}"


def _call_args(info: Any, call: ast.Call) -> tuple[list[str], list[str]]:
    """(parameters given, problems) for one call site."""
    params = list(info.params)
    problems = []
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return [], [f"{info.wsdlName}: *args / **kwargs cannot be checked"]
    if len(call.args) > len(params):
        problems.append(f"{info.wsdlName} takes {len(params)} arguments, given {len(call.args)}")
    given = [p.name for p in params[:len(call.args)]]
    names = {p.name for p in params}
    for k in call.keywords:
        if k.arg not in names:
            problems.append(f"{info.wsdlName} has no parameter {k.arg!r} (it has {', '.join(sorted(names))})")
        given.append(k.arg)
    for p in params:
        if not p.flags & VmomiSupport.F_OPTIONAL and p.name not in given:
            problems.append(f"{info.wsdlName}: required parameter {p.name!r} not given")
    return given, problems


def call_problems(sources: Sources | None = None) -> list[str]:
    """Unlisted capitalised calls, and listed ones whose arguments the method does not take, lacks,
    or has only since a version after the minimum."""
    problems = []
    for name, call, where in found_calls(sources):
        if name in NOT_VSPHERE_CALLS:
            continue
        if name not in METHODS:
            problems.append(f"{where}: {name} is neither in METHODS (with its managed type) nor in NOT_VSPHERE_CALLS")
            continue
        info = method_info(METHODS[name], name)
        given, bad = _call_args(info, call)
        problems += [f"{where}: {b}" for b in bad]
        for p in info.params:
            key = f"{METHODS[name]}.{name}({p.name})"
            if p.name in given and not supported(p.version) and key not in NEWER_ALLOWED:
                problems.append(f"{where}: {key} appeared in vSphere {release(p.version)}")
    return problems


def test_every_call_is_a_listed_method_with_arguments_it_takes_in_the_minimum_api():
    problems = call_problems()
    assert not problems, "\n".join(problems)


def test_what_is_named_not_vsphere_is_no_vsphere_method():
    names = set()
    for t in VmomiSupport.ListManagedTypes():
        for m in vtype(t)._GetMethodList():
            names |= {m.name, m.wsdlName}
    assert sorted(set(NOT_VSPHERE_CALLS) & names) == []


# --------------------------------------------------------------------------- data objects esxdr builds
def construction_problems(sources: Sources | None = None) -> list[str]:
    """Data objects built, and fields given or set on them, that the minimum API lacks; enum
    values that are not in their enum."""
    problems = []
    fields: list[tuple[Any, str, str, ast.AST | None]] = []
    for t, call, where in found_constructions(sources):
        if not supported(t._version) and t.__name__ not in NEWER_ALLOWED:
            problems.append(f"{where}: {t.__name__} appeared in vSphere {release(t._version)}")
        fields += [(t, k.arg, where, k.value) for k in call.keywords if k.arg]
    fields += [(t, f, where, None) for t, f, where in found_field_writes(sources)]
    for t, f, where, value in fields:
        try:
            info = t._GetPropertyInfo(f)
        except AttributeError:
            problems.append(f"{where}: {t.__name__} has no field {f!r}")
            continue
        key = f"{t.__name__}.{f}"
        if not supported(info.version) and key not in NEWER_ALLOWED:
            problems.append(f"{where}: {key} appeared in vSphere {release(info.version)}")
        enum = info.type
        if isinstance(value, ast.Constant) and isinstance(enum, type) and issubclass(enum, VmomiSupport.Enum) \
                and value.value not in enum.values:
            problems.append(f"{where}: {value.value!r} is not a {enum.__name__} ({', '.join(enum.values)})")
    return problems


def test_every_data_object_built_and_field_set_exists_in_the_minimum_api():
    problems = construction_problems()
    assert not problems, "\n".join(problems)


def test_the_construction_scan_sees_the_host_network_specs():
    built = {(t.__name__, w.split(":")[0]) for t, _, w in found_constructions()}
    assert ("vim.host.VirtualSwitch.Specification", "esxdr/vsphere/host.py") in built
    assert ("vmodl.query.PropertyCollector.FilterSpec", "esxdr/vsphere/inventory.py") in built
    writes = {(t.__name__, f) for t, f, _ in found_field_writes()}
    assert ("vim.host.VirtualSwitch.Specification", "bridge") in writes


# A module that breaks each rule once: the checks must name every break.
BROKEN = """
from pyVmomi import vim, vmodl
PC = vmodl.query.PropertyCollector

def read(pc, vm, ns, ss):
    pc.RetrievePropertiesEx([PC.FilterSpec(propSet=[
        PC.PropertySpec(type=vim.VirtualMachine, pathSet=["runtime.powerStat"])])], PC.RetrieveOptions())
    vm.PowerOnVM_Task(None, bogus=1)
    ns.AddVirtualSwitch()
    vm.InstantClone_Task(None)
    nic = vim.host.VirtualNic.Specification(mtu=9000, systemOwned=True)
    nic.pinnedPnik = "vmnic1"
    spec = vim.vm.device.VirtualDeviceSpec(operation="modify")
"""


def test_the_checks_catch_what_they_are_for():
    sources = [("broken.py", ast.parse(BROKEN))]
    assert path_problems(sources) == [  # found as a pathSet of a type, and as a dotted literal
        "broken.py:7: (vim.VirtualMachine, 'runtime.powerStat') is not in USED_PATHS",
        "broken.py:7: (some type, 'runtime.powerStat') is not in USED_PATHS"]
    assert call_problems(sources) == [
        "broken.py:8: PowerOnVM_Task has no parameter 'bogus' (it has host)",
        "broken.py:9: AddVirtualSwitch: required parameter 'vswitchName' not given",
        "broken.py:10: InstantClone_Task is neither in METHODS (with its managed type) nor in NOT_VSPHERE_CALLS",
    ]
    assert construction_problems(sources) == [
        "broken.py:11: vim.host.VirtualNic.Specification.systemOwned appeared in vSphere 7.0.0.0",
        "broken.py:13: 'modify' is not a vim.vm.device.VirtualDeviceSpec.Operation (add, remove, edit)",
        "broken.py:12: vim.host.VirtualNic.Specification has no field 'pinnedPnik'",  # set after construction
    ]
    with pytest.raises(AssertionError, match="has no property 'powerStat'"):
        walk_path("vim.VirtualMachine", "runtime.powerStat")


@pytest.mark.parametrize("value,enum", sorted(ENUM_VALUES.items()))
def test_enum_values_esxdr_sends_or_compares_exist(value, enum):
    t = vtype(enum)
    assert value in t.values, f"{value!r} is not one of {enum}: {', '.join(t.values)}"
    assert supported(t._version)


def test_every_listed_enum_value_is_in_the_code():
    literals = {n.value for _, tree in _trees() for n in ast.walk(tree)
                if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert sorted(set(ENUM_VALUES) - literals) == []


# --------------------------------------------------------------------------- managed object refs by name
def test_every_managed_type_named_for_a_ref_exists_in_the_minimum_api():
    problems = []
    for p, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "ref" \
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                name = "vim." + node.args[0].value
                try:
                    t = vtype(name)
                except (AttributeError, KeyError):
                    problems.append(f"{_where(p, node)}: no managed type {name}")
                    continue
                if not issubclass(t, VmomiSupport.ManagedObject) or not supported(t._version):
                    problems.append(f"{_where(p, node)}: {name} is not a managed type of vSphere {MIN_RELEASE}")
    assert not problems, "\n".join(problems)


# --------------------------------------------------------------------------- fields the parsers read, on real data
@functools.cache
def _in_hierarchy(cls: Any, name: str) -> bool:
    """Does some subtype of ``cls``'s topmost data type below DynamicData have field ``name``?"""
    root = next((b for b in reversed(cls.__mro__) if isinstance(b, type) and issubclass(b, vmodl.DynamicData)
                 and b is not vmodl.DynamicData), cls)
    for n in VmomiSupport.ListDataTypes():
        t = vtype(n)
        if isinstance(t, type) and issubclass(t, root):
            try:
                t._GetPropertyInfo(name)
                return True
            except AttributeError:
                pass
    return False


class _Reads:
    """Every data-object field esxdr's own code reads while it runs (attribute or getattr)."""

    def __init__(self) -> None:
        self.read: set[tuple[str, str]] = set()
        self.missing: set[tuple[str, str]] = set()
        self._esxdr = str(ROOT / "esxdr")

    def __enter__(self) -> _Reads:
        reads = self
        orig_get = VmomiSupport.DataObject.__getattribute__

        def getattribute(obj: Any, name: str) -> Any:
            if not name.startswith("_") and sys._getframe(1).f_code.co_filename.startswith(reads._esxdr):
                cls = type(obj)
                try:
                    cls._GetPropertyInfo(name)
                    reads.read.add((cls.__name__, name))
                except AttributeError:
                    # A method is not a field; a field of a sibling subtype is a deliberate probe
                    # (getattr(transport, "iScsiName", None) on any TargetTransport).
                    if not hasattr(cls, name) and not _in_hierarchy(cls, name):
                        reads.missing.add((cls.__name__, name))
            return orig_get(obj, name)

        self._orig = orig_get
        VmomiSupport.DataObject.__getattribute__ = getattribute  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        VmomiSupport.DataObject.__getattribute__ = self._orig  # type: ignore[method-assign]


@pytest.fixture(scope="module")
def parser_reads() -> _Reads:
    from fidelity_replay import session

    from esxdr.plan.storage import ExpectedLun
    from esxdr.replication import consistency
    from esxdr.vsphere import inventory, storage, vms

    s = session()
    with _Reads() as reads:
        inventory.read_hosts(s)
        consistency.find_group_vms(s, {"datastore1"}, set())
        vms.vm_states(s, [s.ref("VirtualMachine", "vm-22"), s.ref("VirtualMachine", "vm-227")])
        storage.verify_storage(s, "10.0.0.5", [ExpectedLun(naa="6b8ca3a0e65228002312a2e3098048bf")],
                               rescan_mode="never")
    s.close()
    return reads


@pytest.fixture(scope="module")
def shape_reads() -> _Reads:
    """The parsers of shapes the recordings lack (software iSCSI, unresolved volumes, port bindings,
    a VM question), fed objects built here with pyVmomi's types: for the fields they READ, checked
    below against the metadata. The values are made up and asserted nowhere."""
    from fidelity_replay import session

    from esxdr.vsphere import inventory, vms

    hba = vim.host.InternetScsiHba(
        key="key-vim.host.InternetScsiHba-vmhba65", device="vmhba65", iScsiName="iqn.1998-01.com.vmware:dr",
        isSoftwareBased=True,
        authenticationProperties=vim.host.InternetScsiHba.AuthenticationProperties(chapAuthEnabled=True,
                                                                                     chapName="dr"),
        configuredSendTarget=[vim.host.InternetScsiHba.SendTarget(address="10.20.0.5", port=3260)],
        configuredStaticTarget=[vim.host.InternetScsiHba.StaticTarget(
            address="10.20.0.5", port=3260, iScsiName="iqn.2010-09.org.example:t1", discoveryMethod="sendTargetMethod")])
    lun = vim.host.ScsiDisk(key="key-vim.host.ScsiDisk-0200", uuid="0200", canonicalName="naa.600144f0aa",
                            vendor="SUN", model="COMSTAR", serialNumber="", capacity=vim.host.DiskDimensions.Lba(
                                block=2048, blockSize=512))
    dev = vim.host.StorageDeviceInfo(
        hostBusAdapter=[hba], scsiLun=[lun], softwareInternetScsiEnabled=True,
        scsiTopology=vim.host.ScsiTopology(adapter=[vim.host.ScsiTopology.Interface(
            key="i", adapter=hba.key, target=[vim.host.ScsiTopology.Target(
                key="t", target=0, transport=vim.host.InternetScsiTargetTransport(iScsiName="iqn.2010-09.org.example:t1"),
                lun=[vim.host.ScsiTopology.Lun(key="l", lun=1, scsiLun=lun.key)])])]),
        multipathInfo=vim.host.MultipathInfo(lun=[vim.host.MultipathInfo.LogicalUnit(
            key="m", id="0200", lun=lun.key, path=[vim.host.MultipathInfo.Path(
                key="p", name="vmhba65:C0:T0:L1", adapter=hba.key, lun="m")])]))
    question = vim.vm.QuestionInfo(
        id="_vmx1", text="moved or copied?", message=[vim.vm.Message(id="msg.uuid.altered", text="moved?")],
        choice=vim.option.ChoiceOption(choiceInfo=[vim.ElementDescription(key="1", label="button.uuid.movedTheVM",
                                                                          summary="I Moved It")]))
    unresolved = vim.host.UnresolvedVmfsVolume(
        vmfsUuid="5b7ee5c9-4e8f1921-93b3-90b11c51ac73", vmfsLabel="DS1",
        extent=[vim.host.UnresolvedVmfsExtent(
            device=vim.host.ScsiDisk.Partition(diskName="naa.600144f0aa", partition=1),
            devicePath="/vmfs/devices/disks/naa.600144f0aa:1", vmfsUuid="5b7ee5c9-4e8f1921-93b3-90b11c51ac73",
            isHeadExtent=True, ordinal=0, reason="diskIdMismatch")],
        resolveStatus=vim.host.UnresolvedVmfsVolume.ResolveStatus(resolvable=True, multipleCopies=False))
    s = session()
    s.stub.synthetic = {"QueryUnresolvedVmfsVolumes": lambda: [unresolved],
                        "QueryBoundVnics": lambda *_: [vim.host.IscsiManager.IscsiPortInfo(vnicDevice="vmk2")]}
    with _Reads() as reads:
        enabled, iscsi, luns = inventory.parse_storage(dev)
        host = inventory.read_host(s, "10.0.0.5", with_vms=False)
        from dataclasses import replace

        inventory.unresolved_volumes(s, host)
        inventory.with_bindings(s, replace(host, iscsi=iscsi, refs={**host.refs}))
        vms.read_question(question)
    s.close()
    assert luns["naa.600144f0aa"].targets == ("iqn.2010-09.org.example:t1",)  # the objects reached the parser
    return reads


def test_the_parsers_of_unrecorded_shapes_read_only_fields_of_the_minimum_api(shape_reads):
    assert shape_reads.missing == set()
    seen = shape_reads.read
    assert {("vim.vm.Message", "id"), ("vim.ElementDescription", "label"), ("vim.host.InternetScsiHba", "iScsiName"),
            ("vim.host.UnresolvedVmfsVolume.ResolveStatus", "multipleCopies"),
            ("vim.host.IscsiManager.IscsiPortInfo", "vnicDevice")} <= seen
    newer = [f"{t}.{f} appeared in vSphere {release(vtype(t)._GetPropertyInfo(f).version)}"
             for t, f in sorted(seen) if not supported(vtype(t)._GetPropertyInfo(f).version)
             and f"{t}.{f}" not in NEWER_ALLOWED]
    assert not newer, "\n".join(newer)


def test_the_parsers_read_only_fields_that_exist(parser_reads):
    # getattr(obj, "name", None) hides a misspelt field as None; on real data it shows here.
    assert parser_reads.missing == set()


def test_the_read_recorder_sees_reads_from_esxdr_code_and_a_misspelt_field():
    # Code compiled under an esxdr/ file name counts as esxdr's own, as the parsers do.
    ns: dict[str, Any] = {}
    exec(compile("def parse(lun):\n    return getattr(lun, 'canonicalNam', None), lun.uuid\n",
                 str(ROOT / "esxdr" / "probe_for_the_contract_test.py"), "exec"), ns)
    with _Reads() as reads:
        ns["parse"](vim.host.ScsiDisk(uuid="0200"))
        _ = vim.host.ScsiDisk(uuid="0200").vendor  # read here, in the test: not esxdr's
    assert reads.missing == {("vim.host.ScsiDisk", "canonicalNam")}
    assert reads.read == {("vim.host.ScsiDisk", "uuid")}


def test_the_parsers_read_fields_of_the_minimum_api(parser_reads):
    assert ("vim.host.ScsiDisk", "canonicalName") in parser_reads.read  # the recorder sees the parsers
    newer = []
    for type_name, f in sorted(parser_reads.read):
        info = vtype(type_name)._GetPropertyInfo(f)
        if not supported(info.version) and f"{type_name}.{f}" not in NEWER_ALLOWED:
            newer.append(f"{type_name}.{f} appeared in vSphere {release(info.version)}")
    assert not newer, "\n".join(newer)


# --------------------------------------------------------------------------- what is newer than the minimum
def _newer_items() -> Iterator[tuple[str, str]]:
    for type_name, paths in USED_PATHS.items():
        for path in paths:
            for seg, info in walk_path(type_name, path):
                if not supported(info.version):
                    yield f"{type_name}.{path}", seg
    for name, type_name in METHODS.items():
        info = method_info(type_name, name)
        if info is not None and not supported(info.version):
            yield f"{type_name}.{name}", name
    for name, call, _ in found_calls():
        if name in METHODS:
            info = method_info(METHODS[name], name)
            given, _ = _call_args(info, call)
            for p in info.params:
                if p.name in given and not supported(p.version):
                    yield f"{METHODS[name]}.{name}({p.name})", p.name
    for t, call, _ in found_constructions():
        for k in call.keywords:
            if k.arg and not supported(t._GetPropertyInfo(k.arg).version):
                yield f"{t.__name__}.{k.arg}", k.arg
