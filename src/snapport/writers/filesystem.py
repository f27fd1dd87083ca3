"""The `filesystem` writer: quiesces one volume with FIFREEZE/FITHAW, held by a freeze guard process.

One writer per volume. It never calls FIFREEZE itself: a `FreezeGuard` (started in `prepare_snapshot`, so the
process spawn is outside the freeze window) holds the freeze and thaws on request, on its own timeout (the
session's `freeze_window_s`, the hard bound) or when this process dies. A thaw that finds the guard already gave
up is reported: the snapshot may then have been taken of a live filesystem.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from snapport.errors import FreezeTimeout, SnapportError, WriterError
from snapport.model import (
    BackupSchema,
    Component,
    ComponentType,
    FileSpec,
    RestoreMethod,
    RestoreMethodSpec,
    UsageType,
    Volume,
    WriterMetadata,
)
from snapport.osal import ioctl
from snapport.osal.freeze_guard import FreezeGuard
from snapport.osal.runner import Runner, SubprocessRunner
from snapport.writers.base import Deadline, RestoreContext, Session, Tier, Writer

CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "snapport.writers.filesystem")


def filesystem_writer_id(host: str, mount_point: str) -> uuid.UUID:
    """Stable across runs, so `snapport writers` shows one row per volume."""
    return uuid.uuid5(CLASS_ID, f"{host}:{mount_point}")


class FilesystemWriter(Writer):
    """Freezes the filesystem mounted at `volume.mount_point` (VSS: the volume flush-and-hold, as a writer)."""

    kind: ClassVar[str] = "filesystem"
    tier: ClassVar[Tier] = Tier.FILESYSTEM
    class_id: ClassVar[uuid.UUID] = CLASS_ID

    def __init__(self, volume: Volume, *, host: str | None = None, runner: Runner | None = None) -> None:
        self.volume = volume
        self.host = host if host is not None else volume.host
        self._runner = runner or SubprocessRunner()  # starts the freeze guard
        self.writer_id = filesystem_writer_id(self.host, volume.mount_point)
        self.instance_name = volume.mount_point
        self._lock = threading.Lock()  # events may come from several worker threads (an overrun one included)
        self._guard: FreezeGuard | None = None
        self._frozen = False
        self._aborted: uuid.UUID | None = None  # a late freeze for an aborted set is refused

    @property
    def mount_point(self) -> Path:
        return Path(self.volume.mount_point)

    def identify(self, deadline: Deadline) -> WriterMetadata:
        whole_volume = FileSpec(volume=self.volume.mount_point, path="", pattern="*", recursive=True)
        return WriterMetadata(
            writer_id=self.writer_id,
            class_id=self.class_id,
            name=self.kind,
            instance_name=self.instance_name,
            usage=UsageType.USER_DATA,
            components=(
                Component(
                    type=ComponentType.FILE_GROUP,
                    name=self.volume.mount_point,
                    caption=f"every file on {self.volume.mount_point}",
                    files=(whole_volume,),
                ),
            ),
            restore_method=RestoreMethodSpec(method=RestoreMethod.RESTORE_IF_CAN_REPLACE),
            backup_schema=BackupSchema.COPY,
        )

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self._check_in_set(session)

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self._check_in_set(session)
        with self._lock:
            self._release()  # a leftover from an earlier, unfinished sequence
            try:
                self._guard = FreezeGuard([self.mount_point], self._runner)
            except SnapportError as exc:
                raise WriterError(f"cannot start the freeze guard for {self.mount_point}: {exc}") from exc

    def freeze(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            if self._aborted == session.set_id:
                raise WriterError(f"set {session.set_id} was aborted; not freezing {self.mount_point}")
            if self._guard is None:
                raise WriterError(f"freeze of {self.mount_point} came before prepare-snapshot")
            if self._frozen:
                return
            guard = self._guard
            try:
                guard.freeze(timeout_s=session.freeze_window_s, answer_within_s=deadline.remaining())
            except FreezeTimeout as exc:
                # The guard was killed; it may have frozen just before. Nobody else can hold this freeze (a second
                # FIFREEZE fails at once with EBUSY), so thawing here is safe and keeps the thaw guarantee.
                self._guard = None
                ioctl.thaw(self.mount_point)
                raise FreezeTimeout(f"{self.mount_point} did not freeze in time: {exc}") from exc
            except SnapportError as exc:
                self._guard = None
                guard.close()
                raise WriterError(f"cannot freeze {self.mount_point}: {exc}") from exc
            self._frozen = True

    def thaw(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            was_frozen = self._frozen
            reason = self._release()
        if was_frozen and reason not in (None, "asked"):
            raise WriterError(
                f"{self.mount_point} was thawed before thaw was asked ({reason}, freeze window "
                f"{session.freeze_window_s:g} s); the snapshot may be inconsistent"
            )

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        return {}

    def abort(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._aborted = session.set_id
            self._release()

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        """Nothing to truncate or purge on a plain filesystem."""

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._release()

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """Files are restored by copying them back; the filesystem needs no preparation."""

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """Nothing to do after a file restore."""

    def _release(self) -> str | None:
        """Thaw and end the guard (idempotent; call with the lock held); returns why it thawed, if there was one."""
        guard, self._guard = self._guard, None
        self._frozen = False
        return guard.thaw() if guard is not None else None

    def _check_in_set(self, session: Session) -> None:
        if self.volume.mount_point not in {v.mount_point for v in session.volumes}:
            raise WriterError(f"volume {self.volume.mount_point} is not in snapshot set {session.set_id}")

    def __repr__(self) -> str:
        return f"FilesystemWriter({self.volume.mount_point!r}, host={self.host!r})"
