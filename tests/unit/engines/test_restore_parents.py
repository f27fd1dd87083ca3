"""Directories a restore makes above the chosen components: mode 0755 whatever the umask, and the owner and mode
of their own manifest entry where the set holds one."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.engines import ArchiveEngine, SetDocuments
from snapport.model import Component, ComponentType, FileSpec
from tests.support.snapshot_tree import VOLUME, WRITER_ID, documents, make_tree, whole_volume

pytestmark = pytest.mark.timeout(120)
IS_ROOT = os.geteuid() == 0
DB = Component(ComponentType.DATABASE, "db", database_files=(FileSpec(VOLUME, "db", "app.db"),))
WHOLE = Component(ComponentType.FILE_GROUP, "data", files=(FileSpec(VOLUME, "", "*", recursive=True),))


@pytest.fixture
def strict_umask() -> Iterator[None]:
    """A umask that would make every new directory 0700 (a hardened root shell's)."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _backup(tmp_path: Path, *components: Component) -> tuple[ArchiveEngine, SetDocuments, Path]:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    engine = ArchiveEngine(tmp_path / "repo")
    docs = documents(components=components)
    engine.backup(docs, whole_volume(docs), snap.map)
    return engine, docs, snap.root


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


@pytest.mark.usefixtures("strict_umask")
def test_directories_made_above_a_component_are_0755_not_the_umask(tmp_path: Path) -> None:
    engine, docs, root = _backup(tmp_path, DB)
    target = tmp_path / "out"
    engine.restore(docs.set_id, target, components=[(WRITER_ID, "db")])
    assert _mode(target) == 0o755
    for made in (target / "srv", target / "srv" / "data"):  # not in the set: the documented default
        assert _mode(made) == 0o755, made
        assert made.stat().st_uid == os.geteuid()
    assert _mode(target / "srv" / "data" / "db") == _mode(root / "db")  # the component's own, as before
    assert (target / "srv" / "data" / "db" / "app.db").read_bytes() == (root / "db" / "app.db").read_bytes()


@pytest.mark.usefixtures("strict_umask")
def test_a_directory_the_set_holds_gets_its_own_owner_and_mode(tmp_path: Path) -> None:
    snap_root = tmp_path / "snap"
    engine = ArchiveEngine(tmp_path / "repo")
    tree = make_tree(snap_root, big_mib=1)
    snap_root.chmod(0o750)  # the volume's root, held by the whole-volume component
    if IS_ROOT:
        os.chown(snap_root, 1234, 4321)
    docs = documents(components=(WHOLE, DB))
    engine.backup(docs, whole_volume(docs), tree.map)

    target = tmp_path / "out"
    engine.restore(docs.set_id, target, components=[(WRITER_ID, "db")])  # only the database's component
    volume_root = target / "srv" / "data"
    assert _mode(volume_root) == 0o750
    if IS_ROOT:
        assert (volume_root.stat().st_uid, volume_root.stat().st_gid) == (1234, 4321)
    assert _mode(target / "srv") == 0o755  # above the volume: not in the set
    assert not (volume_root / "logs").exists()  # the other component was not restored
