"""The Provider protocol: what makes, imports, exposes, breaks, reverts and deletes snapshots (VSS: provider).

Contract, method by method (restic's Backend habit):

- `check_request` and `is_supported` run before anything is frozen and must not change the machine. A provider
  that cannot honour an attribute (e.g. TRANSPORTABLE) raises `UnsupportedContext` here, never after a freeze.
- `prepare` does the slow work outside the freeze (allocate, reserve, record). Idempotent.
- `commit` is the critical section: every volume of the set is frozen. It must return within the commit bound
  (default 10 s), must not write to any frozen filesystem, and either makes every snapshot or raises. A provider
  whose `capabilities.commit_while_fs_frozen` is False is called with applications quiesced but the volume's
  filesystem not FIFREEZE-frozen (it makes its own consistent cut); it refuses quickly if it finds it frozen.
- `post_commit` runs after the thaw; slow bookkeeping belongs here.
- `abort` undoes whatever `prepare`/`commit` made for these requests; idempotent; safe after a partial commit
  and after a crash (it works from the requests, not from memory).
- `delete`, `unimport`, `unexpose` are idempotent: undoing what is already undone succeeds.
- `check_import` raises `ImportRefused` when this host cannot import the snapshot (the locator names nothing, the
  snapshot is incomplete, it is not a snapshot of `set_id` as the array itself records, or another host has
  imported it) and changes nothing; `import_snapshot` runs the same
  checks, presents the snapshot on this host, read-only, and returns its device (or directory);
  `sees_original` tells whether this host sees the original volume (the cluster rule).
- `expose` mounts the imported snapshot read-only at a directory; `break_snapshot` turns it into a standalone
  read-write volume and forgets it; `revert` rolls the original volume back to a persistent snapshot.
- Errors: `ProviderVeto` (refused, retryable later), `ProviderError` (unexpected), `VolumeNotSupported`,
  `UnsupportedContext`, `ObjectNotFound` (a locator that names nothing), `SystemCommandError` (the OS refused).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from snapport.model import Attr, Locator, Volume
from snapport.osal.runner import Runner


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a provider can do; checked before a set is frozen."""

    transportable: bool  # snapshots can be imported on another host through shared storage
    atomic_multi_volume: bool  # all volumes of a set are cut at one instant
    persistent: bool  # snapshots outlive the session (persistent contexts)
    can_break: bool  # an imported snapshot can become a standalone volume
    can_revert: bool  # the original volume can be rolled back to a snapshot
    # `commit` works while the volume's filesystem is FIFREEZE-frozen. False: the provider cuts consistently on
    # its own and a frozen filesystem would block its commit (btrfs snapshot creation waits for the thaw), so the
    # coordinator must quiesce applications but not fs-freeze the volume.
    commit_while_fs_frozen: bool = True


@dataclass(frozen=True, slots=True)
class ProviderHost:
    """What a provider needs to know about the host it runs on."""

    name: str  # this host's name as recorded in documents
    home: Path  # $SNAPPORT_HOME
    runner: Runner


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """One volume to snapshot within a set."""

    set_id: uuid.UUID
    snapshot_id: uuid.UUID
    volume: Volume
    attrs: Attr


@runtime_checkable
class Provider(Protocol):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]

    def is_supported(self, volume: Volume) -> bool: ...

    def check_request(self, volume: Volume, attrs: Attr) -> None: ...

    def prepare(self, requests: Sequence[SnapshotRequest]) -> None: ...

    def commit(self, requests: Sequence[SnapshotRequest]) -> dict[uuid.UUID, Locator]: ...

    def post_commit(self, requests: Sequence[SnapshotRequest], locators: dict[uuid.UUID, Locator]) -> None: ...

    def abort(self, requests: Sequence[SnapshotRequest]) -> None: ...

    def delete(self, locator: Locator) -> None: ...

    def sees_original(self, locator: Locator) -> bool: ...

    def check_import(self, locator: Locator, *, set_id: uuid.UUID | None = None) -> None: ...

    def import_snapshot(self, locator: Locator) -> str: ...

    def unimport(self, locator: Locator, device: str) -> None: ...

    def expose(self, locator: Locator, device: str, fs_type: str, at: Path) -> None: ...

    def unexpose(self, locator: Locator, at: Path) -> None: ...

    def break_snapshot(self, locator: Locator, device: str) -> str: ...

    def revert(self, locator: Locator, volume: Volume) -> None: ...
