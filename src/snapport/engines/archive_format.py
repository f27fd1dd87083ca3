"""The archive engine's on-disk format (sets of version 2, version 1 still read): digests, `manifest.json`,
`set.json` and tar members (xattrs as `SCHILY.xattr.*` pax records, sparse files as GNU pax sparse 1.0).

Kept apart from the engine so that a restore (and any other reader of a repository) uses the same definitions.
docs/engines.md describes the format for people.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tarfile
import uuid
from collections.abc import Iterable, Mapping, Sequence
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

FORMAT_VERSION = 2  # 2: xattrs and sparse data maps (a format-1 reader would misread their component digests)
READ_FORMATS = (1, 2)
REPOSITORY_FORMAT = 1  # the repository's layout (snapport-repository.json), unchanged by set format 2
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


# -- tar members -------------------------------------------------------------------------------------------------


def member_name(path: str) -> str:
    """The tar member name of an original path: relative, as tar tools expect (`/srv/data/a` → `srv/data/a`)."""
    return path.lstrip("/") or "."


def _pax_time(ns: int) -> str:
    seconds, fraction = divmod(abs(ns), _NS)
    return f"{'-' if ns < 0 else ''}{seconds}.{fraction:09d}"


XATTR_PAX_PREFIX = "SCHILY.xattr."  # GNU tar's and star's spelling: `tar --xattrs --acls -x` restores them


_ACL_XATTRS = {"system.posix_acl_access": "SCHILY.acl.access", "system.posix_acl_default": "SCHILY.acl.default"}
_ACL_TAGS = {1: "user", 2: "user", 4: "group", 8: "group", 0x10: "mask", 0x20: "other"}


def acl_text(value: bytes) -> str | None:
    """A binary POSIX ACL xattr as the numeric text GNU tar keeps in SCHILY.acl.* (`user::rw-,user:1234:r--,...`);
    None if it does not parse."""
    if len(value) < 4 or (len(value) - 4) % 8 or int.from_bytes(value[:4], "little") != 2:
        return None
    parts = []
    for at in range(4, len(value), 8):
        tag, perm = int.from_bytes(value[at : at + 2], "little"), int.from_bytes(value[at + 2 : at + 4], "little")
        ident = int.from_bytes(value[at + 4 : at + 8], "little")
        if tag not in _ACL_TAGS:
            return None
        who = str(ident) if tag in (2, 8) else ""
        bits = "".join(c if perm & b else "-" for c, b in (("r", 4), ("w", 2), ("x", 1)))
        parts.append(f"{_ACL_TAGS[tag]}:{who}:{bits}")
    return ",".join(parts)


def sparse_map_block(data_map: Sequence[tuple[int, int]], size: int) -> bytes:
    """The map that starts a GNU sparse 1.0 member's data: extent count, then offset and length of each, one
    number a line, padded to a block; a last empty extent at the end of the file makes a trailing hole explicit."""
    extents = [*data_map]
    if not extents or sum(extents[-1]) < size:
        extents.append((size, 0))
    numbers = [len(extents)] + [n for extent in extents for n in extent]
    text = "".join(f"{n}\n" for n in numbers).encode()
    return text + bytes(-len(text) % tarfile.BLOCKSIZE)


def tar_header(
    entry: Entry,
    xattrs: Sequence[tuple[str, bytes]] = (),
    data_map: Sequence[tuple[int, int]] | None = None,
) -> bytes:
    """The entry's POSIX (pax) tar header: numeric owners only, mtime to the nanosecond, links as links, xattrs as
    `SCHILY.xattr.NAME` records; a sparse file (`data_map`) is a GNU sparse 1.0 member, and its map block follows
    the header (its data is then the extents' bytes only)."""
    name = member_name(entry.path)
    pax: dict[str, str] = {}
    seconds, fraction = divmod(entry.mtime_ns, _NS)
    if fraction or seconds < 0:
        pax["mtime"] = _pax_time(entry.mtime_ns)  # read by GNU tar, bsdtar and Python
    for key, value in xattrs:  # binary values go through surrogateescape: tarfile writes them back byte for byte
        pax[XATTR_PAX_PREFIX + key] = value.decode("utf-8", "surrogateescape")
        text = acl_text(value) if key in _ACL_XATTRS else None
        if text is not None:  # GNU tar --acls restores ACLs from these records only
            pax[_ACL_XATTRS[key]] = text
    size = entry.size if entry.type is EntryType.FILE else 0
    if data_map is None and not xattrs and entry.rdev is None:
        fast = _plain_header(entry, name, size, seconds, pax.get("mtime"))
        if fast is not None:
            return fast
    prefix = b""
    if data_map is not None and entry.type is EntryType.FILE:
        prefix = sparse_map_block(data_map, entry.size)
        pax |= {
            "GNU.sparse.major": "1",
            "GNU.sparse.minor": "0",
            "GNU.sparse.name": name,
            "GNU.sparse.realsize": str(entry.size),
        }
        # the ustar name is a stand-in that always fits (GNU tar's own is DIR/GNUSparseFile.PID/NAME); readers
        # take the real name from GNU.sparse.name
        name = f"GNUSparseFile.0/{hashlib.sha256(name.encode('utf-8', 'surrogateescape')).hexdigest()[:32]}"
        size = len(prefix) + sum(length for _, length in data_map)
    info = tarfile.TarInfo(name)
    info.type = TAR_TYPES[entry.type]
    info.size = size
    info.mode = entry.mode
    info.uid, info.gid = entry.uid, entry.gid
    info.uname = info.gname = ""  # names belong to the production host; this host's user database would lie
    info.mtime = seconds
    info.pax_headers = pax
    if entry.type is EntryType.SYMLINK:
        info.linkname = entry.link_target
    elif entry.type is EntryType.HARDLINK:
        info.linkname = member_name(entry.link_target)
    if entry.rdev is not None:
        info.devmajor, info.devminor = entry.rdev
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + prefix


_USTAR_LIMITS = (100, 8**7, 8**11)  # name and link bytes, uid/gid, size and mtime: beyond them tarfile adds pax
_PAX_BLOCKS: dict[int, bytes] = {}  # the ustar block announcing a pax record set, by the records' length


def _ustar_block(name: bytes, kind: bytes, link: bytes, numbers: tuple[int, int, int, int, int]) -> bytes:
    """One ustar header block laid out exactly as `tarfile` writes it in PAX_FORMAT (empty owner names, no device
    numbers); `numbers` are mode, uid, gid, size and mtime, known to fit their fields."""
    mode, uid, gid, size, mtime = numbers
    block = bytearray(
        b"".join(
            (
                name.ljust(100, b"\0"),
                b"%07o\0%07o\0%07o\0%011o\0%011o\0" % (mode & 0o7777, uid, gid, size, mtime),
                b"        ",
                kind,
                link.ljust(100, b"\0"),
                b"ustar\x0000",
                bytes(32 + 32 + 8 + 8 + 155 + 12),
            )
        )
    )
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


def _plain_header(entry: Entry, name: str, size: int, seconds: int, mtime: str | None) -> bytes | None:
    """The header of a file, directory or link without xattrs, holes or device numbers, built directly (tarfile's
    `tobuf` costs ~0.15 ms a member); byte for byte what `tobuf` writes. None when a field needs more than ustar
    holds (a long or non-ASCII name or link, large ids): `tobuf` then decides which pax records it takes."""
    if entry.type is EntryType.DIRECTORY and not name.endswith("/"):
        name += "/"
    link = entry.link_target if entry.type is EntryType.SYMLINK else ""
    if entry.type is EntryType.HARDLINK:
        link = member_name(entry.link_target)
    names, ids, numbers = _USTAR_LIMITS
    if not (name.isascii() and link.isascii() and len(name) <= names and len(link) <= names):
        return None
    if not (0 <= entry.uid < ids and 0 <= entry.gid < ids and size < numbers and 0 <= seconds < numbers):
        return None
    block = _ustar_block(
        name.encode(), TAR_TYPES[entry.type], link.encode(), (entry.mode, entry.uid, entry.gid, size, seconds)
    )
    if mtime is None:
        return block
    body = len(mtime) + len(" mtime=\n")
    length = body + len(str(body))
    length = body + len(str(length))  # the record counts its own length's digits
    records = b"%d mtime=%s\n" % (length, mtime.encode())
    announce = _PAX_BLOCKS.get(len(records))
    if announce is None:
        announce = _PAX_BLOCKS[len(records)] = _ustar_block(
            b"././@PaxHeader", tarfile.XHDTYPE, b"", (0, 0, 0, len(records), 0)
        )
    return announce + records + bytes(-len(records) % tarfile.BLOCKSIZE) + block


def member_xattrs(member: tarfile.TarInfo) -> tuple[tuple[str, bytes], ...]:
    """A member's `SCHILY.xattr.*` records as (name, value bytes), sorted by name."""
    found = [
        (key[len(XATTR_PAX_PREFIX) :], value.encode("utf-8", "surrogateescape"))
        for key, value in member.pax_headers.items()
        if key.startswith(XATTR_PAX_PREFIX)
    ]
    return tuple(sorted(found))


def member_data_map(member: tarfile.TarInfo) -> tuple[tuple[int, int], ...] | None:
    """A sparse member's data extents (the empty ones GNU tar adds dropped); None for a member that is not sparse."""
    sparse = getattr(member, "sparse", None)
    if sparse is None:
        return None
    return tuple((offset, length) for offset, length in sparse if length)


def member_mtime_ns(member: tarfile.TarInfo) -> int:
    """A member's mtime in nanoseconds, exactly (tarfile's own `mtime` is a float)."""
    text = member.pax_headers.get("mtime")
    if text is None:
        return int(member.mtime) * _NS
    whole, _, fraction = text.lstrip("-").partition(".")
    ns = int(whole) * _NS + int((fraction + "000000000")[:9])
    return -ns if text.startswith("-") else ns
