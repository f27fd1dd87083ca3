"""Sets stuck mid-way (preparing, snapshotting, importing, deleting) with no live process, and the volumes snapport
knows left frozen (judged with the creations, under the creation lock)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.coordinator.reconcile.report import Pass
from snapport.coordinator.session import roll_back_interrupted
from snapport.errors import BadState, SetInProgress, SnapportError
from snapport.model import Attr, SetState, SnapshotSet
from snapport.osal import ioctl
from snapport.osal import mount as mnt


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


def creations(run: Pass, sets: list[SnapshotSet], presented_here: Collection[str] | None = None) -> None:
    """Under the creation lock (a live creation holds it: its sets are not leftovers, its freeze not stale):
    roll back sets whose creating process died, then (given `presented_here`, the devices the providers present
    to this host) thaw the known volumes left frozen."""
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
                run.report.rolled_back.append(set_id)
                return "rolled back: its snapshots removed, the set aborted"

            for s in stuck:
                detail = f"{s.state.value} with no live creating process"
                run.found("set", str(s.id), detail, partial(roll_back, s.id))
        if presented_here is not None:
            _frozen(run, sets, presented_here)


def imports(run: Pass, sets: list[SnapshotSet]) -> None:
    host = run.host
    stuck = [s for s in sets if s.state is SetState.IMPORTING]
    if not stuck:
        return
    with _free_lock(host, "import") as free:
        if not free:
            return
        for s in stuck:
            run.found("set", str(s.id), "importing with no live importing process", partial(_abort_import, run, s))


def _abort_import(run: Pass, snapshot_set: SnapshotSet) -> str:
    host = run.host
    for snapshot in snapshot_set.snapshots:
        # A provider unpresents every device it records for this host, whether or not the catalog had learnt
        # the device before the importer died.
        host.provider(snapshot.locator.provider).unimport(snapshot.locator, snapshot.device or "")
        if snapshot.device:
            host.catalog.update_snapshot(snapshot.id, device=None)
    host.catalog.transition(snapshot_set.id, SetState.ABORTED, reason="interrupted: the importing process died")
    run.report.rolled_back.append(snapshot_set.id)
    return "unpresented its snapshots; the set aborted"


def deletions(run: Pass, sets: list[SnapshotSet], stuck_after_s: float) -> None:
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


def _known_volumes(host: Host, sets: list[SnapshotSet], presented_here: Collection[str]) -> list[mnt.MountInfo]:
    """Read-write mounts of volumes snapport knows: this host's sets' original volumes (same mount point and
    device), and the devices the providers present to this host. Nothing else is ever probed."""
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
        if m.source in presented_here:
            chosen.setdefault(m.dev, m)
    return [m for m in chosen.values() if not m.read_only]


def _frozen(run: Pass, sets: list[SnapshotSet], presented_here: Collection[str]) -> None:
    """Volumes left frozen (the caller holds the creation lock, so no freeze window is live). The probe is
    FIFREEZE: EBUSY means frozen; success means it was not, and it is thawed at once (a sync's worth of flush)."""
    for m in _known_volumes(run.host, sets, presented_here):
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
