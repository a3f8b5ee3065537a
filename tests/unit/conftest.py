"""The unit tests mirror esxdr's tree (tests/unit/<package>/test_<module>.py). Some build on another
test module's builders (`from test_runbook import group, manifest`): every folder here is on the
import path, so those imports read the same from any folder. Test file names stay unique."""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(d) for d in sorted(HERE.iterdir()) if d.is_dir() and not d.name.startswith((".", "_"))
                and any(d.glob("test_*.py"))]
