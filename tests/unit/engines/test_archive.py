"""The archive engine on a plain directory standing for an exposed snapshot: round trip, damage, interruption."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from backports.zstd import ZstdFile, compress, decompress
from blake3 import blake3

from snapport.engines import ArchiveEngine, Phase, ProblemKind, Progress, SetDocuments
from snapport.engines.archive.format import ARCHIVE_FILE, MANIFEST_FILE, SET_FILE, Manifest, SetRecord
from snapport.engines.archive.repository import incomplete_sets
from snapport.engines.digest import digest_bytes
from snapport.errors import BadState, ObjectNotFound, SystemCommandError, UsageError
from snapport.model import Component, ComponentType, FileSpec
from tests.support.snapshot_tree import MTIME_NS, NON_UTF8, VOLUME, Snapshot, documents, make_tree, whole_volume

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Backed:
    snap: Snapshot
    engine: ArchiveEngine
    docs: SetDocuments

    @property
    def set_dir(self) -> Path:
        return self.engine.sets_dir / str(self.docs.set_id)

    def kinds(self) -> set[ProblemKind]:
        return {p.kind for p in self.engine.verify(self.docs.set_id).problems}


@pytest.fixture
def snap(tmp_path: Path) -> Snapshot:
    return make_tree(tmp_path / "snap")


@pytest.fixture
def backed(snap: Snapshot, tmp_path: Path) -> Backed:
    engine = ArchiveEngine(tmp_path / "repo")
    docs = documents()
    engine.backup(docs, whole_volume(docs), snap.map)
    return Backed(snap, engine, docs)


def members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with ZstdFile(archive) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        out = []
        for m in tar:
            data = tar.extractfile(m) if m.isreg() else None
            out.append((m, data.read() if data else None))
        return out


# -- round trip --------------------------------------------------------------------------------------------------


def test_round_trip_stores_every_file_as_it_is_on_the_snapshot(backed: Backed) -> None:
    report = backed.engine.verify(backed.docs.set_id)
    assert report.intact, report.problems
    root = backed.snap.root
    stored = members(backed.set_dir / ARCHIVE_FILE)
    manifest = Manifest.from_bytes((backed.set_dir / MANIFEST_FILE).read_bytes())
    assert [m.name for m, _ in stored] == [e.path.lstrip("/") for e in manifest.entries]
    for (member, data), entry in zip(stored, manifest.entries, strict=True):
        assert entry.path.startswith(VOLUME)  # the production host's path, not the copy's
        source = root / entry.path.removeprefix(VOLUME).lstrip("/")
        info = source.lstat()
        assert member.mode == stat.S_IMODE(info.st_mode) == entry.mode, entry.path
        assert (member.uid, member.gid) == (info.st_uid, info.st_gid) == (entry.uid, entry.gid)
        assert entry.mtime_ns == info.st_mtime_ns
        if member.issym():
            assert member.linkname == os.readlink(source) == entry.link_target
        elif member.isfile():
            assert data == source.read_bytes()
            assert entry.digest == blake3(data).hexdigest() and entry.size == len(data)
    names = {m.name for m, _ in stored}
    assert {"srv/data/empty", "srv/data/big.bin", f"srv/data/{NON_UTF8}", "srv/data/link-outside"} <= names
    assert not any(n.startswith(("srv/data/link-dir/", "srv/data/link-outside/")) for n in names)
    small = next(m for m, _ in stored if m.name == "srv/data/small.txt")
    assert small.pax_headers["mtime"] == f"{MTIME_NS // 10**9}.{MTIME_NS % 10**9:09d}"
    hard = next(m for m, _ in stored if m.name == "srv/data/hard-2")
    assert hard.islnk() and hard.linkname == "srv/data/hard-1"
    record = SetRecord.from_bytes((backed.set_dir / SET_FILE).read_bytes())
    assert record.originating_host == "prod1" and record.set_id == backed.docs.set_id
    assert record.files == sum(1 for e in manifest.entries if e.type.value != "dir")
    assert (backed.set_dir / "backup-components.xml").is_file()
    assert (backed.set_dir / "writers" / f"{backed.docs.writers[0].writer_id}.xml").is_file()


def test_the_archive_restores_with_ordinary_tar_tools(backed: Backed, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    with ZstdFile(backed.set_dir / ARCHIVE_FILE) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        # Our own archive into a scratch directory; links out of it are links, and meant to be.
        tar.extractall(target, **({"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}))
    restored, original = target / VOLUME.lstrip("/"), backed.snap.root
    for path in original.rglob("*"):
        copy = restored / path.relative_to(original)
        info = path.lstat()
        if stat.S_ISSOCK(info.st_mode):
            assert not copy.exists()
            continue
        got = copy.lstat()
        assert stat.S_IFMT(got.st_mode) == stat.S_IFMT(info.st_mode), path
        assert stat.S_IMODE(got.st_mode) == stat.S_IMODE(info.st_mode), path
        if path.is_symlink():
            assert os.readlink(copy) == os.readlink(path)
        elif path.is_file():
            assert copy.read_bytes() == path.read_bytes()
            assert abs(got.st_mtime_ns - info.st_mtime_ns) < 1000  # tarfile restores through a float
    assert (restored / "hard-1").stat().st_ino == (restored / "hard-2").stat().st_ino


def test_components_get_their_own_counts_and_manifest_digests(snap: Snapshot, tmp_path: Path) -> None:
    components = (
        Component(ComponentType.FILE_GROUP, "db", files=(FileSpec(VOLUME, "db", "app.db*"),)),
        Component(ComponentType.FILE_GROUP, "logs", files=(FileSpec(VOLUME, "logs", "*.log", recursive=True),)),
    )
    docs = documents(components=components)
    engine = ArchiveEngine(tmp_path / "repo")
    result = engine.backup(docs, whole_volume(docs), snap.map)
    db, logs = result.components
    assert (db.component, db.files, db.bytes) == ("db", 2, 8192 + 4096)
    assert (logs.component, logs.files, logs.bytes) == ("logs", 2, 2)
    assert db.digest != logs.digest and len(db.digest) == 64
    assert result.files == 4 and result.bytes == 8192 + 4096 + 2
    assert engine.verify(docs.set_id).intact
    # The same files give the same component digest in another set.
    again = documents(components=components)
    assert engine.backup(again, whole_volume(again), snap.map).components[0].digest == db.digest


def test_list_shows_published_sets_only(backed: Backed) -> None:
    (backed.engine.sets_dir / ".tmp-stray").mkdir()
    (sets,) = backed.engine.list()
    assert sets.set_id == backed.docs.set_id and sets.originating_host == "prod1" and sets.components == ("data",)
    (backed.set_dir / SET_FILE).write_text("{")
    assert backed.engine.list()[0].readable is False


def test_sha256_is_the_fallback_digest(snap: Snapshot, tmp_path: Path) -> None:
    engine = ArchiveEngine(tmp_path / "repo", digest_algorithm="sha256", workers=1, level=1)
    docs = documents()
    assert engine.backup(docs, whole_volume(docs), snap.map).digest_algorithm == "sha256"
    entry = next(
        e
        for e in Manifest.from_bytes((engine.sets_dir / str(docs.set_id) / MANIFEST_FILE).read_bytes()).entries
        if e.path.endswith("small.txt")
    )
    assert entry.digest == digest_bytes("sha256", b"hello\n")
    assert ArchiveEngine(tmp_path / "repo").verify(docs.set_id).intact  # the set says which digest it uses
    with pytest.raises(UsageError):
        ArchiveEngine(tmp_path / "repo", digest_algorithm="md5")


def test_progress_reports_phases_and_totals(snap: Snapshot, tmp_path: Path) -> None:
    events: list[Progress] = []
    engine = ArchiveEngine(tmp_path / "repo", progress_interval_s=0)
    docs = documents()
    result = engine.backup(docs, whole_volume(docs), snap.map, events.append)
    phases = [e.phase for e in events]
    assert phases[0] is Phase.SCAN and phases[-1] is Phase.PUBLISH
    backup = [e for e in events if e.phase is Phase.BACKUP]
    assert all(e.total_bytes == result.bytes and e.total_files == result.files for e in backup)
    assert [e.bytes for e in backup] == sorted(e.bytes for e in backup) and backup[-1].bytes == result.bytes
    assert any(0 < e.bytes < 3 << 20 for e in backup)  # the big file reports while it is read
    verified: list[Progress] = []
    engine.verify(docs.set_id, verified.append)
    assert verified[-1] == Progress(Phase.VERIFY, result.files, result.bytes, result.files, result.bytes)


# -- damage ------------------------------------------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0, 4, 100, 0.1, 0.3, 0.5, 0.7, 0.9, -40, -5, -1])
def test_a_flipped_bit_anywhere_in_the_archive_is_reported(backed: Backed, where: float) -> None:
    archive = backed.set_dir / ARCHIVE_FILE
    size = archive.stat().st_size
    offset = int(where * size) if isinstance(where, float) else where % size
    flip(archive, offset)
    report = backed.engine.verify(backed.docs.set_id)
    assert not report.intact
    assert {p.kind for p in report.problems} & {ProblemKind.ARCHIVE_DIGEST, ProblemKind.CORRUPT}


def test_a_flipped_byte_in_a_file_is_named_even_when_the_archive_digest_is_fixed(backed: Backed) -> None:
    """Damage below the archive digest: the stream re-compressed around one changed byte of one file."""
    archive = backed.set_dir / ARCHIVE_FILE
    tar = bytearray(decompress(archive.read_bytes()))
    at = tar.index(b"two names")  # the content of hard-1
    tar[at] ^= 0x20
    damaged = compress(bytes(tar))
    archive.write_bytes(damaged)
    record = json.loads((backed.set_dir / SET_FILE).read_text())
    record["archive"].update(size=len(damaged), digest=blake3(damaged).hexdigest())
    (backed.set_dir / SET_FILE).write_text(json.dumps(record))
    problems = backed.engine.verify(backed.docs.set_id).problems
    assert [(p.kind, p.path) for p in problems] == [(ProblemKind.DIGEST_MISMATCH, f"{VOLUME}/hard-1")]


@pytest.mark.parametrize("keep", [0, 10, 0.5, -1])
def test_a_truncated_archive_is_reported(backed: Backed, keep: float) -> None:
    archive = backed.set_dir / ARCHIVE_FILE
    size = archive.stat().st_size
    with archive.open("r+b") as f:
        f.truncate(int(keep * size) if isinstance(keep, float) else keep % size)
    kinds = backed.kinds()
    assert ProblemKind.TRUNCATED in kinds, kinds


def test_a_missing_archive_is_reported(backed: Backed) -> None:
    (backed.set_dir / ARCHIVE_FILE).unlink()
    assert ProblemKind.MISSING_PART in backed.kinds()


def test_every_file_of_the_set_is_covered(backed: Backed) -> None:
    for path in sorted(p for p in backed.set_dir.rglob("*") if p.is_file()):
        original = path.read_bytes()
        flip(path, len(original) // 2)
        assert not backed.engine.verify(backed.docs.set_id).intact, path.name
        path.write_bytes(original)
    assert backed.engine.verify(backed.docs.set_id).intact


def edit_manifest(backed: Backed, change: Callable[[dict[str, object]], None], *, fix_digest: bool) -> None:
    path = backed.set_dir / MANIFEST_FILE
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if '"path":"/srv/data/small.txt"' in line:
            entry = json.loads(line.rstrip(","))
            change(entry)
            lines[i] = json.dumps(entry, sort_keys=True, separators=(",", ":")) + ("," if line.endswith(",") else "")
    data = "\n".join(lines).encode()
    path.write_bytes(data)
    if fix_digest:
        record = json.loads((backed.set_dir / SET_FILE).read_text())
        record["manifest"].update(size=len(data), digest=blake3(data).hexdigest())
        (backed.set_dir / SET_FILE).write_text(json.dumps(record))


def test_an_edited_manifest_is_detected(backed: Backed) -> None:
    edit_manifest(backed, lambda e: e.update(digest="0" * 64), fix_digest=False)
    problems = backed.engine.verify(backed.docs.set_id).problems
    kinds = {(p.kind, p.path) for p in problems}
    assert (ProblemKind.MANIFEST_DIGEST, MANIFEST_FILE) in kinds
    assert (ProblemKind.DIGEST_MISMATCH, f"{VOLUME}/small.txt") in kinds


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        (lambda e: e.update(digest="0" * 64), ProblemKind.DIGEST_MISMATCH),
        (lambda e: e.update(size=5), ProblemKind.SIZE_MISMATCH),
        (lambda e: e.update(mode=0o777), ProblemKind.METADATA_MISMATCH),
        (lambda e: e.update(mtime_ns=e["mtime_ns"] + 1), ProblemKind.METADATA_MISMATCH),  # type: ignore[operator]
        (lambda e: e.update(type="symlink", link_target="/etc/passwd"), ProblemKind.METADATA_MISMATCH),
        (lambda e: e.update(path="/srv/data/renamed"), ProblemKind.EXTRA_MEMBER),
    ],
)
def test_a_manifest_edited_consistently_still_disagrees_with_the_archive(
    backed: Backed, change: Callable[[dict[str, object]], None], kind: ProblemKind
) -> None:
    edit_manifest(backed, change, fix_digest=True)
    kinds = backed.kinds()
    assert kind in kinds and ProblemKind.MANIFEST_DIGEST not in kinds, kinds


def test_a_damaged_manifest_or_set_description_is_reported(backed: Backed) -> None:
    (backed.set_dir / MANIFEST_FILE).write_text("not json")
    assert {ProblemKind.MANIFEST_DIGEST, ProblemKind.MANIFEST_INVALID} <= backed.kinds()
    (backed.set_dir / SET_FILE).unlink()
    assert ProblemKind.MISSING_PART in backed.kinds()


def rewrite_archive(backed: Backed, change: Callable[[list[tuple[tarfile.TarInfo, bytes | None]]], None]) -> None:
    stored = members(backed.set_dir / ARCHIVE_FILE)
    change(stored)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member, data in stored:
            tar.addfile(member, io.BytesIO(data) if data is not None else None)
    (backed.set_dir / ARCHIVE_FILE).write_bytes(compress(out.getvalue()))


def test_extra_and_missing_members_are_named(backed: Backed) -> None:
    def change(stored: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
        stored[:] = [(m, d) for m, d in stored if m.name != "srv/data/odd.bin"]
        extra = tarfile.TarInfo("srv/data/planted")
        extra.size = 3
        stored.append((extra, b"bad"))

    rewrite_archive(backed, change)
    problems = {(p.kind, p.path) for p in backed.engine.verify(backed.docs.set_id).problems}
    assert (ProblemKind.MISSING_FILE, f"{VOLUME}/odd.bin") in problems
    assert (ProblemKind.EXTRA_MEMBER, f"{VOLUME}/planted") in problems
    assert (ProblemKind.ARCHIVE_DIGEST, ARCHIVE_FILE) in problems


def test_set_json_never_sends_verify_outside_the_set(backed: Backed) -> None:
    record = json.loads((backed.set_dir / SET_FILE).read_text())
    record["documents"]["../../../../etc/passwd"] = "0" * 64
    (backed.set_dir / SET_FILE).write_text(json.dumps(record))
    problems = backed.engine.verify(backed.docs.set_id).problems
    assert any(p.kind is ProblemKind.SET_INVALID and "not a document of a set" in p.detail for p in problems)


def test_damaged_documents_are_reported(backed: Backed) -> None:
    bcd = backed.set_dir / "backup-components.xml"
    bcd.write_bytes(bcd.read_bytes().replace(b"prod1", b"prod2"))
    assert ProblemKind.DOCUMENT_DIGEST in backed.kinds()
    bcd.write_text("<not-a-bcd/>")
    assert {ProblemKind.DOCUMENT_DIGEST, ProblemKind.DOCUMENT_INVALID} <= backed.kinds()
    (backed.set_dir / "stray").write_text("x")
    assert ProblemKind.EXTRA_PART in backed.kinds()


# -- publication, refusal, interruption --------------------------------------------------------------------------


def test_a_set_is_never_overwritten(backed: Backed) -> None:
    before = (backed.set_dir / ARCHIVE_FILE).read_bytes()
    with pytest.raises(BadState, match="never overwritten"):
        backed.engine.backup(backed.docs, whole_volume(backed.docs), backed.snap.map)
    assert (backed.set_dir / ARCHIVE_FILE).read_bytes() == before
    assert incomplete_sets(backed.engine.repository) == []


def test_a_set_that_appears_during_the_backup_is_not_overwritten(snap: Snapshot, tmp_path: Path) -> None:
    engine = ArchiveEngine(tmp_path / "repo")
    docs = documents()
    planted = engine.sets_dir / str(docs.set_id)

    def race(event: Progress) -> None:
        if event.phase is Phase.PUBLISH:
            planted.mkdir()
            (planted / "someone-else").write_text("theirs")

    with pytest.raises(BadState, match="appeared"):
        engine.backup(docs, whole_volume(docs), snap.map, race)
    assert [p.name for p in planted.iterdir()] == ["someone-else"]
    assert incomplete_sets(engine.repository) == []


@pytest.mark.parametrize("phase", [Phase.SCAN, Phase.BACKUP, Phase.PUBLISH])
def test_a_backup_cancelled_from_its_progress_callback_publishes_nothing(
    snap: Snapshot, tmp_path: Path, phase: Phase
) -> None:
    engine = ArchiveEngine(tmp_path / "repo", progress_interval_s=0)
    docs = documents()

    def cancel(event: Progress) -> None:
        if event.phase is phase and (phase is not Phase.BACKUP or event.bytes > 1 << 20):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.backup(docs, whole_volume(docs), snap.map, cancel)
    assert list(engine.sets_dir.iterdir()) == []
    assert engine.list() == ()
    with pytest.raises(ObjectNotFound):
        engine.verify(docs.set_id)
    engine.backup(docs, whole_volume(docs), snap.map)  # and the same set can then be backed up
    assert engine.verify(docs.set_id).intact


CHILD = textwrap.dedent(
    """
    import sys, time, uuid
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from snapport.engines import ArchiveEngine, Phase
    from tests.support.snapshot_tree import Snapshot, documents, whole_volume
    def report(event):
        if event.phase is Phase.BACKUP:
            print(event.bytes, flush=True)
            time.sleep(0.002)
    docs = documents(set_id=uuid.UUID(sys.argv[4]))
    ArchiveEngine(Path(sys.argv[3]), progress_interval_s=0).backup(
        docs, whole_volume(docs), Snapshot(Path(sys.argv[2])).map, report
    )
    print("published", flush=True)
    """
)


@pytest.mark.parametrize("how", ["sigkill", "fault"])
def test_a_killed_backup_leaves_the_repository_as_it_was(tmp_path: Path, how: str) -> None:
    snap = make_tree(tmp_path / "snap")
    for i in range(24):
        (snap.root / "nested" / f"bulk-{i}").write_bytes(os.urandom(1 << 20))
    repo = tmp_path / "repo"
    engine = ArchiveEngine(repo)
    first = documents()
    engine.backup(first, whole_volume(first), snap.map)  # a set already there must come through untouched
    before = {p.name: p.read_bytes() for p in (engine.sets_dir / str(first.set_id)).iterdir() if p.is_file()}
    docs = documents()
    env = {**os.environ, "SNAPPORT_FAULT": "engine.backup:kill" if how == "fault" else ""}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(ROOT), str(snap.root), str(repo), str(docs.set_id)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    if how == "sigkill":
        for line in child.stdout:
            if int(line) > 8 << 20:  # mid-way through ~30 MiB
                child.send_signal(signal.SIGKILL)
                break
    output = child.stdout.read()
    assert child.wait(30) == -signal.SIGKILL
    assert "published" not in output
    leftovers = incomplete_sets(repo)
    assert len(leftovers) == 1 and (leftovers[0] / ARCHIVE_FILE).exists()  # killed while writing the archive
    assert [s.set_id for s in engine.list()] == [first.set_id]
    with pytest.raises(ObjectNotFound):
        engine.verify(docs.set_id)
    assert engine.prune_incomplete() == tuple(str(p) for p in leftovers)
    assert sorted(p.name for p in engine.sets_dir.iterdir()) == [str(first.set_id)]
    after = {p.name: p.read_bytes() for p in (engine.sets_dir / str(first.set_id)).iterdir() if p.is_file()}
    assert after == before and engine.verify(first.set_id).intact
    engine.backup(docs, whole_volume(docs), snap.map)
    assert engine.verify(docs.set_id).intact


def test_prune_leaves_a_running_backup_alone(snap: Snapshot, tmp_path: Path) -> None:
    engine = ArchiveEngine(tmp_path / "repo", progress_interval_s=0)
    docs = documents()
    reached, release = threading.Event(), threading.Event()
    failure: list[BaseException] = []

    def hold(event: Progress) -> None:
        if event.phase is Phase.BACKUP and event.bytes > 0 and not reached.is_set():
            reached.set()
            release.wait(30)

    def run() -> None:
        try:
            engine.backup(docs, whole_volume(docs), snap.map, hold)
        except BaseException as exc:  # reported to the test thread
            failure.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert reached.wait(30)
        (running,) = incomplete_sets(engine.repository)
        assert engine.prune_incomplete() == ()
        assert running.is_dir()
    finally:
        release.set()
        worker.join(30)
    assert not failure and engine.verify(docs.set_id).intact


def test_a_file_replaced_during_the_backup_is_refused_and_a_link_is_never_followed(
    snap: Snapshot, tmp_path: Path
) -> None:
    engine = ArchiveEngine(tmp_path / "repo")
    docs = documents()
    kept: list[Path] = []

    def swap(target: Callable[[Path], None]) -> Callable[[Progress], None]:
        def on_progress(event: Progress) -> None:
            if event.phase is Phase.BACKUP and event.files == 0:
                path = snap.root / "small.txt"
                path.rename(snap.root / f"old-{len(kept)}")  # kept, so its inode number cannot be reused at once
                kept.append(path)
                target(path)

        return on_progress

    with pytest.raises(BadState, match="changed while"):
        engine.backup(docs, whole_volume(docs), snap.map, swap(lambda p: p.write_text("another file")))
    with pytest.raises(SystemCommandError, match=r"small\.txt"):  # O_NOFOLLOW: ELOOP, /etc/passwd is never read
        engine.backup(docs, whole_volume(docs), snap.map, swap(lambda p: p.symlink_to("/etc/passwd")))
    assert list(engine.sets_dir.iterdir()) == []
    assert snap.root.joinpath("old-0").read_text() == "hello\n" and len(kept) == 2


def test_repositories_are_checked(snap: Snapshot, tmp_path: Path) -> None:
    docs = documents()
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "data").write_text("not ours")
    with pytest.raises(UsageError, match="neither empty"):
        ArchiveEngine(tmp_path / "busy").backup(docs, whole_volume(docs), snap.map)
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["data"]
    with pytest.raises(ObjectNotFound, match="no archive repository"):
        ArchiveEngine(tmp_path / "absent").verify(docs.set_id)
    with pytest.raises(ObjectNotFound, match="not a snapport archive repository"):
        ArchiveEngine(tmp_path / "busy").list()
    engine = ArchiveEngine(tmp_path / "repo")
    engine.backup(docs, whole_volume(docs), snap.map)
    with pytest.raises(ObjectNotFound, match="no set"):
        engine.verify(documents().set_id)
    assert stat.S_IMODE((engine.sets_dir / str(docs.set_id) / ARCHIVE_FILE).stat().st_mode) == 0o600
