"""Verify of an archive set: every file of the set re-read once and checked against its digest, the documents
parsed and validated, and every archive member compared with its manifest entry; damage is collected as
`Problem`s (naming the file it hit), never raised."""

from __future__ import annotations

import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from backports.zstd import ZstdFile

from snapport.documents import BCD_FILE_NAME, WRITERS_DIR_NAME, load_documents
from snapport.engines.archive.format import (
    ARCHIVE_FILE,
    MANIFEST_FILE,
    SET_FILE,
    Manifest,
    ManifestEntry,
    Part,
    SetRecord,
    component_digest,
    member_name,
)
from snapport.engines.archive.members import ENTRY_TYPES, member_data_map, member_mtime_ns, member_xattrs
from snapport.engines.archive.progress import Meter
from snapport.engines.archive.repository import read_file
from snapport.engines.archive.stream import CHUNK, ForwardReader, HashingReader
from snapport.engines.base import Phase, Problem, ProblemKind
from snapport.engines.digest import digest_bytes, new_hasher
from snapport.engines.walk import EntryType
from snapport.errors import DocumentError, UsageError


class Verification:
    """One verify run over one set directory; collects problems instead of stopping at the first."""

    def __init__(self, set_dir: Path, set_id: uuid.UUID, algorithm: str, meter: Meter) -> None:
        self.set_dir = set_dir
        self.set_id = set_id
        self.algorithm = algorithm
        self.meter = meter
        self.problems: list[Problem] = []
        self.record: SetRecord | None = None
        self.manifest: Manifest | None = None
        self.files = 0
        self.bytes = 0

    def problem(self, kind: ProblemKind, path: str | None, detail: str = "") -> None:
        self.problems.append(Problem(kind, path, detail))

    def run(self) -> None:
        self.record = self._record()
        if self.record is not None:
            self.algorithm = self.record.digest_algorithm
        self.manifest = self._manifest()
        self._documents()
        self._extra_parts()
        self._archive()

    def _record(self) -> SetRecord | None:
        try:
            record = SetRecord.from_bytes(read_file(self.set_dir / SET_FILE))
            new_hasher(record.digest_algorithm)
        except FileNotFoundError:
            self.problem(ProblemKind.MISSING_PART, SET_FILE, "the set's description is missing")
            return None
        except (OSError, ValueError, UsageError) as exc:
            self.problem(ProblemKind.SET_INVALID, SET_FILE, f"unreadable: {exc}")
            return None
        if record.set_id != self.set_id:
            self.problem(ProblemKind.SET_INVALID, SET_FILE, f"describes set {record.set_id}")
        return record

    def _manifest(self) -> Manifest | None:
        record, algorithm = self.record, self.algorithm
        try:
            data = read_file(self.set_dir / MANIFEST_FILE)
        except FileNotFoundError:
            self.problem(ProblemKind.MISSING_PART, MANIFEST_FILE)
            return None
        if record is not None and Part(len(data), digest_bytes(algorithm, data)) != record.manifest:
            self.problem(ProblemKind.MANIFEST_DIGEST, MANIFEST_FILE, "differs from its digest in set.json")
        try:
            manifest = Manifest.from_bytes(data)
        except (ValueError, KeyError) as exc:
            self.problem(ProblemKind.MANIFEST_INVALID, MANIFEST_FILE, str(exc))
            return None
        if manifest.set_id != self.set_id or manifest.digest_algorithm != algorithm:
            self.problem(ProblemKind.MANIFEST_INVALID, MANIFEST_FILE, "set id or digest algorithm differ from set.json")
        in_record: dict[tuple[uuid.UUID, str], str] = (
            {(c.writer_id, c.component): c.digest for c in record.components} if record else {}
        )
        for component, members in manifest.components:
            actual = component_digest(algorithm, (manifest.entries[i].line() for i in members))
            recorded = {component.digest, in_record.get((component.writer_id, component.component), actual)}
            if recorded != {actual}:
                self.problem(ProblemKind.COMPONENT_DIGEST, component.component, f"of writer {component.writer_id}")
        if record is not None:
            stored = [e for e in manifest.entries if e.type is not EntryType.DIRECTORY]
            totals = (len(manifest.entries), len(stored), sum(e.size for e in stored if e.type is EntryType.FILE))
            if totals != (record.entries, record.files, record.content_bytes) or len(in_record) != len(
                manifest.components
            ):
                self.problem(ProblemKind.SET_INVALID, SET_FILE, "its totals or components disagree with the manifest")
        return manifest

    def _documents(self) -> None:
        for name, digest in self.record.documents if self.record else ():
            try:
                actual = digest_bytes(self.algorithm, read_file(self.set_dir / name))
            except FileNotFoundError:
                self.problem(ProblemKind.MISSING_PART, name)
                continue
            if actual != digest:
                self.problem(ProblemKind.DOCUMENT_DIGEST, name, "differs from its digest in set.json")
        try:
            bcd, _ = load_documents(self.set_dir)
        except DocumentError as exc:
            self.problem(ProblemKind.DOCUMENT_INVALID, None, exc.message)
            return
        if bcd.set_id != self.set_id:
            self.problem(ProblemKind.DOCUMENT_INVALID, BCD_FILE_NAME, f"describes set {bcd.set_id}")

    def _extra_parts(self) -> None:
        expected = {SET_FILE, MANIFEST_FILE, ARCHIVE_FILE, BCD_FILE_NAME, WRITERS_DIR_NAME}
        expected |= {name for name, _ in self.record.documents} if self.record else set()
        for path in sorted(self.set_dir.rglob("*")):
            name = path.relative_to(self.set_dir).as_posix()
            if name not in expected and (self.record is not None or not name.startswith(f"{WRITERS_DIR_NAME}/")):
                self.problem(ProblemKind.EXTRA_PART, name, "not described by set.json")

    def _archive(self) -> None:
        """Stream the archive once: each member against the manifest, the tar structure, zstd's frame checksum,
        and the digest of the compressed file itself (which catches a flipped byte anywhere)."""
        record = self.record
        entries = self.manifest.entries if self.manifest else ()
        expected = {member_name(e.path): e for e in entries}
        seen: set[str] = set()
        archive_hasher = new_hasher(self.algorithm)
        try:
            raw = (self.set_dir / ARCHIVE_FILE).open("rb")
        except FileNotFoundError:
            self.problem(ProblemKind.MISSING_PART, ARCHIVE_FILE)
            return
        failure: Problem | None = None
        with raw:
            reader = HashingReader(raw, archive_hasher)
            try:
                with ZstdFile(reader, "r") as stream:
                    # "r:" reads members straight from the zstd stream with large reads; every seek it makes on a
                    # sequential walk is forward (it does not close the stream it was given).
                    tar = tarfile.open(fileobj=ForwardReader(stream), mode="r:")  # noqa: SIM115
                    for member in tar:
                        if self.manifest is None:
                            continue  # nothing to compare with: the stream itself is still checked to its end
                        entry = expected.get(member.name)
                        if entry is None or member.name in seen:
                            self.problem(ProblemKind.EXTRA_MEMBER, "/" + member.name.lstrip("/"))
                            continue
                        seen.add(member.name)
                        self._member(tar, member, entry)
                    while block := stream.read(CHUNK):  # the rest: zero padding, then zstd's checksum is checked
                        if block.count(0) != len(block):
                            failure = Problem(
                                ProblemKind.CORRUPT, ARCHIVE_FILE, "data after the end of the tar archive"
                            )
                            break
            except EOFError as exc:
                failure = Problem(ProblemKind.TRUNCATED, ARCHIVE_FILE, f"the compressed stream ends early ({exc})")
            except Exception as exc:  # whatever damage makes zstd or tarfile raise is damage to report
                failure = Problem(ProblemKind.CORRUPT, ARCHIVE_FILE, f"{type(exc).__name__}: {exc}")
            reader.drain()
        recorded = record.archive if record else None
        if failure is not None:
            if recorded is not None and reader.size < recorded.size:  # a short file explains the damage
                failure = Problem(ProblemKind.TRUNCATED, ARCHIVE_FILE, failure.detail)
            self.problems.append(failure)
        if recorded is not None and Part(reader.size, archive_hasher.hexdigest()) != recorded:
            sizes = f"{reader.size} bytes, set.json says {recorded.size}"
            detail = sizes if reader.size != recorded.size else "same size, different content"
            self.problem(ProblemKind.ARCHIVE_DIGEST, ARCHIVE_FILE, detail)
        missing = [e for e in entries if member_name(e.path) not in seen]
        if failure is not None and missing:
            self.problem(ProblemKind.MISSING_FILE, None, f"{len(missing)} of {len(entries)} entries could not be read")
        else:
            for e in missing:
                self.problem(ProblemKind.MISSING_FILE, e.path, "in the manifest, not in the archive")
        self.meter(Phase.VERIFY, self.files, self.bytes, self._total(), force=True)

    def _total(self) -> tuple[int, int] | None:
        return (self.record.files, self.record.content_bytes) if self.record else None

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: ManifestEntry) -> None:
        """Compare one member with its manifest entry, content included."""
        kind = ENTRY_TYPES.get(member.type)
        if kind is not entry.type:
            found = kind.value if kind else repr(member.type)
            self.problem(ProblemKind.METADATA_MISMATCH, entry.path, f"type {found}, manifest {entry.type.value}")
            return
        if kind is not EntryType.DIRECTORY:
            self.files += 1
        link = member_name(entry.link_target) if kind is EntryType.HARDLINK else entry.link_target
        device = (member.devmajor, member.devminor)
        differences = [
            f"{what} {found}, manifest {wanted}"
            for what, found, wanted in (
                ("mode", oct(member.mode), oct(entry.mode)),
                ("uid", member.uid, entry.uid),
                ("gid", member.gid, entry.gid),
                ("mtime_ns", member_mtime_ns(member), entry.mtime_ns),
                ("link target", member.linkname, link),
                ("device", device, entry.rdev or device),
                ("xattrs", _names(member_xattrs(member)), _names(entry.xattrs)),
                ("data map", member_data_map(member), entry.data_map),
            )
            if found != wanted
        ]
        if not differences and member_xattrs(member) != entry.xattrs:
            differences.append("xattr values differ from the manifest")
        if differences:
            self.problem(ProblemKind.METADATA_MISMATCH, entry.path, "; ".join(differences))
        if kind is EntryType.FILE:
            self._content(tar, member, entry)
        self.meter(Phase.VERIFY, self.files, self.bytes, self._total())

    def _content(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: ManifestEntry) -> None:
        if member.size != entry.size:
            self.problem(ProblemKind.SIZE_MISMATCH, entry.path, f"{member.size} bytes, manifest {entry.size}")
        data = tar.extractfile(member)
        if data is None:
            self.problem(ProblemKind.CORRUPT, entry.path, "a file member without content")
            return
        hasher = new_hasher(self.algorithm)
        with data:
            while chunk := data.read(CHUNK):
                hasher.update(chunk)
                self.bytes += len(chunk)
                self.meter(Phase.VERIFY, self.files, self.bytes, self._total())
        if hasher.hexdigest() != entry.digest:
            self.problem(ProblemKind.DIGEST_MISMATCH, entry.path, "content differs from the manifest")


def _names(xattrs: Sequence[tuple[str, bytes]]) -> list[str]:
    return [name for name, _ in xattrs]
