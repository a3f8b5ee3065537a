"""The host_bootstrap cassette notices a missing call: each vSphere call host apply makes is
removed in turn and the replay must fail.

Why: a replay that only checks the requests it is asked for passes when the product stops
making a call (a deleted BindVnic leaves the host unbound, and the no-op plan that follows
reads the recorded "bound" answer). vcr_kit.cassette fails when a recorded interaction is
left unplayed; this test proves it for every call site, so the check cannot quietly go.

The mutation is real: the module's source is parsed, every call of the method is replaced by
``None`` (a statement call becomes a no-op, ``dev = ns.AddVirtualNic(...)`` gets None), and
the result is compiled and loaded under the module's own name, in memory only (nothing on
disk changes); monkeypatch puts the original modules back afterwards.
"""

from __future__ import annotations

import ast
import importlib
import sys
import types

import pytest
from vcr_kit import RECORD, ROOT, call_name, host_bootstrap, opened, unplayed

pytest.importorskip("pyVmomi")
pytestmark = pytest.mark.skipif(RECORD, reason="replays host_bootstrap; the recording is writing it")

HOST = "esxdr.vsphere.host"
INVENTORY = "esxdr.vsphere.inventory"
# Every vSphere call of host apply's executor (esxdr/vsphere/host.py) that bootstrapping an empty
# host makes, and the bound-vNIC query of the plan it applies (esxdr/vsphere/inventory.py).
CALLS = [
    (HOST, "AddVirtualSwitch"),
    (HOST, "AddPortGroup"),
    (HOST, "AddVirtualNic"),
    (HOST, "UpdateSoftwareInternetScsiEnabled"),
    (HOST, "UpdateInternetScsiAuthenticationProperties"),
    (HOST, "BindVnic"),
    (HOST, "AddInternetScsiSendTargets"),
    (HOST, "RescanAllHba"),
    (HOST, "RescanVmfs"),
    (INVENTORY, "QueryBoundVnics"),
]


class _RemoveCalls(ast.NodeTransformer):
    def __init__(self, method: str):
        self.method = method
        self.removed = 0

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        if isinstance(node.func, ast.Attribute) and node.func.attr == self.method:
            self.removed += 1
            return ast.copy_location(ast.Constant(None), node)
        return node


def _load(monkeypatch, name: str, method: str | None = None) -> types.ModuleType:
    """A fresh copy of module ``name`` (calls of ``method`` removed), installed in its place."""
    importlib.import_module(name)  # the original, for monkeypatch to put back
    path = ROOT / (name.replace(".", "/") + ".py")
    tree = ast.parse(path.read_text(), filename=str(path))
    if method is not None:
        mutator = _RemoveCalls(method)
        tree = ast.fix_missing_locations(mutator.visit(tree))
        assert mutator.removed, f"{path} no longer calls {method}: update CALLS in {__file__}"
    module = types.ModuleType(name)
    module.__file__ = str(path)
    module.__package__ = name.rpartition(".")[0]
    # In sys.modules before it runs: dataclasses look their module up there.
    monkeypatch.setitem(sys.modules, name, module)
    exec(compile(tree, str(path), "exec"), module.__dict__)
    monkeypatch.setattr(sys.modules[module.__package__], name.rpartition(".")[2], module)
    return module


def _mutant_host(monkeypatch, module: str | None, method: str | None) -> types.ModuleType:
    if module == INVENTORY:
        _load(monkeypatch, INVENTORY, method)
        return _load(monkeypatch, HOST)  # a host module that binds the mutated inventory
    return _load(monkeypatch, HOST, method)


def test_control_the_reloaded_module_replays(monkeypatch):
    """The loading itself changes nothing: an unmutated copy replays the whole cassette."""
    host_bootstrap(host_module=_mutant_host(monkeypatch, None, None))


@pytest.mark.parametrize(("module", "method"), CALLS, ids=[m for _, m in CALLS])
def test_replay_fails_without_the_call(monkeypatch, module, method):
    recorded = [call_name(r) for r in _recorded()]
    assert method in recorded, f"cassettes/host_bootstrap.yaml holds no {method}: re-record it"
    mutant = _mutant_host(monkeypatch, module, method)
    opened.pop("host_bootstrap", None)
    # Any failure counts (an unplayed interaction, a request the cassette lacks, the product's
    # own error about it); that it is about the removed call is checked below.
    with pytest.raises(Exception) as failed:
        host_bootstrap(host_module=mutant)
    cass = opened["host_bootstrap"]
    assert not cass.all_played and cass.play_count < len(cass), failed.value
    left = [n for _, n in unplayed(cass)]
    assert method in left, f"{method} removed, yet its interaction was played; unplayed: {left}"


def _recorded():
    import vcr_kit

    cass = vcr_kit.vcr.cassette.Cassette.load(path=str(vcr_kit.CASSETTES / "host_bootstrap.yaml"),
                                              record_mode="none")
    return cass.requests
