"""save_documents / load_documents: the on-disk layout, atomic replacement, and no partial files on failure."""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path

import pytest

from snapport.documents import (
    BCD_FILE_NAME,
    WRITERS_DIR_NAME,
    bcd_to_xml,
    load_documents,
    save_documents,
    validate_file,
    wmd_to_xml,
)
from snapport.documents import store as store_module
from snapport.errors import DocumentError
from snapport.model import (
    Attr,
    BackupComponents,
    BackupType,
    Component,
    ComponentType,
    Context,
    FileSpec,
    Locator,
    SnapshotDescription,
    SnapshotSetDescription,
    Volume,
    WriterMetadata,
)


def _wmd(n: int, caption: str = "") -> WriterMetadata:
    comp = Component(ComponentType.FILE_GROUP, f"group{n}", caption=caption, files=(FileSpec("/srv", f"d{n}"),))
    return WriterMetadata(uuid.UUID(int=100 + n), uuid.UUID(int=200), f"writer{n}", components=(comp,))


def _bcd(host: str = "systemone") -> BackupComponents:
    snap = SnapshotDescription(
        uuid.UUID(int=1),
        Volume(host=host, mount_point="/srv", fs_type="xfs", fs_uuid="abc"),
        Locator(provider="btrfs", properties=(("subvolume", "snap1"),)),
        Attr.TRANSPORTABLE,
    )
    sset = SnapshotSetDescription(uuid.UUID(int=2), Context.BACKUP, Attr.TRANSPORTABLE, (snap,))
    return BackupComponents(BackupType.FULL, sset, originating_host=host)


def _leftovers(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]


def test_save_then_load_round_trips(tmp_path: Path) -> None:
    bcd, wmds = _bcd(), [_wmd(2), _wmd(1)]
    out = tmp_path / "backup"
    paths = save_documents(out, bcd, wmds)
    assert paths == [
        out / BCD_FILE_NAME,
        out / WRITERS_DIR_NAME / f"{wmds[0].writer_id}.xml",
        out / WRITERS_DIR_NAME / f"{wmds[1].writer_id}.xml",
    ]
    assert paths[0].read_bytes() == bcd_to_xml(bcd)
    assert paths[1].read_bytes() == wmd_to_xml(wmds[0])
    assert stat.S_IMODE(paths[0].stat().st_mode) == 0o644
    assert load_documents(out) == (bcd, sorted(wmds, key=lambda w: str(w.writer_id)))
    assert validate_file(paths[1]) == wmds[0]
    assert _leftovers(out) == []


def test_saving_again_replaces_and_drops_writers_no_longer_there(tmp_path: Path) -> None:
    save_documents(tmp_path, _bcd(), [_wmd(1), _wmd(2)])
    unrelated = tmp_path / WRITERS_DIR_NAME / "notes.xml.bak"
    unrelated.write_text("kept")
    save_documents(tmp_path, _bcd("systemtwo"), [_wmd(2, caption="new")])
    bcd, wmds = load_documents(tmp_path)
    assert bcd.originating_host == "systemtwo"
    assert wmds == [_wmd(2, caption="new")]
    assert unrelated.read_text() == "kept"


def test_a_document_that_cannot_be_written_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "backup"
    with pytest.raises(DocumentError, match=r"cannot be carried by XML 1\.0"):
        save_documents(out, _bcd(), [_wmd(1), _wmd(2, caption="bell\x07")])
    assert not out.exists()  # everything is serialised before the first write


def test_two_documents_for_one_writer_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentError, match="two writer metadata documents"):
        save_documents(tmp_path, _bcd(), [_wmd(1), _wmd(1)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail_at", [1, 2, 3])
def test_a_failed_save_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: int) -> None:
    """A crash mid-save (here: the n-th file's fsync fails) leaves the old documents whole and no temp file."""
    old_bcd, old_wmds = _bcd(), [_wmd(1), _wmd(2)]
    save_documents(tmp_path, old_bcd, old_wmds)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*.xml")}

    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls["n"] += 1
            if calls["n"] == fail_at:
                raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space left"):
        save_documents(tmp_path, _bcd("systemtwo"), [_wmd(1, caption="x"), _wmd(2, caption="y")])
    monkeypatch.undo()

    assert _leftovers(tmp_path) == []
    for path, data in before.items():
        # Each file is either the old document or the new one, never a mix or a truncation.
        assert path.read_bytes() == data or validate_file(path) is not None
    bcd, _ = load_documents(tmp_path)
    assert bcd == old_bcd  # the BCD goes last, so a failed save never leaves a new BCD behind


def test_load_refuses_misplaced_or_misnamed_documents(tmp_path: Path) -> None:
    save_documents(tmp_path, _bcd(), [_wmd(1)])
    wmd_path = tmp_path / WRITERS_DIR_NAME / f"{_wmd(1).writer_id}.xml"
    renamed = wmd_path.with_name(f"{uuid.UUID(int=999)}.xml")
    wmd_path.rename(renamed)
    with pytest.raises(DocumentError, match=r"the file must be named 00000000-0000-0000-0000-000000000065\.xml"):
        load_documents(tmp_path)
    renamed.unlink()
    (tmp_path / BCD_FILE_NAME).write_bytes(wmd_to_xml(_wmd(1)))
    with pytest.raises(DocumentError, match="not a backup components document"):
        load_documents(tmp_path)
    (tmp_path / BCD_FILE_NAME).unlink()
    with pytest.raises(DocumentError, match="cannot open"):
        load_documents(tmp_path)


def test_file_errors_name_the_file_and_keep_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.xml"
    path.write_bytes(b"<?xml version='1.0'?>\n<BACKUP_COMPONENTS>\n  <oops>\n</BACKUP_COMPONENTS>\n")
    with pytest.raises(DocumentError) as info:
        validate_file(path)
    assert str(info.value).startswith(f"{path}: not well-formed XML: ")
    assert str(info.value).endswith(f"(line {info.value.line}, column {info.value.column})")
    assert info.value.line == 4
