"""The archive engine's on-disk format (version 1): digests, `manifest.json`, `set.json` and tar members.

Kept apart from the engine so that a restore (and any other reader of a repository) uses the same definitions.
docs/engines.md describes the format for people.
"""

from __future__ import annotations

import hashlib
import json
import re
import tarfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from snapport.documents import BCD_FILE_NAME, WRITERS_DIR_NAME
from snapport.engines.base import ComponentResult
from snapport.engines.walk import Entry, EntryType
from snapport.errors import UsageError

if TYPE_CHECKING:
    from typing_extensions import Buffer

try:
    from blake3 import blake3 as _blake3
except ImportError:  # pragma: no cover - blake3 is a dependency; SHA-256 keeps a broken install working
    _blake3 = None  # type: ignore[assignment,misc]

FORMAT_VERSION = 1
ENGINE_NAME = "archive"
SET_FILE = "set.json"
MANIFEST_FILE = "manifest.json"
ARCHIVE_FILE = "data.tar.zst"

TAR_TYPES = {
    EntryType.FILE: tarfile.REGTYPE,
    EntryType.DIRECTORY: tarfile.DIRTYPE,
    EntryType.SYMLINK: tarfile.SYMTYPE,
    EntryType.HARDLINK: tarfile.LNKTYPE,
    EntryType.CHAR_DEVICE: tarfile.CHRTYPE,
    EntryType.BLOCK_DEVICE: tarfile.BLKTYPE,
    EntryType.FIFO: tarfile.FIFOTYPE,
}
ENTRY_TYPES = {v: k for k, v in TAR_TYPES.items()} | {tarfile.AREGTYPE: EntryType.FILE}
_NS = 1_000_000_000
_DOCUMENT_NAME = re.compile(
    re.escape(BCD_FILE_NAME) + "|" + re.escape(WRITERS_DIR_NAME) + r"/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.xml"
)

T = TypeVar("T")


# -- digests -----------------------------------------------------------------------------------------------------


class Hasher(Protocol):
    def update(self, data: Buffer, /) -> object: ...

    def hexdigest(self) -> str: ...


def default_digest_algorithm() -> str:
    """BLAKE3 when the `blake3` module is there (it is a dependency), else SHA-256."""
    return "blake3" if _blake3 is not None else "sha256"


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "blake3" and _blake3 is not None:
        return _blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise UsageError(f"digest algorithm {algorithm!r} is not available here (blake3 needs the blake3 module)")


def digest_bytes(algorithm: str, data: bytes) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


# -- JSON --------------------------------------------------------------------------------------------------------


def field(obj: Mapping[str, Any], key: str, kind: type[T]) -> T:
    """`obj[key]`, which must be a `kind` (a bool is not an int); `ValueError` otherwise."""
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
    return value


def _canonical(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One entry of `manifest.json`: an original path and what a restore needs to recreate it."""

    path: str  # the original path on the production host
    type: EntryType
    size: int  # content bytes (files and hard links)
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int
    gid: int
    mtime_ns: int
    link_target: str = ""  # symlink: as written; hard link: the original path of the file's first name
    rdev: tuple[int, int] | None = None
    digest: str = ""  # files and hard links: the content's digest

    @classmethod
    def of(cls, entry: Entry, digest: str) -> ManifestEntry:
        return cls(
            entry.path,
            entry.type,
            entry.size,
            entry.mode,
            entry.uid,
            entry.gid,
            entry.mtime_ns,
            entry.link_target,
            entry.rdev,
            digest,
        )

    def line(self) -> str:
        """The entry's canonical JSON: one line of the manifest, and what component digests are computed over."""
        obj: dict[str, Any] = {
            "path": self.path,
            "type": self.type.value,
            "size": self.size,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "mtime_ns": self.mtime_ns,
        }
        if self.link_target:
            obj["link_target"] = self.link_target
        if self.rdev is not None:
            obj["rdev"] = list(self.rdev)
        if self.digest:
            obj["digest"] = self.digest
        return _canonical(obj)

    @classmethod
    def from_json(cls, obj: Any) -> ManifestEntry:
        if not isinstance(obj, dict):
            raise ValueError("an entry is not an object")
        rdev = obj.get("rdev")
        if rdev is not None and not (isinstance(rdev, list) and len(rdev) == 2 and all(type(x) is int for x in rdev)):
            raise ValueError("'rdev' is not a [major, minor] pair")
        link_target, digest = obj.get("link_target", ""), obj.get("digest", "")
        if not isinstance(link_target, str) or not isinstance(digest, str):
            raise ValueError("'link_target' or 'digest' is not a string")
        return cls(
            path=field(obj, "path", str),
            type=EntryType(field(obj, "type", str)),
            size=field(obj, "size", int),
            mode=field(obj, "mode", int),
            uid=field(obj, "uid", int),
            gid=field(obj, "gid", int),
            mtime_ns=field(obj, "mtime_ns", int),
            link_target=link_target,
            rdev=(rdev[0], rdev[1]) if rdev is not None else None,
            digest=digest,
        )


def component_digest(algorithm: str, entries: Sequence[ManifestEntry]) -> str:
    """The digest of a component's part of the manifest: its entries' canonical lines, in order."""
    hasher = new_hasher(algorithm)
    for entry in entries:
        hasher.update(entry.line().encode() + b"\n")
    return hasher.hexdigest()


def _component_json(c: ComponentResult) -> dict[str, Any]:
    return {
        "writer_id": str(c.writer_id),
        "component": c.component,
        "files": c.files,
        "bytes": c.bytes,
        "digest": c.digest,
        "skipped": list(c.skipped),
    }


def _component_from_json(obj: Any) -> ComponentResult:
    if not isinstance(obj, dict):
        raise ValueError("a component is not an object")
    return ComponentResult(
        writer_id=uuid.UUID(field(obj, "writer_id", str)),
        component=field(obj, "component", str),
        files=field(obj, "files", int),
        bytes=field(obj, "bytes", int),
        digest=field(obj, "digest", str),
        skipped=tuple(str(s) for s in field(obj, "skipped", list)),
    )


def _check_format(obj: Any, what: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise ValueError(f"{what} is not a JSON object")
    version = field(obj, "format", int)
    if version != FORMAT_VERSION:
        raise ValueError(f"{what} has format {version}; this snapport reads format {FORMAT_VERSION}")
    return obj


@dataclass(frozen=True, slots=True)
class Manifest:
    """`manifest.json`: every entry of the set in archive order, and which entries make up each component."""

    set_id: uuid.UUID
    digest_algorithm: str
    entries: tuple[ManifestEntry, ...]
    components: tuple[tuple[ComponentResult, tuple[int, ...]], ...]  # with the indices of their entries

    def to_bytes(self) -> bytes:
        """One entry per line, so `grep` and `diff` work on it; valid JSON all the same."""
        head = {
            "format": FORMAT_VERSION,
            "set_id": str(self.set_id),
            "digest_algorithm": self.digest_algorithm,
            "components": [_component_json(c) | {"entries": list(members)} for c, members in self.components],
        }
        body = ",\n".join(e.line() for e in self.entries)
        return (_canonical(head)[:-1] + ',"entries":[\n' + body + "\n]}\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> Manifest:
        obj = _check_format(json.loads(data), "the manifest")
        entries = tuple(ManifestEntry.from_json(e) for e in field(obj, "entries", list))
        components = []
        for c in field(obj, "components", list):
            members = tuple(field(c, "entries", list))
            if not all(type(i) is int and 0 <= i < len(entries) for i in members):
                raise ValueError(f"component {c.get('component')!r} lists entries the manifest does not have")
            components.append((_component_from_json(c), members))
        set_id = uuid.UUID(field(obj, "set_id", str))
        return cls(set_id, field(obj, "digest_algorithm", str), entries, tuple(components))


@dataclass(frozen=True, slots=True)
class Part:
    """A file of the set, by its size and digest."""

    size: int
    digest: str


@dataclass(frozen=True, slots=True)
class SetRecord:
    """`set.json`: the set as a whole, and the size and digest of every other file in it."""

    set_id: uuid.UUID
    originating_host: str
    context: str
    created: datetime
    digest_algorithm: str
    components: tuple[ComponentResult, ...]
    entries: int
    files: int  # non-directory entries
    content_bytes: int  # content bytes stored
    archive: Part
    manifest: Part
    documents: tuple[tuple[str, str], ...]  # (path relative to the set directory, digest)
    compression_level: int

    def to_bytes(self) -> bytes:
        obj = {
            "format": FORMAT_VERSION,
            "engine": ENGINE_NAME,
            "set_id": str(self.set_id),
            "originating_host": self.originating_host,
            "context": self.context,
            "created": self.created.isoformat(),
            "digest_algorithm": self.digest_algorithm,
            "components": [_component_json(c) for c in self.components],
            "totals": {"entries": self.entries, "files": self.files, "bytes": self.content_bytes},
            "archive": {
                "file": ARCHIVE_FILE,
                "format": "pax",
                "compression": "zstd",
                "level": self.compression_level,
                "size": self.archive.size,
                "digest": self.archive.digest,
            },
            "manifest": {"file": MANIFEST_FILE, "size": self.manifest.size, "digest": self.manifest.digest},
            "documents": dict(self.documents),
        }
        return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> SetRecord:
        obj = _check_format(json.loads(data), "set.json")
        totals, archive, manifest = (field(obj, k, dict) for k in ("totals", "archive", "manifest"))
        documents = field(obj, "documents", dict)
        if not all(isinstance(v, str) for v in documents.values()):
            raise ValueError("'documents' maps file names to digests")
        strays = [name for name in documents if not _DOCUMENT_NAME.fullmatch(name)]
        if strays:  # never a path outside the set, whatever the file says
            raise ValueError(f"'documents' names {strays[0]!r}, which is not a document of a set")
        return cls(
            set_id=uuid.UUID(field(obj, "set_id", str)),
            originating_host=field(obj, "originating_host", str),
            context=field(obj, "context", str),
            created=datetime.fromisoformat(field(obj, "created", str)),
            digest_algorithm=field(obj, "digest_algorithm", str),
            components=tuple(_component_from_json(c) for c in field(obj, "components", list)),
            entries=field(totals, "entries", int),
            files=field(totals, "files", int),
            content_bytes=field(totals, "bytes", int),
            archive=Part(field(archive, "size", int), field(archive, "digest", str)),
            manifest=Part(field(manifest, "size", int), field(manifest, "digest", str)),
            documents=tuple(sorted(documents.items())),
            compression_level=field(archive, "level", int),
        )


# -- tar members -------------------------------------------------------------------------------------------------


def member_name(path: str) -> str:
    """The tar member name of an original path: relative, as tar tools expect (`/srv/data/a` → `srv/data/a`)."""
    return path.lstrip("/") or "."


def _pax_time(ns: int) -> str:
    seconds, fraction = divmod(abs(ns), _NS)
    return f"{'-' if ns < 0 else ''}{seconds}.{fraction:09d}"


def tar_header(entry: Entry) -> bytes:
    """The entry's POSIX (pax) tar header: numeric owners only, mtime to the nanosecond, links as links."""
    info = tarfile.TarInfo(member_name(entry.path))
    info.type = TAR_TYPES[entry.type]
    info.size = entry.size if entry.type is EntryType.FILE else 0
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""  # names belong to the production host; this host's user database would lie
    seconds, fraction = divmod(entry.mtime_ns, _NS)
    info.mtime = seconds
    if fraction or seconds < 0:
        info.pax_headers = {"mtime": _pax_time(entry.mtime_ns)}  # read by GNU tar, bsdtar and Python
    if entry.type is EntryType.SYMLINK:
        info.linkname = entry.link_target
    elif entry.type is EntryType.HARDLINK:
        info.linkname = member_name(entry.link_target)
    if entry.rdev is not None:
        info.devmajor, info.devminor = entry.rdev
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def member_mtime_ns(member: tarfile.TarInfo) -> int:
    """A member's mtime in nanoseconds, exactly (tarfile's own `mtime` is a float)."""
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime) * _NS
    whole, _, fraction = text.lstrip("-").partition(".")
    ns = int(whole) * _NS + int((fraction + "000000000")[:9])
    return -ns if text.startswith("-") else ns
