"""Every backup engine by short name."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from snapport.engines.archive import ArchiveEngine
from snapport.engines.base import Capabilities, Engine
from snapport.engines.restic import ResticEngine
from snapport.errors import UsageError


class EngineClass(Protocol):
    """An engine class: its name and capabilities without an instance, and a constructor taking the repository."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def __call__(self, repository: Path) -> Engine: ...


ENGINES: dict[str, EngineClass] = {
    ArchiveEngine.name: ArchiveEngine,
    ResticEngine.name: ResticEngine,
}
DEFAULT_ENGINE = ArchiveEngine.name


def get_engine(name: str, repository: Path) -> Engine:
    """The engine called `name`, on `repository`."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise UsageError(f"unknown backup engine {name!r} (known: {', '.join(ENGINES)})") from None
    return factory(repository)
