"""Stand-ins for a coordinator's collaborators in unit tests: a provider and writers that note every call in one
`Journal`, and a mount table of given entries. They replace nothing in the real-device tests
(tests/integration/coordinator), which decide whether the real providers and writers work."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from snapport.coordinator.host import ProviderFactory
from snapport.coordinator.session import ProviderResolver
from snapport.errors import ProviderError, WriterError
from snapport.model import (
    Attr,
    Component,
    ComponentType,
    Locator,
    Volume,
    WriterMetadata,
)
from snapport.osal import mount as mnt
from snapport.osal.mount import MountInfo
from snapport.osal.runner import Responder, Runner
from snapport.providers.base import Capabilities, Provider, ProviderHost, SnapshotRequest
from snapport.writers.base import Deadline, LogEntry, RestoreContext, Session, Tier, WriterEvent

HANG_S = 30.0  # how long a hanging fake waits to be released: far past any bound a unit test sets


class Journal:
    """Every call the fakes of one test receive, in order, as `"<actor> <event>"` lines.

    With `watch` set, a line `"state <value>"` is added before the next call whenever what `watch` returns has
    changed since the last call: so the journal shows, say, that a set became `snapshotting` between the
    provider's prepare and the first freeze."""

    def __init__(self) -> None:
        self.entries: list[str] = []
        self.watch: Callable[[], str] | None = None
        self._seen: str | None = None
        self._lock = threading.Lock()

    def note(self, entry: str) -> None:
        with self._lock:
            if self.watch is not None:
                seen = self.watch()
                if seen != self._seen:
                    self.entries.append(f"state {seen}")
                    self._seen = seen
            self.entries.append(entry)

    def index(self, entry: str) -> int:
        """Where `entry` first is (a failure naming the journal if it is not there)."""
        assert entry in self.entries, f"{entry!r} not in {self.entries}"
        return self.entries.index(entry)


FAKE_WRITER_CLASS = uuid.uuid5(uuid.NAMESPACE_DNS, "tests.snapport.fake-writer")


class FakeWriter:
    """A writer (writers/base.py) that notes each event as `"<name> <event>"` and raises `WriterError` at
    `fail_at`, or waits at `hang_at` until an abort (or HANG_S) releases it. Its one component is its name; its
    post-snapshot metadata for it is `"<name> metadata"`."""

    kind: ClassVar[str] = "fake"
    class_id: ClassVar[uuid.UUID] = FAKE_WRITER_CLASS

    def __init__(
        self,
        name: str,
        journal: Journal,
        *,
        tier: Tier = Tier.APPLICATION,
        fail_at: WriterEvent | None = None,
        hang_at: WriterEvent | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.tier = tier
        self.fail_at = fail_at
        self.hang_at = hang_at
        self.writer_id = uuid.uuid5(FAKE_WRITER_CLASS, name)
        self.instance_name = name
        self.released = threading.Event()

    def _event(self, event: WriterEvent) -> None:
        self.journal.note(f"{self.name} {event.value}")
        if event is WriterEvent.ABORT:
            self.released.set()
        if event is self.fail_at:
            raise WriterError(f"{self.name} fails at {event.value}")
        if event is self.hang_at:
            self.released.wait(HANG_S)

    def identify(self, deadline: Deadline) -> WriterMetadata:
        self._event(WriterEvent.IDENTIFY)
        component = Component(type=ComponentType.FILE_GROUP, name=self.name, caption=f"what {self.name} keeps")
        return WriterMetadata(
            writer_id=self.writer_id,
            class_id=self.class_id,
            name=self.kind,
            instance_name=self.instance_name,
            components=(component,),
        )

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self._event(WriterEvent.PREPARE_BACKUP)

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self._event(WriterEvent.PREPARE_SNAPSHOT)

    def freeze(self, session: Session, deadline: Deadline) -> None:
        self._event(WriterEvent.FREEZE)

    def thaw(self, session: Session, deadline: Deadline) -> None:
        self._event(WriterEvent.THAW)

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        self._event(WriterEvent.POST_SNAPSHOT)
        return {self.name: f"{self.name} metadata"}

    def abort(self, session: Session, deadline: Deadline) -> None:
        self._event(WriterEvent.ABORT)

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        self._event(WriterEvent.BACKUP_COMPLETE)

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        self._event(WriterEvent.BACKUP_SHUTDOWN)

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._event(WriterEvent.PRE_RESTORE)

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._event(WriterEvent.POST_RESTORE)

    def take_event_log(self) -> list[LogEntry]:
        return []

    def __repr__(self) -> str:
        return f"FakeWriter({self.name!r}, {self.tier.name.lower()} tier)"


class FakeProvider:
    """A provider whose snapshots are entries in `made` (committed, not yet aborted or deleted). It notes
    `"fake <step>"` as each step ends, raises `ProviderError` at `fail_at` (`prepare`, `commit`, `post-commit`
    or `abort`), and commits only after `commit_delay_s`. It cuts consistently on its own
    (`commit_while_fs_frozen` is False), so a session adds no real filesystem writer for its volumes."""

    name: ClassVar[str] = "fake"
    capabilities: ClassVar[Capabilities] = Capabilities(
        transportable=True,
        atomic_multi_volume=True,
        persistent=True,
        can_break=False,
        can_revert=False,
        commit_while_fs_frozen=False,
    )

    def __init__(self, journal: Journal, *, fail_at: str | None = None, commit_delay_s: float = 0.0) -> None:
        assert fail_at in (None, "prepare", "commit", "post-commit", "abort")
        self.journal = journal
        self.fail_at = fail_at
        self.commit_delay_s = commit_delay_s
        self.made: set[uuid.UUID] = set()
        self.committed: list[tuple[uuid.UUID, ...]] = []  # the snapshot ids of each commit call
        self.aborted: list[tuple[uuid.UUID, ...]] = []  # the snapshot ids of each abort call
        self.refuse: Attr = Attr.NONE  # attributes `check_request` refuses

    def _step(self, step: str) -> None:
        self.journal.note(f"{self.name} {step}")
        if step == self.fail_at:
            raise ProviderError(f"the fake provider fails at {step}")

    def is_supported(self, volume: Volume) -> bool:
        return True

    def check_request(self, volume: Volume, attrs: Attr) -> None:
        if attrs & self.refuse:
            raise ProviderError(f"the fake provider refuses {attrs & self.refuse!r}")

    def prepare(self, requests: Sequence[SnapshotRequest]) -> None:
        self._step("prepare")

    def commit(self, requests: Sequence[SnapshotRequest]) -> dict[uuid.UUID, Locator]:
        time.sleep(self.commit_delay_s)
        ids = tuple(r.snapshot_id for r in requests)
        self.committed.append(ids)
        self.made.update(ids)
        self._step("commit")
        return {
            r.snapshot_id: Locator(provider=self.name, properties=(("volume", r.volume.mount_point),)) for r in requests
        }

    def post_commit(self, requests: Sequence[SnapshotRequest], locators: dict[uuid.UUID, Locator]) -> None:
        self._step("post-commit")

    def abort(self, requests: Sequence[SnapshotRequest]) -> None:
        self.aborted.append(tuple(r.snapshot_id for r in requests))
        self._step("abort")
        self.made.difference_update(r.snapshot_id for r in requests)

    def delete(self, locator: Locator) -> None:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")

    def sees_original(self, locator: Locator) -> bool:
        return True

    def check_import(self, locator: Locator, *, set_id: uuid.UUID | None = None) -> None:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")

    def import_snapshot(self, locator: Locator) -> str:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")

    def unimport(self, locator: Locator, device: str) -> None:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")

    def expose(self, locator: Locator, device: str, fs_type: str, at: Path) -> None:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")

    def unexpose(self, locator: Locator, at: Path) -> None:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")

    def break_snapshot(self, locator: Locator, device: str) -> str:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")

    def revert(self, locator: Locator, volume: Volume) -> None:
        raise NotImplementedError("the fake provider only makes and aborts snapshots")


def resolving_to(*providers: Provider) -> ProviderResolver:
    """A provider resolver (`BackupSession(resolve_provider=...)`) handing out `providers` in turn, one per volume
    (the last one for every volume after); it notes nothing itself."""
    handed: list[Provider] = []

    def resolve(volume: Volume, host: ProviderHost, attrs: Attr, preferred: str | None) -> Provider:
        provider = providers[min(len(handed), len(providers) - 1)]
        handed.append(provider)
        return provider

    return resolve


def by_name(*providers: Provider) -> ProviderFactory:
    """A provider factory (`Host(provider_factory=...)`) that knows only `providers`."""
    known = {p.name: p for p in providers}

    def factory(name: str, host: ProviderHost) -> Provider:
        return known[name]

    return factory


class FakeMountTable:
    """A mount table (osal/mount.py's `MountTable`) of the given mounts; identities are read as the real table
    reads them (blkid through the host's runner: a `RecordingRunner` answers with `blkid_answers`)."""

    def __init__(self, mounts: Sequence[MountInfo]) -> None:
        self.mounts = list(mounts)

    def mount_at(self, path: str | Path) -> MountInfo | None:
        hits = [m for m in self.mounts if m.mount_point == str(path)]
        return hits[-1] if hits else None

    def containing_mount(self, path: str | Path) -> MountInfo:
        target = str(path)
        holders = [m for m in self.mounts if target == m.mount_point or target.startswith(m.mount_point + "/")]
        assert holders, f"nothing in the fake mount table holds {target}"
        return max(holders, key=lambda m: len(m.mount_point))

    def fs_identity(self, runner: Runner, device: str) -> tuple[str, str]:
        return mnt.fs_identity(runner, device)


def device_mount(mount_point: Path, device: str, fs_type: str = "xfs") -> MountInfo:
    """A mount of a block device, as /proc/self/mountinfo would list it."""
    return MountInfo(mount_point=str(mount_point), source=device, fs_type=fs_type, options=("rw",), dev="253:0")


def blkid_answers(identities: Mapping[str, tuple[str, str]]) -> Responder:
    """A `RecordingRunner` responder answering `blkid -p -o export DEVICE` with (type, UUID) of each device."""

    def answer(argv: tuple[str, ...]) -> tuple[int, str, str] | None:
        if argv[0] != "blkid" or argv[-1] not in identities:
            return None
        fs_type, fs_uuid = identities[argv[-1]]
        return 0, f"DEVNAME={argv[-1]}\nUUID={fs_uuid}\nTYPE={fs_type}\n", ""

    return answer
