"""Reading a YAML node tree with positions: the plumbing under the site loader.

PyYAML's composer gives nodes with start marks but silently keeps the last of
duplicate mapping keys, and its constructor drops positions. So the loader
walks nodes itself: :class:`Reader` collects problems (file:line:column, a
dotted path, a message and a hint) and remembers where every value sits so
that later cross-reference checks can point at it too. :class:`Section` is
one mapping with a fixed set of keys; typed getters return ``None`` when a
value is absent or wrong (the problem is already recorded).
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import stat
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

import yaml

from esxdr.errors import Problem
from esxdr.site.values import Invalid

T = TypeVar("T")
Mark = tuple[int, int]  # 1-based line and column

TAG = "tag:yaml.org,2002:"
_MERGE = TAG + "merge"
_SCALAR_TAGS = {TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "binary")}
_constructor = yaml.constructor.SafeConstructor()

# Keys that would hold a secret inline; the hint names the reference forms.
_SECRET_WORDS = ("password", "passwd", "passphrase", "secret", "token")
_SECRET_KEY = re.compile(rf"(^|_)({'|'.join(_SECRET_WORDS)})$")


def suggest(word: str, options: Iterable[str]) -> str | None:
    """The option the user probably meant: a close spelling, or the only one it abbreviates."""
    options = list(options)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return close[0]
    low = word.lower()
    prefixed = [o for o in options if o.lower().startswith(low) or low.startswith(o.lower())]
    return prefixed[0] if len(prefixed) == 1 and len(word) >= 2 else None


def did_you_mean(word: str, options: Iterable[str]) -> str | None:
    guess = suggest(word, options)
    return f"did you mean {guess!r}?" if guess else None


def mark_of(node: yaml.Node) -> Mark:
    return node.start_mark.line + 1, node.start_mark.column + 1


def describe(node: yaml.Node) -> str:
    """What the user wrote, in words, for "must be X, not Y" messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return {
        TAG + "int": "a number", TAG + "float": "a number", TAG + "bool": "true/false",
        TAG + "null": "null", TAG + "timestamp": "a date",
    }.get(node.tag, f"{node.value!r}")


def is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == TAG + "null")


def join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


class Reader:
    """Problems and positions for one site file."""

    def __init__(self, file: str, base_dir: str, check_files: bool):
        self.file = file
        self.base_dir = base_dir
        self.check_files = check_files
        self.problems: list[Problem] = []
        self.bad: set[str] = set()  # paths with a problem, so later checks do not pile on
        self.marks: dict[str, Mark] = {}  # dotted path → position of the value (or of its key)

    # -- problems

    def error(self, where: Mark | yaml.Node | str, path: str, message: str, hint: str | None = None) -> None:
        if isinstance(where, yaml.Node):
            line, col = mark_of(where)
        elif isinstance(where, str):
            line, col = self.at(where)
        else:
            line, col = where
        self.problems.append(Problem(self.file, line, col, path, message, hint))
        self.bad.add(path)

    def at(self, path: str) -> Mark:
        """Position of a path seen while reading, or of its nearest recorded ancestor."""
        p = path
        while p:
            if p in self.marks:
                return self.marks[p]
            cut = max(p.rfind("."), p.rfind("["))
            p = p[:cut] if cut > 0 else ""
        return 1, 1

    def had_problem(self, path: str) -> bool:
        """Whether a problem was reported at a path or below it (a value there may be a stand-in default)."""
        return any(b == path or b.startswith((path + ".", path + "[")) for b in self.bad)

    def fail(self, path: str, message: str, hint: str | None = None) -> None:
        """A problem located by path (for checks across sections)."""
        self.error(path, path, message, hint)

    # -- structure

    def mapping(self, node: yaml.Node | None, path: str, keys: Iterable[str], where: Mark,
                what: str = "") -> Section | None:
        if node is None or is_null(node):
            return Section(self, path, {}, keys, where)
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"must be a mapping{' of ' + what if what else ''}, not {describe(node)}")
            return None
        return Section(self, path, self.pairs(node, path), keys, where)

    def entries(self, node: yaml.Node | None, path: str, what: str) -> Iterator[tuple[str, yaml.Node, Mark]]:
        """The name → value entries of a mapping keyed by object names (storage servers, groups, …)."""
        if node is None or is_null(node):
            return
        if not isinstance(node, yaml.MappingNode):
            self.error(node, path, f"must be a mapping of {what} by name, not {describe(node)}",
                       "write one entry per name: `name:` followed by its indented keys")
            return
        for name, (knode, vnode) in self.pairs(node, path).items():
            self.marks[join(path, name)] = mark_of(knode)
            yield name, vnode, mark_of(knode)

    def pairs(self, node: yaml.MappingNode, path: str) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Key → (key node, value node), flagging duplicate and non-string keys; `<<` merges honoured."""
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        merged: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if knode.tag == _MERGE:
                sources = vnode.value if isinstance(vnode, yaml.SequenceNode) else [vnode]
                for src in sources:
                    if isinstance(src, yaml.MappingNode):
                        for k, pair in self.pairs(src, path).items():
                            merged.setdefault(k, pair)
                    else:
                        self.error(src, path, f"`<<` must merge a mapping, not {describe(src)}")
                continue
            if not isinstance(knode, yaml.ScalarNode) or knode.tag == TAG + "null":
                self.error(knode, path, f"a key must be a name, not {describe(knode)}")
                continue
            key = knode.value
            if key in out:
                first = out[key][0].start_mark.line + 1
                self.error(knode, join(path, key), f"duplicate key {key!r} (first at line {first})",
                           "YAML keeps only the last one; remove or rename one of them")
                continue
            out[key] = (knode, vnode)
        for k, pair in merged.items():
            out.setdefault(k, pair)
        return out

    def sequence(self, node: yaml.Node | None, path: str, what: str) -> list[yaml.Node]:
        if node is None or is_null(node):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, path, f"must be a list of {what}, not {describe(node)}",
                       "write [a, b] or one `- item` per line")
            return []
        return list(node.value)

    # -- scalars

    def text(self, node: yaml.Node, path: str, what: str = "a string") -> str | None:
        """The text as written (so `on`, `no`, `0600` or `1:30` are not reinterpreted)."""
        if not isinstance(node, yaml.ScalarNode) or node.tag == TAG + "null":
            self.error(node, path, f"must be {what}, not {describe(node)}")
            return None
        if node.tag not in _SCALAR_TAGS:
            self.error(node, path, f"YAML tag {node.tag} is not supported", "remove the tag")
            return None
        if not node.value.strip():
            self.error(node, path, f"must be {what}, not an empty string")
            return None
        return node.value

    def integer(self, node: yaml.Node, path: str, lo: int | None = None, hi: int | None = None) -> int | None:
        value: int | None = None
        if isinstance(node, yaml.ScalarNode):
            if node.tag == TAG + "int":
                value = _constructor.construct_yaml_int(node)
            elif node.tag == TAG + "str" and re.fullmatch(r"[-+]?\d+", node.value.strip()):
                value = int(node.value)
        if value is None:
            self.error(node, path, f"must be a whole number, not {describe(node)}")
            return None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            self.error(node, path, f"{value} is out of range {_range(lo, hi)}")
            return None
        return value

    def boolean(self, node: yaml.Node, path: str) -> bool | None:
        if isinstance(node, yaml.ScalarNode) and node.tag == TAG + "bool":
            return bool(_constructor.construct_yaml_bool(node))
        self.error(node, path, f"must be true or false, not {describe(node)}")
        return None

    def checked(self, node: yaml.Node, path: str, check: Callable[[str], T], what: str = "a string") -> T | None:
        """Text run through a validator from :mod:`esxdr.site.values`."""
        text = self.text(node, path, what)
        if text is None:
            return None
        try:
            return check(text)
        except Invalid as e:
            self.error(node, path, e.message, e.hint)
            return None

    def choice(self, node: yaml.Node, path: str, choices: tuple[str, ...]) -> str | None:
        text = self.text(node, path)
        if text is None:
            return None
        if text in choices:
            return text
        self.error(node, path, f"{text!r} is not one of {', '.join(choices)}", did_you_mean(text, choices))
        return None

    def strings(self, node: yaml.Node | None, path: str, what: str,
                check: Callable[[str], str] | None = None, unique: bool = True) -> tuple[str, ...] | None:
        items = self.sequence(node, path, what)
        if node is not None and not is_null(node) and not isinstance(node, yaml.SequenceNode):
            return None
        out: list[str] = []
        for i, item in enumerate(items):
            p = join(path, i)
            self.marks[p] = mark_of(item)
            value = self.checked(item, p, check) if check else self.text(item, p)
            if value is None:
                continue
            if unique and value in out:
                self.error(item, p, f"{value!r} is listed twice")
                continue
            out.append(value)
        return tuple(out)

    def command(self, node: yaml.Node, path: str) -> tuple[str, ...] | None:
        """An argv: a list of words, or one string split like a shell would."""
        if isinstance(node, yaml.ScalarNode):
            text = self.text(node, path, "a command")
            if text is None:
                return None
            try:
                argv = tuple(shlex.split(text))
            except ValueError as e:
                self.error(node, path, f"cannot split {text!r} into words: {e}", "or write it as a list")
                return None
        else:
            argv = self.strings(node, path, "words", unique=False) or ()
        if not argv:
            self.error(node, path, "must not be empty", "e.g. [sudo, -n, zfs]")
            return None
        return argv

    # -- files

    def file_path(self, node: yaml.Node, path: str, *, secret: bool = False, what: str = "file",
                  create_hint: str | None = None) -> str | None:
        """A path made absolute against the site file's directory; checked when check_files is on."""
        text = self.text(node, path, "a path")
        if text is None:
            return None
        full = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(text)))
        if not self.check_files:
            return full
        try:
            st = os.stat(full)
        except FileNotFoundError:
            hint = create_hint.format(path=full) if create_hint else None
            if not os.path.isabs(os.path.expanduser(text)):
                where = f"(relative to the site file's directory, {self.base_dir})"
                hint = f"{hint} {where}" if hint else f"the path is relative to the site file's directory, {self.base_dir}"
            self.error(node, path, f"{what} {full} does not exist", hint)
            return full
        except OSError as e:
            self.error(node, path, f"cannot read {what} {full}: {e.strerror}")
            return full
        if not stat.S_ISREG(st.st_mode):
            self.error(node, path, f"{what} {full} is not a regular file")
        elif secret and st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            self.error(node, path, f"{what} {full} has mode {mode:04o}: group or others can read it",
                       f"chmod 600 {full}")
        return full


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f"{lo}–{hi}"
    return f"≥ {lo}" if lo is not None else f"≤ {hi}"


class Section:
    """One mapping with a known set of keys; unknown keys are reported once, with a suggestion."""

    def __init__(self, reader: Reader, path: str, pairs: dict[str, tuple[yaml.Node, yaml.Node]],
                 keys: Iterable[str], where: Mark):
        self.r = reader
        self.path = path
        self.where = where
        self.keys = tuple(keys)
        self.pairs: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, (knode, vnode) in pairs.items():
            p = join(path, key)
            if key in self.keys:
                self.pairs[key] = (knode, vnode)
                # a scalar is pointed at itself; a mapping or list (and null) at its key
                reader.marks[p] = mark_of(vnode) if isinstance(vnode, yaml.ScalarNode) and not is_null(vnode) \
                    else mark_of(knode)
            elif _SECRET_KEY.search(key.lower()) or suggest(key.lower(), _SECRET_WORDS):
                stem = key.lower()
                refs = [k for k in (stem + "_env", stem + "_file") if k in self.keys]
                hint = (f"use {' or '.join(refs)}" if refs else "use the matching *_env or *_file key") + \
                    " (an environment variable, or a file with mode 0600)"
                reader.error(knode, p, "secrets must not be written into the site file", hint)
            else:
                hint = did_you_mean(key, self.keys) or f"known keys: {', '.join(self.keys)}"
                reader.error(knode, p, f"unknown key {key!r}", hint)

    def __contains__(self, key: str) -> bool:
        return key in self.pairs and not is_null(self.pairs[key][1])

    def node(self, key: str) -> yaml.Node | None:
        """The value node, or None when absent or null."""
        pair = self.pairs.get(key)
        return None if pair is None or is_null(pair[1]) else pair[1]

    def key_mark(self, key: str) -> Mark:
        pair = self.pairs.get(key)
        return mark_of(pair[0]) if pair else self.where

    def p(self, key: str | int) -> str:
        return join(self.path, key)

    def missing(self, key: str, hint: str | None = None) -> None:
        pair = self.pairs.get(key)
        where = mark_of(pair[0]) if pair else self.where
        self.r.error(where, self.p(key), f"missing required key {key!r}" if pair is None else "missing value",
                     hint)

    def _get(self, key: str, required: bool, hint: str | None) -> yaml.Node | None:
        node = self.node(key)
        if node is None and required:
            self.missing(key, hint)
        return node

    def text(self, key: str, *, required: bool = False, default: str | None = None,
            check: Callable[[str], str] | None = None, hint: str | None = None) -> str | None:
        node = self._get(key, required, hint)
        if node is None:
            return default
        return self.r.checked(node, self.p(key), check) if check else self.r.text(node, self.p(key))

    def integer(self, key: str, *, required: bool = False, default: int | None = None,
            lo: int | None = None, hi: int | None = None, hint: str | None = None) -> int | None:
        node = self._get(key, required, hint)
        if node is None:
            return default
        return self.r.integer(node, self.p(key), lo, hi)

    def flag(self, key: str, *, default: bool = False) -> bool | None:
        node = self.node(key)
        return default if node is None else self.r.boolean(node, self.p(key))

    def choice(self, key: str, choices: tuple[str, ...], *, required: bool = False,
               default: str | None = None) -> str | None:
        node = self._get(key, required, f"one of {', '.join(choices)}")
        if node is None:
            return default
        return self.r.choice(node, self.p(key), choices)

    def scalar(self, key: str, parse: Callable[[str], T], *, required: bool = False,
               default: T | None = None, hint: str | None = None, what: str = "a string") -> T | None:
        node = self._get(key, required, hint)
        if node is None:
            return default
        return self.r.checked(node, self.p(key), parse, what)

    def strings(self, key: str, what: str, *, required: bool = False, default: tuple[str, ...] | None = (),
                check: Callable[[str], str] | None = None, hint: str | None = None) -> tuple[str, ...] | None:
        node = self._get(key, required, hint)
        if node is None:
            return default
        return self.r.strings(node, self.p(key), what, check)

    def file(self, key: str, *, required: bool = False, secret: bool = False, what: str = "file",
             hint: str | None = None, create_hint: str | None = None) -> str | None:
        node = self._get(key, required, hint)
        if node is None:
            return None
        return self.r.file_path(node, self.p(key), secret=secret, what=what, create_hint=create_hint)

    def section(self, key: str, keys: Iterable[str], *, required: bool = False,
                hint: str | None = None) -> Section | None:
        node = self._get(key, required, hint)
        if node is None:
            return None
        return self.r.mapping(node, self.p(key), keys, self.key_mark(key))
