"""Which files a backup takes: the components' file specs walked on an exposed copy, never following a link.

A file spec names a directory (`volume` + relative `path`) and a name `pattern` (shell-style, matched with
`fnmatchcase`, so `*` matches dot files too). Non-recursive: the directory's non-directory entries whose names
match. Recursive: the same at every level below it, every directory walked being kept as an entry (so a restore
can give it its mode, owner and mtime back). An exclude spec removes the entries whose name matches its pattern in
its directory (or below it, when recursive); an excluded directory is not walked. A spec whose path is not a
directory is taken as a single entry. Walking stays on the spec root's filesystem.

Symbolic links are recorded as links (their target as written, never resolved), the walk never descends through
one, and every directory and file is opened with `O_NOFOLLOW` and checked to be the inode the walk saw. That the
mapper's own result stays inside the exposed copy is the mapper's promise (`lifecycle.map_path` checks it).
"""

from __future__ import annotations

import enum
import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path

from snapport.engines.base import ComponentSource, PathMapper
from snapport.errors import BadState, SystemCommandError
from snapport.model import FileSpec


class EntryType(enum.Enum):
    FILE = "file"
    DIRECTORY = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"  # another name of a file stored earlier in the set (its `link_target`)
    CHAR_DEVICE = "char"
    BLOCK_DEVICE = "block"
    FIFO = "fifo"


@dataclass(frozen=True, slots=True)
class Entry:
    """One thing to back up, as the walk saw it (lstat)."""

    path: str  # the original path on the production host
    source: Path  # where it is in the exposed copy
    type: EntryType
    size: int  # content bytes (regular files and hard links; 0 otherwise)
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    mtime_ns: int
    link_target: str = ""  # symlink: the target as written; hard link: the original path of its first name
    rdev: tuple[int, int] | None = None  # devices: (major, minor)
    dev: int = 0
    ino: int = 0
    nlink: int = 1
    blocks: int = 0  # 512-byte blocks allocated: fewer than the size needs means the file has holes


@dataclass(frozen=True, slots=True)
class Selection:
    """Every entry once, sorted by path (a directory before its contents), and which belong to each component."""

    entries: tuple[Entry, ...]
    members: tuple[tuple[int, ...], ...]  # per component, in the order given: indices into `entries`
    skipped: tuple[tuple[str, ...], ...]  # per component: "original path: why"


_TYPES = {
    stat.S_IFREG: EntryType.FILE,
    stat.S_IFDIR: EntryType.DIRECTORY,
    stat.S_IFLNK: EntryType.SYMLINK,
    stat.S_IFCHR: EntryType.CHAR_DEVICE,
    stat.S_IFBLK: EntryType.BLOCK_DEVICE,
    stat.S_IFIFO: EntryType.FIFO,
}


def path_key(path: str) -> tuple[str, ...]:
    """Sort key that puts a directory before everything below it."""
    return tuple(path.split("/"))


def _join(directory: str, name: str) -> str:
    return ("" if directory == "/" else directory) + "/" + name


def _below(path: str, base: str) -> bool:
    return base == "/" or path.startswith(base + "/")


def _excluded(path: str, name: str, excludes: Sequence[FileSpec]) -> bool:
    parent = posixpath.dirname(path)
    for spec in excludes:
        base = spec.original_path
        if (parent == base or (spec.recursive and _below(parent, base))) and fnmatchcase(name, spec.pattern):
            return True
    return False


def _entry(path: str, source: Path, info: os.stat_result, link_target: str = "") -> Entry:
    kind = _TYPES[stat.S_IFMT(info.st_mode)]
    rdev = None
    if kind in (EntryType.CHAR_DEVICE, EntryType.BLOCK_DEVICE):
        rdev = (os.major(info.st_rdev), os.minor(info.st_rdev))
    return Entry(
        path=path,
        source=source,
        type=kind,
        size=info.st_size if kind is EntryType.FILE else 0,
        mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        mtime_ns=info.st_mtime_ns,
        link_target=link_target,
        rdev=rdev,
        dev=info.st_dev,
        ino=info.st_ino,
        nlink=info.st_nlink,
        blocks=info.st_blocks,
    )


def open_checked(source: Path, entry_dev: int, entry_ino: int, *, directory: bool = False) -> int:
    """A read-only fd on `source` (final component not followed) that is the inode the walk saw."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_DIRECTORY if directory else 0)
    try:
        fd = os.open(source, flags)
    except OSError as exc:
        raise SystemCommandError(f"cannot open {source} in the exposed copy: {exc.strerror}") from None
    info = os.fstat(fd)
    if (info.st_dev, info.st_ino) != (entry_dev, entry_ino):
        os.close(fd)
        raise BadState(f"{source} changed while it was backed up: the exposed copy is not a stable snapshot")
    return fd


def _walk_spec(
    spec: FileSpec,
    mapping: PathMapper,
    excludes: Sequence[FileSpec],
    add: Callable[[Entry], None],
    skip: Callable[[str, str], None],
) -> None:
    root_path = spec.original_path
    root = mapping(root_path)
    try:
        info = os.lstat(root)
    except FileNotFoundError:
        skip(root_path, "not in the snapshot")
        return
    except OSError as exc:
        raise SystemCommandError(f"cannot read {root} in the exposed copy: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        skip(root_path, "a symbolic link: stored as a link, not followed")
    if not stat.S_ISDIR(info.st_mode):
        if stat.S_ISSOCK(info.st_mode):
            skip(root_path, "a socket: not backed up")
            return
        target = os.readlink(root) if stat.S_ISLNK(info.st_mode) else ""  # noqa: PTH115  (Path would normalise it)
        add(_entry(root_path, root, info, target))
        return
    add(_entry(root_path, root, info))
    pending = [(root_path, root, info)]
    while pending:
        path, source, dir_info = pending.pop()
        fd = open_checked(source, dir_info.st_dev, dir_info.st_ino, directory=True)
        try:
            with os.scandir(fd) as listing:
                children = sorted((e.name, e.stat(follow_symlinks=False)) for e in listing)
            for name, child_info in children:
                child, child_source = _join(path, name), source / name
                mode = child_info.st_mode
                if stat.S_ISDIR(mode):
                    if not spec.recursive or _excluded(child, name, excludes):
                        continue
                    if child_info.st_dev != info.st_dev:
                        skip(child, "another filesystem is mounted here: not crossed")
                        continue
                    add(_entry(child, child_source, child_info))
                    pending.append((child, child_source, child_info))
                    continue
                if not fnmatchcase(name, spec.pattern) or _excluded(child, name, excludes):
                    continue
                if stat.S_ISSOCK(mode):
                    skip(child, "a socket: not backed up")
                    continue
                target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(mode) else ""
                add(_entry(child, child_source, child_info, target))
        except OSError as exc:
            raise SystemCommandError(f"cannot read {source} in the exposed copy: {exc.strerror}") from None
        finally:
            os.close(fd)


def select(
    components: Sequence[ComponentSource], mapping: PathMapper, tick: Callable[[int], None] | None = None
) -> Selection:
    """Walk every component's file specs; a path selected by several components is one entry."""
    found: dict[str, Entry] = {}
    per_component: list[set[str]] = []
    skipped: list[tuple[str, ...]] = []
    for source in components:
        paths: set[str] = set()
        notes: list[str] = []

        def add(entry: Entry, paths: set[str] = paths) -> None:
            found.setdefault(entry.path, entry)
            paths.add(entry.path)
            if tick is not None:
                tick(len(found))

        def skip(path: str, why: str, notes: list[str] = notes) -> None:
            notes.append(f"{path}: {why}")

        for spec in source.component.all_files():
            _walk_spec(spec, mapping, source.excludes, add, skip)
        per_component.append(paths)
        skipped.append(tuple(dict.fromkeys(notes)))
    ordered = sorted(found.values(), key=lambda e: path_key(e.path))
    # A file with several names is stored once, under its first name; the others become hard links to it.
    first_name: dict[tuple[int, int], str] = {}
    for i, entry in enumerate(ordered):
        if entry.type is EntryType.FILE and entry.nlink > 1:
            first = first_name.setdefault((entry.dev, entry.ino), entry.path)
            if first != entry.path:
                ordered[i] = replace(entry, type=EntryType.HARDLINK, link_target=first)
    index = {e.path: i for i, e in enumerate(ordered)}
    members = tuple(tuple(sorted(index[p] for p in paths)) for paths in per_component)
    return Selection(tuple(ordered), members, tuple(skipped))
