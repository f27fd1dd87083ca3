"""The lab state file (`DIR/lab.json`): every resource `lab up` makes, recorded before it is made.

Each record is written (atomically: temp file, fsync, rename, fsync DIR) *before* its resource is created, with
`made` false, and again once it exists, with the ids learnt on the way (a loop device, a pid). So whatever moment
`up` dies at, `down` finds every resource that may exist, by name or id, and each undo tolerates "never made".
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from snapport.errors import BadState, ObjectNotFound
from snapport.osal.atomic import write_atomically
from snapport.osal.lock import FileLock

STATE_NAME = "lab.json"
LOCK_NAME = ".lab.lock"
STATE_VERSION = 1


class RecordBase(BaseModel):
    """What every record has."""

    model_config = ConfigDict(extra="forbid")

    step: str  # the `up` step that makes it (also its fault point: lab.<step>)
    made: bool = False  # False: about to be made, or its maker died first; undoing it must tolerate that


class NetnsRecord(RecordBase):
    kind: Literal["netns"] = "netns"
    name: str


class VethRecord(RecordBase):
    """A veth pair made directly inside the two namespaces (it never exists in the machine's own)."""

    kind: Literal["veth"] = "veth"
    netns: str
    name: str
    peer_netns: str
    peer_name: str


class FileRecord(RecordBase):
    kind: Literal["file"] = "file"
    path: str


class DirRecord(RecordBase):
    """A directory `up` created; removed with its contents, never across a mount."""

    kind: Literal["dir"] = "dir"
    path: str


class LoopRecord(RecordBase):
    """A loop device on `image`; the device is known only once attached, the image (ours alone) from the start."""

    kind: Literal["loop"] = "loop"
    image: str
    device: str | None = None


class MountRecord(RecordBase):
    """A mount at `path`, in the machine's mount namespace (`host` None) or in a lab host's."""

    kind: Literal["mount"] = "mount"
    path: str
    source: str
    host: str | None = None


class ArrayRecord(RecordBase):
    kind: Literal["array"] = "array"
    path: str
    array_id: str | None = None


class LunRecord(RecordBase):
    """A LUN of the lab's array, presented to `host` (the array's manifest records the device too)."""

    kind: Literal["lun"] = "lun"
    array: str
    host: str
    lun_id: str | None = None
    device: str | None = None


class ProcessRecord(RecordBase):
    """A long-lived process: stopped by `down` only while /proc/PID still shows this start time and command."""

    kind: Literal["process"] = "process"
    role: str  # holder | sample-app | agent
    host: str
    argv: list[str]  # what it runs once the launcher (ip netns exec, unshare, nsenter, env) has exec'd it
    launcher: list[str]  # the whole command line as started
    pid: int | None = None
    start_ticks: int | None = None  # /proc/PID/stat field 22: tells a reused pid from ours
    log: str | None = None


class CephRecord(RecordBase):
    """The lab's Ceph cluster (`snapport.lab.ceph`): its directory, whose own state file records its daemons."""

    kind: Literal["ceph"] = "ceph"
    path: str


class ImageRecord(RecordBase):
    """An RBD image of the lab cluster, presented to `host` through rbd-fuse and a loop device."""

    kind: Literal["rbd-image"] = "rbd-image"
    host: str
    image: str  # POOL/NAME
    device: str | None = None


class NoteRecord(RecordBase):
    """Something `up` decided without making anything (a step skipped, a check passed)."""

    kind: Literal["note"] = "note"
    text: str


AnyRecord = (
    NetnsRecord
    | VethRecord
    | FileRecord
    | DirRecord
    | LoopRecord
    | MountRecord
    | ArrayRecord
    | LunRecord
    | ProcessRecord
    | CephRecord
    | ImageRecord
    | NoteRecord
)
Record = Annotated[AnyRecord, Field(discriminator="kind")]


class HostState(BaseModel):
    """A lab host as the demo and `lab exec` need it."""

    model_config = ConfigDict(extra="forbid")

    key: str
    name: str
    role: str
    netns: str
    address: str  # with its prefix, e.g. 198.18.0.1/30
    home: str
    run_dir: str


class LabState(BaseModel):
    """The whole state file."""

    model_config = ConfigDict(extra="forbid")

    version: int = STATE_VERSION
    directory: str
    suffix: str
    subnet: str
    agent_port: int
    storage: Literal["array", "ceph"] = "array"
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    created_dir: bool = False  # `up` made DIR itself: `down` removes it once empty
    status: Literal["building", "up", "failed"] = "building"
    hosts: list[HostState] = Field(default_factory=list)
    records: list[Record] = Field(default_factory=list)

    def processes(self, role: str | None = None, host: str | None = None) -> list[ProcessRecord]:
        return [
            r
            for r in self.records
            if isinstance(r, ProcessRecord) and (role is None or r.role == role) and (host is None or r.host == host)
        ]

    def holder(self, host: str) -> ProcessRecord | None:
        found = self.processes("holder", host)
        return found[0] if found else None

    def notes(self) -> list[str]:
        return [r.text for r in self.records if isinstance(r, NoteRecord)]


def lab_lock(directory: Path) -> FileLock:
    """Held by `lab up` and `lab down` for their whole run: one at a time per lab directory."""
    return FileLock(directory / LOCK_NAME, timeout_s=5.0, what=f"the lab in {directory} (another `lab up` or `down`)")


def state_path(directory: Path) -> Path:
    return directory / STATE_NAME


def save(directory: Path, state: LabState) -> None:
    """Replace the state file so that a crash leaves the old or the new one, never a torn one."""
    write_atomically(state_path(directory), (state.model_dump_json(indent=2) + "\n").encode(), mode=0o600)


def load(directory: Path) -> LabState:
    """The state of the lab in `directory`; `ObjectNotFound` if there is none, `BadState` if it is damaged."""
    path = state_path(directory)
    try:
        data = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise ObjectNotFound(f"no lab in {directory} (no {STATE_NAME}); `snapport lab up` makes one") from None
    try:
        state = LabState.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadState(f"the lab state file {path} is damaged ({where}: {first.get('msg')})") from None
    if state.version > STATE_VERSION:
        raise BadState(f"{path} is version {state.version}, made by a newer snapport (this one reads 1)")
    return state


def remove(directory: Path) -> None:
    state_path(directory).unlink(missing_ok=True)
    for stale in directory.glob(f".{STATE_NAME}.tmp-*"):  # left by a writer that died between write and rename
        stale.unlink(missing_ok=True)
