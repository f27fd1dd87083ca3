"""The two-host lab (DESIGN §7): two network and mount namespaces joined by a veth pair (198.18.0.0/15 only), a
file-backed array both reach, a data volume on systemOne with a sample SQLite application, and an agent on each.

`up(LabConfig(...))` builds it and returns a `Lab`; `Lab.open(dir)` finds a running one; `down(dir)` removes
exactly what `up` recorded, also after `up` was killed half-way. docs/lab.md tells the whole story.

The names are imported on first use: `python -m snapport.lab.sample_app` and `snapport.lab.netcheck` run inside
the hosts and should start in a blink, without the array, pydantic and the rest.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snapport.lab.build import up
    from snapport.lab.config import LabConfig
    from snapport.lab.handle import Lab
    from snapport.lab.host import LabHost
    from snapport.lab.teardown import TeardownReport, down

__all__ = ["Lab", "LabConfig", "LabHost", "TeardownReport", "down", "up"]

_WHERE = {
    "Lab": "snapport.lab.handle",
    "LabConfig": "snapport.lab.config",
    "LabHost": "snapport.lab.host",
    "TeardownReport": "snapport.lab.teardown",
    "down": "snapport.lab.teardown",
    "up": "snapport.lab.build",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'snapport.lab' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
