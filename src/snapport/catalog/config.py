"""Where a host keeps its state: `$SNAPPORT_HOME` (default /var/lib/snapport) and the catalog URL within it."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_HOME = Path("/var/lib/snapport")
CATALOG_FILENAME = "catalog.db"


def default_home() -> Path:
    """`$SNAPPORT_HOME` if set and not empty, else /var/lib/snapport (two homes = two "hosts" on one machine)."""
    value = os.environ.get("SNAPPORT_HOME", "")
    return Path(value) if value else DEFAULT_HOME


def catalog_url(home: Path) -> str:
    """The default catalog of `home`: an SQLite file `catalog.db` inside it, as an absolute SQLAlchemy URL."""
    return f"sqlite:///{(home / CATALOG_FILENAME).absolute()}"
