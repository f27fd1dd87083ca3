"""Snapshot sets, snapshots, the volumes they copy and where the provider keeps them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from snapport.errors import MaxVolumes
from snapport.model.context import Attr, Context
from snapport.model.paths import volume_path
from snapport.model.state import SetState

MAX_VOLUMES_PER_SET = 64  # the VSS limit, kept


@dataclass(frozen=True, slots=True)
class Volume:
    """A mounted filesystem on the original host (VSS: the original volume name)."""

    host: str
    mount_point: str
    fs_type: str
    fs_uuid: str
    device: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mount_point", volume_path(self.mount_point))


@dataclass(frozen=True, slots=True)
class LunInformation:
    """How any host on the shared storage finds a LUN without reading it (VSS: VDS_LUN_INFORMATION)."""

    array_id: str
    lun_id: str
    serial: str
    size_bytes: int
    vendor: str = "snapport"
    product: str = ""


@dataclass(frozen=True, slots=True)
class Locator:
    """What a provider needs to find a snapshot again, on this host or another (VSS: LUN_MAPPING).

    `source` is the original volume's LUN, `destination` the snapshot's; `properties` holds what a provider
    without LUNs (btrfs, ZFS) needs instead.
    """

    provider: str
    source: LunInformation | None = None
    destination: LunInformation | None = None
    properties: tuple[tuple[str, str], ...] = ()

    def property(self, key: str) -> str | None:
        return dict(self.properties).get(key)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One volume's point-in-time copy within a set (VSS: shadow copy, VSS_SNAPSHOT_PROP)."""

    id: uuid.UUID
    set_id: uuid.UUID
    volume: Volume
    locator: Locator
    attrs: Attr
    created_at: datetime | None = None
    device: str | None = None  # where the copy is attached on this host, e.g. /dev/loop7
    exposed_at: str | None = None  # a read-only mount of the copy on this host


@dataclass(frozen=True, slots=True)
class SnapshotSet:
    """Snapshots of several volumes taken at one instant (VSS: shadow copy set)."""

    id: uuid.UUID
    context: Context
    attrs: Attr
    state: SetState
    originating_host: str  # the host that owns the original volumes
    service_host: str  # the host whose snapport holds this record (the importer, for an imported set)
    created_at: datetime | None = None
    snapshots: tuple[Snapshot, ...] = ()
    freeze_window_ms: float | None = None
    commit_ms: float | None = None
    failure: str | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if len(self.snapshots) > MAX_VOLUMES_PER_SET:
            raise MaxVolumes(f"a set holds at most {MAX_VOLUMES_PER_SET} volumes; this one has {len(self.snapshots)}")
