"""Restore of an archive set into a directory: each original path `P` at `target / P.lstrip("/")`.

Safety: every name comes from the manifest (whose digest `set.json` records) and is validated (absolute, no empty,
`.` or `..` component, no NUL); everything is created relative to directory descriptors opened with `O_NOFOLLOW`
from the target down, so no symbolic link, found or restored, is ever followed, and nothing lands outside the
target whatever the repository holds. Archive members only supply content, and each file's content is checked
against its digest before it gets its final name.

Each non-directory entry is made under a temporary name (`.snapport-restore-*`) in its directory, given its
owner, xattrs (POSIX ACLs included), mode (after the owner: chown clears setuid) and mtime, then renamed into
place; directories get theirs last, deepest first, so restoring their contents does not disturb them. Directories
the restore must make above the chosen entries (e.g. `/srv` for a component under `/srv/data`) are made mode 0755
whatever the umask, owned by the restoring user (root), and at the end get the owner, mode and mtime of their own
entry where the manifest has one (a directory of another component, the volume's root). A failed
restore removes what it created (files, links, directories, the target if it made it) and leaves what it replaced
under `overwrite`; a killed one leaves the entries it completed, at most one temporary file (a file part-written
never has its final name), and directories without their final mode and mtime. Run again with `overwrite`, it
removes such temporary files (`.snapport-restore-` and 12 hex digits, never a directory) from each directory it
enters, and completes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import tarfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from backports.zstd import ZstdFile

from snapport.engines.archive.format import (
    ARCHIVE_FILE,
    MANIFEST_FILE,
    SET_FILE,
    Manifest,
    ManifestEntry,
    Part,
    SetRecord,
    member_name,
)
from snapport.engines.archive.members import ENTRY_TYPES
from snapport.engines.archive.progress import Meter
from snapport.engines.archive.repository import read_file
from snapport.engines.archive.stream import CHUNK, ForwardReader
from snapport.engines.base import ComponentKey, Phase
from snapport.engines.digest import digest_bytes, digest_zeros, new_hasher
from snapport.engines.walk import EntryType
from snapport.errors import BadState, ObjectNotFound, PathEscape, SystemCommandError, TargetNotEmpty, UsageError
from snapport.faults import inject

TMP_PREFIX = ".snapport-restore-"
_TMP_NAME = re.compile(re.escape(TMP_PREFIX) + "[0-9a-f]{12}")  # TMP_PREFIX + secrets.token_hex(6)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Parts = tuple[str, ...]


class _Stream(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int: ...


def target_parts(path: str) -> Parts:
    """The components of an original path below the target; `PathEscape` for any name that could leave it."""
    if not path.startswith("/") or "\0" in path:
        raise PathEscape(f"the set holds the path {path!r}, which is not absolute: refused, nothing written for it")
    if path == "/":
        return ()
    parts = tuple(path[1:].split("/"))
    if any(p in ("", ".", "..") for p in parts):
        raise PathEscape(f"the set holds the path {path!r}, which could leave the target: refused")
    return parts


def _show(parts: Parts) -> str:
    return "/" + "/".join(parts)


def _proc(dir_fd: int, name: str) -> str:
    """A path naming `name` in an open directory, for calls that take no dir_fd (xattrs); never followed."""
    return f"/proc/self/fd/{dir_fd}/{name}"


@dataclass
class _Created:
    """What this restore made (to remove on failure), in order."""

    paths: list[tuple[Parts, bool]] = field(default_factory=list)  # (parts, is a directory)


def sweep_temporaries(dir_fd: int) -> list[str]:
    """Remove what an interrupted restore left in an open directory: non-directories named exactly as this module
    names its temporary files. Returns the names removed."""
    removed = []
    for name in os.listdir(dir_fd):  # a descriptor: never the path again
        if not _TMP_NAME.fullmatch(name):
            continue
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=dir_fd)
                removed.append(name)
    return removed


class _Dirs:
    """Open directory descriptors along the current path, from the target down; every step `O_NOFOLLOW`. With
    `sweep` (a restore under overwrite), each directory found already there is rid of an interrupted restore's
    temporary files the first time it is entered."""

    def __init__(self, root_fd: int, created: _Created, *, sweep: bool = False) -> None:
        self._root = root_fd
        self._stack: list[tuple[Parts, int]] = []
        self._created = created
        self._sweep = sweep
        self._swept: set[Parts] = set()
        self.swept = 0  # temporary files removed
        self._sweep_once((), root_fd)

    def _sweep_once(self, parts: Parts, fd: int) -> None:
        if self._sweep and parts not in self._swept:
            self._swept.add(parts)
            self.swept += len(sweep_temporaries(fd))

    def close(self) -> None:
        while self._stack:
            os.close(self._stack.pop()[1])

    def open(self, parts: Parts, *, create: bool = True) -> int:
        """The directory at `parts` (made, mode 0755, where missing and `create`)."""
        while self._stack and self._stack[-1][0] != parts[: len(self._stack[-1][0])]:
            os.close(self._stack.pop()[1])
        fd = self._stack[-1][1] if self._stack else self._root
        for depth in range(len(self._stack[-1][0]) if self._stack else 0, len(parts)):
            fd = child_dir(fd, parts[: depth + 1], create=create, created=self._created)
            self._stack.append((parts[: depth + 1], fd))
            self._sweep_once(parts[: depth + 1], fd)
        return fd


def child_dir(parent_fd: int, parts: Parts, *, create: bool, created: _Created | None, mode: int = 0o755) -> int:
    name = parts[-1]
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        raise PathEscape(
            f"{_show(parts)} is not a directory in the target (a symbolic link or a file is in the way): "
            f"a restore never goes through one ({exc.strerror})"
        ) from None
    os.mkdir(name, mode, dir_fd=parent_fd)
    if created is not None:
        created.paths.append((parts, True))
    fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    os.fchmod(fd, mode)  # the mode asked for, whatever the process's umask
    return fd


def open_dir(root_fd: int, parts: Parts) -> int:
    """A fresh descriptor on an existing directory below the target, each step `O_NOFOLLOW` (caller closes)."""
    fd = os.dup(root_fd)
    for depth in range(len(parts)):
        try:
            nxt = child_dir(fd, parts[: depth + 1], create=False, created=None)
        finally:
            os.close(fd)
        fd = nxt
    return fd


@dataclass
class Restore:
    """One restore of a set's chosen entries into an open target directory."""

    set_id: uuid.UUID
    manifest: Manifest
    target_fd: int
    overwrite: bool
    tick: Callable[[int, int, bool], None]  # files, bytes, force
    files: int = 0
    bytes: int = 0
    created: _Created = field(default_factory=_Created)

    def chosen(self, components: Sequence[ComponentKey] | None) -> tuple[tuple[ComponentKey, ...], list[int]]:
        """The components asked for (all if None) and the indices of their entries, in archive order."""
        known = {(c.writer_id, c.component): members for c, members in self.manifest.components}
        keys = tuple(known) if components is None else tuple(components)
        indices: set[int] = set()
        for key in keys:
            if key not in known:
                raise ObjectNotFound(f"set {self.set_id} has no component {key[1]!r} of writer {key[0]}")
            indices.update(known[key])
        return keys, sorted(indices)

    def _plan(self, members: Sequence[int]) -> dict[int, int]:
        """Which chosen name each file's content is written under: its own, or (when its first name is not
        restored) the first restored hard link to it; the others link to that one."""
        entries = self.manifest.entries
        chosen = set(members)
        index = {e.path: i for i, e in enumerate(entries)}
        written_as: dict[int, int] = {}
        for i in members:
            e = entries[i]
            if e.type is EntryType.HARDLINK:
                first = index.get(e.link_target)
                if first is None or entries[first].type is not EntryType.FILE:
                    raise BadState(f"the manifest of set {self.set_id} links {e.path} to a file it does not hold")
                if first not in chosen:
                    written_as.setdefault(first, i)
            elif e.type is EntryType.FILE:
                written_as[i] = i
        return written_as

    def run(self, members: Sequence[int], tar: tarfile.TarFile, stream: _Stream) -> None:
        entries = self.manifest.entries
        chosen = set(members)
        parts = {i: target_parts(entries[i].path) for i in members}
        index = {e.path: i for i, e in enumerate(entries)}
        written_as = self._plan(members)
        by_name = {member_name(entries[i].path): i for i in (*members, *written_as)}
        seen: set[int] = set()
        inodes: dict[int, tuple[int, int]] = {}  # entry index of a file → (dev, ino) of what was written
        dirs = _Dirs(self.target_fd, self.created, sweep=self.overwrite)
        try:
            for member in tar:
                found = by_name.get(member.name)
                if found is None or found in seen:
                    continue  # not asked for (verify reports members the manifest does not describe)
                i = found
                seen.add(i)
                entry = entries[i]
                if ENTRY_TYPES.get(member.type) is not entry.type or (
                    entry.type is EntryType.FILE and member.size != entry.size
                ):
                    raise BadState(
                        f"{entry.path} in set {self.set_id} is damaged: its member differs from the manifest"
                    )
                if entry.type is EntryType.DIRECTORY:
                    self._directory(dirs, parts.get(i, ()), entry, i in chosen)
                elif entry.type is EntryType.FILE:
                    j = written_as.get(i, i)
                    if i not in chosen and j == i:
                        continue
                    fd = dirs.open(parts[j][:-1])
                    inodes[i] = self._file(fd, parts[j], entry, member, stream)
                    self.files += 1
                elif entry.type is EntryType.HARDLINK:
                    first = index[entry.link_target]
                    if written_as.get(first) == i:
                        continue  # it holds the content itself
                    source = parts.get(first) or parts[written_as[first]]
                    self._hardlink(dirs, parts[i], source, inodes.get(first))
                    self.files += 1
                else:
                    self._special(dirs.open(parts[i][:-1]), parts[i], entry)
                    self.files += 1
                self.tick(self.files, self.bytes, False)
        finally:
            dirs.close()
        missing = [entries[i].path for i in sorted({*members, *written_as}) if i not in seen]
        if missing:
            raise BadState(
                f"set {self.set_id} is damaged: {len(missing)} entries are not in its archive ({missing[0]})"
            )
        chosen_dirs = [i for i in members if entries[i].type is EntryType.DIRECTORY]
        self._directory_metadata(chosen_dirs, parts)
        self._ancestor_metadata({parts[i] for i in chosen_dirs})
        self.tick(self.files, self.bytes, True)

    # -- one entry each -----------------------------------------------------------------------------------------

    def _replaceable(self, dir_fd: int, parts: Parts) -> bool:
        """Whether the name exists already (only under overwrite); a directory in the way is refused."""
        try:
            info = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(info.st_mode):
            raise BadState(f"{_show(parts)} is a directory in the target; the set holds a file there")
        return True

    def _place(self, dir_fd: int, tmp: str, parts: Parts) -> None:
        existed = self._replaceable(dir_fd, parts)
        os.rename(tmp, parts[-1], src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)  # left only when both names were already the same inode
        if not existed:
            self.created.paths.append((parts, False))

    def _directory(self, dirs: _Dirs, parts: Parts, entry: ManifestEntry, chosen: bool) -> None:
        if not chosen:
            return
        if not parts:
            return  # the target itself: only its metadata, at the end
        parent = dirs.open(parts[:-1])
        try:
            info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None and not stat.S_ISDIR(info.st_mode):
            os.unlink(parts[-1], dir_fd=parent)  # only under overwrite: the target was otherwise empty
            info = None
        if info is None:
            os.mkdir(parts[-1], 0o700, dir_fd=parent)
            self.created.paths.append((parts, True))

    def _file(
        self, dir_fd: int, parts: Parts, entry: ManifestEntry, member: tarfile.TarInfo, stream: _Stream
    ) -> tuple[int, int]:
        tmp = TMP_PREFIX + secrets.token_hex(6)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        placed = False
        try:
            try:
                self._content(fd, entry, member, stream)
                _metadata(fd, None, entry)
                info = os.fstat(fd)
            finally:
                os.close(fd)
            self._place(dir_fd, tmp, parts)
            placed = True
        finally:
            if not placed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
        return info.st_dev, info.st_ino

    def _content(self, fd: int, entry: ManifestEntry, member: tarfile.TarInfo, stream: _Stream) -> None:
        """Write the member's data at its offsets (holes skipped), digesting the whole content as it goes."""
        sparse = getattr(member, "sparse", None)
        recorded = tuple((o, n) for o, n in sparse if n) if sparse is not None else None
        if recorded != entry.data_map:
            raise BadState(f"{entry.path} in set {self.set_id} is damaged: its sparse map differs from the manifest")
        hasher = new_hasher(self.manifest.digest_algorithm)
        stream.seek(member.offset_data)
        position = 0
        first_chunk = True
        for offset, length in entry.data_map if entry.data_map is not None else ((0, entry.size),):
            digest_zeros(hasher, offset - position)
            at, left = offset, length
            while left:
                data = stream.read(min(CHUNK, left))
                if not data:
                    raise BadState(f"{entry.path} in set {self.set_id} is damaged: the archive ends inside it")
                hasher.update(data)
                view = memoryview(data)
                while view:
                    written = os.pwrite(fd, view, at)
                    view, at = view[written:], at + written
                if first_chunk:
                    first_chunk = False
                    inject("engine.restore-write")  # a file part-written, under its temporary name only
                left -= len(data)
                self.bytes += len(data)
                self.tick(self.files, self.bytes, False)
            position = offset + length
        digest_zeros(hasher, entry.size - position)
        os.ftruncate(fd, entry.size)  # recreates a trailing hole, and is a no-op otherwise
        if hasher.hexdigest() != entry.digest:
            raise BadState(f"{entry.path} in set {self.set_id} is damaged: its content differs from its digest")

    def _hardlink(self, dirs: _Dirs, parts: Parts, source: Parts, inode: tuple[int, int] | None) -> None:
        source_fd = open_dir(self.target_fd, source[:-1])
        try:
            info = os.stat(source[-1], dir_fd=source_fd, follow_symlinks=False)
            if inode is None or (info.st_dev, info.st_ino) != inode:
                raise BadState(f"{_show(source)} is not the file this restore wrote: {_show(parts)} is not linked")
            dir_fd = dirs.open(parts[:-1])
            tmp = TMP_PREFIX + secrets.token_hex(6)
            os.link(source[-1], tmp, src_dir_fd=source_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
            try:
                self._place(dir_fd, tmp, parts)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
                raise
        finally:
            os.close(source_fd)

    def _special(self, dir_fd: int, parts: Parts, entry: ManifestEntry) -> None:
        """A symbolic link (its target as written, never followed), a device or a FIFO."""
        tmp = TMP_PREFIX + secrets.token_hex(6)
        if entry.type is EntryType.SYMLINK:
            os.symlink(entry.link_target, tmp, dir_fd=dir_fd)
        elif entry.type is EntryType.FIFO:
            os.mkfifo(tmp, 0o600, dir_fd=dir_fd)
        else:
            kind = stat.S_IFCHR if entry.type is EntryType.CHAR_DEVICE else stat.S_IFBLK
            major, minor = entry.rdev or (0, 0)
            os.mknod(tmp, kind | 0o600, os.makedev(major, minor), dir_fd=dir_fd)
        try:
            _metadata(None, (dir_fd, tmp), entry)
            self._place(dir_fd, tmp, parts)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise

    def _directory_metadata(self, directories: Sequence[int], parts: dict[int, Parts]) -> None:
        for i in reversed(directories):  # deepest first: a directory's mtime is set after its contents are
            fd = open_dir(self.target_fd, parts[i])
            try:
                _metadata(fd, None, self.manifest.entries[i])
            finally:
                os.close(fd)

    def _ancestor_metadata(self, chosen: set[Parts]) -> None:
        """Directories this restore made above the chosen entries (made 0755, owned by the restoring user): each
        gets the owner, xattrs, mode and mtime of its own entry where the manifest has one, deepest first."""
        known = {e.path: e for e in self.manifest.entries if e.type is EntryType.DIRECTORY}
        made = [parts for parts, is_dir in self.created.paths if is_dir and parts not in chosen]
        for parts in sorted(made, key=len, reverse=True):
            entry = known.get(_show(parts))
            if entry is None:
                continue
            fd = open_dir(self.target_fd, parts)
            try:
                _metadata(fd, None, entry)
            finally:
                os.close(fd)

    def undo(self) -> None:
        """Remove what this restore created, newest first (a directory only once empty)."""
        for parts, is_dir in reversed(self.created.paths):
            try:
                fd = open_dir(self.target_fd, parts[:-1])
            except OSError:
                continue
            try:
                with contextlib.suppress(OSError):
                    os.rmdir(parts[-1], dir_fd=fd) if is_dir else os.unlink(parts[-1], dir_fd=fd)
            finally:
                os.close(fd)
        self.created.paths.clear()


def _metadata(fd: int | None, named: tuple[int, str] | None, entry: ManifestEntry) -> None:
    """Owner, then xattrs (ACLs; a capability would not survive a later chown), then mode (chown clears setuid),
    then mtime; on an open file or directory (`fd`) or on a name in an open directory (never followed)."""
    if fd is not None:
        os.fchown(fd, entry.uid, entry.gid)
        for name, value in entry.xattrs:
            _setxattr(fd, name, value, entry)
        os.fchmod(fd, entry.mode)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        return
    assert named is not None
    dir_fd, name = named
    os.chown(name, entry.uid, entry.gid, dir_fd=dir_fd, follow_symlinks=False)
    for key, value in entry.xattrs:
        _setxattr(_proc(dir_fd, name), key, value, entry)
    if entry.type is not EntryType.SYMLINK:  # a link has no mode of its own on Linux
        os.chmod(name, entry.mode, dir_fd=dir_fd)
    os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _setxattr(where: int | str, name: str, value: bytes, entry: ManifestEntry) -> None:
    try:
        if isinstance(where, int):
            os.setxattr(where, name, value)
        else:
            os.setxattr(where, name, value, follow_symlinks=False)
    except OSError as exc:
        raise SystemCommandError(f"cannot set xattr {name} on {entry.path} in the target: {exc.strerror}") from None


def prepare_target(target: Path, overwrite: bool) -> tuple[int, bool]:
    """An open descriptor on the target directory (made if absent) and whether this restore made it."""
    made = False
    try:
        target.mkdir(mode=0o755)
        made = True
    except FileExistsError:
        pass
    except OSError as exc:
        raise SystemCommandError(f"cannot create the restore target {target}: {exc.strerror}") from None
    try:
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SystemCommandError(f"cannot open the restore target {target}: {exc.strerror}") from None
    if made:
        os.fchmod(fd, 0o755)  # not the process's umask
    if not overwrite and os.listdir(fd):  # noqa: PTH208  (the fd just opened, not the path again)
        os.close(fd)
        raise TargetNotEmpty(f"{target} is not empty; restore into an empty directory, or overwrite")
    return fd, made


@dataclass(frozen=True, slots=True)
class Restored:
    """What `restore_set` wrote: the components restored, non-directory entries and content bytes."""

    components: tuple[ComponentKey, ...]
    files: int
    bytes: int


def restore_set(
    set_dir: Path,
    set_id: uuid.UUID,
    target: Path,
    *,
    components: Sequence[ComponentKey] | None,
    overwrite: bool,
    meter: Meter,
) -> Restored:
    """Restore the set in `set_dir` (or the chosen components) under `target`, with the module's guarantees: the
    manifest is checked against set.json and every name in it validated before the target is touched; a failure
    undoes what this restore created."""
    manifest = _checked_manifest(set_dir, set_id)
    for entry in manifest.entries:
        target_parts(entry.path)  # every name is checked before anything is written
        if entry.type is EntryType.HARDLINK:
            target_parts(entry.link_target)
    job = Restore(set_id, manifest, -1, overwrite, lambda f, b, force: None)
    keys, members = job.chosen(components)  # an unknown component is refused before the target is touched
    totals = (
        sum(1 for i in members if manifest.entries[i].type is not EntryType.DIRECTORY),
        sum(manifest.entries[i].size for i in members if manifest.entries[i].type is EntryType.FILE),
    )
    target_fd, made = prepare_target(Path(target), overwrite)
    job.target_fd = target_fd
    job.tick = lambda files, nbytes, force: meter(Phase.RESTORE, files, nbytes, totals, force=force)
    meter(Phase.RESTORE, 0, 0, totals, force=True)
    try:
        with (set_dir / ARCHIVE_FILE).open("rb") as raw, ZstdFile(raw, "r") as stream:
            forward = ForwardReader(stream)
            tar = tarfile.open(fileobj=forward, mode="r:")  # noqa: SIM115  (closes nothing it was given)
            job.run(members, tar, forward)
    except BaseException as exc:
        job.undo()
        os.close(target_fd)
        if made:
            with contextlib.suppress(OSError):
                Path(target).rmdir()
        if isinstance(exc, (tarfile.TarError, EOFError)) or type(exc).__name__ == "ZstdError":
            raise BadState(f"set {set_id} is damaged ({exc}); `snapport verify` names the damage") from None
        if isinstance(exc, OSError):
            raise SystemCommandError(f"restore of set {set_id} into {target} failed: {exc}") from exc
        raise
    os.close(target_fd)
    return Restored(keys, job.files, job.bytes)


def _checked_manifest(set_dir: Path, set_id: uuid.UUID) -> Manifest:
    """The set's manifest, checked against its digest in set.json; `BadState` if either is damaged."""
    try:
        record = SetRecord.from_bytes(read_file(set_dir / SET_FILE))
        data = read_file(set_dir / MANIFEST_FILE)
        if Part(len(data), digest_bytes(record.digest_algorithm, data)) != record.manifest:
            raise ValueError("the manifest differs from its digest in set.json")
        manifest = Manifest.from_bytes(data)
        if manifest.set_id != set_id or record.set_id != set_id:
            raise ValueError("set.json or the manifest describe another set")
    except (OSError, ValueError, KeyError, UsageError) as exc:
        raise BadState(f"set {set_id} is damaged ({exc}); `snapport verify` names the damage") from None
    return manifest
