"""BackupSession: the life of one snapshot set on the host that creates it (VSS: IVssBackupComponents).

The sequence (DESIGN §4): gather writer metadata → select components → prepare-for-backup →
prepare-for-snapshot → provider prepare → freeze (applications, then filesystems; each tier in parallel; bounded)
→ provider commit (bounded) → thaw (always) → provider post-commit → post-snapshot → save the documents.
Any failure or timeout before the set is created aborts every writer, thaws every frozen one, makes the providers
delete every snapshot made so far, and records why in the catalog. Each state change is committed to the catalog
before it is acted on.
"""

from __future__ import annotations

import contextlib
import enum
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar, cast

from snapport.coordinator.discovery import registered_writers_for, remote_spec
from snapport.coordinator.host import Host
from snapport.coordinator.recording import record_writer
from snapport.documents import save_documents
from snapport.errors import (
    BadState,
    FreezeTimeout,
    HoldTimeout,
    MaxVolumes,
    SnapportError,
    UnsupportedContext,
    UsageError,
)
from snapport.faults import inject
from snapport.model import (
    MAX_VOLUMES_PER_SET,
    Attr,
    BackupComponents,
    BackupType,
    Context,
    EventKind,
    Locator,
    SelectedComponent,
    SetOrigin,
    SetState,
    Snapshot,
    SnapshotDescription,
    SnapshotSet,
    SnapshotSetDescription,
    Volume,
    WriterComponents,
    WriterMetadata,
    context_attrs,
)
from snapport.providers.base import Provider, ProviderHost, SnapshotRequest
from snapport.providers.registry import provider_for
from snapport.writers.base import Deadline, Session, Tier, Writer
from snapport.writers.guarded import GuardedWriter
from snapport.writers.registry import filesystem_writers, writers_from_specs
from snapport.writers.remote import RemoteWriter

T = TypeVar("T")
ABORT_COMMIT_WAIT_S = 120.0

ProviderResolver = Callable[[Volume, ProviderHost, Attr, str | None], Provider]
"""The provider that snapshots a volume with these attributes, or the preferred one if it can
(`providers.registry.provider_for`)."""


class OnWriterFailure(enum.Enum):
    """What the requester wants when an application writer fails before the freeze."""

    ABORT = "abort"  # the set fails (the default, as VSS)
    EXCLUDE = "exclude"  # the writer is aborted and left out; the BCD says so (`WriterComponents.excluded`)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    context: Context = Context.BACKUP
    modifiers: Attr = Attr.NONE
    backup_type: BackupType = BackupType.FULL
    freeze_timeout_s: float = 60.0  # writers' freeze window (VSS dwTimeoutFreeze)
    commit_timeout_s: float = 10.0  # provider commit (VSS flush-and-hold)
    event_timeout_s: float = 60.0  # every other writer event
    provider: str | None = None
    description: str = ""
    writer_specs: tuple[str, ...] = ()  # how the writers were asked for, so a later process can rebuild them
    on_writer_failure: OnWriterFailure = OnWriterFailure.ABORT
    discover_writers: bool = True  # include the out-of-process writers registered on this host
    origin: SetOrigin | None = None  # the flow that makes the set (None: `snapport create`), in its session record


@dataclass(frozen=True, slots=True)
class CreatedSet:
    snapshot_set: SnapshotSet
    bcd: BackupComponents
    wmds: tuple[WriterMetadata, ...]
    documents: Path


class BackupSession:
    """One set's creation on this host. Use `add_volume` for each volume, then `create`. `resolve_provider`
    chooses each volume's provider (the registry's choice unless a test gives its own)."""

    def __init__(
        self,
        host: Host,
        options: SessionOptions,
        writers: Sequence[Writer] = (),
        *,
        resolve_provider: ProviderResolver = provider_for,
    ) -> None:
        self.host = host
        self.options = options
        self._resolve_provider = resolve_provider
        self.attrs = context_attrs(options.context, options.modifiers)
        if writers and not options.context.writers_involved:
            raise UnsupportedContext(f"context {options.context.value} takes no writers; drop --writer")
        self.set_id = uuid.uuid4()
        self._app_writers = [GuardedWriter(w) for w in writers]
        # (writer id, spec) of each writer `complete` must reach again; the ids are known when the specs match the
        # writers one to one, as the CLI passes them.
        ids: list[uuid.UUID | None] = [w.writer_id for w in writers]
        if len(ids) != len(options.writer_specs):
            ids = [None] * len(options.writer_specs)
        self._specs = list(zip(ids, options.writer_specs, strict=True))
        self._excluded: list[WriterComponents] = []
        self._volumes: list[tuple[uuid.UUID, Volume, Provider]] = []
        self._commits: list[threading.Thread] = []  # provider commits, awaited before any abort

    # -- discovery (VSS: StartSnapshotSet, AddToSnapshotSet) ----------------------------------------------------

    def add_volume(self, path: str) -> uuid.UUID:
        """Add a volume; refuses here, before anything is frozen, what the provider cannot do."""
        if len(self._volumes) >= MAX_VOLUMES_PER_SET:
            raise MaxVolumes(f"a set holds at most {MAX_VOLUMES_PER_SET} volumes")
        volume = self.host.volume(path)
        if any(v.mount_point == volume.mount_point for _, v, _ in self._volumes):
            raise UsageError(f"volume {volume.mount_point} is named twice")
        chosen = self._resolve_provider(volume, self.host.provider_host, self.attrs, self.options.provider)
        # One instance per provider, so that it commits the whole set at once.
        provider = next((p for _, _, p in self._volumes if p.name == chosen.name), chosen)
        provider.check_request(volume, self.attrs)
        if Attr.TRANSPORTABLE in self.attrs and not provider.capabilities.transportable:
            raise UnsupportedContext(f"provider {provider.name} cannot make transportable snapshots")
        if Attr.PERSISTENT in self.attrs and not provider.capabilities.persistent:
            raise UnsupportedContext(f"provider {provider.name} cannot keep persistent snapshots")
        snapshot_id = uuid.uuid4()
        self._volumes.append((snapshot_id, volume, provider))
        return snapshot_id

    @property
    def volumes(self) -> tuple[Volume, ...]:
        return tuple(v for _, v, _ in self._volumes)

    # -- the whole sequence -------------------------------------------------------------------------------------

    def create(self, out_dir: Path | None = None) -> CreatedSet:
        """Run the backup sequence; on any failure everything made is rolled back and the error re-raised."""
        if not self._volumes:
            raise UsageError("a snapshot set needs at least one volume")
        # Filesystems are frozen in every context, with or without application writers (VSS's flush and hold),
        # unless their provider's commit itself makes the consistent cut and cannot run on a frozen filesystem.
        to_freeze = tuple(v for _, v, p in self._volumes if p.capabilities.commit_while_fs_frozen)
        fs_writers = filesystem_writers(to_freeze, self.host.name, self.host.runner)
        writers = self._app_writers + [GuardedWriter(w) for w in fs_writers]
        session = Session(
            set_id=self.set_id,
            context=self.options.context,
            attrs=self.attrs,
            backup_type=self.options.backup_type,
            volumes=self.volumes,
            freeze_window_s=self.options.freeze_timeout_s,
        )
        with self.host.lock("create", timeout_s=0.5, what="snapshot set creation on this host"):
            roll_back_interrupted(self.host)
            self._record_preparing()
            discovered: list[RemoteWriter] = []
            try:
                discovered = self._discover()
                writers[:0] = [GuardedWriter(w) for w in discovered]
                return self._run(session, writers, out_dir or self.host.documents_dir(self.set_id))
            except BaseException as exc:
                self._abort(session, writers, exc)
                raise
            finally:
                for remote in discovered:  # after post-snapshot or abort: the writer process expects the hang-up
                    remote.close()

    def _discover(self) -> list[RemoteWriter]:
        """The registered out-of-process writers with files on the set's volumes (writer contexts only)."""
        if not (self.options.discover_writers and self.options.context.writers_involved):
            return []
        found = registered_writers_for(
            self.host,
            self.set_id,
            self.volumes,
            skip={w.writer_id for w in self._app_writers},
            timeout_s=self.options.event_timeout_s,
        )
        if found:
            self._specs += [(w.writer_id, remote_spec(w)) for w in found]
            self.host.catalog.record_session(self.set_id, writer_specs=[spec for _, spec in self._specs])
        return found

    def _requests(self) -> dict[Provider, list[SnapshotRequest]]:
        groups: dict[Provider, list[SnapshotRequest]] = {}
        for snapshot_id, volume, provider in self._volumes:
            groups.setdefault(provider, []).append(SnapshotRequest(self.set_id, snapshot_id, volume, self.attrs))
        return groups

    def _record_preparing(self) -> None:
        now = datetime.now(UTC)
        snapshots = tuple(
            Snapshot(id=sid, set_id=self.set_id, volume=v, locator=Locator(provider=p.name), attrs=self.attrs)
            for sid, v, p in self._volumes
        )
        self.host.catalog.add_set(
            SnapshotSet(
                id=self.set_id,
                context=self.options.context,
                attrs=self.attrs,
                state=SetState.PREPARING,
                originating_host=self.host.name,
                service_host=self.host.name,
                created_at=now,
                snapshots=snapshots,
                description=self.options.description,
            )
        )
        self.host.catalog.record_session(
            self.set_id,
            backup_type=self.options.backup_type.value,
            writer_specs=self.options.writer_specs,
            origin=self.options.origin,
        )

    def _each(
        self,
        writers: Sequence[GuardedWriter],
        act: Callable[[GuardedWriter], T],
        *,
        parallel: bool = False,
        record: bool = True,
    ) -> dict[uuid.UUID, T]:
        """Send one event to every writer (in parallel threads if asked), recording each writer's events and
        status unless told not to (inside the freeze window, where a durable commit would lengthen it: the
        writers keep their records until taken); raise the first failure once all have answered."""
        results: dict[uuid.UUID, T] = {}

        def call(w: GuardedWriter) -> None:
            try:
                results[w.writer_id] = act(w)
            finally:
                if record:
                    record_writer(self.host.catalog, self.set_id, w)

        if parallel:
            _all_or_first_error(writers, call)
        else:
            for w in writers:
                call(w)
        return results

    def _run(self, session: Session, writers: list[GuardedWriter], out_dir: Path) -> CreatedSet:
        options, catalog = self.options, self.host.catalog

        def deadline() -> Deadline:
            return Deadline.after(options.event_timeout_s)

        wmds = self._before_freeze(session, writers, lambda w: w.identify(deadline()))
        selected = {
            writer_id: tuple(c.full_path for c in wmd.components if c.selectable) for writer_id, wmd in wmds.items()
        }
        self._before_freeze(session, writers, lambda w: w.prepare_backup(session, selected[w.writer_id], deadline()))
        self._before_freeze(session, writers, lambda w: w.prepare_snapshot(session, deadline()), parallel=True)
        wmds = {w.writer_id: wmds[w.writer_id] for w in writers}  # without the writers left out
        groups = self._requests()
        for provider, requests in groups.items():
            inject("provider.prepare")
            provider.prepare(requests)

        catalog.transition(self.set_id, SetState.SNAPSHOTTING)
        locators = self._freeze_commit_thaw(session, writers, groups)

        for provider, requests in groups.items():
            inject("provider.post-commit")  # thawed, the snapshots taken
            provider.post_commit(requests, locators)
        created_at = datetime.now(UTC)
        for snapshot_id, _volume, _provider in self._volumes:
            catalog.update_snapshot(snapshot_id, locator=locators[snapshot_id], created_at=created_at)
        backup_metadata = self._each(writers, lambda w: w.post_snapshot(session, deadline()))
        bcd = BackupComponents(
            backup_type=options.backup_type,
            snapshot_set=SnapshotSetDescription(
                set_id=self.set_id,
                context=options.context,
                attrs=self.attrs,
                snapshots=tuple(
                    SnapshotDescription(snapshot_id=sid, original_volume=v, locator=locators[sid], attrs=self.attrs)
                    for sid, v, _ in self._volumes
                ),
            ),
            writers=tuple(
                WriterComponents(
                    writer_id=wmd.writer_id,
                    class_id=wmd.class_id,
                    instance_name=wmd.instance_name,
                    components=tuple(
                        SelectedComponent(
                            type=c.type,
                            name=c.name,
                            logical_path=c.logical_path,
                            backup_metadata=backup_metadata.get(writer_id, {}).get(c.full_path),
                        )
                        for c in wmd.components
                        if c.full_path in selected[writer_id]
                    ),
                )
                for writer_id, wmd in wmds.items()
            )
            + tuple(self._excluded),
            originating_host=self.host.name,
        )
        inject("document.save")
        save_documents(out_dir, bcd, wmds.values())
        catalog.record_session(self.set_id, documents_dir=str(out_dir))
        snapshot_set = catalog.transition(self.set_id, SetState.CREATED)
        return CreatedSet(snapshot_set, bcd, tuple(wmds.values()), out_dir)

    def _before_freeze(
        self,
        session: Session,
        writers: list[GuardedWriter],
        act: Callable[[GuardedWriter], T],
        *,
        parallel: bool = False,
    ) -> dict[uuid.UUID, T]:
        """`_each` for an event before the freeze. With `OnWriterFailure.EXCLUDE`, an application writer that
        fails is aborted and removed from `writers` instead of failing the set."""
        if self.options.on_writer_failure is OnWriterFailure.ABORT:
            return self._each(writers, act, parallel=parallel)
        failed: dict[uuid.UUID, SnapportError] = {}

        def tolerant(w: GuardedWriter) -> T | None:
            try:
                return act(w)
            except SnapportError as exc:
                if w.tier is not Tier.APPLICATION:
                    raise
                failed[w.writer_id] = exc
                return None

        results = self._each(writers, tolerant, parallel=parallel)
        for w in [w for w in writers if w.writer_id in failed]:
            self._exclude(session, writers, w, failed[w.writer_id])
        return {writer_id: cast(T, r) for writer_id, r in results.items() if writer_id not in failed}

    def _exclude(self, session: Session, writers: list[GuardedWriter], w: GuardedWriter, error: SnapportError) -> None:
        """Leave a failed writer out of the set: abort it, say so in the event log and the BCD, and drop its spec
        so that `complete` never sends it BackupComplete."""
        writers.remove(w)
        with contextlib.suppress(SnapportError):
            w.abort(session, Deadline.after(self.options.event_timeout_s))
        record_writer(self.host.catalog, self.set_id, w)
        reason = error.message[:1000]
        self.host.catalog.record_event(
            self.set_id, EventKind.WRITER_EXCLUDED, f"{w.name} is left out of the set: {reason}"
        )
        self._excluded.append(
            WriterComponents(w.writer_id, w.class_id or uuid.UUID(int=0), w.instance_name, (), reason)
        )
        self._specs = [(writer_id, spec) for writer_id, spec in self._specs if writer_id != w.writer_id]
        self.host.catalog.record_session(self.set_id, writer_specs=[spec for _, spec in self._specs])

    def _freeze_commit_thaw(
        self, session: Session, writers: list[GuardedWriter], groups: dict[Provider, list[SnapshotRequest]]
    ) -> dict[uuid.UUID, Locator]:
        """The critical section: freeze (applications, then filesystems), commit, and thaw whatever happened."""
        options = self.options
        tiers = [[w for w in writers if w.tier is tier] for tier in (Tier.APPLICATION, Tier.FILESYSTEM)]
        frozen: list[list[GuardedWriter]] = []
        locators: dict[uuid.UUID, Locator] = {}
        freeze_started = time.monotonic()
        freeze_by = Deadline.after(options.freeze_timeout_s)  # one window for both tiers
        commit_ms = 0.0
        try:
            for tier_writers in tiers:
                frozen.append(tier_writers)  # a partly frozen tier is thawed too: thaw is idempotent
                self._each(tier_writers, lambda w: w.freeze(session, freeze_by), parallel=True, record=False)
            inject("provider.commit")  # filesystems frozen, snapshots not yet taken
            commit_started = time.monotonic()
            for provider, requests in groups.items():
                left = options.commit_timeout_s - (time.monotonic() - commit_started)
                commit = _Bounded(partial(provider.commit, requests), f"commit-{provider.name}")
                self._commits.append(commit.thread)
                locators.update(commit.result(left, what=f"provider {provider.name} commit"))
            commit_ms = (time.monotonic() - commit_started) * 1000
        finally:
            thaw_errors: list[BaseException] = []
            thaw_by = Deadline.after(options.event_timeout_s)
            for tier_writers in reversed(frozen):
                try:
                    self._each(tier_writers, lambda w: w.thaw(session, thaw_by), parallel=True, record=False)
                except SnapportError as exc:
                    thaw_errors.append(exc)
            freeze_window_ms = (time.monotonic() - freeze_started) * 1000
            for w in writers:
                record_writer(self.host.catalog, self.set_id, w)
            self.host.catalog.record_timings(
                self.set_id, freeze_window_ms=freeze_window_ms, commit_ms=commit_ms or None
            )
        if thaw_errors:
            raise thaw_errors[0]
        if freeze_window_ms > options.freeze_timeout_s * 1000:
            raise FreezeTimeout(
                f"the freeze window took {freeze_window_ms:.0f} ms, over its {options.freeze_timeout_s:g} s bound"
            )
        return locators

    def _abort(self, session: Session, writers: Sequence[GuardedWriter], cause: BaseException) -> None:
        """Roll back: abort and thaw every writer, delete every snapshot made, record why. Never raises."""
        reason = describe_failure(cause)
        for thread in self._commits:
            thread.join(ABORT_COMMIT_WAIT_S)  # a late commit must finish before its snapshots can be removed
        deadline = Deadline.after(self.options.event_timeout_s)
        # Filesystems first: an application's rollback may need to write to a volume still frozen.
        steps: list[Callable[[], object]] = [
            partial(
                self._each, [w for w in writers if w.tier is tier], lambda w: w.abort(session, deadline), parallel=True
            )
            for tier in (Tier.FILESYSTEM, Tier.APPLICATION)
        ]
        steps.append(partial(self._each, writers, lambda w: w.backup_shutdown(session, deadline), parallel=True))
        for step in steps:
            try:
                step()
            except Exception as exc:  # every step runs whatever the others did
                self.host.catalog.record_event(self.set_id, EventKind.ABORT_STEP_FAILED, str(exc))
        if _abort_snapshots(self.host, self.set_id, self._requests()):
            with contextlib.suppress(BadState):  # already final: the event log has the reason
                self.host.catalog.transition(self.set_id, SetState.ABORTED, reason=reason)
        else:
            self.host.catalog.record_event(
                self.set_id, EventKind.ROLLBACK_INCOMPLETE, f"{reason}; the next create retries"
            )


def _all_or_first_error(items: Sequence[T], call: Callable[[T], None]) -> None:
    """Run `call` on every item in parallel threads; once all returned, raise the first error if any."""
    if not items:
        return
    if len(items) == 1:
        call(items[0])
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(call, item) for item in items]
        errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first


class _Bounded(Generic[T]):
    """Work in its own thread, awaited for a bounded time (the provider commit: VSS's 10 s hold)."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._work = work
        self._result: list[T] = []
        self._failure: list[BaseException] = []
        self.thread = threading.Thread(target=self._target, name=name, daemon=True)
        self.thread.start()

    def _target(self) -> None:
        try:
            self._result.append(self._work())
        except BaseException as exc:
            self._failure.append(exc)

    def result(self, seconds: float, *, what: str) -> T:
        self.thread.join(max(seconds, 0.0))
        if self.thread.is_alive():
            raise HoldTimeout(f"{what} did not finish within {max(seconds, 0.0):.3g} s")
        if self._failure:
            raise self._failure[0]
        return self._result[0]


def describe_failure(cause: BaseException) -> str:
    """One line saying why a set failed."""
    if isinstance(cause, SnapportError):
        return cause.message
    if isinstance(cause, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return f"{type(cause).__name__}: {cause}" if str(cause) else type(cause).__name__


def _abort_snapshots(host: Host, set_id: uuid.UUID, groups: Mapping[Provider, Sequence[SnapshotRequest]]) -> bool:
    """Let every provider remove what it made for the set; False if one could not (the set is then left as it
    is, so that the next creation retries rather than forgetting the orphans)."""
    complete = True
    for provider, requests in groups.items():
        try:
            provider.abort(requests)
        except Exception as exc:
            host.catalog.record_event(set_id, EventKind.ABORT_STEP_FAILED, f"provider {provider.name}: {exc}")
            complete = False
    return complete


def roll_back_interrupted(host: Host) -> list[uuid.UUID]:
    """Abort the sets whose creating process died (they are preparing or snapshotting while nobody holds the
    creation lock, which the caller must hold): the providers remove what they made, from the catalog's record
    alone. The freeze guard has already thawed their filesystems. A set whose clean-up fails stays as it is and
    is retried next time."""
    rolled_back = []
    for snapshot_set in host.catalog.list_sets({SetState.PREPARING, SetState.SNAPSHOTTING}):
        groups: dict[Provider, list[SnapshotRequest]] = {}
        for snap in snapshot_set.snapshots:
            request = SnapshotRequest(snapshot_set.id, snap.id, snap.volume, snapshot_set.attrs)
            groups.setdefault(host.provider(snap.locator.provider), []).append(request)
        if _abort_snapshots(host, snapshot_set.id, groups):
            host.catalog.transition(
                snapshot_set.id, SetState.ABORTED, reason="interrupted: the creating process died; rolled back"
            )
            rolled_back.append(snapshot_set.id)
    return rolled_back


def create_set(host: Host, volumes: Sequence[str], options: SessionOptions, out_dir: Path | None = None) -> CreatedSet:
    """Create a set of `volumes` (mount points) with the writers `options.writer_specs` asks for: the one path of
    `snapport create` and of an off-host backup. The volumes are resolved first, so that each writer's target is
    checked against them; a writer asked for twice is a usage error; everything is refused before any freeze."""
    resolved = tuple(host.volume(v) for v in volumes)
    writers = writers_from_specs(options.writer_specs, resolved, host.name)
    session = BackupSession(host, options, writers)
    for volume in resolved:
        session.add_volume(volume.mount_point)
    return session.create(out_dir)
