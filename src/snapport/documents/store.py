"""Documents on disk: reading one file with a size bound, and saving or loading a backup's set atomically.

Layout of a backup's documents::

    DIR/backup-components.xml
    DIR/writers/<writer-id>.xml      one per writer instance (`WriterMetadata.writer_id`)
"""

from __future__ import annotations

import os
import re
import stat
import uuid
from collections.abc import Iterable
from pathlib import Path

from snapport.documents.bcd import bcd_from_element, bcd_to_xml
from snapport.documents.hardened import DEFAULT_MAX_BYTES, parse
from snapport.documents.schema import BCD, kind_of
from snapport.documents.wmd import wmd_from_element, wmd_to_xml
from snapport.errors import DocumentError
from snapport.model import BackupComponents, WriterMetadata
from snapport.osal.atomic import fsync_dir, write_atomically

BCD_FILE_NAME = "backup-components.xml"
WRITERS_DIR_NAME = "writers"
_FILE_MODE = 0o644  # the documents hold no secrets; the importing host's tools read them
# The most a set's document may weigh when it travels (the agents' API, an engine's child process, a repository
# that stores the documents): far above any real set's, far below what could exhaust a host.
TRANSPORT_MAX_BYTES = 4 << 20
_WRITER_FILE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.xml")


def read_document(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> BackupComponents | WriterMetadata:
    """Either document, chosen by its root element; hardened parsing and schema validation as for each."""
    root = parse(data, max_bytes=max_bytes)
    if kind_of(root) is BCD:
        return bcd_from_element(root)
    return wmd_from_element(root)


def read_set_documents(
    bcd: bytes, writers: Iterable[bytes], *, set_id: uuid.UUID | None = None
) -> tuple[BackupComponents, tuple[WriterMetadata, ...]]:
    """A set's documents as they travel (each at most `TRANSPORT_MAX_BYTES`): the BCD, which must describe
    `set_id` when given, and the writers' metadata documents."""
    components = read_document(bcd, max_bytes=TRANSPORT_MAX_BYTES)
    if not isinstance(components, BackupComponents):
        raise DocumentError("the backup components document is a writer metadata document")
    if set_id is not None and components.snapshot_set.set_id != set_id:
        raise DocumentError(f"the documents of set {set_id} describe set {components.snapshot_set.set_id}")
    found: list[WriterMetadata] = []
    for data in writers:
        wmd = read_document(data, max_bytes=TRANSPORT_MAX_BYTES)
        if not isinstance(wmd, WriterMetadata):
            raise DocumentError(
                f"a writer document of set {components.snapshot_set.set_id} is a backup components document"
            )
        found.append(wmd)
    return components, tuple(found)


def _about(path: Path, exc: DocumentError) -> DocumentError:
    """`exc` with its reason prefixed by the file name, line and column kept."""
    message = exc.message
    if exc.line is not None:
        where = f" (line {exc.line}" + (f", column {exc.column})" if exc.column is not None else ")")
        message = message.removesuffix(where)
    return DocumentError(f"{path}: {message}", line=exc.line, column=exc.column)


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    """At most `max_bytes` of a regular file; anything larger, or not a regular file, is refused unread."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise DocumentError(f"{path}: cannot open: {exc.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise DocumentError(f"{path}: not a regular file")
    if info.st_size > max_bytes:
        os.close(fd)
        raise DocumentError(f"{path}: document is larger than the limit of {max_bytes} bytes")
    with os.fdopen(fd, "rb") as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as exc:
            raise DocumentError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > max_bytes:
        raise DocumentError(f"{path}: document is larger than the limit of {max_bytes} bytes")
    return data


def validate_file(path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> BackupComponents | WriterMetadata:
    """Read, check and convert one document file; reads nothing else from disk or network (`docs validate`)."""
    data = _read_bounded(path, max_bytes)
    try:
        return read_document(data, max_bytes=max_bytes)
    except DocumentError as exc:
        raise _about(path, exc) from exc


def save_documents(out_dir: Path, bcd: BackupComponents, wmds: Iterable[WriterMetadata]) -> list[Path]:
    """Write the BCD and one WMD per writer under `out_dir`; returns the paths, the BCD's first.

    Everything is serialised (and so validated) before the first write. The writers' documents are written
    before the BCD, so a complete BCD never names writers whose documents are missing; documents of writers
    no longer in the set are removed last.
    """
    writers = list(wmds)
    ids = [str(w.writer_id) for w in writers]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DocumentError(f"two writer metadata documents for writer {', '.join(duplicates)}")
    writers_dir = out_dir / WRITERS_DIR_NAME
    bcd_path = out_dir / BCD_FILE_NAME
    payloads = [(writers_dir / f"{i}.xml", wmd_to_xml(w)) for i, w in zip(ids, writers, strict=True)]
    bcd_data = bcd_to_xml(bcd)

    writers_dir.mkdir(parents=True, exist_ok=True)
    for path, data in payloads:
        write_atomically(path, data, mode=_FILE_MODE)
    write_atomically(bcd_path, bcd_data, mode=_FILE_MODE)
    keep = {path.name for path, _ in payloads}
    stale = [p for p in writers_dir.iterdir() if _WRITER_FILE.fullmatch(p.name) and p.name not in keep]
    for path in stale:
        path.unlink()
    if stale:
        fsync_dir(writers_dir)
    return [bcd_path, *(path for path, _ in payloads)]


def load_documents(directory: Path) -> tuple[BackupComponents, list[WriterMetadata]]:
    """The BCD and the WMDs (ordered by writer id) saved by `save_documents` under `directory`."""
    bcd_path = directory / BCD_FILE_NAME
    bcd = validate_file(bcd_path)
    if not isinstance(bcd, BackupComponents):
        raise DocumentError(f"{bcd_path}: a writer metadata document, not a backup components document")
    writers: list[WriterMetadata] = []
    writers_dir = directory / WRITERS_DIR_NAME
    if writers_dir.is_dir():
        for path in sorted(writers_dir.glob("*.xml")):
            if path.name.startswith("."):
                continue
            wmd = validate_file(path)
            if not isinstance(wmd, WriterMetadata):
                raise DocumentError(f"{path}: a backup components document, not a writer metadata document")
            if path.name != f"{wmd.writer_id}.xml":
                raise DocumentError(f"{path}: holds writer {wmd.writer_id}; the file must be named {wmd.writer_id}.xml")
            writers.append(wmd)
    return bcd, writers
