"""Reconciliation: compare the catalog with the machine and bring each difference to a safe end.

What a crash can leave (docs/doctor.md): sets stuck mid-way (preparing, snapshotting, importing, deleting) with no
live process; snapshot LUNs of sets this host made or imported that the catalog has deleted, aborted or never
recorded; images in an array's `luns/` that no LUN describes; presentations recorded for this host whose loop
device is gone, and loop devices of an array's images that nobody records; mounts under this host's run directory
that no exposure records, and exposures whose mount is gone; volumes snapport knows left frozen; locks held past
their bounds; leases past their expiry; jobs marked running with no agent.

Everything is matched by exact id, path or device, and only what is snapport's is touched: a loop device or
mount outside the array and the run directory, a LUN of another host's live set, or an admin's own fsfreeze on a
volume snapport does not know are left alone. `reconcile(host, repair=False)` changes nothing; with `repair` it
resolves each finding and says what it did; a second run finds nothing left that it could resolve. A finding
that belongs to a set is judged under that set's lock (`lifecycle.set_lock`), taken without waiting: while an
expose, unexpose or delete holds it, the finding is reported busy and left alone.
`reconcile_quick` is the cheap part every state-changing CLI verb runs first.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from snapport.catalog import JobState, Lease
from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.coordinator.session import roll_back_interrupted
from snapport.errors import BadState, JobInterrupted, ObjectNotFound, SetInProgress, SnapportError
from snapport.model import Attr, SetState, SnapshotSet
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.osal.lock import holders, pid_alive
from snapport.providers.reflink_array import Array

HUNG_AFTER_S = 600.0  # a lock held longer than this by a live process is reported (never broken)
STUCK_AFTER_S = 60.0  # a set deleting, unchanged this long and its set lock free, has lost its process
AGENT_LOCK = "agent.lock"  # held for an agent's whole life: never "hung"
_FINAL = (SetState.DELETED, SetState.ABORTED)


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference between the catalog and the machine."""

    # set | snapshot-lun | image | presentation | loop-device | mount | exposure | frozen | lock | lease | job
    kind: str
    object: str
    detail: str


@dataclass(frozen=True, slots=True)
class Repair:
    """What `--repair` did about a finding."""

    kind: str
    object: str
    action: str


@dataclass
class Report:
    found: list[Finding] = field(default_factory=list)
    repaired: list[Repair] = field(default_factory=list)
    left: list[Finding] = field(default_factory=list)  # found and still wrong (not repairing, or the repair failed)
    # found while a live process held the set's lock (an expose, unexpose or delete under way): not judged, not
    # waited for; in `found` too, never in `left`
    busy: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.left

    def to_json(self) -> dict[str, list[dict[str, str]]]:
        return {
            "found": [{"kind": f.kind, "object": f.object, "detail": f.detail} for f in self.found],
            "repaired": [{"kind": r.kind, "object": r.object, "action": r.action} for r in self.repaired],
            "left": [{"kind": f.kind, "object": f.object, "detail": f.detail} for f in self.left],
            "busy": [{"kind": f.kind, "object": f.object, "detail": f.detail} for f in self.busy],
        }


class _Pass:
    """One reconciliation run: records each finding and, when repairing, runs its fix (a failed fix is left)."""

    def __init__(self, host: Host, repair: bool) -> None:
        self.host = host
        self.repair = repair
        self.report = Report()

    def found(
        self,
        kind: str,
        obj: str,
        detail: str,
        fix: Callable[[], str] | None = None,
        *,
        set_id: uuid.UUID | None = None,
        still: Callable[[], bool] | None = None,
        busy: bool = False,
    ) -> None:
        """Record a finding and (repairing) run its fix. With `set_id`: under that set's lock, taken without
        waiting; while another process holds it (or with `busy`) the finding is reported busy and left alone, and
        once held, `still` says whether the finding survived what that process did meanwhile."""
        if busy:
            self._busy(kind, obj, detail, "a set's lock is held (an expose, unexpose or delete is under way)")
            return
        if set_id is None:
            self._record(kind, obj, detail, fix)
            return
        try:
            with lifecycle.set_lock(self.host, set_id, timeout_s=0):
                if still is None or _survives(still):
                    self._record(kind, obj, detail, fix)
        except SetInProgress:
            self._busy(kind, obj, detail, f"set {set_id} is busy (its lock is held by a live process)")

    def _busy(self, kind: str, obj: str, detail: str, why: str) -> None:
        finding = Finding(kind, obj, f"{detail}; {why}: left alone, run doctor again when it ends")
        self.report.found.append(finding)
        self.report.busy.append(finding)

    def _record(self, kind: str, obj: str, detail: str, fix: Callable[[], str] | None) -> None:
        finding = Finding(kind, obj, detail)
        self.report.found.append(finding)
        if not (self.repair and fix is not None):
            self.report.left.append(finding)
            return
        try:
            action = fix()
        except (SnapportError, OSError) as exc:
            why = exc.message if isinstance(exc, SnapportError) else str(exc)
            self.report.left.append(Finding(kind, obj, f"{detail}; repair failed: {why}"))
            self.host.catalog.record_event(None, "reconcile-failed", f"{kind} {obj}: {why}")
            return
        self.report.repaired.append(Repair(kind, obj, action))
        self.host.catalog.record_event(None, "reconciled", f"{kind} {obj}: {action}")


def _survives(still: Callable[[], bool]) -> bool:
    """`still()`, or True when it cannot tell (the fix then runs, and reports its own failure)."""
    try:
        return still()
    except (SnapportError, OSError):
        return True


def agent_alive(host: Host) -> bool:
    """Whether an agent runs on this home (it holds the home's agent lock for its whole life)."""
    return bool(holders(host.home / "locks" / AGENT_LOCK))


def reconcile(
    host: Host,
    *,
    repair: bool,
    agent_running: bool | None = None,
    hung_after_s: float = HUNG_AFTER_S,
    stuck_after_s: float = STUCK_AFTER_S,
    recover_agent_state: Callable[[], None] | None = None,
) -> Report:
    """Find (and with `repair` resolve) every difference between this host's catalog and the machine.

    `agent_running`: whether this home's agent is alive (default: its lock says); an agent reconciling at its own
    start passes True once it has recovered its jobs and leases. `recover_agent_state`: the agent's start-up
    recovery of jobs and leases, which repairs them when no agent runs (else the catalog is set right here).
    """
    run = _Pass(host, repair)
    alive = agent_alive(host) if agent_running is None else agent_running
    sets = host.catalog.list_sets()
    _creation(run, sets)
    _imports(run, sets)
    _deleting(run, sets, stuck_after_s)
    sets = host.catalog.list_sets()
    _exposures(run, sets)
    arrays = _arrays(host, sets)
    _run_dir_mounts(run, sets, arrays)
    sets = host.catalog.list_sets()
    for array in arrays.values():
        _array(run, array, sets)
    _locks(run, arrays, hung_after_s)
    recovery = _AgentRecovery(recover_agent_state) if recover_agent_state is not None else None
    _leases(run, alive, recovery)
    _jobs(run, alive, recovery)
    return run.report


def reconcile_quick(host: Host) -> list[uuid.UUID]:
    """The cheap part, for the start of every state-changing verb: roll back sets whose creating or importing
    process died (one catalog query when there are none; each under its lock, never waiting for it). Never raises."""
    try:
        stuck = host.catalog.list_sets({SetState.PREPARING, SetState.SNAPSHOTTING, SetState.IMPORTING})
        if not stuck:
            return []
        run = _Pass(host, repair=True)
        _creation(run, stuck, probe_frozen=False)
        _imports(run, stuck)
    except SnapportError:
        return []
    return [uuid.UUID(r.object) for r in run.report.repaired if r.kind == "set"]


# -- sets --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _free_lock(host: Host, name: str) -> Iterator[bool]:
    """Hold the host's `name` lock if nobody does (True), without waiting; False while a live process holds it."""
    lock = host.lock(name, timeout_s=0, what=f"the {name} lock")
    try:
        lock.__enter__()
    except SetInProgress:
        yield False
        return
    try:
        yield True
    finally:
        lock.__exit__(None, None, None)


def _creation(run: _Pass, sets: list[SnapshotSet], *, probe_frozen: bool = True) -> None:
    """Under the creation lock (a live creation holds it: its sets are not leftovers, its freeze not stale):
    roll back sets whose creating process died, then thaw the known volumes left frozen."""
    host = run.host
    with _free_lock(host, "create") as free:
        if not free:
            return
        stuck = [s for s in sets if s.state in (SetState.PREPARING, SetState.SNAPSHOTTING)]
        if stuck:
            rolled: list[uuid.UUID] = []

            def roll_back(set_id: uuid.UUID) -> str:
                if not rolled:
                    rolled.extend(roll_back_interrupted(host))
                if set_id not in rolled:
                    raise BadState("its snapshots could not all be removed (see `snapport show`); retried next time")
                return "rolled back: its snapshots removed, the set aborted"

            for s in stuck:
                detail = f"{s.state.value} with no live creating process"
                run.found("set", str(s.id), detail, partial(roll_back, s.id))
        if probe_frozen:
            _frozen(run, sets)


def _imports(run: _Pass, sets: list[SnapshotSet]) -> None:
    host = run.host
    stuck = [s for s in sets if s.state is SetState.IMPORTING]
    if not stuck:
        return
    with _free_lock(host, "import") as free:
        if not free:
            return
        for s in stuck:
            run.found("set", str(s.id), "importing with no live importing process", partial(_abort_import, host, s))


def _abort_import(host: Host, snapshot_set: SnapshotSet) -> str:
    for snapshot in snapshot_set.snapshots:
        # The reflink array unpresents every device it records for this host, whether or not the catalog had
        # learnt the device before the importer died.
        host.provider(snapshot.locator.provider).unimport(snapshot.locator, snapshot.device or "")
        if snapshot.device:
            host.catalog.update_snapshot(snapshot.id, device=None)
    host.catalog.transition(snapshot_set.id, SetState.ABORTED, reason="interrupted: the importing process died")
    return "unpresented its snapshots; the set aborted"


def _deleting(run: _Pass, sets: list[SnapshotSet], stuck_after_s: float) -> None:
    host = run.host
    now = datetime.now(UTC)
    for s in sets:
        if s.state is not SetState.DELETING:
            continue
        events = host.catalog.events(s.id)
        idle_s = (now - events[-1].at).total_seconds() if events else stuck_after_s
        if idle_s < stuck_after_s:
            continue  # recent: judged again later (a live delete holds its set lock besides)

        def finish(set_id: uuid.UUID = s.id) -> str:
            lifecycle.delete(host, set_id)
            return "finished the delete"

        def deleting(set_id: uuid.UUID = s.id) -> bool:
            return host.catalog.get_set(set_id).state is SetState.DELETING

        run.found("set", str(s.id), f"deleting, unchanged for {idle_s:.0f} s", finish, set_id=s.id, still=deleting)


# -- frozen filesystems ------------------------------------------------------------------------------------------


def _known_volumes(host: Host, sets: list[SnapshotSet]) -> list[mnt.MountInfo]:
    """Read-write mounts of volumes snapport knows: this host's sets' original volumes (same mount point and
    device), and LUNs of the catalog's arrays presented to this host. Nothing else is ever probed."""
    arrays = _arrays(host, sets)
    table = mnt.mounts()
    by_point = {m.mount_point: m for m in table}
    chosen: dict[str, mnt.MountInfo] = {}
    for s in sets:
        if Attr.IMPORTED in s.attrs:
            continue
        for snap in s.snapshots:
            volume = snap.volume
            m = by_point.get(volume.mount_point)
            if volume.host != host.name or m is None:
                continue
            if not volume.device or os.path.realpath(volume.device) == os.path.realpath(m.source):
                chosen.setdefault(m.dev, m)
    for m in table:
        if m.source.startswith("/dev/loop") and m.dev not in chosen:
            backing = loop.backing_file(m.source)
            owner = Array.of_image(backing, host.runner) if backing else None
            if owner is not None and owner[0].path in arrays:
                lun = owner[0].find(owner[1])
                if lun is not None and m.source in lun.devices_on(host.name):
                    chosen[m.dev] = m
    return [m for m in chosen.values() if not m.read_only]


def _frozen(run: _Pass, sets: list[SnapshotSet]) -> None:
    """Volumes left frozen (the caller holds the creation lock, so no freeze window is live). The probe is
    FIFREEZE: EBUSY means frozen; success means it was not, and it is thawed at once (a sync's worth of flush)."""
    for m in _known_volumes(run.host, sets):
        point = Path(m.mount_point)
        try:
            frozen = ioctl.is_frozen(point)
        except SnapportError:
            continue
        if frozen:

            def thaw(point: Path = point) -> str:
                ioctl.thaw(point)
                return "thawed (FITHAW)"

            run.found("frozen", m.mount_point, f"{m.source} is frozen and no snapshot is being made", thaw)


# -- exposures and mounts ----------------------------------------------------------------------------------------


def _exposures(run: _Pass, sets: list[SnapshotSet]) -> None:
    """Exposures the catalog records whose mount is gone; and exposures of sets that are over, still mounted."""
    host = run.host
    for s in sets:
        for snap in s.snapshots:
            if not snap.exposed_at:
                continue
            current = mnt.mount_at(snap.exposed_at)
            if s.state in _FINAL:
                if current is not None:
                    run.found(
                        "mount",
                        snap.exposed_at,
                        f"snapshot {snap.id} of set {s.id} ({s.state.value}) is still mounted",
                        partial(_drop_exposure, host, s, snap.id, Path(snap.exposed_at)),
                        set_id=s.id,
                        still=partial(_exposure_is, host, s.id, snap.id, snap.exposed_at, mounted=True),
                    )
                continue
            if current is None:
                run.found(
                    "exposure",
                    snap.exposed_at,
                    f"snapshot {snap.id} of set {s.id} is recorded exposed here, but nothing is mounted",
                    partial(_drop_exposure, host, s, snap.id, None),
                    set_id=s.id,
                    still=partial(_exposure_is, host, s.id, snap.id, snap.exposed_at, mounted=False),
                )


def _exposure_is(host: Host, set_id: uuid.UUID, snapshot_id: uuid.UUID, at: str, *, mounted: bool) -> bool:
    """Whether the catalog still records the snapshot exposed at `at`, and `at` is (or is not) mounted."""
    current = host.catalog.get_set(set_id)
    recorded = any(x.id == snapshot_id and x.exposed_at == at for x in current.snapshots)
    return recorded and (mnt.mount_at(at) is not None) == mounted


def _drop_exposure(host: Host, snapshot_set: SnapshotSet, snapshot_id: uuid.UUID, unmount: Path | None) -> str:
    action = "forgot the exposure"
    if unmount is not None:
        mnt.unmount(host.runner, unmount)
        _remove_empty_dirs(host, unmount)
        action = "unmounted; forgot the exposure"
    host.catalog.remove_exposure(snapshot_id)
    current = host.catalog.get_set(snapshot_set.id)
    if current.state is SetState.EXPOSED and not any(x.exposed_at for x in current.snapshots):
        with contextlib.suppress(BadState):  # an unexpose in flight moved it first
            host.catalog.transition(current.id, SetState.CREATED)
            action += "; the set is created (not exposed) again"
    return action


def _remove_empty_dirs(host: Host, target: Path) -> None:
    """Remove the mount point and its set directory if empty, never the run directory or anything outside it."""
    root = host.run_dir.absolute()
    for directory in (target, target.parent):
        if directory == root or root not in directory.parents:
            return
        with contextlib.suppress(OSError):
            directory.rmdir()


def _run_dir_mounts(run: _Pass, sets: list[SnapshotSet], arrays: dict[Path, Array]) -> None:
    """Mounts under this host's run directory that no exposure records (a device presented to another host
    is that host's, even on the same machine)."""
    host = run.host
    root = str(host.run_dir.absolute()).rstrip("/") + "/"
    recorded = {snap.exposed_at for s in sets if s.state not in _FINAL for snap in s.snapshots if snap.exposed_at}
    final_exposed = {snap.exposed_at for s in sets if s.state in _FINAL for snap in s.snapshots if snap.exposed_at}
    others = _devices_of_other_hosts(host, arrays)
    for m in reversed(mnt.mounts()):  # the topmost first
        if not m.mount_point.startswith(root) or m.mount_point in recorded or m.mount_point in final_exposed:
            continue  # (final sets' exposures are reported by _exposures)
        if m.source in others:
            continue

        def unmount(point: Path = Path(m.mount_point)) -> str:
            mnt.unmount(host.runner, point)
            _remove_empty_dirs(host, point)
            return "unmounted"

        # An expose mounts, then records: the set's lock tells a live one from a leftover. A mount under a
        # directory that names no set (`expose --at` inside the run directory) is left while any set's lock is held.
        owner = _set_of_run_path(host, m.mount_point)
        run.found(
            "mount",
            m.mount_point,
            f"{m.source} ({m.fs_type}) is mounted and no exposure records it",
            unmount,
            set_id=owner,
            still=partial(_unrecorded_mount, host, m.mount_point, m.source),
            busy=owner is None and _any_set_locked(host),
        )


def _set_of_run_path(host: Host, mount_point: str) -> uuid.UUID | None:
    """The set a path under the run directory belongs to by default exposure (`RUN_DIR/<set id>/...`), or None."""
    try:
        first = Path(mount_point).relative_to(host.run_dir.absolute()).parts[0]
        return uuid.UUID(first)
    except (ValueError, IndexError):
        return None


def _any_set_locked(host: Host) -> bool:
    return any(holders(path) for path in (host.home / "locks").glob("set-*.lock"))


def _unrecorded_mount(host: Host, mount_point: str, source: str) -> bool:
    """Whether `source` is still mounted at `mount_point` and no exposure of a live set records it (read afresh)."""
    current = mnt.mount_at(mount_point)
    if current is None or current.source != source:
        return False
    recorded = {snap.exposed_at for s in host.catalog.list_sets() if s.state not in _FINAL for snap in s.snapshots}
    return mount_point not in recorded


def _devices_of_other_hosts(host: Host, arrays: dict[Path, Array]) -> set[str]:
    found: set[str] = set()
    for array in arrays.values():
        with contextlib.suppress(SnapportError):
            for lun in array.luns():
                found |= {d for h, devices in lun.presented_to if h != host.name for d in devices}
    return found


# -- the array ---------------------------------------------------------------------------------------------------


def _arrays(host: Host, sets: list[SnapshotSet]) -> dict[Path, Array]:
    """The arrays this host's catalog names (its sets' locators). Only these are looked at: another array on the
    same machine (another home, even one using the same host name) is not this catalog's to judge."""
    found: dict[Path, Array] = {}
    paths = {
        snap.locator.property("array_path")
        for s in sets
        for snap in s.snapshots
        if snap.locator.provider == "reflink-array"
    }
    for where in sorted(p for p in paths if p):
        with contextlib.suppress(SnapportError, OSError):
            array = Array.open(Path(where), host.runner)
            found.setdefault(array.path, array)
    return found


def _array(run: _Pass, array: Array, sets: list[SnapshotSet]) -> None:
    host = run.host
    name = host.name
    try:
        stale = array.stale_presentations(name)
    except SnapportError:
        return
    if stale:
        what = ", ".join(f"LUN {lun_id} as {device}" for lun_id, device in stale)

        def prune() -> str:
            pruned = array.prune_presentations(name)
            return f"forgot {len(pruned)} presentation(s) to {name}"

        run.found(
            "presentation", str(array.path), f"recorded as presented to {name} with no loop device: {what}", prune
        )
    catalog_devices = {snap.device for s in sets for snap in s.snapshots if snap.device}
    for device, lun_id in array.stray_devices(catalog_devices):

        def detach(device: str = device) -> str:
            if not array.detach_stray(device, catalog_devices):
                return "already gone or recorded meanwhile; left alone"
            return "detached"

        run.found(
            "loop-device", device, f"backed by {array.image(lun_id)}; no presentation or import records it", detach
        )
    _snapshot_luns(run, array, sets)
    for image in array.orphan_images():

        def remove(image: Path = image) -> str:
            array.delete_lun(image.stem)  # under the array lock: removes the image only if still no LUN has it
            return "removed the image"

        run.found("image", str(image), "no LUN of the array describes it (a crash between clone and record)", remove)


def _snapshot_luns(run: _Pass, array: Array, sets: list[SnapshotSet]) -> None:
    """Snapshot LUNs this host made or imported whose set the catalog has ended or never recorded."""
    host = run.host
    name = host.name
    by_set = {s.id: s for s in sets}
    luns = array.luns()
    by_id = {lun.id: lun for lun in luns}
    for lun in luns:
        if lun.snapshot_of_set is None:
            continue
        try:
            set_id = uuid.UUID(lun.snapshot_of_set)
        except ValueError:
            continue
        known = by_set.get(set_id)
        if known is not None and known.state not in _FINAL:
            continue  # a live set (or one whose rollback is retried by the next creation)
        parent = by_id.get(lun.parent) if lun.parent else None
        if known is not None:
            made_here = Attr.IMPORTED not in known.attrs
        else:
            made_here = parent is not None and bool(parent.devices_on(name))
        state = known.state.value if known is not None else "absent from the catalog"
        if made_here:

            def delete(lun_id: str = lun.id) -> str:
                if not array.delete_lun(lun_id, unpresent_from=name):
                    return "already gone"
                return "deleted the LUN and its image"

            run.found("snapshot-lun", lun.id, f"snapshot of set {set_id}, which is {state} here", delete)
        elif lun.devices_on(name):  # imported here: the LUN is the maker's; only this host's presentation is ours

            def unpresent(lun_id: str = lun.id) -> str:
                detached = array.unpresent(lun_id, name)
                return f"unpresented from {name} ({', '.join(detached) or 'no device left'})"

            run.found("snapshot-lun", lun.id, f"presented here for set {set_id}, which is {state} here", unpresent)


# -- locks, leases, jobs -----------------------------------------------------------------------------------------


def _locks(run: _Pass, arrays: dict[Path, Array], hung_after_s: float) -> None:
    """A flock dies with its holder, so a dead holder leaves nothing; a live one held past the bound is reported
    (never broken: the holder may still be thawing or cleaning up)."""
    paths = sorted((run.host.home / "locks").glob("*.lock"))
    paths += [array.path / ".lock" for array in arrays.values()]
    now = time.time()
    for path in paths:
        if path.name == AGENT_LOCK:
            continue
        for pid in holders(path):
            try:
                held_s = now - path.stat().st_mtime  # the holder writes its pid when it takes the lock
            except FileNotFoundError:
                continue
            if not pid_alive(pid):  # its holder died but a child it started still has the descriptor open
                run.found("lock", str(path), f"held after its holder pid {pid} died (a child process inherited it)")
            elif held_s > hung_after_s:
                run.found("lock", str(path), f"held by live pid {pid} for {held_s:.0f} s, past {hung_after_s:g} s")


def end_lease(host: Host, lease: Lease) -> str:
    """End a session whose lease nobody waits on any more: no BackupComplete, the set deleted, the lease released."""
    action = "ended the session without BackupComplete"
    try:
        lifecycle.complete(host, lease.set_id, succeeded=False)
    except BadState:
        pass  # the outcome was already claimed
    except ObjectNotFound:
        action = "its set is not in the catalog"
    with contextlib.suppress(ObjectNotFound):
        if host.catalog.get_set(lease.set_id).state not in _FINAL:
            lifecycle.delete(host, lease.set_id)
            action += "; deleted the set"
    host.catalog.release_lease(lease.id)
    return action + "; released the lease"


class _AgentRecovery:
    """The agent's own start-up recovery of jobs and leases (failing the interrupted jobs, cleaning up after them,
    telling the other host), run at most once for a home whose agent is not running; given by the caller, since
    the domain never imports the agent."""

    def __init__(self, recover: Callable[[], None]) -> None:
        self._recover = recover
        self._ran = False

    def fix(self, resolved: Callable[[], bool], action: str) -> str:
        if not self._ran:
            self._ran = True
            self._recover()
        if not resolved():
            raise BadState("the agent's recovery did not resolve it")
        return action


def _leases(run: _Pass, agent_running: bool, recovery: _AgentRecovery | None) -> None:
    """With no agent, every unreleased lease this host keeps has lost its waiter; with one, a lease past its
    expiry whose set no job is working on has."""
    catalog = run.host.catalog
    open_leases = [x for x in catalog.leases() if x.released_at is None and x.keeper_host == catalog.host]
    if not open_leases:
        return
    expired = {x.id for x in catalog.expired_leases()}
    busy: set[uuid.UUID] = set()
    if agent_running:
        busy = {j.set_id for j in catalog.list_jobs([JobState.QUEUED, JobState.RUNNING]) if j.set_id is not None}
    for lease in open_leases:
        if agent_running and (lease.id not in expired or lease.set_id in busy):
            continue
        why = "past its expiry" if lease.id in expired else "no agent runs to wait for it"
        detail = f"lease of set {lease.set_id} to {lease.holder}: {why}"
        fix: Callable[[], str] = partial(end_lease, run.host, lease)
        if recovery is not None and not agent_running:

            def released(lease_id: uuid.UUID = lease.id) -> bool:
                return catalog.get_lease(lease_id).released_at is not None

            fix = partial(recovery.fix, released, "the agent's recovery ended the session (no BackupComplete)")
            run.found("lease", str(lease.id), detail, fix)
            continue

        def still_open(lease_id: uuid.UUID = lease.id) -> bool:
            return catalog.get_lease(lease_id).released_at is None

        run.found("lease", str(lease.id), detail, fix, set_id=lease.set_id, still=still_open)


def _jobs(run: _Pass, agent_running: bool, recovery: _AgentRecovery | None) -> None:
    if agent_running:
        return
    catalog = run.host.catalog
    for job in catalog.list_jobs([JobState.QUEUED, JobState.RUNNING]):

        def fail(job_id: uuid.UUID = job.id, was: str = job.state.value) -> str:
            error = JobInterrupted(f"the agent stopped while job {job_id} was {was}")
            catalog.update_job(job_id, state=JobState.FAILED, error=(error.code, error.message))
            return "marked failed (JOB_INTERRUPTED)"

        def ended(job_id: uuid.UUID = job.id) -> bool:
            return catalog.get_job(job_id).state.finished

        fix: Callable[[], str] = fail
        if recovery is not None:
            action = "the agent's recovery marked it failed (JOB_INTERRUPTED) and cleaned up after it"
            fix = partial(recovery.fix, ended, action)
        run.found("job", str(job.id), f"{job.kind} is {job.state.value} but no agent runs", fix)
