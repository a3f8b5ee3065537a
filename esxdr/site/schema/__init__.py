"""`esxdr site schema`: the site file's JSON Schema, generated from the loader that reads it.

Editors' YAML language servers complete and check a site file against a JSON Schema (the
modeline ``# yaml-language-server: $schema=…``, docs/site-file.md). The schema is not written by
hand: the loader is the one definition of the file's form (the model holds resolved values:
seconds, bytes, absolute paths, not the keys a user writes). So :func:`site_schema` runs the loader
on :data:`PROBE`, a valid site with every section, every key in each of the forms it takes and each
mode of a section once (a local, a remote and a pulling storage server; an https and a loopback
http endpoint; …), with a reader that records what the loader asks of each key:

- the keys of every mapping (``additionalProperties: false``: the loader refuses unknown keys);
- what each key holds: text, a whole number in a range, true/false, one of a list, a list, a
  command, a file, or what its checker accepts (:data:`FORMATS`: one JSON Schema fragment per
  checker; a checker without one gives plain text), with the default and the hint the loader has;
- which keys are required: the probe is loaded again with each key left out, and whatever makes
  the loader report "missing required key" is a requirement, met by the keys whose absence caused
  it (``password_env`` or ``password_file``; ``address``, or ``local: true``, or ``pulls: true``).
  A requirement every probe instance of the section meets becomes ``required`` or an ``anyOf``;
  two of its keys set together that the loader refuses become ``not: {required: [a, b]}``.

A key the loader reads with a typed getter (``Section.text``, ``integer``, ``scalar``, …) appears
here by itself, the probe need not name it. What the loader checks in code across keys (references,
roles, dataset placement, VLAN isolation, …) is beyond this schema: `esxdr site validate` stays the
judge; the schema serves editors.

Draft-07, because it is the newest draft yaml-language-server (VS Code's YAML extension and the
editors embedding it) implements: its 2019-09/2020-12 support was merged and withdrawn again. The
schema reads YAML 1.2 as those tools do; the loader reads YAML 1.1 text as written, so where the
two differ the schema accepts both readings (``local: yes``, ``port: "22"``, ``name: 2024``).
"""

from __future__ import annotations

import inspect
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml

from esxdr.errors import Problem
from esxdr.site import loader as _loader
from esxdr.site import values as _values
from esxdr.site.nodes import Reader, Section, join
from esxdr.site.schema.formats import (
    FORMATS,
    NAMES,
    TEXT_TYPES,
    YAML11_BOOL,
    YAML11_INT,
    YAML11_TRUE,
    Norm,
    text_value,
)
from esxdr.site.schema.probe import PROBE

DRAFT = "http://json-schema.org/draft-07/schema#"

Real = tuple[str | int, ...]  # a path into PROBE's data
_UNSET = object()


def _checker_name(check: Callable[..., Any] | None, calls: list[tuple[str, dict[str, Any]]]) -> tuple | None:
    """The checker as FORMATS knows it, with the arguments it was called with; None if unknown."""
    if calls:
        name, args = calls[0]
        return (name, tuple(sorted(args.items())))
    fn = inspect.unwrap(check) if check is not None else None
    if fn is None or fn.__name__ == "<lambda>":
        return None
    return (fn.__module__.removeprefix("esxdr.site.") + "." + fn.__qualname__, ())


@contextmanager
def _tracing_values(calls: list[tuple[str, dict[str, Any]]]) -> Iterator[None]:
    """Note each esxdr.site.values function called meanwhile, with its arguments, so that a lambda
    checker (``lambda s: v.check_iqn(s, prefix=True)``) is known by what it calls."""
    def profile(frame: Any, event: str, _arg: Any) -> None:
        if event == "call" and frame.f_globals.get("__name__") == _values.__name__:
            code = frame.f_code
            params = code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount]
            calls.append((f"values.{code.co_name}", {p: frame.f_locals[p] for p in params
                                                     if isinstance(frame.f_locals.get(p), bool | int | str)}))

    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield
    finally:
        sys.setprofile(previous)


# -------------------------------------------------------------------------- recording the loader

@dataclass
class _Slot:
    forms: dict[tuple, None] = field(default_factory=dict)
    default: Any = _UNSET
    hint: str | None = None
    what: str | None = None  # the loader's word for it ("a path"), when nothing better is known


@dataclass
class _Instance:
    norm: Norm
    path: str
    real: Real


class _Record:
    def __init__(self) -> None:
        self.slots: dict[Norm, _Slot] = {}
        self.paths: dict[str, tuple[Norm, Real]] = {"": ((), ())}
        self.instances: dict[str, _Instance] = {}
        self.stack: list[str] = []

    def child(self, path: str, step: str | int, norm_step: str) -> None:
        norm, real = self.paths[path]
        self.paths[join(path, step)] = (norm + (norm_step,), real + (step,))

    def add(self, norm: Norm, form: tuple | None, default: Any = _UNSET, hint: str | None = None,
            what: str | None = None) -> None:
        slot = self.slots.setdefault(norm, _Slot())
        if what and what != "a string" and slot.what is None:
            slot.what = what
        if form is not None:
            slot.forms[form] = None
        if default is not _UNSET and default is not None and slot.default is _UNSET:
            slot.default = list(default) if isinstance(default, tuple) else default
        if hint and slot.hint is None:
            slot.hint = hint

    @contextmanager
    def call(self, path: str) -> Iterator[bool]:
        """True for the outermost reader call at a path (checked() calling text() on the same
        node is one value, not two)."""
        outer = not self.stack or self.stack[-1] != path
        self.stack.append(path)
        try:
            yield outer
        finally:
            self.stack.pop()


# Reader method → the form of the value at its path (arguments by name).
_READER_FORMS: dict[str, Callable[[dict[str, Any]], tuple]] = {
    "text": lambda a: ("text",),
    "integer": lambda a: ("integer", a["lo"], a["hi"]),
    "boolean": lambda a: ("boolean",),
    "choice": lambda a: ("choice", tuple(a["choices"])),
    "command": lambda a: ("command",),
    "file_path": lambda a: ("file", a["secret"]),
}
# Section getter → the form of the value under its key; they run whether or not the key is there.
_SECTION_FORMS: dict[str, Callable[[dict[str, Any]], tuple | None]] = {
    "text": lambda a: ("checked", _checker_name(a["check"], [])) if a["check"] else ("text",),
    "integer": lambda a: ("integer", a["lo"], a["hi"]),
    "flag": lambda a: ("boolean",),
    "choice": lambda a: ("choice", tuple(a["choices"])),
    "scalar": lambda a: ("checked", _checker_name(a["parse"], [])),
    "strings": lambda a: ("sequence", True),
    "file": lambda a: ("file", a["secret"]),
    "section": lambda a: ("mapping", tuple(a["keys"])),
    "missing": lambda a: None,
}


class _RecordingSection(Section):
    r: _RecordingReader


def _section_method(name: str, form_of: Callable[[dict[str, Any]], tuple | None]) -> Callable[..., Any]:
    original = getattr(Section, name)
    signature = inspect.signature(original)

    def method(self: _RecordingSection, *args: Any, **kw: Any) -> Any:
        bound = signature.bind(self, *args, **kw)
        bound.apply_defaults()
        a = bound.arguments
        rec = self.r.rec
        path = self.p(a["key"])
        norm = rec.paths[path][0]
        rec.add(norm, form_of(a), a.get("default", _UNSET), a.get("hint"), a.get("what"))
        if name == "strings":  # the items, also when the list is absent from the probe
            item = ("checked", _checker_name(a["check"], [])) if a["check"] else ("text",)
            rec.add(norm + ("[]",), item)
        return original(self, *args, **kw)

    return method


for _name, _form in _SECTION_FORMS.items():
    setattr(_RecordingSection, _name, _section_method(_name, _form))


class _RecordingReader(Reader):
    def __init__(self, rec: _Record, base_dir: str):
        super().__init__("<probe>", base_dir, check_files=False)
        self.rec = rec

    def mapping(self, node: yaml.Node | None, path: str, keys: Any, where: Any, what: str = "") -> Section | None:
        keys = tuple(keys)
        with self.rec.call(path) as outer:
            section = super().mapping(node, path, keys, where, what)
        if section is None:
            return None
        # Same fields, recording getters: Reader.mapping builds a plain Section.
        section.__class__ = _RecordingSection
        norm, real = self.rec.paths[path]
        for k in keys:
            self.rec.child(path, k, k)
        if outer:
            self.rec.add(norm, ("mapping", keys))
        if isinstance(node, yaml.MappingNode):
            self.rec.instances.setdefault(path, _Instance(norm, path, real))
        return section

    def entries(self, node: yaml.Node | None, path: str, what: str) -> Iterator[tuple[str, yaml.Node, Any]]:
        self.rec.add(self.rec.paths[path][0], ("entries",))
        for name, vnode, where in super().entries(node, path, what):
            self.rec.child(path, name, "*")
            yield name, vnode, where

    def sequence(self, node: yaml.Node | None, path: str, what: str) -> list[yaml.Node]:
        with self.rec.call(path) as outer:
            items = super().sequence(node, path, what)
        for i in range(len(items)):
            self.rec.child(path, i, "[]")
        if outer:
            self.rec.add(self.rec.paths[path][0], ("sequence", False))
        return items

    def strings(self, node: yaml.Node | None, path: str, what: str, check: Callable[[str], str] | None = None,
                unique: bool = True) -> tuple[str, ...] | None:
        with self.rec.call(path) as outer:
            out = super().strings(node, path, what, check, unique)
        if outer:
            self.rec.add(self.rec.paths[path][0], ("sequence", unique))
        return out

    def checked(self, node: yaml.Node, path: str, check: Callable[[str], Any], what: str = "a string") -> Any:
        calls: list[tuple[str, dict[str, Any]]] = []
        with self.rec.call(path) as outer, _tracing_values(calls):
            out = super().checked(node, path, check, what)
        if outer:
            self.rec.add(self.rec.paths[path][0], ("checked", _checker_name(check, calls)), what=what)
        return out


def _reader_method(name: str, form_of: Callable[[dict[str, Any]], tuple]) -> Callable[..., Any]:
    original = getattr(Reader, name)
    signature = inspect.signature(original)

    def method(self: _RecordingReader, *args: Any, **kw: Any) -> Any:
        bound = signature.bind(self, *args, **kw)
        bound.apply_defaults()
        path = bound.arguments["path"]
        with self.rec.call(path) as outer:
            if outer:
                self.rec.add(self.rec.paths[path][0], form_of(bound.arguments), what=bound.arguments.get("what"))
            return original(self, *args, **kw)

    return method


for _name, _rform in _READER_FORMS.items():
    setattr(_RecordingReader, _name, _reader_method(_name, _rform))


def _load(data: dict[str, Any], reader: Reader | None = None) -> list[Problem]:
    """The problems the loader finds in ``data`` (files not looked at)."""
    reader = reader or Reader("<probe>", "/", check_files=False)
    # JSON is YAML (flow style) and is written ten times faster than block YAML by PyYAML.
    root = _loader._parse(reader, json.dumps(data).encode())
    if root is not None:
        _loader._SiteBuilder(reader, "/probe.yaml").build(root)
    return reader.problems


# -------------------------------------------------------------------------- requirements


@dataclass
class _Requirement:
    key: str  # the key the loader reports missing
    # the keys whose presence meets it, each with the values that do (None: any value)
    by: dict[str, list[Any] | None]
    exclusive: list[tuple[str, str]] = field(default_factory=list)


def _copy(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data))  # plain data: faster than copy.deepcopy


def _at(data: Any, real: Real) -> Any:
    for step in real:
        data = data[step]
    return data


class _Builder:
    def __init__(self) -> None:
        self.rec = _Record()
        problems = _load(PROBE, _RecordingReader(self.rec, "/"))
        if problems:
            # the loader changed under the probe (a new required key, a renamed one): a developer's fix
            raise RuntimeError(f"esxdr.site.schema.probe.PROBE is no longer a valid site: {problems[0]}; "
                               "update it to what the loader reads")
        self.requirements: dict[Norm, list[_Requirement]] = {}
        self._infer_requirements()

    def keys(self, norm: Norm) -> tuple[str, ...]:
        for form in self.rec.slots[norm].forms:
            if form[0] == "mapping":
                return form[1]
        return ()

    def has(self, norm: Norm, kind: str) -> bool:
        return any(f[0] == kind for f in self.rec.slots.get(norm, _Slot()).forms)

    def _infer_requirements(self) -> None:
        """Leave each key out of every instance of its section, and see what the loader misses."""
        by_norm: dict[Norm, list[_Instance]] = {}
        for inst in self.rec.instances.values():
            by_norm.setdefault(inst.norm, []).append(inst)
        for norm, insts in by_norm.items():
            keys = self.keys(norm)
            present = [{k: v for k, v in _at(PROBE, i.real).items() if v is not None} for i in insts]
            met: dict[str, dict[str, list[Any]]] = {}  # missing key → key whose absence caused it → values
            for k in keys:
                data = _copy(PROBE)
                removed = [(i, _at(data, i.real).pop(k)) for i, p in zip(insts, present, strict=True) if k in p]
                if not removed:
                    continue
                problems = {p.path: p for p in _load(data) if p.message.startswith("missing required key")}
                for inst, value in removed:
                    for m in keys:
                        if (p := problems.get(join(inst.path, m))) is not None:
                            met.setdefault(m, {}).setdefault(k, []).append(value)
                            self.rec.add(norm + (m,), None, hint=p.hint)
            for m in keys:
                if m in met:
                    self._requirement(norm, insts, present, m, met[m])

    def _requirement(self, norm: Norm, insts: list[_Instance], present: list[dict[str, Any]], m: str,
                     causes: dict[str, list[Any]]) -> None:
        # Met by the key itself, by another key being there (known_hosts for host_key), or by a flag's
        # value (local: true for address). A choice's value: whether its other values would do is
        # not known, so such a requirement is left to the loader.
        if any(k != m and self.has(norm + (k,), "choice") for k in causes):
            return
        # The key itself first: "'host_key' is a required property" is what an editor then says.
        order = [m, *(k for k in self.keys(norm) if k != m and k in causes)] if m in causes else \
            [k for k in self.keys(norm) if k in causes]
        by: dict[str, list[Any] | None] = {k: sorted(set(causes[k]), key=str) if k != m and self.has(
            norm + (k,), "boolean") else None for k in order}
        if not all(any(k in p and (vals is None or p[k] in vals) for k, vals in by.items()) for p in present):
            return  # some instance needs none of them: a condition the probe does not show
        req = _Requirement(m, by)
        plain = [k for k, vals in by.items() if vals is None]
        for a in plain:
            for b in plain[plain.index(a) + 1:]:
                if self._refused_together(insts, present, a, b):
                    req.exclusive.append((a, b))
        self.requirements.setdefault(norm, []).append(req)

    def _refused_together(self, insts: list[_Instance], present: list[dict[str, Any]], a: str, b: str) -> bool:
        """Whether the loader refuses ``a`` and ``b`` set together (password_env and password_file)."""
        with_a = next((i for i, p in zip(insts, present, strict=True) if a in p and b not in p), None)
        value = next((p[b] for p in present if b in p), None)
        if with_a is None or value is None:
            return False
        data = _copy(PROBE)
        _at(data, with_a.real)[b] = value
        return any(p.path in (with_a.path, join(with_a.path, a), join(with_a.path, b)) for p in _load(data))

    # ---------------------------------------------------------------------- rendering

    def schema(self, norm: Norm) -> dict[str, Any]:
        slot = self.rec.slots.get(norm)
        if slot is None:
            return {}
        known = any(f[0] == "checked" and f[1] is not None for f in slot.forms)
        fragments: list[tuple[dict[str, Any], str]] = []
        for form in slot.forms:
            if form[0] == "checked" and form[1] is None and known:
                continue  # a lambda seen only from outside, and the checker it calls seen from inside
            fragment, text = self.form(norm, form)
            if (fragment, text) not in fragments:
                fragments.append((fragment, text))
        extra: dict[str, Any] = {}
        if len(fragments) == 1:
            out, text = fragments[0]
            text = "; ".join(t for t in (slot.hint, text or slot.what) if t)
        else:  # each form says what it is
            out = {"anyOf": [{"description": t, **f} if t else f for f, t in fragments]}
            text = slot.hint or ""
        if text:
            extra["description"] = text
        if slot.default is not _UNSET:
            extra["default"] = slot.default
        return {**extra, **out}

    def form(self, norm: Norm, form: tuple) -> tuple[dict[str, Any], str]:
        kind = form[0]
        if kind == "mapping":
            return self.mapping(norm, form[1]), ""
        if kind == "entries":
            child = self.schema(norm + ("*",))
            if self.has(norm + ("*",), "mapping") and not self.requirements.get(norm + ("*",)):
                child = _nullable(child)  # `name:` with nothing under it: all defaults
            out: dict[str, Any] = {"type": "object", "additionalProperties": child}
            if norm in NAMES:
                out["propertyNames"] = {"pattern": NAMES[norm]}
            return out, ""
        if kind == "sequence":
            out = {"type": "array", "items": self.schema(norm + ("[]",))}
            return ({**out, "uniqueItems": True} if form[1] else out), ""
        if kind == "text":
            return text_value(types=TEXT_TYPES), ""
        if kind == "checked":
            if form[1] is None or form[1][0] not in FORMATS:
                return text_value(types=TEXT_TYPES), ""
            return FORMATS[form[1][0]](dict(form[1][1]))
        if kind == "integer":
            number: dict[str, Any] = {"type": "integer"}
            number.update({k: v for k, v in (("minimum", form[1]), ("maximum", form[2])) if v is not None})
            span = f" {form[1]}–{form[2]}" if None not in form[1:] else f" ≥ {form[1]}" if form[1] is not None else ""
            return {"anyOf": [number, text_value(YAML11_INT)]}, f"a whole number{span}"
        if kind == "boolean":
            return {"anyOf": [{"type": "boolean"}, text_value(YAML11_BOOL)]}, "true or false"
        if kind == "choice":
            return {"enum": list(form[1])}, ""
        if kind == "command":
            return {"anyOf": [text_value(), {"type": "array", "items": text_value(types=TEXT_TYPES), "minItems": 1}]}, \
                "a command: a list of words, or a string split like a shell would"
        if kind == "file":
            what = "a path, relative to the site file's directory"
            return text_value(types=TEXT_TYPES), what + (" (a secret: mode 0600)" if form[1] else "")
        raise AssertionError(f"unknown form {form!r}")

    def mapping(self, norm: Norm, keys: tuple[str, ...]) -> dict[str, Any]:
        reqs = self.requirements.get(norm, [])
        required = [r.key for r in reqs if list(r.by) == [r.key] and r.by[r.key] is None]
        properties = {}
        for k in keys:
            prop = self.schema(norm + (k,))
            properties[k] = prop if k in required else _nullable(prop)
        out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            out["required"] = required
        rules: list[dict[str, Any]] = []
        for r in reqs:
            if r.key not in required:
                rules.append({"anyOf": [_met_by(k, vals) for k, vals in r.by.items()]})
            # "type": a null section (all defaults) has neither key; `not` would turn the vacuous
            # truth of `required` on a non-object into a refusal
            rules += [{"not": {"type": "object", "required": [a, b], "properties": {a: _NOT_NULL, b: _NOT_NULL}}}
                      for a, b in r.exclusive]
        if rules:
            out["allOf"] = rules
        return out


_NOT_NULL = {"not": {"type": "null"}}


def _met_by(key: str, values: list[Any] | None) -> dict[str, Any]:
    if values is None:
        return {"required": [key], "properties": {key: _NOT_NULL}}
    allowed: list[Any] = [{"enum": values}]
    if True in values:
        allowed.append(text_value(YAML11_TRUE))
    return {"required": [key], "properties": {key: allowed[0] if len(allowed) == 1 else {"anyOf": allowed}}}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """A key set to null (or left empty) is as good as absent to the loader."""
    out = dict(schema)
    if "anyOf" in out:
        out["anyOf"] = [*out["anyOf"], {"type": "null"}]
    elif "enum" in out:
        out["enum"] = [*out["enum"], None]
    elif "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


def site_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of the site file, as this esxdr and its installed plugins read it."""
    root = _Builder().schema(())
    root.pop("description", None)
    return {
        "$schema": DRAFT,
        "title": "esxdr site file",
        "description": "What esxdr protects, where it goes and how the DR side is built (docs/site-file.md). "
                       "`esxdr site validate` checks what a schema cannot: references between sections, roles, "
                       "dataset placement, networks.",
        "$comment": "Generated by `esxdr site schema` from the loader; do not edit by hand.",
        **root,
    }


def dumps(schema: dict[str, Any]) -> str:
    """Indented JSON with short lists of plain values on one line (types, enums, required)."""
    return _dump(schema, "") + "\n"


def _dump(value: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(k, ensure_ascii=False)}: {_dump(v, inner)}" for k, v in value.items())
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and value:
        flat = json.dumps(value, ensure_ascii=False)
        if not any(isinstance(v, dict | list) for v in value) and len(flat) + len(indent) <= 100:
            return flat
        return "[\n" + ",\n".join(inner + _dump(v, inner) for v in value) + f"\n{indent}]"
    return json.dumps(value, ensure_ascii=False)
