"""What happens to a set after it is made: import, expose, map, unexpose, delete, break, complete.

Each step is recorded in the catalog before it acts, is idempotent where the VSS verb is, and undoes what it did
when it fails half-way (a failed import unpresents what it presented: VSS leaves LUNs behind).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from snapport.coordinator.host import Host
from snapport.coordinator.recording import record_writer
from snapport.documents import bcd_to_xml, load_documents
from snapport.errors import (
    BadState,
    ClusterRule,
    ImportRefused,
    ObjectNotFound,
    PathEscape,
    SetInProgress,
    SnapportError,
    UsageError,
)
from snapport.faults import inject
from snapport.model import (
    FINAL_STATES,
    Attr,
    BackupComponents,
    BackupType,
    EventKind,
    SetState,
    Snapshot,
    SnapshotSet,
)
from snapport.model.paths import relative_to_volume
from snapport.osal import mount as mnt
from snapport.writers.base import Deadline, Session
from snapport.writers.guarded import GuardedWriter
from snapport.writers.registry import writer_from_spec

IMPORT_LOCK_WAIT_S = 300.0
COMPLETE_EVENT_TIMEOUT_S = 300.0


def volume_dir_name(mount_point: str) -> str:
    """A directory name for a volume's exposed copy: `/srv/data` → `srv-data`, `/` → `root`."""
    return mount_point.strip("/").replace("/", "-") or "root"


# -- import (VSS: ImportSnapshots) -------------------------------------------------------------------------------


def import_snapshot_set(host: Host, bcd: BackupComponents, *, cluster_check: bool = False) -> SnapshotSet:
    """Present the set's snapshots on this host, read-only, and record it `imported`.

    Serialised by a host-wide lock; importing a set that is already imported here returns it unchanged.
    `cluster_check` (always on when a proxy's agent imports): refuse, before recording anything, a set whose
    original volumes this host can see (`ClusterRule`).
    """
    description = bcd.snapshot_set
    catalog = host.catalog
    with host.lock("import", timeout_s=IMPORT_LOCK_WAIT_S, what="the import lock"):
        inject("set.import")
        try:
            existing = catalog.get_set(description.set_id)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if Attr.IMPORTED in existing.attrs and existing.state in (SetState.CREATED, SetState.EXPOSED):
                return existing
            raise ImportRefused(
                f"set {description.set_id} is already known here as {existing.state.value}; it cannot be imported"
            )
        if cluster_check:
            check_cluster_rule(host, bcd)
        for snap in description.snapshots:  # refuse before recording anything: bad input changes nothing
            if snap.locator.destination is None and not snap.locator.properties:
                raise ImportRefused(f"snapshot {snap.snapshot_id} has no locator: the set was not made transportable")
            host.provider(snap.locator.provider).check_import(snap.locator, set_id=description.set_id)
        started = time.monotonic()
        attrs = description.attrs | Attr.IMPORTED
        catalog.add_set(
            SnapshotSet(
                id=description.set_id,
                context=description.context,
                attrs=attrs,
                state=SetState.IMPORTING,
                originating_host=bcd.originating_host,
                service_host=host.name,
                created_at=datetime.now(UTC),
                snapshots=tuple(
                    Snapshot(
                        id=s.snapshot_id,
                        set_id=description.set_id,
                        volume=s.original_volume,
                        locator=s.locator,
                        attrs=s.attrs | Attr.IMPORTED,
                    )
                    for s in description.snapshots
                ),
            )
        )
        presented: list[tuple[uuid.UUID, str]] = []
        try:
            for snap in description.snapshots:
                provider = host.provider(snap.locator.provider)
                device = provider.import_snapshot(snap.locator)
                presented.append((snap.snapshot_id, device))
                catalog.update_snapshot(snap.snapshot_id, device=device)
        except BaseException as exc:
            for snapshot_id, device in reversed(presented):
                locator = next(s.locator for s in description.snapshots if s.snapshot_id == snapshot_id)
                _quietly(host, description.set_id, partial(host.provider(locator.provider).unimport, locator, device))
                catalog.update_snapshot(snapshot_id, device=None)
            reason = exc.message if isinstance(exc, SnapportError) else f"{type(exc).__name__}: {exc}"
            catalog.transition(description.set_id, SetState.ABORTED, reason=f"import failed: {reason}")
            raise
        catalog.record_import(
            description.set_id,
            host.name,
            import_ms=(time.monotonic() - started) * 1000,
            document_sha256=hashlib.sha256(bcd_to_xml(bcd)).hexdigest(),
        )
        return catalog.transition(description.set_id, SetState.CREATED)


def check_cluster_rule(host: Host, bcd: BackupComponents) -> None:
    """Refuse (`ClusterRule`) a set whose original volumes this host sees: the provider says the original LUN is
    presented here, or a filesystem mounted in this mount namespace has an original volume's UUID. This host's own
    exposed snapshot copies (same UUID, mounted with `nouuid`) do not count."""
    description = bcd.snapshot_set
    for snap in description.snapshots:
        if host.provider(snap.locator.provider).sees_original(snap.locator):
            raise ClusterRule(
                f"{host.name} sees the original volume {snap.original_volume.mount_point} of {bcd.originating_host} "
                f"(provider {snap.locator.provider}); a host that sees the original must not import its copy"
            )
    wanted = {s.original_volume.fs_uuid: s.original_volume for s in description.snapshots if s.original_volume.fs_uuid}
    if not wanted:
        return
    ours = {s.device for known in host.catalog.list_sets() for s in known.snapshots if s.device}
    run_root = str(host.run_dir.absolute()).rstrip("/") + "/"
    seen: dict[str, str] = {}
    for mount in mnt.mounts():
        if not mount.source.startswith("/dev/") or mount.source in ours or mount.mount_point.startswith(run_root):
            continue
        if mount.source not in seen:
            seen[mount.source] = mnt.fs_identity(host.runner, mount.source)[1]
        volume = wanted.get(seen[mount.source])
        if volume is not None:
            raise ClusterRule(
                f"{host.name} has {mount.source} mounted at {mount.mount_point} with the UUID of the original volume "
                f"{volume.mount_point} of {bcd.originating_host}; a host that sees the original must not import "
                "its copy"
            )


# -- the per-set lock --------------------------------------------------------------------------------------------

SET_LOCK_WAIT_S = 120.0
_held_set_locks = threading.local()


def set_lock_path(host: Host, set_id: uuid.UUID) -> Path:
    return host.home / "locks" / f"set-{set_id}.lock"


@contextlib.contextmanager
def set_lock(host: Host, set_id: uuid.UUID, *, timeout_s: float = SET_LOCK_WAIT_S) -> Iterator[None]:
    """Hold the set's own lock (`$SNAPPORT_HOME/locks/set-<id>.lock`, a flock): expose, unexpose, delete and break
    take it, and doctor's repair of the set, so none runs between another's mount and its catalog record.
    Re-entrant in a thread (delete within complete, within doctor's repair). `SetInProgress` when another process
    holds it past `timeout_s` (0: do not wait). A set that ends deleted or aborted loses its lock file too."""
    held: set[tuple[str, uuid.UUID]] = _held_set_locks.__dict__.setdefault("keys", set())
    key = (str(host.home), set_id)
    if key in held:
        yield
        return
    try:
        lock = host.lock(f"set-{set_id}", timeout_s=timeout_s, what=f"set {set_id}'s lock").__enter__()
    except SetInProgress:
        raise SetInProgress(
            f"set {set_id} is busy: another process is exposing, unexposing, deleting or repairing it (waited "
            f"{timeout_s:g} s); retry when it ends"
        ) from None
    held.add(key)
    try:
        yield
    finally:
        held.discard(key)
        try:
            # No later step can change a final (or unknown) set, so a process still waiting on this file's lock
            # does no harm when it gets it.
            if _final_or_unknown(host, set_id):
                lock.path.unlink(missing_ok=True)
        except (SnapportError, OSError):
            pass
        finally:
            lock.__exit__(None, None, None)


def _final_or_unknown(host: Host, set_id: uuid.UUID) -> bool:
    try:
        return host.catalog.get_set(set_id).state in (SetState.DELETED, SetState.ABORTED)
    except ObjectNotFound:
        return True


# -- expose, map, unexpose ---------------------------------------------------------------------------------------


def _present_locally(host: Host, snapshot_set: SnapshotSet, snapshot: Snapshot) -> str:
    """The device of a snapshot on this host, presenting it first if this host made it and it is not transportable."""
    if snapshot.device:
        return snapshot.device
    if Attr.TRANSPORTABLE in snapshot_set.attrs and Attr.IMPORTED not in snapshot_set.attrs:
        raise BadState(
            f"set {snapshot_set.id} is transportable: it is not surfaced on the host that made it; import it on "
            "the backup host"
        )
    device = host.provider(snapshot.locator.provider).import_snapshot(snapshot.locator)
    host.catalog.update_snapshot(snapshot.id, device=device)
    return device


def expose(host: Host, set_id: uuid.UUID, at: Path | None = None) -> dict[str, str]:
    """Mount every snapshot of the set read-only under `at` (default /run/snapport/<set>); {volume: path}."""
    with set_lock(host, set_id):
        return _expose(host, set_id, at)


def _expose(host: Host, set_id: uuid.UUID, at: Path | None) -> dict[str, str]:
    catalog = host.catalog
    snapshot_set = catalog.get_set(set_id)
    if snapshot_set.state is SetState.EXPOSED:
        return {s.volume.mount_point: str(s.exposed_at) for s in snapshot_set.snapshots}
    if snapshot_set.state is not SetState.CREATED:
        raise BadState(f"set {set_id} is {snapshot_set.state.value}; only a created set can be exposed")
    if Attr.CLIENT_ACCESSIBLE in snapshot_set.attrs:
        raise BadState(f"set {set_id} is client-accessible; such copies are never exposed")
    inject("set.expose")
    base = (at or host.run_dir / str(set_id)).absolute()
    exposed: list[tuple[Snapshot, Path]] = []
    try:
        for snapshot in snapshot_set.snapshots:
            device = _present_locally(host, snapshot_set, snapshot)
            target = base / volume_dir_name(snapshot.volume.mount_point)
            if target.exists() and any(target.iterdir()):
                raise UsageError(f"{target} is not empty; choose another --at")
            target.mkdir(parents=True, exist_ok=True)
            host.provider(snapshot.locator.provider).expose(snapshot.locator, device, snapshot.volume.fs_type, target)
            exposed.append((snapshot, target))
            catalog.record_exposure(snapshot.id, str(target))
    except BaseException:
        for snapshot, target in reversed(exposed):
            _quietly(host, set_id, partial(_unexpose_one, host, snapshot, target))
        raise
    catalog.transition(set_id, SetState.EXPOSED)
    return {s.volume.mount_point: str(t) for s, t in exposed}


def _unexpose_one(host: Host, snapshot: Snapshot, target: Path) -> None:
    host.provider(snapshot.locator.provider).unexpose(snapshot.locator, target)
    host.catalog.remove_exposure(snapshot.id)
    with contextlib.suppress(OSError):  # only the empty directory we made
        target.rmdir()


def unexpose(host: Host, set_id: uuid.UUID) -> SnapshotSet:
    """Unmount every exposed snapshot of the set; idempotent."""
    with set_lock(host, set_id):
        return _unexpose(host, set_id)


def _unexpose(host: Host, set_id: uuid.UUID) -> SnapshotSet:
    inject("set.unexpose")
    snapshot_set = host.catalog.get_set(set_id)
    for snapshot in snapshot_set.snapshots:
        if snapshot.exposed_at:
            _unexpose_one(host, snapshot, Path(snapshot.exposed_at))
    if snapshot_set.state is SetState.EXPOSED:
        return host.catalog.transition(set_id, SetState.CREATED)
    return host.catalog.get_set(set_id)


def map_path(host: Host, set_id: uuid.UUID, original: str) -> str:
    """Where `original` (a path on the original host) is inside the exposed copy; never outside it."""
    snapshot_set = host.catalog.get_set(set_id)
    candidates = [
        s
        for s in snapshot_set.snapshots
        if original == s.volume.mount_point or original.startswith(s.volume.mount_point.rstrip("/") + "/")
    ]
    if not candidates:
        raise PathEscape(f"{original} is on none of the set's volumes")
    snapshot = max(candidates, key=lambda s: len(s.volume.mount_point))
    if not snapshot.exposed_at:
        raise BadState(f"set {set_id} is not exposed; run `snapport expose {set_id}` first")
    relative = relative_to_volume(snapshot.volume.mount_point, original)
    root = os.path.realpath(snapshot.exposed_at)
    mapped = str(Path(root) / relative) if relative else root
    resolved = os.path.realpath(mapped)
    if resolved != root and not resolved.startswith(root.rstrip("/") + "/"):
        raise PathEscape(f"{original} resolves outside the snapshot (a symbolic link leads to {resolved})")
    return mapped


# -- delete, break -----------------------------------------------------------------------------------------------


def delete(host: Host, set_id: uuid.UUID) -> SnapshotSet:
    """Remove the set's snapshots (unexposing and unpresenting them first); idempotent after a crash."""
    with set_lock(host, set_id):
        return _delete(host, set_id)


def _delete(host: Host, set_id: uuid.UUID) -> SnapshotSet:
    catalog = host.catalog
    snapshot_set = catalog.get_set(set_id)
    if snapshot_set.state is SetState.DELETED:
        return snapshot_set
    inject("set.delete")
    if snapshot_set.state is not SetState.DELETING:
        snapshot_set = catalog.transition(set_id, SetState.DELETING)
    for snapshot in snapshot_set.snapshots:
        provider = host.provider(snapshot.locator.provider)
        if snapshot.exposed_at:
            _unexpose_one(host, snapshot, Path(snapshot.exposed_at))
        if snapshot.device:
            provider.unimport(snapshot.locator, snapshot.device)
            catalog.update_snapshot(snapshot.id, device=None)
        if snapshot.locator.destination is not None or snapshot.locator.properties:
            provider.delete(snapshot.locator)
    base = host.run_dir / str(set_id)
    if base.is_dir():
        with contextlib.suppress(OSError):
            base.rmdir()
    return catalog.transition(set_id, SetState.DELETED)


@dataclass(frozen=True, slots=True)
class BrokenVolume:
    original: str
    device: str


def break_set(host: Host, set_id: uuid.UUID) -> list[BrokenVolume]:
    """Turn each snapshot into a standalone read-write volume and forget the set (VSS: BreakSnapshotSetEx)."""
    with set_lock(host, set_id):
        return _break(host, set_id)


def _break(host: Host, set_id: uuid.UUID) -> list[BrokenVolume]:
    catalog = host.catalog
    snapshot_set = catalog.get_set(set_id)
    if snapshot_set.state is SetState.EXPOSED:
        snapshot_set = unexpose(host, set_id)
    if snapshot_set.state is not SetState.CREATED:
        raise BadState(f"set {set_id} is {snapshot_set.state.value}; only a created set can be broken")
    broken = []
    for snapshot in snapshot_set.snapshots:
        provider = host.provider(snapshot.locator.provider)
        if not provider.capabilities.can_break:
            raise BadState(f"provider {provider.name} cannot break snapshots")
        device = _present_locally(host, snapshot_set, snapshot)
        broken.append(BrokenVolume(snapshot.volume.mount_point, provider.break_snapshot(snapshot.locator, device)))
    for b, snapshot in zip(broken, snapshot_set.snapshots, strict=True):
        catalog.update_snapshot(snapshot.id, device=b.device)
    catalog.transition(set_id, SetState.BROKEN)
    return broken


# -- complete (VSS: SetBackupSucceeded + BackupComplete + BackupShutdown) -----------------------------------------


def complete(host: Host, set_id: uuid.UUID, *, succeeded: bool) -> SnapshotSet:
    """Fire BackupComplete on the set's writers, once, only for a successful backup; then end the session.

    The outcome is committed to the catalog before any writer hears of it, so a crash cannot fire it twice.
    For auto-release contexts the end of the session deletes the snapshots still held here.
    """
    catalog = host.catalog
    snapshot_set = catalog.get_set(set_id)
    if Attr.IMPORTED in snapshot_set.attrs:
        raise BadState(f"set {set_id} was imported; BackupComplete is fired on the host that made it")
    if snapshot_set.state in (SetState.PREPARING, SetState.SNAPSHOTTING, SetState.ABORTED):
        raise BadState(f"set {set_id} is {snapshot_set.state.value}: BackupComplete only follows a created set")
    session_record = catalog.claim_completion(set_id, succeeded=succeeded)  # raises BadState the second time
    session = Session(
        set_id=set_id,
        context=snapshot_set.context,
        attrs=snapshot_set.attrs,
        backup_type=BackupType(session_record.backup_type or BackupType.FULL.value),
        volumes=tuple(s.volume for s in snapshot_set.snapshots),
    )
    writers = [
        GuardedWriter(writer_from_spec(spec, session.volumes, host.name)) for spec in session_record.writer_specs
    ]
    deadline = Deadline.after(COMPLETE_EVENT_TIMEOUT_S)
    for writer in writers:
        if succeeded:
            components = _components_of(host, set_id, writer)
            outcome = dict.fromkeys(components, True)
            metadata = {path: text for path, text in components.items() if text is not None}
            writer_session = dataclasses.replace(session, backup_metadata=metadata)
            _quietly(host, set_id, partial(writer.backup_complete, writer_session, outcome, deadline))
        _quietly(host, set_id, partial(writer.backup_shutdown, session, deadline))
        record_writer(catalog, set_id, writer)
    snapshot_set = catalog.get_set(set_id)
    if snapshot_set.context.auto_release and snapshot_set.state in (SetState.CREATED, SetState.EXPOSED):
        snapshot_set = delete(host, set_id)
    return snapshot_set


END_SESSION_RETRY_S = 1.0


def end_session(
    host: Host, set_id: uuid.UUID, *, succeeded: bool, keep_set: bool = False, settle_s: float = 0.0
) -> str:
    """End a set's backup session, whatever its context: `complete` (BackupComplete only if `succeeded`, claimed
    once: a second call fires nothing), then the set deleted here unless `keep_set` (data mining: the session
    ends while a proxy still needs the persistent set). The delete is retried for up to `settle_s` seconds: the
    storage refuses to delete a snapshot another host still holds, and a proxy that lost its lease lets go of it
    within about a lease. Returns what was done; a delete that still fails raises its error."""
    action = "ended the session" + (" with BackupComplete" if succeeded else " without BackupComplete")
    try:
        complete(host, set_id, succeeded=succeeded)  # auto-release contexts: deletes the set too
    except BadState:
        pass  # the outcome was claimed already: nothing is fired again
    except ObjectNotFound:
        return "its set is not in the catalog"
    except SnapportError as exc:  # claimed, but its auto-release delete failed: retried below
        action += f" (its delete deferred: {exc.code})"
    if keep_set:
        return action + "; the set is kept"
    deadline = time.monotonic() + settle_s
    while host.catalog.get_set(set_id).state not in FINAL_STATES:
        try:
            delete(host, set_id)
            return action + "; deleted the set"
        except SnapportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(END_SESSION_RETRY_S)
    return action


def _components_of(host: Host, set_id: uuid.UUID, writer: GuardedWriter) -> dict[str, str | None]:
    """The writer's components in the set's BCD, each with its private backup metadata (None if it has none)."""
    session = host.catalog.get_session(set_id)
    if not session.documents_dir:
        return {}
    bcd, _ = load_documents(Path(session.documents_dir))
    for wc in bcd.writers:
        if wc.writer_id == writer.writer_id:
            return {c.full_path: c.backup_metadata for c in wc.components}
    return {}


def _quietly(host: Host, set_id: uuid.UUID, step: Callable[[], object]) -> None:
    """Run a clean-up step; a failure is recorded, not raised, so the remaining steps still run."""
    try:
        step()
    except Exception as exc:
        host.catalog.record_event(set_id, EventKind.CLEANUP_STEP_FAILED, str(exc))


# -- revert (VSS: RevertToSnapshot) -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RevertedVolume:
    volume: str  # the original volume's mount point
    device: str  # its device (unmounted; mount it again to see the snapshot's content)
    snapshot_id: uuid.UUID


def revert(host: Host, set_id: uuid.UUID, *, volumes: Sequence[str] = ()) -> list[RevertedVolume]:
    """Roll original volumes back to a persistent set's snapshots (all, or the `volumes` named), in place.

    Only for a set this host made, whose providers can revert; every chosen volume must be unmounted. Everything
    is checked for every volume before any is reverted, and each revert is recorded in the set's event log.
    """
    from snapport.errors import ProviderVeto, UnsupportedOperation  # noqa: PLC0415

    catalog = host.catalog
    snapshot_set = catalog.get_set(set_id)
    if Attr.IMPORTED in snapshot_set.attrs:
        raise BadState(f"set {set_id} was imported here; revert it on the host that made it")
    if Attr.PERSISTENT not in snapshot_set.attrs:
        raise BadState(f"set {set_id} is not persistent; only a persistent set (e.g. --context app-rollback) reverts")
    if snapshot_set.state not in (SetState.CREATED, SetState.EXPOSED):
        raise BadState(f"set {set_id} is {snapshot_set.state.value}; only a created set can be reverted to")
    chosen = list(snapshot_set.snapshots)
    if volumes:
        wanted = {mnt_point: os.path.realpath(mnt_point) for mnt_point in volumes}
        by_volume = {s.volume.mount_point: s for s in snapshot_set.snapshots}
        unknown = [given for given, real in wanted.items() if given not in by_volume and real not in by_volume]
        if unknown:
            raise UsageError(
                f"set {set_id} has no snapshot of {', '.join(unknown)}; its volumes: {', '.join(sorted(by_volume))}"
            )
        chosen = [s for m, s in by_volume.items() if m in wanted or m in wanted.values()]
    for snapshot in chosen:
        provider = host.provider(snapshot.locator.provider)
        if not provider.capabilities.can_revert:
            raise UnsupportedOperation(
                f"provider {provider.name} cannot revert {snapshot.volume.mount_point} to a snapshot; restore its "
                f"files instead (snapport expose {set_id}, or snapport restore from a backup of the set)"
            )
    for snapshot in chosen:
        device = snapshot.volume.device
        held = [m.mount_point for m in mnt.mounts() if device and m.source == device]
        if held:
            raise ProviderVeto(
                f"{snapshot.volume.mount_point} ({device}) is mounted at {', '.join(held)}; stop what uses it, "
                f"unmount it (umount {held[0]}), run `snapport revert {set_id}` again, then mount it back"
            )
    catalog.record_event(set_id, EventKind.REVERT_STARTED, ", ".join(s.volume.mount_point for s in chosen))
    reverted: list[RevertedVolume] = []
    for snapshot in chosen:
        try:
            host.provider(snapshot.locator.provider).revert(snapshot.locator, snapshot.volume)
        except SnapportError as exc:
            done = ", ".join(r.volume for r in reverted) or "none"
            catalog.record_event(set_id, EventKind.REVERT_FAILED, f"{snapshot.volume.mount_point}: {exc.message}")
            raise type(exc)(
                f"reverting {snapshot.volume.mount_point} failed: {exc.message} (volumes already reverted: {done})"
            ) from exc
        catalog.record_event(set_id, EventKind.REVERTED, f"{snapshot.volume.mount_point} to snapshot {snapshot.id}")
        reverted.append(RevertedVolume(snapshot.volume.mount_point, snapshot.volume.device, snapshot.id))
    return reverted
