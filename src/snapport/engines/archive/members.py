"""Tar members of the archive: each entry's POSIX (pax) header as written (by hand for the usual member, byte for
byte what `tarfile` writes), and what a reader takes back from a member (name, nanosecond mtime, xattrs as
`SCHILY.xattr.*` pax records, a GNU pax sparse 1.0 member's data map). docs/engines.md describes them for people.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Sequence

from snapport.engines.archive.format import member_name
from snapport.engines.walk import Entry, EntryType

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
