"""The domain: snapshot sets, contexts, the two documents' contents and the set life cycle. No I/O."""

from snapport.model.backup_components import (
    BackupComponents,
    BackupType,
    SelectedComponent,
    SnapshotDescription,
    SnapshotSetDescription,
    WriterComponents,
)
from snapport.model.context import REQUESTER_MODIFIERS, Attr, Context, context_attrs
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
    "FileSpec",
    "Locator",
    "LunInformation",
    "RestoreMethod",
    "RestoreMethodSpec",
    "SelectedComponent",
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
    "allowed_transitions",
    "check_transition",
    "context_attrs",
]
