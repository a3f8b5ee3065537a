"""A reader of the Prometheus text exposition format (version 0.0.4), as node_exporter's textfile
collector reads `esxdr status --prometheus` files, strict where the format is: every sample's family
is declared by `# TYPE` before it, a family's lines are together, names and label names match the
format's patterns, label values are quoted with its three escapes, values are floats (NaN, +Inf,
-Inf included) with an optional integer timestamp, and no series appears twice.
"""

from __future__ import annotations

import math
import re

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"\s*(,|$)')
SAMPLE = re.compile(rf"({NAME})(?:\{{(.*)\}})?[ \t]+(\S+)(?:[ \t]+(-?\d+))?")
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


def _labels(text: str, line: str) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = LABEL.match(text, pos)
        assert m, f"bad labels: {line}"
        assert m.group(1) not in out, f"label {m.group(1)} twice: {line}"
        out[m.group(1)] = m.group(2).replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")
        pos = m.end()
    return out


def _value(text: str, line: str) -> float:
    if text in ("NaN", "+Inf", "-Inf"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    assert re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", text), f"bad value {text!r}: {line}"
    return float(text)


def parse(text: str) -> dict[str, dict]:
    """family name -> {"type", "help", "samples": [(labels, value)]}."""
    families: dict[str, dict] = {}
    seen: set[tuple] = set()
    current = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(NAME, name), line
                fam = families.setdefault(name, {"type": "untyped", "help": None, "samples": []})
                assert not fam["samples"], f"{parts[1]} after the samples of {name}"
                if parts[1] == "TYPE":
                    assert len(parts) == 4 and parts[3] in TYPES, line
                    fam["type"] = parts[3]
                else:
                    fam["help"] = parts[3] if len(parts) == 4 else ""
                current = name
            continue
        m = SAMPLE.fullmatch(line)
        assert m, f"not a sample: {line}"
        name = m.group(1)
        assert name == current, f"{name}: its family was not declared just before ({line})"
        labels = _labels(m.group(2) or "", line)
        key = (name, tuple(sorted(labels.items())))
        assert key not in seen, f"series twice: {line}"
        seen.add(key)
        value = _value(m.group(3), line)
        if families[name]["type"] == "counter":
            assert name.endswith("_total") and not math.isnan(value) and value >= 0, line
        families[name]["samples"].append((labels, value))
    return families


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {name: f["samples"] for name, f in parse(text).items()}
