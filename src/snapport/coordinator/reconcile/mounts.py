"""Exposures and mounts: exposures the catalog records whose mount is gone, exposures of ended sets still
mounted, and mounts under this host's run directory that no exposure records."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Collection
from functools import partial
from pathlib import Path

from snapport.coordinator.host import Host
from snapport.coordinator.reconcile.report import Pass
from snapport.errors import BadState
from snapport.model import SetState, SnapshotSet
from snapport.osal import mount as mnt
from snapport.osal.lock import holders
from snapport.providers.base import ENDED_STATES


def exposures(run: Pass, sets: list[SnapshotSet]) -> None:
    """Exposures the catalog records whose mount is gone; and exposures of sets that are over, still mounted."""
    host = run.host
    for s in sets:
        for snap in s.snapshots:
            if not snap.exposed_at:
                continue
            current = mnt.mount_at(snap.exposed_at)
            if s.state in ENDED_STATES:
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


def run_dir_mounts(run: Pass, sets: list[SnapshotSet], presented_elsewhere: Collection[str]) -> None:
    """Mounts under this host's run directory that no exposure records (a device a provider presents to another
    host, `presented_elsewhere`, is that host's, even on the same machine)."""
    host = run.host
    root = str(host.run_dir.absolute()).rstrip("/") + "/"
    recorded = {snap.exposed_at for s in sets for snap in s.snapshots if snap.exposed_at}
    for m in reversed(mnt.mounts()):  # the topmost first
        if not m.mount_point.startswith(root) or m.mount_point in recorded:
            continue  # (an ended set's exposure still mounted is reported by `exposures`)
        if m.source in presented_elsewhere:
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
    recorded = {
        snap.exposed_at for s in host.catalog.list_sets() if s.state not in ENDED_STATES for snap in s.snapshots
    }
    return mount_point not in recorded
