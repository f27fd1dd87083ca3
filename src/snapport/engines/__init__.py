"""Backup engines: read a set's components from an exposed snapshot into a repository, verify, list (DESIGN §2).

`base` holds the `Engine` protocol and its value types, `walk` which files a component's file specs select,
`archive` the built-in engine, `registry` every engine by name. See docs/engines.md.
"""

from snapport.engines.archive import ArchiveEngine
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentKey,
    ComponentResult,
    ComponentSource,
    Engine,
    PathMapper,
    Phase,
    Problem,
    ProblemKind,
    Progress,
    ProgressCallback,
    RestoreResult,
    SetDocuments,
    SetSummary,
    VerifyReport,
    select_components,
)
from snapport.engines.registry import DEFAULT_ENGINE, ENGINES, get_engine

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "ArchiveEngine",
    "BackupResult",
    "Capabilities",
    "ComponentKey",
    "ComponentResult",
    "ComponentSource",
    "Engine",
    "PathMapper",
    "Phase",
    "Problem",
    "ProblemKind",
    "Progress",
    "ProgressCallback",
    "RestoreResult",
    "SetDocuments",
    "SetSummary",
    "VerifyReport",
    "get_engine",
    "select_components",
]
