"""The archive engine's records (sets of version 2, version 1 still read): the repository's layout and file names,
`manifest.json` (every entry, canonical lines, component digests) and `set.json` (the set as a whole, and the size
and digest of every other file in it).

Kept apart from the engine so that every reader of a repository (verify, restore) uses the same definitions.
docs/engines.md describes the format for people.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from snapport.documents import BCD_FILE_NAME, WRITERS_DIR_NAME
from snapport.engines.base import ComponentResult
from snapport.engines.digest import new_hasher
from snapport.engines.walk import Entry, EntryType

FORMAT_VERSION = 2  # 2: xattrs and sparse data maps (a format-1 reader would misread their component digests)
READ_FORMATS = (1, 2)
REPOSITORY_FORMAT = 1  # the repository's layout (snapport-repository.json), unchanged by set format 2
ENGINE_NAME = "archive"
MARKER_FILE = "snapport-repository.json"  # marks a directory as an archive repository
SETS_DIR = "sets"
SET_FILE = "set.json"
MANIFEST_FILE = "manifest.json"
ARCHIVE_FILE = "data.tar.zst"
_DOCUMENT_NAME = re.compile(
    re.escape(BCD_FILE_NAME) + "|" + re.escape(WRITERS_DIR_NAME) + r"/[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.xml"
)

T = TypeVar("T")


# -- JSON --------------------------------------------------------------------------------------------------------


def field(obj: Mapping[str, Any], key: str, kind: type[T]) -> T:
    """`obj[key]`, which must be a `kind` (a bool is not an int); `ValueError` otherwise."""
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key!r} is missing or not a {kind.__name__}")
    return value


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True)  # built once: per entry


def _canonical(obj: Mapping[str, Any]) -> str:
    return _CANONICAL.encode(obj)


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
    xattrs: tuple[tuple[str, bytes], ...] = ()  # (name, value), sorted by name; POSIX ACLs are system.posix_acl_*
    data_map: tuple[tuple[int, int], ...] | None = None  # sparse files only: the (offset, length) of each data extent

    @classmethod
    def of(
        cls,
        entry: Entry,
        digest: str,
        xattrs: tuple[tuple[str, bytes], ...] = (),
        data_map: tuple[tuple[int, int], ...] | None = None,
    ) -> ManifestEntry:
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
            xattrs,
            data_map,
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
        if self.xattrs:  # absent when empty, so an entry without them has its format-1 line (and digest)
            obj["xattrs"] = {name: base64.b64encode(value).decode() for name, value in self.xattrs}
        if self.data_map is not None:
            obj["data_map"] = [list(extent) for extent in self.data_map]
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
        size = field(obj, "size", int)
        return cls(
            path=field(obj, "path", str),
            type=EntryType(field(obj, "type", str)),
            size=size,
            mode=field(obj, "mode", int),
            uid=field(obj, "uid", int),
            gid=field(obj, "gid", int),
            mtime_ns=field(obj, "mtime_ns", int),
            link_target=link_target,
            rdev=(rdev[0], rdev[1]) if rdev is not None else None,
            digest=digest,
            xattrs=_xattrs_from_json(obj.get("xattrs", {})),
            data_map=_data_map_from_json(obj.get("data_map"), size),
        )


def _xattrs_from_json(value: Any) -> tuple[tuple[str, bytes], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("'xattrs' is not an object of base64 strings")
    try:
        decoded = {str(name): base64.b64decode(v, validate=True) for name, v in value.items()}
    except ValueError as exc:
        raise ValueError(f"'xattrs' holds a value that is not base64: {exc}") from None
    if any(not name or "\0" in name for name in decoded):
        raise ValueError("'xattrs' holds an empty name or one with a NUL")
    return tuple(sorted(decoded.items()))


def _data_map_from_json(value: Any, size: int) -> tuple[tuple[int, int], ...] | None:
    """A sparse file's data extents: ascending, not overlapping, inside the file."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ValueError("'data_map' is not a list")
    extents: list[tuple[int, int]] = []
    end = 0
    for item in value:
        if not (isinstance(item, list) and len(item) == 2 and all(type(x) is int for x in item)):
            raise ValueError("'data_map' holds something that is not an [offset, length] pair")
        offset, length = item
        if offset < end or length <= 0 or offset + length > size:
            raise ValueError("'data_map' extents overlap, are empty or lie outside the file")
        extents.append((offset, length))
        end = offset + length
    return tuple(extents)


def component_digest(algorithm: str, lines: Iterable[str]) -> str:
    """The digest of a component's part of the manifest: its entries' canonical lines (`ManifestEntry.line`), in
    order."""
    hasher = new_hasher(algorithm)
    hasher.update("".join(line + "\n" for line in lines).encode())
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
    if version not in READ_FORMATS:
        raise ValueError(
            f"{what} has format {version}; this snapport reads formats {', '.join(map(str, READ_FORMATS))}"
        )
    return obj


@dataclass(frozen=True, slots=True)
class Manifest:
    """`manifest.json`: every entry of the set in archive order, and which entries make up each component."""

    set_id: uuid.UUID
    digest_algorithm: str
    entries: tuple[ManifestEntry, ...]
    components: tuple[tuple[ComponentResult, tuple[int, ...]], ...]  # with the indices of their entries

    def to_bytes(self, lines: Sequence[str] | None = None) -> bytes:
        """One entry per line, so `grep` and `diff` work on it; valid JSON all the same. `lines`: the entries'
        `line()`s, if the caller has them already."""
        head = {
            "format": FORMAT_VERSION,
            "set_id": str(self.set_id),
            "digest_algorithm": self.digest_algorithm,
            "components": [_component_json(c) | {"entries": list(members)} for c, members in self.components],
        }
        body = ",\n".join(lines if lines is not None else [e.line() for e in self.entries])
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


def member_name(path: str) -> str:
    """The tar member name of an original path: relative, as tar tools expect (`/srv/data/a` → `srv/data/a`)."""
    return path.lstrip("/") or "."
