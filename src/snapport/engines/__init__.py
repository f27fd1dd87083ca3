"""Backup engines: read a set's components from an exposed snapshot into a repository, verify, list (DESIGN §2).

`base` holds the `Engine` protocol and its value types, `walk` which files a component's file specs select,
`digest` the content digests, `archive` the built-in engine and `restic` the incremental one (packages, one module
per job), `registry` every engine by name and the rule that chooses a repository's engine. See docs/engines.md.
"""

from snapport.engines.archive.engine import ArchiveEngine
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentKey,
    ComponentResult,
    ComponentSource,
    Engine,
    Forgotten,
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
from snapport.engines.registry import DEFAULT_ENGINE, ENGINE_NAMES, ENGINES, get_engine, open_repository, recognise
from snapport.engines.retention import Decision, Policy, RetentionGroup, group_of, plan

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "ENGINE_NAMES",
    "ArchiveEngine",
    "BackupResult",
    "Capabilities",
    "ComponentKey",
    "ComponentResult",
    "ComponentSource",
    "Decision",
    "Engine",
    "Forgotten",
    "PathMapper",
    "Phase",
    "Policy",
    "Problem",
    "ProblemKind",
    "Progress",
    "ProgressCallback",
    "RestoreResult",
    "RetentionGroup",
    "SetDocuments",
    "SetSummary",
    "VerifyReport",
    "get_engine",
    "group_of",
    "open_repository",
    "plan",
    "recognise",
    "select_components",
]
