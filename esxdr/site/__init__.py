"""The site file: what esxdr protects, where it goes, and how the DR side is built.

``load_site(path)`` reads and checks a YAML site file and returns a frozen
:class:`Site`; every problem is reported at once with file:line:column
(:class:`esxdr.errors.SiteError`). The reference is docs/site-file.md.
"""

from esxdr.site.loader import DEFAULT_STATE_DIR, load_site
from esxdr.site.model import (
    ChapSpec,
    HostNetwork,
    IscsiSpec,
    KeepRules,
    LunSpec,
    NetworkMap,
    Portal,
    PortGroupSpec,
    ProtectionGroup,
    RetentionPolicy,
    Schedule,
    Site,
    StaticTarget,
    StorageServer,
    TargetConfig,
    VmkernelNic,
    VmSpec,
    VsphereEndpoint,
    VSwitch,
)
from esxdr.site.values import Invalid, format_duration, parse_duration, parse_keep_rules, parse_size

__all__ = [
    "DEFAULT_STATE_DIR", "ChapSpec", "HostNetwork", "Invalid", "IscsiSpec", "KeepRules", "LunSpec", "NetworkMap",
    "PortGroupSpec", "Portal", "ProtectionGroup", "RetentionPolicy", "Schedule", "Site", "StaticTarget",
    "StorageServer", "TargetConfig", "VSwitch", "VmSpec", "VmkernelNic", "VsphereEndpoint", "format_duration",
    "load_site", "parse_duration", "parse_keep_rules", "parse_size",
]
