"""The jinja2 templates shipped with esxdr (target configs, schedules, the drill report): one loader.

Text templates (targets.conf, the COMSTAR script, SMF XML, cron and systemd units) are rendered
strictly: a missing value is an error, never an empty string in a config file. HTML (the report)
is autoescaped and tolerant of a record that lacks a field, as an older report may.
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

from esxdr.fmt import human_bytes, human_duration

if TYPE_CHECKING:
    import jinja2


@lru_cache(maxsize=2)
def environment(html: bool = False) -> jinja2.Environment:
    import jinja2  # imported here to keep every other command's start-up fast

    # Package data (pyproject.toml): an installed esxdr finds the templates as a checkout does.
    env = jinja2.Environment(loader=jinja2.PackageLoader("esxdr", "templates"), trim_blocks=True,
                             lstrip_blocks=True, keep_trailing_newline=True, autoescape=html,
                             undefined=jinja2.ChainableUndefined if html else jinja2.StrictUndefined)
    env.filters["duration"] = human_duration
    env.filters["bytes"] = human_bytes
    return env


def render(name: str, **values: object) -> str:
    """Render template ``name``; ``*.html.j2`` through the HTML environment."""
    return environment(html=name.endswith(".html.j2")).get_template(name).render(**values)
