"""The domain: snapshot sets, contexts, the two documents' contents, the set and job life cycles and the audit
event kinds. No I/O."""

from snapport.model.backup_components import (
    BackupComponents,
    BackupType,
    SelectedComponent,
    SnapshotDescription,
    SnapshotSetDescription,
    WriterComponents,
)
from snapport.model.context import REQUESTER_MODIFIERS, Attr, Context, context_attrs
from snapport.model.events import EventKind
from snapport.model.job_state import JobState, allowed_job_transitions, check_job_transition
from snapport.model.origin import SetOrigin
from snapport.model.snapshot import MAX_VOLUMES_PER_SET, Locator, LunInformation, Snapshot, SnapshotSet, Volume
from snapport.model.state import FINAL_STATES, INITIAL_STATES, SetState, allowed_transitions, check_transition
from snapport.model.writer_metadata import (
    BackupSchema,
    Component,
    ComponentType,
    FileSpec,
    RestoreMethod,
    RestoreMethodSpec,
    UsageType,
    WriterMetadata,
    WriterRestore,
)
from snapport.model.writer_state import WriterState

__all__ = [
    "FINAL_STATES",
    "INITIAL_STATES",
    "MAX_VOLUMES_PER_SET",
    "REQUESTER_MODIFIERS",
    "Attr",
    "BackupComponents",
    "BackupSchema",
    "BackupType",
    "Component",
    "ComponentType",
    "Context",
    "EventKind",
    "FileSpec",
    "JobState",
    "Locator",
    "LunInformation",
    "RestoreMethod",
    "RestoreMethodSpec",
    "SelectedComponent",
    "SetOrigin",
    "SetState",
    "Snapshot",
    "SnapshotDescription",
    "SnapshotSet",
    "SnapshotSetDescription",
    "UsageType",
    "Volume",
    "WriterComponents",
    "WriterMetadata",
    "WriterRestore",
    "WriterState",
    "allowed_job_transitions",
    "allowed_transitions",
    "check_job_transition",
    "check_transition",
    "context_attrs",
]
