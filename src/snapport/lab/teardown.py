"""`lab down`: remove exactly what the state file records, newest first, each step idempotent.

Every record is undone by its exact name, path, device or pid: a process only while /proc/PID is still that
process, a loop device only while it is backed by the lab's own image, a mount by its exact path (inside the
host's mount namespace for a host's mount). A step that fails is reported and the rest still run; each record
undone is dropped from the state file at once, so a second `down` retries only what failed. The state file goes
last, once everything is gone.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from snapport.errors import BadState, ObjectNotFound, SnapportError
from snapport.lab import ceph, network, process, state
from snapport.lab.host import LabHost
from snapport.lab.state import (
    ArrayRecord,
    CephRecord,
    DirRecord,
    FileRecord,
    ImageRecord,
    LabState,
    LoopRecord,
    LunRecord,
    MountRecord,
    NetnsRecord,
    NoteRecord,
    ProcessRecord,
    Record,
    VethRecord,
)
from snapport.osal import loop
from snapport.osal import mount as mnt
from snapport.osal.runner import Runner, SubprocessRunner
from snapport.providers.reflink_array import Array

REMOVED, GONE, FAILED = "removed", "already gone", "failed"
AGENT_STOP_GRACE_S = 15.0  # an agent finishes or hands back its running jobs on SIGTERM (its own grace: 10 s)
OutcomeCallback = Callable[["Outcome"], None]


@dataclass(frozen=True, slots=True)
class Outcome:
    what: str
    result: str  # removed | already gone | failed
    detail: str = ""


@dataclass
class TeardownReport:
    directory: Path
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.result == FAILED]

    def failed_lines(self) -> list[str]:
        return [f"{o.what}: {o.detail}" for o in self.failed]

    def to_json(self) -> dict[str, Any]:
        return {
            "dir": str(self.directory),
            "removed": [o.what for o in self.outcomes if o.result == REMOVED],
            "already_gone": [o.what for o in self.outcomes if o.result == GONE],
            "failed": [{"what": o.what, "error": o.detail} for o in self.failed],
        }


def down(directory: Path, runner: Runner | None = None, on_outcome: OutcomeCallback | None = None) -> TeardownReport:
    """Remove the lab in `directory`; idempotent (no lab: nothing to do). Check `report.failed`."""
    directory = directory.resolve()
    if not state.state_path(directory).exists():
        return TeardownReport(directory)
    with state.lab_lock(directory):
        return teardown(directory, runner or SubprocessRunner(), on_outcome=on_outcome)


def teardown(
    directory: Path, runner: Runner, *, on_outcome: OutcomeCallback | None = None, keep_directory: bool = False
) -> TeardownReport:
    """The work of `down`, for a caller that holds the lab's lock. Unless `keep_directory`, the lock file and
    the directory (if `up` made it) go too, once everything else is gone."""
    report = TeardownReport(directory)
    try:
        lab_state = state.load(directory)
    except ObjectNotFound:
        return report
    undo = _Undo(lab_state, runner)
    for record in reversed(list(lab_state.records)):
        what = describe(record)
        try:
            result, detail = undo(record)
        except (SnapportError, OSError) as exc:
            result, detail = FAILED, str(exc)
        outcome = Outcome(what, result, detail)
        if not isinstance(record, NoteRecord):
            report.outcomes.append(outcome)
            if on_outcome:
                on_outcome(outcome)
        if result != FAILED:
            lab_state.records.remove(record)
            state.save(directory, lab_state)
    if report.failed:
        return report
    state.remove(directory)
    if keep_directory:
        return report
    (directory / state.LOCK_NAME).unlink(missing_ok=True)  # we hold it: nobody else can be using it
    if lab_state.created_dir:
        with contextlib.suppress(OSError):  # something else lives there: not ours to remove
            directory.rmdir()
    return report


def describe(record: Record) -> str:
    """A record in a few words, for reports."""
    if isinstance(record, NetnsRecord):
        return f"network namespace {record.name}"
    if isinstance(record, VethRecord):
        return f"veth {record.netns}/{record.name} <-> {record.peer_netns}/{record.peer_name}"
    if isinstance(record, FileRecord):
        return f"file {record.path}"
    if isinstance(record, DirRecord):
        return f"directory {record.path}"
    if isinstance(record, LoopRecord):
        return f"loop device {record.device or '?'} on {record.image}"
    if isinstance(record, MountRecord):
        return f"mount {record.path}" + (f" on {record.host}" if record.host else "")
    if isinstance(record, ArrayRecord):
        return f"array {record.path}"
    if isinstance(record, LunRecord):
        return f"LUN {record.lun_id or '?'} presented to {record.host} as {record.device or '?'}"
    if isinstance(record, ProcessRecord):
        return f"{record.role} of {record.host} (pid {record.pid or '?'})"
    if isinstance(record, CephRecord):
        return f"Ceph cluster in {record.path}"
    if isinstance(record, ImageRecord):
        return f"RBD image {record.image} presented to {record.host} as {record.device or '?'}"
    return f"note: {record.text}"


def is_live(lab_state: LabState, runner: Runner) -> list[str]:
    """What of a recorded lab still exists on this machine (namespaces, processes, mounts, loop devices)."""
    return [describe(record) for record in lab_state.records if _exists(record, runner)]


def _exists(record: Record, runner: Runner) -> bool:
    if isinstance(record, NetnsRecord):
        return network.netns_exists(record.name)
    if isinstance(record, ProcessRecord):
        return _running(record)
    if isinstance(record, MountRecord):
        return record.host is None and mnt.mount_at(record.path) is not None
    if isinstance(record, LoopRecord):
        return bool(_loop_devices(record, runner))
    if isinstance(record, CephRecord):
        return bool(ceph.status(Path(record.path)).get("up"))
    return False


def _running(record: ProcessRecord) -> bool:
    if record.pid is None or record.start_ticks is None:
        return False
    return process.identify(record.pid, record.start_ticks, record.launcher, record.argv) != "gone"


def _loop_devices(record: LoopRecord, runner: Runner) -> list[str]:
    """The loop devices backed by the record's image: the recorded one, and any a crash kept from being recorded."""
    image = str(Path(record.image).resolve())
    found = {d for d in ([record.device] if record.device else []) if loop.backing_file(d) == image}
    found |= {d.device for d in loop.attached(runner) if d.backing_file == image}
    return sorted(found)


class _Undo:
    """Undo one record; returns (result, detail)."""

    def __init__(self, lab_state: LabState, runner: Runner) -> None:
        self.state = lab_state
        self.runner = runner

    def host(self, name: str) -> LabHost | None:
        """The host, while its namespace holder still runs (else its mount namespace is gone, with its mounts)."""
        spec = next((h for h in self.state.hosts if h.name == name), None)
        if spec is None:
            return None
        host = LabHost.from_state(spec, self.state.holder(name), self.runner)
        try:
            host.holder_pid()
        except BadState:
            return None
        return host

    def live_hosts(self) -> list[LabHost]:
        return [h for h in (self.host(s.name) for s in self.state.hosts) if h is not None]

    def __call__(self, record: Record) -> tuple[str, str]:
        if isinstance(record, ProcessRecord):
            return self.process(record)
        if isinstance(record, MountRecord):
            return self.mount(record)
        if isinstance(record, LunRecord):
            return self.lun(record)
        if isinstance(record, ArrayRecord):
            return self.array(record)
        if isinstance(record, LoopRecord):
            return self.loop(record)
        if isinstance(record, DirRecord):
            return self.directory(record)
        if isinstance(record, FileRecord):
            return self.file(record)
        if isinstance(record, VethRecord):
            gone = not network.delete_link(self.runner, record.netns, record.name)
            return (GONE, "") if gone else (REMOVED, "")
        if isinstance(record, NetnsRecord):
            return self.netns(record)
        if isinstance(record, ImageRecord):
            return self.image(record)
        if isinstance(record, CephRecord):
            done = ceph.down(Path(record.path))
            return (REMOVED, "; ".join(done)) if done else (GONE, "")
        return GONE, ""  # a note

    def process(self, record: ProcessRecord) -> tuple[str, str]:
        if record.pid is None or record.start_ticks is None:
            return GONE, "never started"
        started = process.ProcessId(record.pid, record.start_ticks)
        grace = AGENT_STOP_GRACE_S if record.role == "agent" else process.STOP_GRACE_S
        result = process.stop(started, record.launcher, record.argv, grace_s=grace)
        return (GONE, "") if result == "already gone" else (REMOVED, "stopped")

    def mount(self, record: MountRecord) -> tuple[str, str]:
        if record.host is None:
            return (REMOVED, "") if mnt.unmount(self.runner, Path(record.path)) else (GONE, "")
        host = self.host(record.host)
        if host is None:
            return GONE, f"{record.host}'s mount namespace is gone, and its mounts with it"
        found = host.mount_at(record.path)
        if found is None:
            return GONE, ""
        if found.fs_type in ("xfs", "ext4", "btrfs"):  # a crashed snapshot may have left it frozen: umount would hang
            host.run(["fsfreeze", "--unfreeze", record.path], timeout=30, check=False)
        host.run(["umount", record.path], timeout=60)
        return REMOVED, ""

    def _refuse_if_mounted_on_a_host(self, device: str) -> None:
        for host in self.live_hosts():
            for m in host.mounts():
                if m.source == device:
                    raise BadState(f"{device} is still mounted at {m.mount_point} on {host.name}")

    def lun(self, record: LunRecord) -> tuple[str, str]:
        if record.lun_id is None:
            return GONE, "never created (the array's own record is swept with the array)"
        try:
            array = Array.open(Path(record.array), self.runner)
        except ObjectNotFound:
            return GONE, "the array is gone"
        if array.find(record.lun_id) is None:
            return GONE, ""
        for device in array.get(record.lun_id).devices_on(record.host):
            self._refuse_if_mounted_on_a_host(device)
        detached = array.unpresent(record.lun_id, record.host)
        still = [d for d in detached if loop.backing_file(d) is not None]
        if still:
            raise BadState(f"{', '.join(still)} stays attached: something still holds it open")
        array.delete_lun(record.lun_id)
        return REMOVED, f"detached {', '.join(detached)}" if detached else "deleted"

    def image(self, record: ImageRecord) -> tuple[str, str]:
        """Unpresent the image on its host (`snapport rbd unpresent`); with the host gone, detach the loop devices
        still backed by the host's rbd-fuse file of it (its daemon ends with them)."""
        if record.device is None:
            return GONE, "never presented"
        host = self.host(record.host)
        if host is not None:
            self._refuse_if_mounted_on_a_host(record.device)
            argv = [sys.executable, "-m", "snapport", "rbd", "unpresent", record.image, "--json"]
            done = host.run(argv, timeout=120)
            return REMOVED, done.stdout.strip()
        spec = next(h for h in self.state.hosts if h.name == record.host)
        pool, _, name = record.image.partition("/")
        backing = str(Path(spec.home) / "rbd" / pool / "-" / name / name)
        stale = [d.device for d in loop.attached(self.runner) if d.backing_file == backing]
        for device in stale:
            loop.detach(self.runner, device)
        return (REMOVED, f"detached {', '.join(stale)}") if stale else (GONE, "")

    def array(self, record: ArrayRecord) -> tuple[str, str]:
        """Release every LUN of the lab's array still presented (e.g. snapshots a demo imported): the array's
        filesystem cannot be unmounted while loop devices hold its images."""
        try:
            array = Array.open(Path(record.path), self.runner)
        except ObjectNotFound:
            return GONE, ""
        released = []
        for lun in array.luns():
            for host, devices in lun.presented_to:
                for device in devices:
                    self._refuse_if_mounted_on_a_host(device)
                released += array.unpresent(lun.id, host)
        prefix = f"{array.path}/"
        for stray in loop.attached(self.runner):  # attached by hand from the lab's own images
            if stray.backing_file.startswith(prefix):
                self._refuse_if_mounted_on_a_host(stray.device)
                if loop.detach(self.runner, stray.device):
                    released.append(stray.device)
        still = [d for d in released if loop.backing_file(d) is not None]
        if still:
            raise BadState(f"{', '.join(still)} stays attached: something still holds it open")
        return REMOVED, f"released {', '.join(released)}" if released else "nothing presented"

    def loop(self, record: LoopRecord) -> tuple[str, str]:
        devices = _loop_devices(record, self.runner)
        if not devices:
            return GONE, ""
        for device in devices:
            loop.detach(self.runner, device)
        still = [d for d in devices if loop.backing_file(d) is not None]
        if still:
            raise BadState(f"{', '.join(still)} stays attached: something still holds {record.image} open")
        return REMOVED, f"detached {', '.join(devices)}"

    def file(self, record: FileRecord) -> tuple[str, str]:
        path = Path(record.path)
        if not path.exists():
            return GONE, ""
        users = [d.device for d in loop.attached(self.runner) if d.backing_file == str(path.resolve())]
        if users:
            raise BadState(f"{', '.join(users)} still uses it")
        path.unlink()
        return REMOVED, ""

    def directory(self, record: DirRecord) -> tuple[str, str]:
        path = Path(record.path)
        if not path.exists():
            return GONE, ""
        prefix = str(path.resolve())
        below = [
            m.mount_point for m in mnt.mounts() if m.mount_point == prefix or m.mount_point.startswith(prefix + "/")
        ]
        if below:
            raise BadState(f"{below[0]} is still mounted; {path} is not removed across a mount")
        shutil.rmtree(path)
        return REMOVED, ""

    def netns(self, record: NetnsRecord) -> tuple[str, str]:
        pids = network.netns_pids(self.runner, record.name)
        if pids:
            # Deleting the name would leave them in a namespace nobody can find; they were started on the host by
            # hand (`lab exec`), so they are not ours to kill.
            raise BadState(
                f"processes still run in {record.name} (pids {', '.join(map(str, pids))}); stop them, then run "
                "`snapport lab down` again"
            )
        return (REMOVED, "") if network.delete_netns(self.runner, record.name) else (GONE, "")
