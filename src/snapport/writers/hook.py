"""The `hook` writer: runs a user's script for each event, as qemu-guest-agent's fsfreeze hook does.

The script gets the event name as its only argument and the backup in its environment (`SNAPPORT_EVENT`,
`SNAPPORT_SET_ID`, `SNAPPORT_CONTEXT`, `SNAPPORT_BACKUP_TYPE`, `SNAPPORT_VOLUMES` — the set's mount points joined
by `:` —, `SNAPPORT_FREEZE_WINDOW_S`, `SNAPPORT_DEADLINE_S`); it runs in its own process group with a clean
environment, and is killed with its whole group when the event's deadline comes. A non-zero exit is a veto (at
`freeze`, the last one possible) or a failure, reported with the last line of its stderr. The last 4 KiB of its
stdout and stderr go to the set's event log (`hook-output`). Nothing from a document reaches the command line:
the argument vector is the validated script path and a fixed event name.
"""

from __future__ import annotations

import glob
import json
import os
import selectors
import signal
import stat
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from snapport.errors import FreezeTimeout, UsageError, WriterError
from snapport.model import (
    BackupSchema,
    Component,
    ComponentType,
    EventKind,
    FileSpec,
    RestoreMethod,
    RestoreMethodSpec,
    UsageType,
    Volume,
    WriterMetadata,
)
from snapport.model.paths import relative_to_volume
from snapport.osal.runner import DEVNULL, PIPE, Runner, SubprocessRunner
from snapport.writers.base import Deadline, LogEntry, RestoreContext, Session, Tier, Writer, WriterEvent
from snapport.writers.sqlite import volume_holding

CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "snapport.writers.hook")
OUTPUT_TAIL_BYTES = 4096  # of each stream, kept in the catalog
KILL_MARGIN_S = 0.2  # the script is killed this long before the deadline, so the hook's own error arrives in time
LINGER_S = 0.5  # how long to keep reading after the script exited (something it started may hold its output)
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
LOG_KIND = EventKind.HOOK_OUTPUT


def hook_writer_id(host: str, script: Path) -> uuid.UUID:
    return uuid.uuid5(CLASS_ID, f"{host}:{script}")


def check_script(path: str | Path, error: type[UsageError] | type[WriterError] = UsageError) -> Path:
    """The script's real path, if it is safe to run: absolute, a regular executable file, owned by root or by
    this process's user, writable by no one else, in a directory no one else can write to."""
    given = Path(path)
    if not given.is_absolute():
        raise error(f"hook script {str(path)!r} is not an absolute path")
    real = Path(os.path.realpath(given))
    try:
        st = real.stat()
        parent = real.parent.stat()
    except OSError as exc:
        raise error(f"hook script {given}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"hook script {given} is not a regular file")
    if not st.st_mode & stat.S_IXUSR or not os.access(real, os.X_OK):
        raise error(f"hook script {given} is not executable")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise error(f"hook script {given} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")
    if st.st_uid not in (0, os.geteuid()):
        raise error(f"hook script {given} is owned by uid {st.st_uid}; only root's or this user's scripts run")
    if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
        raise error(f"hook script {given} is in a world-writable directory ({real.parent})")
    return real


@dataclass(frozen=True, slots=True)
class HookRun:
    """How one run of a script ended; `returncode` is None when it was killed at its deadline."""

    returncode: int | None
    stdout: bytes
    stderr: bytes
    dropped: tuple[int, int]  # bytes of stdout, stderr not kept (only the tail is)
    duration_ms: float


class _Tail:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess


def run_bounded(
    runner: Runner,
    argv: Sequence[str],
    env: Mapping[str, str],
    budget_s: float,
    *,
    tail_bytes: int = OUTPUT_TAIL_BYTES,
) -> HookRun:
    """Start `argv` through `runner` in a new session, reading its output, and kill its process group if
    `budget_s` runs out (or we are interrupted). A process it leaves behind after exiting in time is not killed."""
    started = time.monotonic()
    end = started + budget_s
    proc = runner.start(argv, env=env, cwd="/", stdin=DEVNULL, stdout=PIPE, stderr=PIPE, own_group=True)
    assert proc.stdout is not None and proc.stderr is not None
    out, err = _Tail(tail_bytes), _Tail(tail_bytes)
    tails = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    timed_out = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ)
            selector.register(proc.stderr, selectors.EVENT_READ)
            exited_at: float | None = None
            while selector.get_map():
                now = time.monotonic()
                if now >= end:
                    timed_out = True
                    break
                if exited_at is None and not proc.running():
                    exited_at = now
                if exited_at is not None and now - exited_at > LINGER_S:
                    break
                for key, _ in selector.select(min(end - now, 0.1)):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        tails[key.fd].add(chunk)
                    else:
                        selector.unregister(key.fileobj)
        if not timed_out and proc.wait(max(0.0, end - time.monotonic())) is None:
            timed_out = True
    finally:
        # Reaped already unless it overran or we are interrupted: then SIGKILL to its group at once. Closes the pipes.
        proc.stop(grace_s=0, first=signal.SIGKILL)
    return HookRun(
        returncode=None if timed_out else proc.returncode,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        dropped=(out.dropped, err.dropped),
        duration_ms=(time.monotonic() - started) * 1000,
    )


def _last_line(data: bytes) -> str:
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return lines[-1][:500] if lines else "it wrote nothing on stderr"


class HookWriter(Writer):
    """A user's script as a writer: one run per event, bounded by the event's deadline."""

    kind: ClassVar[str] = "hook"
    tier: ClassVar[Tier] = Tier.APPLICATION
    class_id: ClassVar[uuid.UUID] = CLASS_ID

    def __init__(self, script: str | Path, volumes: Sequence[Volume], *, host: str, paths: Sequence[str] = ()) -> None:
        self.script = check_script(script)
        self.host = host
        self._runner: Runner = SubprocessRunner()  # starts the script for each event
        self.writer_id = hook_writer_id(host, self.script)
        self.instance_name = str(self.script)
        self._files = tuple(self._file_spec(p, volumes) for p in paths)
        self._lock = threading.Lock()  # one run at a time (an overrunning call included: it is killed in time)
        self._aborted: uuid.UUID | None = None
        self._log: list[LogEntry] = []
        self._log_lock = threading.Lock()

    @staticmethod
    def _file_spec(given: str, volumes: Sequence[Volume]) -> FileSpec:
        path = Path(given)
        if not path.is_absolute():
            raise UsageError(f"hook writer: declared path {given!r} is not absolute")
        if not path.exists():
            raise UsageError(f"hook writer: declared path {given} does not exist")
        real = Path(os.path.realpath(path))
        volume = volume_holding(real, volumes)
        if real.is_dir():
            return FileSpec(volume.mount_point, relative_to_volume(volume.mount_point, str(real)), "*", recursive=True)
        directory = relative_to_volume(volume.mount_point, str(real.parent))
        return FileSpec(volume.mount_point, directory, glob.escape(real.name))

    def take_event_log(self) -> list[LogEntry]:
        """The hook-output lines since the last call (the coordinator writes them to the catalog)."""
        with self._log_lock:
            taken, self._log = self._log, []
            return taken

    def identify(self, deadline: Deadline) -> WriterMetadata:
        return WriterMetadata(
            writer_id=self.writer_id,
            class_id=self.class_id,
            name=self.kind,
            instance_name=self.instance_name,
            usage=UsageType.USER_DATA,
            components=(
                Component(
                    type=ComponentType.FILE_GROUP,
                    name=self.script.name,
                    caption=f"the files hook {self.script} makes consistent",
                    files=self._files,
                ),
            ),
            restore_method=RestoreMethodSpec(method=RestoreMethod.RESTORE_IF_CAN_REPLACE),
            backup_schema=BackupSchema.COPY,
        )

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self._run(WriterEvent.PREPARE_BACKUP, session, deadline)

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self._run(WriterEvent.PREPARE_SNAPSHOT, session, deadline)

    def freeze(self, session: Session, deadline: Deadline) -> None:
        self._run(WriterEvent.FREEZE, session, deadline)

    def thaw(self, session: Session, deadline: Deadline) -> None:
        self._run(WriterEvent.THAW, session, deadline)

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        self._run(WriterEvent.POST_SNAPSHOT, session, deadline)
        return {}

    def abort(self, session: Session, deadline: Deadline) -> None:
        self._run(WriterEvent.ABORT, session, deadline)

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        self._run(WriterEvent.BACKUP_COMPLETE, session, deadline)

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        self._run(WriterEvent.BACKUP_SHUTDOWN, session, deadline)

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._run(WriterEvent.PRE_RESTORE, None, deadline, restore)

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._run(WriterEvent.POST_RESTORE, None, deadline, restore)

    def _environment(
        self, event: WriterEvent, session: Session | None, budget_s: float, restore: RestoreContext | None = None
    ) -> dict[str, str]:
        env = {
            "PATH": SAFE_PATH,
            "LANG": "C.UTF-8",
            "HOME": "/",
            "SNAPPORT_EVENT": event.value,
            "SNAPPORT_DEADLINE_S": f"{budget_s:.3f}",
        }
        if session is not None:
            env |= {
                "SNAPPORT_SET_ID": str(session.set_id),
                "SNAPPORT_CONTEXT": session.context.value,
                "SNAPPORT_BACKUP_TYPE": session.backup_type.value,
                "SNAPPORT_VOLUMES": ":".join(v.mount_point for v in session.volumes),
                "SNAPPORT_FREEZE_WINDOW_S": f"{session.freeze_window_s:g}",
            }
        if restore is not None:
            env |= {
                "SNAPPORT_SET_ID": str(restore.set_id),
                "SNAPPORT_BACKUP_TYPE": restore.backup_type.value,
                "SNAPPORT_RESTORE_TARGET": str(restore.target),
                "SNAPPORT_COMPONENTS": ":".join(restore.components),
            }
        return env

    def _run(
        self, event: WriterEvent, session: Session | None, deadline: Deadline, restore: RestoreContext | None = None
    ) -> None:
        with self._lock:
            if session is not None:
                if event is WriterEvent.ABORT:
                    self._aborted = session.set_id
                elif event is WriterEvent.FREEZE and self._aborted == session.set_id:
                    raise WriterError(f"set {session.set_id} was aborted; not running {self.script} freeze")
            script = check_script(self.script, WriterError)  # again: it may have changed since it was checked
            budget_s = deadline.remaining() - KILL_MARGIN_S
            if budget_s <= 0:
                raise FreezeTimeout(f"no time left to run hook {script} for {event.value}")
            env = self._environment(event, session, budget_s, restore)
            run = run_bounded(self._runner, [str(script), event.value], env, budget_s)
        self._record(event, session, run, restore)
        if run.returncode is None:
            raise FreezeTimeout(
                f"hook {script} did not finish {event.value} within {budget_s:.3g} s; its process group was killed"
            )
        if run.returncode < 0:
            raise WriterError(f"hook {script} {event.value} was killed by signal {-run.returncode}")
        if run.returncode != 0:
            raise WriterError(
                f"hook {script} {event.value} exited with status {run.returncode}: {_last_line(run.stderr)}"
            )

    def _record(
        self, event: WriterEvent, session: Session | None, run: HookRun, restore: RestoreContext | None = None
    ) -> None:
        set_id = session.set_id if session is not None else restore.set_id if restore is not None else None
        message = {
            "script": str(self.script),
            "event": event.value,
            "set_id": str(set_id) if set_id is not None else None,
            "exit": run.returncode,
            "timed_out": run.returncode is None,
            "duration_ms": round(run.duration_ms, 1),
            "stdout": run.stdout.decode("utf-8", "replace"),
            "stderr": run.stderr.decode("utf-8", "replace"),
            "stdout_dropped": run.dropped[0],
            "stderr_dropped": run.dropped[1],
        }
        with self._log_lock:
            self._log.append(LogEntry(LOG_KIND, json.dumps(message, sort_keys=True)))

    def __repr__(self) -> str:
        return f"HookWriter({str(self.script)!r}, host={self.host!r})"
