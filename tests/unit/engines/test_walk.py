"""Which files a component's file specs select on an exposed copy: patterns, recursion, excludes, links."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from snapport.engines import ComponentSource
from snapport.engines.walk import EntryType, Selection, select
from snapport.model import Component, ComponentType, FileSpec
from tests.support.snapshot_tree import NON_UTF8, VOLUME, Snapshot, make_tree

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def snap(tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    return make_tree(tmp_path_factory.mktemp("walk") / "snap", big_mib=1)


def group(*specs: FileSpec, name: str = "c", excludes: tuple[FileSpec, ...] = ()) -> ComponentSource:
    return ComponentSource(uuid.uuid4(), Component(ComponentType.FILE_GROUP, name, files=specs), excludes)


def paths(selection: Selection, component: int = 0) -> set[str]:
    return {selection.entries[i].path.removeprefix(VOLUME) for i in selection.members[component]}


def test_a_recursive_star_takes_everything_but_sockets_and_never_follows_links(snap: Snapshot) -> None:
    selection = select([group(FileSpec(VOLUME, "", "*", recursive=True))], snap.map)
    by_path = {e.path.removeprefix(VOLUME): e for e in selection.entries}
    assert {"", "/big.bin", "/empty", "/nested/a/b/deep.txt", f"/{NON_UTF8}", "/cache/tmp-1"} <= set(by_path)
    assert by_path["/link-outside"].type is EntryType.SYMLINK and by_path["/link-outside"].link_target == "/etc"
    assert by_path["/link-dotdot"].link_target == "../../../etc/passwd"  # as written, never resolved
    assert by_path["/link-dir"].type is EntryType.SYMLINK
    assert not [p for p in by_path if p.startswith(("/link-dir/", "/link-outside/"))]
    assert by_path["/fifo"].type is EntryType.FIFO
    assert by_path["/nested"].type is EntryType.DIRECTORY and by_path["/nested"].mode == 0o750
    assert by_path["/private"].mode == 0o600
    if (snap.root / "sock").exists():
        assert "/sock" not in by_path
        assert any("sock: a socket" in note for note in selection.skipped[0])
    # Sorted, each directory before what it holds.
    order = [e.path for e in selection.entries]
    assert (
        order.index(f"{VOLUME}/nested") < order.index(f"{VOLUME}/nested/a") < order.index(f"{VOLUME}/nested/a/mid.txt")
    )


def test_a_file_with_two_names_is_stored_once_and_linked_once(snap: Snapshot) -> None:
    selection = select([group(FileSpec(VOLUME, "", "hard-*"))], snap.map)
    first, second = (e for e in selection.entries if e.path.startswith(f"{VOLUME}/hard-"))
    assert first.type is EntryType.FILE and first.size == len("two names")
    assert second.type is EntryType.HARDLINK and second.link_target == first.path


def test_a_pattern_without_recursion_takes_matching_files_of_one_directory(snap: Snapshot) -> None:
    selection = select([group(FileSpec(VOLUME, "db", "app.db*"))], snap.map)
    assert paths(selection) == {"/db", "/db/app.db", "/db/app.db-wal"}


def test_a_recursive_pattern_matches_at_every_level_and_keeps_the_directories(snap: Snapshot) -> None:
    selection = select([group(FileSpec(VOLUME, "logs", "*.log", recursive=True))], snap.map)
    assert paths(selection) == {"/logs", "/logs/x.log", "/logs/sub", "/logs/sub/y.log"}


def test_excludes_remove_files_and_prune_directories(snap: Snapshot) -> None:
    excludes = (
        FileSpec(VOLUME, "cache", "tmp*"),  # files directly in cache/
        FileSpec(VOLUME, "", "nested"),  # a directory: nothing below it is walked
        FileSpec(VOLUME, "", "*.log", recursive=True),  # everywhere
    )
    selection = select([group(FileSpec(VOLUME, "", "*", recursive=True), excludes=excludes)], snap.map)
    taken = paths(selection)
    assert "/cache/keep" in taken and "/cache/tmp-1" not in taken
    assert not [p for p in taken if p.startswith("/nested")]
    assert not [p for p in taken if p.endswith(".log")] and "/logs/sub/z.txt" in taken


def test_a_spec_whose_directory_is_a_link_stores_the_link_and_reads_nothing_behind_it(snap: Snapshot) -> None:
    for name in ("link-dir", "link-outside"):
        selection = select([group(FileSpec(VOLUME, name, "*", recursive=True))], snap.map)
        assert [(e.path, e.type) for e in selection.entries] == [(f"{VOLUME}/{name}", EntryType.SYMLINK)]
        assert any("not followed" in note for note in selection.skipped[0])


def test_a_missing_directory_is_noted_not_fatal(snap: Snapshot) -> None:
    selection = select([group(FileSpec(VOLUME, "no/such/dir", "*"))], snap.map)
    assert selection.entries == () and selection.skipped == ((f"{VOLUME}/no/such/dir: not in the snapshot",),)


def test_components_that_overlap_share_entries(snap: Snapshot) -> None:
    whole = group(FileSpec(VOLUME, "", "*", recursive=True), name="all")
    db = group(FileSpec(VOLUME, "db", "app.db"), name="db")
    selection = select([whole, db], snap.map)
    assert len({e.path for e in selection.entries}) == len(selection.entries)
    assert paths(selection, 1) == {"/db", "/db/app.db"}
    assert set(selection.members[1]) <= set(selection.members[0])


def test_the_mapper_decides_where_files_are_read(tmp_path: Path, snap: Snapshot) -> None:
    asked: list[str] = []

    def mapper(original: str) -> Path:
        asked.append(original)
        return snap.map(original)

    select([group(FileSpec(VOLUME, "nested", "*", recursive=True), FileSpec(VOLUME, "db", "*"))], mapper)
    assert asked == [f"{VOLUME}/nested", f"{VOLUME}/db"]  # once per spec root; below it, no link is followed
