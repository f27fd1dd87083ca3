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

Reconciliation (`snapport doctor`, an agent's start; docs/doctor.md) asks every provider, given a `CatalogView`
(every set this host's catalog records, in every state). A provider looks only where that view points (the arrays
its locators name, the volumes its sets snapshot), never over the whole machine, and judges only this host's
objects (`ProviderHost.name`): another host's, even on the same machine, are that host's to judge. None of these
raises for what it cannot reach (an array whose directory is gone, a volume no longer mounted): it is skipped.

- `presentations(known)` changes nothing: the devices on this machine presenting this provider's objects to
  this host (`here`: their volumes are snapport's, so the frozen-volume probe may look at them) and to other
  hosts (`elsewhere`: a mount of one under this host's run directory is that host's, never a leftover here).
- `lock_files(known)` changes nothing: the lock files the provider takes for the objects `known` names (a hung
  holder is reported; a lock is never broken).
- `leftovers(known)` changes nothing: what the provider made for this host that no live set of `known` accounts
  for (a set deleted, aborted or absent) and a crash left behind, one `Leftover` per object, each with its exact
  id. Listed in the order they are to be removed (e.g. stale records before the objects they would block).
  A live set's objects and another host's are never listed.
- `remove_leftover(leftover, known)` removes exactly that object, by its exact id, and says what it did. `known`
  is read afresh after the listing (everything a set makes is recorded in the catalog before it exists), and the
  provider checks again, under its own lock where it has one, that the object is still a leftover; if it is not
  (gone, recorded meanwhile), it leaves it alone and says so. Idempotent. Raises (`SnapportError`, `OSError`)
  when the removal fails (e.g. refused while another host still uses the object): the leftover is then left.
  A leftover it did not list (another provider's, a kind it does not make) is refused with `ProviderError`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from snapport.errors import ProviderError
from snapport.model import Attr, Locator, SetState, Snapshot, SnapshotSet, Volume
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


# A set in one of these states should hold no snapshot any more: what remains of it is a leftover.
ENDED_STATES = frozenset({SetState.DELETED, SetState.ABORTED})
_KIND = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


@dataclass(frozen=True, slots=True)
class CatalogView:
    """What this host's catalog records (every set, in every state): where a provider looks for its leftovers,
    and what it judges them against."""

    sets: tuple[SnapshotSet, ...]

    def snapshots(self, provider: str) -> Iterator[tuple[SnapshotSet, Snapshot]]:
        """Every snapshot whose locator names `provider`, with its set."""
        for snapshot_set in self.sets:
            for snapshot in snapshot_set.snapshots:
                if snapshot.locator.provider == provider:
                    yield snapshot_set, snapshot

    def set_of(self, set_id: uuid.UUID) -> SnapshotSet | None:
        return next((s for s in self.sets if s.id == set_id), None)

    def live(self, set_id: uuid.UUID) -> bool:
        """Whether the catalog records the set and it has not ended (its snapshots may exist and be in use)."""
        known = self.set_of(set_id)
        return known is not None and known.state not in ENDED_STATES

    def live_snapshot(self, snapshot_id: uuid.UUID) -> bool:
        """Whether a live set records a snapshot with this id."""
        return any(x.id == snapshot_id for s in self.sets if s.state not in ENDED_STATES for x in s.snapshots)

    @property
    def devices(self) -> frozenset[str]:
        """Every device the catalog records a snapshot presented at on this host."""
        return frozenset(x.device for s in self.sets for x in s.snapshots if x.device)


@dataclass(frozen=True, slots=True)
class Presentations:
    """Devices on this machine that present a provider's objects, by whom they are presented to."""

    here: frozenset[str] = frozenset()  # to this host
    elsewhere: frozenset[str] = frozenset()  # to other hosts (another SNAPPORT_HOME on this machine): theirs


@dataclass(frozen=True, slots=True)
class Leftover:
    """One object a provider made on this host that no live set accounts for (what a crash left).

    `kind` is the finding's kind in `snapport doctor` (kebab-case, e.g. `snapshot-lun`, `loop-device`); `object` the
    exact id it is known by (a LUN id, a loop device, a path); `handle` what the provider needs to find exactly this
    object again (its own keys, like a locator's properties).
    """

    provider: str
    kind: str
    object: str
    detail: str
    handle: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if not _KIND.match(self.kind):
            raise ValueError(f"{self.kind!r} is not a leftover kind (kebab-case, e.g. snapshot-lun)")
        if not self.object:
            raise ValueError("a leftover needs the exact id of its object")

    def get(self, key: str) -> str:
        """A handle entry the provider put there (`ProviderError` if there is none: not this provider's)."""
        value = dict(self.handle).get(key)
        if value is None:
            raise ProviderError(f"leftover {self.kind} {self.object} has no {key!r}")
        return value


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

    def presentations(self, known: CatalogView) -> Presentations: ...

    def lock_files(self, known: CatalogView) -> tuple[Path, ...]: ...

    def leftovers(self, known: CatalogView) -> tuple[Leftover, ...]: ...

    def remove_leftover(self, leftover: Leftover, known: CatalogView) -> str: ...
