"""Load the jinja2 templates shipped in esxdr/templates/ (targets.conf, COMSTAR script, SMF XML)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import jinja2

# package data (pyproject.toml), so an installed esxdr finds them as a checkout does
TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), trim_blocks=True,
                              lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined, autoescape=False)


def render(name: str, **values: object) -> str:
    return environment().get_template(name).render(**values)
