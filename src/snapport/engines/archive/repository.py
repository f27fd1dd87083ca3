"""The archive repository on disk: its layout, the creation of a repository, a set's atomic publication, the list
of published sets, and the removal of what interrupted backups left.

Layout (format 1)::

    REPO/snapport-repository.json          {"format": 1, "engine": "archive"}
    REPO/lock                              flock held to create or publish a set directory, and to prune
    REPO/sets/<set-id>/set.json            the set: host, components, totals, digests of every other part
    REPO/sets/<set-id>/manifest.json       per entry: original path, type, size, mode, owner, mtime, digest
    REPO/sets/<set-id>/data.tar.zst        the entries in manifest order: pax tar, zstd with frame checksums
    REPO/sets/<set-id>/backup-components.xml, writers/<writer-id>.xml
    REPO/sets/.tmp-<set-id>-<random>/      a backup being written (flock'ed) or an interrupted one
    REPO/sets/.tmp-forgotten-<set-id>-<random>/   a set being forgotten (flock'ed) or an interrupted forget

A published set directory is flock'ed shared by every verify and restore reading it, and exclusively by a forget
(non-blocking: a set being read is not forgotten this time). A forget renames the set out of `sets/<set-id>` (so
it is gone at once, whole) before removing its files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from snapport.engines.archive.format import (
    ENGINE_NAME,
    MARKER_FILE,
    REPOSITORY_FORMAT,
    SET_FILE,
    SETS_DIR,
    SetRecord,
    field,
)
from snapport.engines.archive.stream import CHUNK
from snapport.engines.base import Forgotten, SetSummary
from snapport.errors import BadState, ObjectNotFound, SetInProgress, UsageError
from snapport.faults import inject
from snapport.osal.atomic import fsync_dir
from snapport.osal.lock import FileLock, flock_within

TMP_PREFIX = ".tmp-"
FORGOTTEN_PREFIX = f"{TMP_PREFIX}forgotten-"
PUBLISH_LOCK_WAIT_S = 60.0
READ_LOCK_WAIT_S = 10.0  # a reader waits this long for a forget holding the set (it then finds the set gone)
FILE_MODE = 0o600  # a backup holds every secret of the volume it copies
DIR_MODE = 0o700


def create_file(path: Path) -> IO[bytes]:
    """A new file (never an existing one), readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    return os.fdopen(fd, "wb", buffering=CHUNK)


def write_file(path: Path, data: bytes) -> None:
    """A new file holding `data`, fsynced."""
    with create_file(path) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_file(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read()


def incomplete_sets(repository: Path) -> list[Path]:
    """Temporary set directories in `repository`: backups being written, or left by interrupted ones."""
    sets_dir = repository / SETS_DIR
    return sorted(sets_dir.glob(f"{TMP_PREFIX}*")) if sets_dir.is_dir() else []


class Repository:
    """An archive repository directory (see the module docstring for its layout)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def sets_dir(self) -> Path:
        return self.path / SETS_DIR

    def open(self, *, create: bool) -> None:
        """Check the repository is ours; with `create`, make one in an absent or empty directory."""
        marker = self.path / MARKER_FILE
        if create and not marker.exists():
            if self.path.is_dir() and not _is_blank(self.path):
                raise UsageError(f"{self.path} is neither empty nor a snapport archive repository")
            self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            self.sets_dir.mkdir(mode=DIR_MODE, exist_ok=True)
            tmp = self.path / f".{MARKER_FILE}.{secrets.token_hex(4)}"
            write_file(tmp, (json.dumps({"format": REPOSITORY_FORMAT, "engine": ENGINE_NAME}) + "\n").encode())
            tmp.replace(marker)
            fsync_dir(self.path)
            return
        if not self.path.is_dir():
            raise ObjectNotFound(f"no archive repository at {self.path}")
        try:
            info = json.loads(read_file(marker))
            version = field(info, "format", int)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.path} is not a snapport archive repository (no {MARKER_FILE})") from None
        except (OSError, ValueError, AttributeError) as exc:
            raise UsageError(f"{marker} is unreadable: {exc}") from None
        if version != REPOSITORY_FORMAT or info.get("engine") != ENGINE_NAME:
            raise UsageError(f"{self.path} is a repository of format {version}; this snapport reads format 1")
        if create:
            self.sets_dir.mkdir(mode=DIR_MODE, exist_ok=True)

    def lock(self) -> FileLock:
        """The repository lock: held briefly to create or publish a set's directory, and to prune."""
        return FileLock(self.path / "lock", timeout_s=PUBLISH_LOCK_WAIT_S, what="the repository lock")

    def set_dir(self, set_id: uuid.UUID) -> Path:
        """The directory of a published set; `ObjectNotFound` if the repository or the set does not exist."""
        self.open(create=False)
        set_dir = self.sets_dir / str(set_id)
        if not set_dir.is_dir():
            raise ObjectNotFound(f"no set {set_id} in repository {self.path}")
        return set_dir

    @contextlib.contextmanager
    def new_set(self, set_id: uuid.UUID) -> Iterator[Path]:
        """A temporary directory, flock'ed, for the caller to write a whole set into; published (renamed to
        `sets/<set-id>`, then `sets/` fsynced) when the block ends without an error, removed otherwise. A set of
        that id that appeared meanwhile is `BadState`: a rename never replaces a non-empty directory."""
        final = self.sets_dir / str(set_id)
        tmp = self.sets_dir / f"{TMP_PREFIX}{set_id}-{secrets.token_hex(6)}"
        published = False
        try:
            with contextlib.ExitStack() as stack:
                with self.lock():  # so that prune_incomplete never sees the directory before it is locked
                    tmp.mkdir(mode=DIR_MODE)
                    stack.enter_context(_locked_dir(tmp))
                yield tmp
                with self.lock():
                    if final.exists():
                        raise BadState(f"set {set_id} appeared in repository {self.path} during this backup")
                    tmp.rename(final)  # atomic; refused if a (non-empty) set directory is there
                    published = True
            fsync_dir(self.sets_dir)
        finally:
            if not published:
                shutil.rmtree(tmp, ignore_errors=True)

    @contextlib.contextmanager
    def reading(self, set_id: uuid.UUID) -> Iterator[Path]:
        """The directory of a published set, flock'ed shared while the block reads it, so no forget removes it.
        `ObjectNotFound` if it does not exist or a forget took it first."""
        set_dir = self.set_dir(set_id)
        try:
            fd = os.open(set_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ObjectNotFound(f"no set {set_id} in repository {self.path}") from None
        try:
            if not flock_within(fd, fcntl.LOCK_SH, READ_LOCK_WAIT_S):
                raise SetInProgress(f"set {set_id} in repository {self.path} is being forgotten")
            if not _same_directory(fd, set_dir):
                raise ObjectNotFound(f"no set {set_id} in repository {self.path} (it was just forgotten)")
            yield set_dir
        finally:
            os.close(fd)

    def forget(self, set_ids: Sequence[uuid.UUID]) -> Forgotten:
        """Remove the published sets named, each whole (renamed out of place, then removed); a set being read is
        kept and listed as in use, one already gone is skipped."""
        self.open(create=False)
        removed: list[uuid.UUID] = []
        in_use: list[uuid.UUID] = []
        with self.lock():
            for set_id in set_ids:
                set_dir = self.sets_dir / str(set_id)
                if not set_dir.is_dir():
                    continue
                gone = self.sets_dir / f"{FORGOTTEN_PREFIX}{set_id}-{secrets.token_hex(6)}"
                try:
                    with _locked_dir(set_dir):
                        set_dir.rename(gone)
                        fsync_dir(self.sets_dir)
                        inject("engine.forget")  # the set is out of place, its files not yet removed
                        shutil.rmtree(gone)
                except BlockingIOError:
                    in_use.append(set_id)
                    continue
                removed.append(set_id)
        return Forgotten(tuple(removed), tuple(in_use))

    def prune_incomplete(self) -> tuple[Path, ...]:
        """Remove what interrupted backups and forgets left; the temporary directory of a backup still running
        stays."""
        self.open(create=False)
        removed = []
        with self.lock():
            for path in incomplete_sets(self.path):
                try:
                    with _locked_dir(path):
                        shutil.rmtree(path)
                except (BlockingIOError, FileNotFoundError):
                    continue  # a live backup holds it, or it just went
                removed.append(path)
        if removed:
            fsync_dir(self.sets_dir)
        return tuple(removed)

    def list(self) -> tuple[SetSummary, ...]:
        """The published sets, oldest first; a set whose `set.json` cannot be read is listed as unreadable."""
        self.open(create=False)
        found = []
        for path in self.sets_dir.iterdir() if self.sets_dir.is_dir() else ():
            try:
                set_id = uuid.UUID(path.name)
            except ValueError:
                continue  # temporary directories and anything else
            if str(set_id) != path.name or not path.is_dir():
                continue
            try:
                record = SetRecord.from_bytes(read_file(path / SET_FILE))
            except (OSError, ValueError):
                found.append(SetSummary(set_id, readable=False))
                continue
            found.append(
                SetSummary(
                    set_id=set_id,
                    originating_host=record.originating_host,
                    created=record.created,
                    components=tuple(c.component for c in record.components),
                    files=record.files,
                    bytes=record.content_bytes,
                    stored_bytes=record.archive.size + record.manifest.size,
                )
            )
        epoch = datetime.min.replace(tzinfo=UTC)
        return tuple(sorted(found, key=lambda s: (s.created or epoch, str(s.set_id))))


def _is_blank(directory: Path) -> bool:
    """Empty, or holding only what an interrupted repository creation leaves (an empty sets/, a temp marker)."""
    for path in directory.iterdir():
        if path.name == SETS_DIR and path.is_dir() and not any(path.iterdir()):
            continue
        if not path.name.startswith(f".{MARKER_FILE}."):
            return False
    return True


def _same_directory(fd: int, path: Path) -> bool:
    """Whether `path` still names the directory open at `fd` (a forget renames a set away)."""
    try:
        here, there = os.fstat(fd), path.stat()
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextlib.contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    """An flock on the directory itself: marks a temporary set as being written; released if the writer dies."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)
