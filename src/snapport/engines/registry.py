"""Every backup engine by short name, and the one rule that chooses the engine of a repository."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from snapport.engines.archive.engine import ArchiveEngine
from snapport.engines.base import Capabilities, Engine
from snapport.engines.restic.engine import ResticEngine
from snapport.errors import UsageError


class EngineClass(Protocol):
    """An engine class: its name and capabilities without an instance, whether a directory is one of its
    repositories, and a constructor taking the repository."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def recognises(self, directory: Path) -> bool: ...

    def __call__(self, repository: Path) -> Engine: ...


ENGINES: dict[str, EngineClass] = {
    ArchiveEngine.name: ArchiveEngine,
    ResticEngine.name: ResticEngine,
}
DEFAULT_ENGINE = ArchiveEngine.name
ENGINE_NAMES: tuple[str, ...] = tuple(sorted(ENGINES))
"""The engines' names, sorted: the choices of an `--engine` option."""


def get_engine(name: str, repository: Path) -> Engine:
    """The engine called `name`, on `repository`."""
    try:
        factory = ENGINES[name]
    except KeyError:
        raise UsageError(f"unknown backup engine {name!r} (known: {', '.join(ENGINES)})") from None
    return factory(repository)


def recognise(repository: Path) -> str:
    """The name of the engine whose repository `repository` is: the first other engine that recognises it, else
    the default (so an absent or empty directory, where a first backup makes a repository, is the default's)."""
    for name, engine_class in ENGINES.items():
        if name != DEFAULT_ENGINE and engine_class.recognises(repository):
            return name
    return DEFAULT_ENGINE


def open_repository(repository: Path, name: str | None = None) -> Engine:
    """The engine on `repository`: the one called `name`, else the one `recognise` finds."""
    return get_engine(name if name is not None else recognise(repository), repository)
