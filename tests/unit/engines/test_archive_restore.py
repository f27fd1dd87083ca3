"""The archive engine's restore: metadata kept exactly, hostile repositories refused, failures undone."""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
from pathlib import Path

import pytest
from backports.zstd import ZstdFile

from snapport.engines import ArchiveEngine, ProblemKind, SetDocuments
from snapport.engines.archive.format import ARCHIVE_FILE, MANIFEST_FILE, SET_FILE, Manifest, SetRecord
from snapport.engines.digest import digest_bytes
from snapport.errors import BadState, PathEscape
from snapport.faults import InjectedFault
from tests.support.snapshot_tree import VOLUME, Snapshot, documents, make_tree, whole_volume

pytestmark = pytest.mark.timeout(120)
IS_ROOT = os.geteuid() == 0


@pytest.fixture
def snap(tmp_path: Path) -> Snapshot:
    return make_tree(tmp_path / "snap", big_mib=1)


def _backup(snap: Snapshot, repo: Path) -> tuple[ArchiveEngine, SetDocuments]:
    engine = ArchiveEngine(repo)
    docs = documents()
    engine.backup(docs, whole_volume(docs), snap.map)
    return engine, docs


def _rewrite(
    engine: ArchiveEngine, docs: SetDocuments, lines: list[dict[str, object]], tar: bytes | None = None
) -> None:
    """Replace the set's manifest entries (and archive) as a hostile repository would, digests made consistent."""
    set_dir = engine.sets_dir / str(docs.set_id)
    manifest = json.loads((set_dir / MANIFEST_FILE).read_bytes())
    manifest["entries"] = lines
    for component in manifest["components"]:
        component["entries"] = list(range(len(lines)))
    data = json.dumps(manifest).encode()
    (set_dir / MANIFEST_FILE).write_bytes(data)
    record = json.loads((set_dir / SET_FILE).read_bytes())
    record["manifest"] = {"file": MANIFEST_FILE, "size": len(data), "digest": digest_bytes("blake3", data)}
    (set_dir / SET_FILE).write_bytes(json.dumps(record).encode())
    if tar is not None:
        with ZstdFile(set_dir / ARCHIVE_FILE, "w") as out:
            out.write(tar)


def _stat(path: Path) -> tuple[int, int, int, int]:
    info = path.lstat()
    return info.st_mode, info.st_uid, info.st_gid, info.st_mtime_ns


def test_metadata_is_restored_exactly(tmp_path: Path) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    root = snap.root
    (root / "setuid").write_text("s")
    (root / "setuid").chmod(0o4755)
    (root / "shared").mkdir()
    (root / "shared").chmod(0o3777)  # setgid + sticky
    (root / "sparse").write_bytes(b"")
    with (root / "sparse").open("r+b") as f:
        f.seek(8 << 20)
        f.write(b"middle")
        f.truncate(32 << 20)
    os.setxattr(root / "small.txt", "user.note", b"caf\xe9\x00binary")
    if IS_ROOT:
        os.chown(root / "setuid", 1234, 4321)
        os.chmod(root / "setuid", 0o6755)  # chown cleared the bits
        os.mknod(root / "null", stat.S_IFCHR | 0o620, os.makedev(1, 3))
        os.setxattr(root / "nested", "trusted.tag", b"t")
        os.chown(root / "link-inside", 55, 66, follow_symlinks=False)
    engine, docs = _backup(snap, tmp_path / "repo")
    assert engine.verify(docs.set_id).intact
    engine.restore(docs.set_id, tmp_path / "out")
    out = tmp_path / "out" / VOLUME.lstrip("/")
    for path in sorted(root.rglob("*")):
        if path.name == "sock":
            continue
        copy = out / path.relative_to(root)
        assert _stat(copy) == _stat(path), path
        assert os.listxattr(copy, follow_symlinks=False) == os.listxattr(path, follow_symlinks=False), path
        if path.is_file() and not path.is_symlink():
            assert copy.read_bytes() == path.read_bytes()
    assert os.getxattr(out / "small.txt", "user.note") == b"caf\xe9\x00binary"
    assert (out / "sparse").stat().st_blocks * 512 < 1 << 20  # the holes are holes again
    assert not list(out.rglob(".snapport-restore-*"))
    if IS_ROOT:
        assert os.getxattr(out / "nested", "trusted.tag") == b"t"
        assert (out / "null").stat().st_rdev == os.makedev(1, 3)


def test_sparse_files_and_xattrs_are_in_the_archive_for_tar_tools(tmp_path: Path) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    with (snap.root / "sparse").open("wb") as f:
        f.seek(4 << 20)
        f.write(b"data")
        f.truncate(16 << 20)
    os.setxattr(snap.root / "small.txt", "user.a", b"\xff\x00x")
    engine, docs = _backup(snap, tmp_path / "repo")
    set_dir = engine.sets_dir / str(docs.set_id)
    stored = (set_dir / ARCHIVE_FILE).stat().st_size
    assert stored < 2 << 20  # the 16 MiB file's holes are not in the archive
    with ZstdFile(set_dir / ARCHIVE_FILE) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        found = {m.name: m for m in tar}
    sparse = found["srv/data/sparse"]
    assert sparse.size == 16 << 20 and [s for s in sparse.sparse or [] if s[1]] == [(4 << 20, 4096)]
    assert found["srv/data/small.txt"].pax_headers["SCHILY.xattr.user.a"].encode("utf-8", "surrogateescape") == (
        b"\xff\x00x"
    )
    manifest = Manifest.from_bytes((set_dir / MANIFEST_FILE).read_bytes())
    assert SetRecord.from_bytes((set_dir / SET_FILE).read_bytes()).set_id == docs.set_id
    by_path = {e.path: e for e in manifest.entries}
    assert by_path[f"{VOLUME}/sparse"].data_map == ((4 << 20, 4096),)
    assert by_path[f"{VOLUME}/small.txt"].xattrs == (("user.a", b"\xff\x00x"),)


def test_verify_detects_a_changed_xattr(snap: Snapshot, tmp_path: Path) -> None:
    os.setxattr(snap.root / "small.txt", "user.a", b"value")
    engine, docs = _backup(snap, tmp_path / "repo")
    set_dir = engine.sets_dir / str(docs.set_id)
    manifest = set_dir / MANIFEST_FILE
    manifest.write_bytes(manifest.read_bytes().replace(b'"user.a":"dmFsdWU="', b'"user.a":"dmFsdWF="'))
    kinds = {p.kind for p in engine.verify(docs.set_id).problems}
    assert {ProblemKind.MANIFEST_DIGEST, ProblemKind.COMPONENT_DIGEST, ProblemKind.METADATA_MISMATCH} <= kinds


@pytest.mark.parametrize("path", ["/srv/data/../../x", "relative/x", "/srv//x", "/srv/data/a\0b"])
def test_a_hostile_name_in_the_manifest_is_refused_before_anything_is_written(
    snap: Snapshot, tmp_path: Path, path: str
) -> None:
    engine, docs = _backup(snap, tmp_path / "repo")
    line = {"path": path, "type": "file", "size": 0, "mode": 0o644, "uid": 0, "gid": 0, "mtime_ns": 0}
    _rewrite(engine, docs, [line])
    with pytest.raises(PathEscape):
        engine.restore(docs.set_id, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "x").exists()


def test_a_file_through_a_symlink_member_is_refused_and_nothing_escapes(snap: Snapshot, tmp_path: Path) -> None:
    engine, docs = _backup(snap, tmp_path / "repo")
    outside = tmp_path / "outside"
    outside.mkdir()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        link = tarfile.TarInfo("srv/data/link")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        tar.addfile(link)
        evil = tarfile.TarInfo("srv/data/link/planted")
        evil.size = 4
        tar.addfile(evil, io.BytesIO(b"evil"))
        absolute = tarfile.TarInfo("/abs-planted")
        absolute.size = 4
        tar.addfile(absolute, io.BytesIO(b"evil"))
    digest = digest_bytes("blake3", b"evil")
    base = {"mode": 0o644, "uid": os.getuid(), "gid": os.getgid(), "mtime_ns": 0}
    lines: list[dict[str, object]] = [
        {"path": "/srv/data/link", "type": "symlink", "size": 0, "link_target": str(outside), **base},
        {"path": "/srv/data/link/planted", "type": "file", "size": 4, "digest": digest, **base},
    ]
    _rewrite(engine, docs, lines, buffer.getvalue())
    with pytest.raises(PathEscape):
        engine.restore(docs.set_id, tmp_path / "out")
    assert list(outside.iterdir()) == [] and not Path("/abs-planted").exists()
    assert not (tmp_path / "out").exists()  # what the failed restore made is gone


def test_a_file_whose_content_differs_from_its_digest_fails_and_is_undone(snap: Snapshot, tmp_path: Path) -> None:
    engine, docs = _backup(snap, tmp_path / "repo")
    set_dir = engine.sets_dir / str(docs.set_id)
    manifest = json.loads((set_dir / MANIFEST_FILE).read_bytes())
    lines = manifest["entries"]
    victim = next(e for e in lines if e["path"] == f"{VOLUME}/text.log")
    victim["digest"] = "0" * 64
    _rewrite(engine, docs, lines)
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(BadState, match=r"text\.log"):
        engine.restore(docs.set_id, target)
    assert list(target.iterdir()) == []  # the target was there before: it stays, emptied of what was restored


def test_fault_points_leave_nothing_behind(snap: Snapshot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = ArchiveEngine(tmp_path / "repo")
    docs = documents()
    for point in ("engine.scan", "engine.backup", "engine.publish"):
        monkeypatch.setenv("SNAPPORT_FAULT", f"{point}:raise")
        with pytest.raises(InjectedFault):
            engine.backup(docs, whole_volume(docs), snap.map)
        monkeypatch.delenv("SNAPPORT_FAULT")
        assert engine.list() == () and not list(engine.sets_dir.iterdir())
    engine.backup(docs, whole_volume(docs), snap.map)
    for point in ("engine.verify", "engine.restore"):
        monkeypatch.setenv("SNAPPORT_FAULT", f"{point}:raise")
        with pytest.raises(InjectedFault):
            engine.restore(docs.set_id, tmp_path / "out") if point == "engine.restore" else engine.verify(docs.set_id)
    assert not (tmp_path / "out").exists()
