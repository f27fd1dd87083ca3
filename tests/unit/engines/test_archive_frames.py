"""The archive engine's fast backup path: hand-built tar headers, independent zstd frames compressed in parallel,
and what a failure in the middle leaves behind."""

from __future__ import annotations

import io
import os
import random
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest
from backports.zstd import ZstdDecompressor, decompress
from blake3 import blake3

from snapport.engines import ArchiveEngine, Phase, Progress
from snapport.engines.archive import members
from snapport.engines.archive.format import ARCHIVE_FILE, member_name
from snapport.engines.archive.frames import SEGMENT, FrameSink
from snapport.engines.walk import Entry, EntryType
from snapport.errors import UsageError
from tests.support.snapshot_tree import VOLUME, Snapshot, documents, make_tree, whole_volume

pytestmark = pytest.mark.timeout(120)


def tarfile_header(entry: Entry) -> bytes:
    """What `tar_header` wrote before it built headers itself: tarfile's `tobuf` for every entry."""
    fast, members._plain_header = members._plain_header, lambda *_: None
    try:
        return members.tar_header(entry)
    finally:
        members._plain_header = fast


def test_hand_built_headers_are_byte_for_byte_what_tarfile_writes() -> None:
    rng = random.Random(7)
    kinds = [EntryType.FILE, EntryType.DIRECTORY, EntryType.SYMLINK, EntryType.HARDLINK]
    mtimes = [0, 1_700_000_000 * 10**9, 1_700_000_000_123_456_789, 8**11 * 10**9 - 1, 8**11 * 10**9, -1, -(10**9)]
    built = 0
    for _ in range(3000):
        kind = rng.choice(kinds)
        name = VOLUME + "/" + "n" * rng.randrange(0, 100) + rng.choice(["", "é", "x", "/"])
        linked = kind in (EntryType.SYMLINK, EntryType.HARDLINK)
        entry = Entry(
            path=name,
            source=Path("/nonexistent"),
            type=kind,
            size=rng.choice([0, 1, 511, 512, 8**11 - 1, 8**11]) if kind is EntryType.FILE else 0,
            mode=rng.randrange(0, 0o10000),
            uid=rng.choice([0, 1000, 8**7 - 1, 8**7]),
            gid=rng.choice([0, 8**7 - 1, 8**7]),
            mtime_ns=rng.choice(mtimes) + rng.randrange(0, 2),
            link_target=(VOLUME + "/t" * rng.randrange(0, 60)) if linked else "",
        )
        header = members.tar_header(entry)
        assert header == tarfile_header(entry), entry
        name_fits = len(member_name(entry.path)) + (kind is EntryType.DIRECTORY) <= 100
        built += name_fits and name.isascii()
    assert built > 1000  # the fast path was taken, not only the fallback


def frames(data: bytes) -> int:
    count = 0
    while data:
        decompressor = ZstdDecompressor()
        decompressor.decompress(data)
        assert decompressor.eof
        data = decompressor.unused_data
        count += 1
    return count


@pytest.fixture
def big_snap(tmp_path: Path) -> Snapshot:
    snap = make_tree(tmp_path / "snap", big_mib=9)
    rng = random.Random(3)
    for i in range(300):  # small files in many frames, half text, half random
        data = rng.randbytes(rng.randrange(1, 40_000))
        (snap.root / "nested" / f"f{i}").write_bytes(data if i % 2 else data.hex().encode())
    return snap


@pytest.mark.parametrize("workers", [0, 2])
def test_frames_are_independent_and_read_by_zstd_gnu_tar_and_verify(
    big_snap: Snapshot, tmp_path: Path, workers: int
) -> None:
    engine = ArchiveEngine(tmp_path / "repo", workers=workers, compression="fixed")
    docs = documents()
    engine.backup(docs, whole_volume(docs), big_snap.map)
    archive = (engine.sets_dir / str(docs.set_id) / ARCHIVE_FILE).read_bytes()
    tar = decompress(archive)
    assert frames(archive) == -(-len(tar) // SEGMENT) > 2  # one frame per segment, each with its own end
    # the same bytes whatever the number of threads: frames are compressed independently, and written in order
    serial = ArchiveEngine(tmp_path / f"repo-{workers}", workers=1 - min(workers, 1), compression="fixed")
    docs2 = documents(set_id=docs.set_id)
    serial.backup(docs2, whole_volume(docs2), big_snap.map)
    assert (serial.sets_dir / str(docs.set_id) / ARCHIVE_FILE).read_bytes() == archive
    subprocess.run(["zstd", "-t", "-q", str(engine.sets_dir / str(docs.set_id) / ARCHIVE_FILE)], check=True)
    target = tmp_path / "gnu"
    target.mkdir()
    subprocess.run(
        ["tar", "--zstd", "-xf", str(engine.sets_dir / str(docs.set_id) / ARCHIVE_FILE), "-C", str(target)],
        check=True,
    )
    original = big_snap.root
    restored = target / VOLUME.lstrip("/")
    for path in original.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert (restored / path.relative_to(original)).read_bytes() == path.read_bytes(), path
    assert engine.verify(docs.set_id).intact


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_a_backup_stopped_mid_way_leaves_no_thread_descriptor_or_temporary_set(
    big_snap: Snapshot, tmp_path: Path
) -> None:
    for i in range(8):
        (big_snap.root / f"bulk-{i}").write_bytes(os.urandom(2 << 20))
    engine = ArchiveEngine(tmp_path / "repo", progress_interval_s=0, workers=2)
    docs = documents()
    engine.backup(documents(), whole_volume(docs), big_snap.map)  # the repository exists, its lock file too
    fds, threads = open_fds(), set(threading.enumerate())

    def stop(event: Progress) -> None:
        if event.phase is Phase.BACKUP and event.bytes > 3 * SEGMENT:  # frames are in flight by then
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.backup(docs, whole_volume(docs), big_snap.map, stop)
    assert set(threading.enumerate()) <= threads  # the compressing and reading pools are gone
    assert open_fds() == fds  # every file the read-ahead opened is closed, the archive too
    assert [p.name for p in engine.sets_dir.iterdir() if p.name.startswith(".")] == []
    engine.backup(docs, whole_volume(docs), big_snap.map)
    assert engine.verify(docs.set_id).intact


def test_tar_reads_every_member_header_the_engine_writes(big_snap: Snapshot, tmp_path: Path) -> None:
    engine = ArchiveEngine(tmp_path / "repo")
    docs = documents()
    engine.backup(docs, whole_volume(docs), big_snap.map)
    tar = decompress((engine.sets_dir / str(docs.set_id) / ARCHIVE_FILE).read_bytes())
    listed = subprocess.run(["tar", "-tvf", "-"], input=tar, capture_output=True, check=True).stdout.decode()
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        names = archive.getnames()
    assert len(listed.splitlines()) == len(names) > 300
    assert "srv/data/nested/f17" in names


def test_adaptive_compression_steps_down_when_zstd_falls_behind_and_the_stream_stays_whole(tmp_path: Path) -> None:
    text = b"".join(b"row %d of a table with status %d\n" % (i, i % 7) for i in range(200_000))[:SEGMENT]
    with (tmp_path / "out.zst").open("wb") as raw, FrameSink(raw, 1, 1, blake3(), adapt=True) as sink:
        for _ in range(12):  # a copy into the buffer is far quicker than zstd on 4 MiB: frames pile up
            sink.write(text)
        sink.finish()
    levels = [level for level in sink.frame_levels if level is not None]
    assert len(sink.frame_levels) > 1 and min(levels) < 1 and max(levels) == 1
    data = (tmp_path / "out.zst").read_bytes()
    assert frames(data) == 13
    assert decompress(data)[: 12 * SEGMENT] == text * 12


def test_stored_frames_are_zstd_that_zstd_gnu_tar_engine_restore_and_verify_read(
    big_snap: Snapshot, tmp_path: Path
) -> None:
    engine = ArchiveEngine(tmp_path / "repo", compression="none")
    docs = documents()
    engine.backup(docs, whole_volume(docs), big_snap.map)
    path = engine.sets_dir / str(docs.set_id) / ARCHIVE_FILE
    archive = path.read_bytes()
    tar = decompress(archive)
    assert frames(archive) == -(-len(tar) // SEGMENT) > 2
    assert len(archive) > len(tar)  # stored: the tar bytes plus frame and block headers
    subprocess.run(["zstd", "-t", "-q", str(path)], check=True)
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", str(path), "-C", str(gnu)], check=True)
    engine.restore(docs.set_id, tmp_path / "restored")
    for path_in_snapshot in big_snap.root.rglob("*"):
        if path_in_snapshot.is_file() and not path_in_snapshot.is_symlink():
            relative = VOLUME.lstrip("/") + "/" + str(path_in_snapshot.relative_to(big_snap.root))
            for root in (gnu, tmp_path / "restored"):
                assert (root / relative).read_bytes() == path_in_snapshot.read_bytes(), relative
    assert engine.verify(docs.set_id).intact
    flipped = bytearray(archive)
    flipped[len(flipped) // 2] ^= 0x01  # inside a raw block: only the digests can tell
    path.write_bytes(flipped)
    assert not engine.verify(docs.set_id).intact


def test_adaptive_compression_falls_back_to_stored_frames_at_its_last_step(tmp_path: Path) -> None:
    text = b"".join(b"row %d of a table with status %d\n" % (i, i % 7) for i in range(200_000))[:SEGMENT]
    with (tmp_path / "out.zst").open("wb") as raw, FrameSink(raw, -20, 1, blake3(), adapt=True) as sink:
        for _ in range(24):
            sink.write(text)
        sink.finish()
    assert set(sink.frame_levels) == {-20, None}
    assert decompress((tmp_path / "out.zst").read_bytes())[: 24 * SEGMENT] == text * 24


def test_an_unknown_compression_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        ArchiveEngine(tmp_path / "repo", compression="fastest")
    assert not (tmp_path / "repo").exists()
