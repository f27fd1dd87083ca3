"""What every engine promises (engines/base.py), run over every engine in the registry."""

from __future__ import annotations

import os
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapport.engines import (
    ENGINES,
    Capabilities,
    Engine,
    Phase,
    Progress,
    SetSummary,
    recognise,
    select_components,
)
from snapport.engines.process import ProcessEngine
from snapport.errors import BadState, ObjectNotFound, TargetNotEmpty
from snapport.model import Component, ComponentType, FileSpec
from tests.conftest import needs_root
from tests.support.protocols import protocol_mismatches
from tests.support.snapshot_tree import MTIME_NS, VOLUME, Snapshot, documents, make_tree

pytestmark = pytest.mark.timeout(60)


@dataclass(frozen=True)
class EngineFactory:
    """One engine the suite runs over: its test id, how to make it on a repository directory (which need not
    exist yet), and the marks its tests need."""

    id: str
    make: Callable[[Path], Engine]
    marks: tuple[pytest.MarkDecorator, ...] = ()


def _marks(capabilities: Capabilities) -> tuple[pytest.MarkDecorator, ...]:
    """An engine that runs in its own mount namespace needs root, and its tests are slow."""
    return (pytest.mark.slow, needs_root()) if capabilities.private_mount_namespace else ()


# Every engine of the registry, and each run in a child process (`ProcessEngine`, what a proxy runs); an engine
# that wraps another (a retry layer, ...) joins with one more entry.
FACTORIES: list[EngineFactory] = [
    EngineFactory(name, engine_class, _marks(engine_class.capabilities))
    for name, engine_class in sorted(ENGINES.items())
] + [
    EngineFactory(
        f"process-{name}", lambda repo, name=name: ProcessEngine(name, repo), _marks(engine_class.capabilities)
    )
    for name, engine_class in sorted(ENGINES.items())
]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


@pytest.fixture(params=[pytest.param(f, id=f.id, marks=f.marks) for f in FACTORIES])
def engine(request: pytest.FixtureRequest, repo: Path) -> Engine:
    factory: EngineFactory = request.param
    return factory.make(repo)


@pytest.fixture
def snap(tmp_path: Path) -> Snapshot:
    return make_tree(tmp_path / "snap", big_mib=1)


def test_an_engine_satisfies_the_protocol(engine: Engine) -> None:
    assert protocol_mismatches(engine, Engine) == []
    assert engine.name in ENGINES
    with pytest.raises(AttributeError):
        engine.capabilities.restore = True  # type: ignore[misc]


class _Lopsided:
    """An engine that `isinstance` against a runtime-checkable `Engine` would have let through."""

    name = 7
    capabilities = ENGINES["archive"].capabilities

    def backup(self, documents: object, components: object, mapper: object, progress: object = None) -> object: ...

    def verify(self, set_id: uuid.UUID, progress: object = ()) -> object: ...

    def list(self) -> list[SetSummary]:
        return []

    def documents(self, set_id: str) -> object: ...

    restore = None


def test_the_protocol_check_finds_every_departure() -> None:
    found = protocol_mismatches(_Lopsided(), Engine)
    assert list(dict.fromkeys(line.partition(":")[0] for line in found)) == [
        "name",  # not a str
        "backup",  # a parameter renamed
        "verify",  # another default
        "list",  # another return type
        "documents",  # another parameter type, another return type
        "restore",  # not a method
        "forget",  # missing
        "prune_incomplete",  # missing
    ]
    assert "set_id: <class 'str'>" in found[4]
    assert protocol_mismatches(ENGINES["archive"](Path("/nonexistent")), Engine) == []


def test_backup_is_recognised_as_its_engines_repository(engine: Engine, snap: Snapshot, repo: Path) -> None:
    docs = documents()
    engine.backup(docs, select_components(docs), snap.map)
    assert recognise(repo) == engine.name


def test_backup_verify_list(engine: Engine, snap: Snapshot) -> None:
    components = (
        Component(ComponentType.FILE_GROUP, "all", files=(FileSpec(VOLUME, "", "*", recursive=True),)),
        Component(ComponentType.DATABASE, "db", database_files=(FileSpec(VOLUME, "db", "app.db"),)),
    )
    docs = documents(components=components)
    result = engine.backup(docs, select_components(docs), snap.map)
    assert result.set_id == docs.set_id and result.engine == engine.name
    assert [c.component for c in result.components] == ["all", "db"]
    assert result.components[1].files == 1 and result.components[1].bytes == 8192
    assert result.files >= result.components[0].files > 20
    report = engine.verify(docs.set_id)
    assert report.intact and report.files == result.files and report.bytes == result.bytes
    assert [s.set_id for s in engine.list()] == [docs.set_id]


def test_a_set_is_backed_up_once(engine: Engine, snap: Snapshot) -> None:
    docs = documents()
    engine.backup(docs, select_components(docs), snap.map)
    with pytest.raises(BadState):
        engine.backup(docs, select_components(docs), snap.map)
    assert len(engine.list()) == 1


def test_a_cancelled_backup_is_not_listed_and_can_be_retried(engine: Engine, snap: Snapshot) -> None:
    docs = documents()

    def cancel(event: Progress) -> None:
        if event.phase is Phase.BACKUP:
            raise RuntimeError("cancelled")

    with pytest.raises(RuntimeError):
        engine.backup(docs, select_components(docs), snap.map, cancel)
    assert engine.list() == ()
    engine.backup(docs, select_components(docs), snap.map)
    assert engine.verify(docs.set_id).intact


def test_forget_removes_the_sets_named_and_only_them(engine: Engine, snap: Snapshot) -> None:
    made = [documents() for _ in range(3)]
    for docs in made:
        engine.backup(docs, select_components(docs), snap.map)
    gone, kept = [made[0].set_id, made[2].set_id], made[1].set_id
    assert set(engine.forget([*gone, uuid.uuid4()]).removed) == set(gone)  # an unknown id is no error
    assert [s.set_id for s in engine.list()] == [kept]
    assert engine.verify(kept).intact
    with pytest.raises(ObjectNotFound):
        engine.verify(gone[0])
    assert engine.forget(gone).removed == ()  # idempotent
    assert engine.prune_incomplete() == ()  # a forget leaves nothing behind


def test_verify_of_what_is_not_there_raises(engine: Engine, snap: Snapshot) -> None:
    with pytest.raises(ObjectNotFound):
        engine.verify(uuid.uuid4())  # no repository yet
    docs = documents()
    engine.backup(docs, select_components(docs), snap.map)
    with pytest.raises(ObjectNotFound):
        engine.verify(uuid.uuid4())


def test_select_components_follows_the_bcd(snap: Snapshot) -> None:
    docs = documents(
        components=(
            Component(ComponentType.FILE_GROUP, "a", files=(FileSpec(VOLUME, "logs", "*"),)),
            Component(ComponentType.FILE_GROUP, "b", logical_path="x", files=(FileSpec(VOLUME, "db", "*"),)),
        ),
        excludes=(FileSpec(VOLUME, "db", "*.txt"),),
    )
    chosen = select_components(docs)
    assert [c.full_path for c in chosen] == ["a", "x\\b"]
    assert all(c.excludes == docs.writers[0].excludes for c in chosen)
    assert select_components(docs, writer_ids=[uuid.uuid4()]) == ()


# -- restore -----------------------------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[str, int, bytes | str]]:
    """Every entry below `root`: kind, permission bits, and content (files) or target (links)."""
    found: dict[str, tuple[str, int, bytes | str]] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        info = path.lstat()
        if path.is_symlink():
            found[name] = ("link", 0, os.readlink(path))
        elif path.is_dir():
            found[name] = ("dir", stat.S_IMODE(info.st_mode), "")
        elif path.is_file():
            found[name] = ("file", stat.S_IMODE(info.st_mode), path.read_bytes())
        elif stat.S_ISFIFO(info.st_mode):
            found[name] = ("fifo", stat.S_IMODE(info.st_mode), "")
    return found


def _restorable(engine: Engine) -> None:
    if not engine.capabilities.restore:
        pytest.skip(f"engine {engine.name} does not restore")


def test_restore_gives_back_every_file_under_the_target(engine: Engine, snap: Snapshot, tmp_path: Path) -> None:
    _restorable(engine)
    docs = documents()
    engine.backup(docs, select_components(docs), snap.map)
    events: list[Progress] = []
    result = engine.restore(docs.set_id, tmp_path / "out", progress=events.append)
    restored = tmp_path / "out" / VOLUME.lstrip("/")
    expected = {k: v for k, v in _tree(snap.root).items() if k != "sock"}
    assert _tree(restored) == expected
    assert result.set_id == docs.set_id and result.engine == engine.name
    assert result.files == sum(1 for kind, _, _ in expected.values() if kind != "dir")
    assert result.components == ((docs.writers[0].writer_id, "data"),)
    assert events and {e.phase for e in events} == {Phase.RESTORE} and events[-1].files == result.files
    assert (restored / "hard-1").stat().st_ino == (restored / "hard-2").stat().st_ino
    assert (restored / "small.txt").stat().st_mtime_ns == MTIME_NS


def test_documents_are_given_back_as_stored(engine: Engine, snap: Snapshot) -> None:
    _restorable(engine)
    docs = documents()
    engine.backup(docs, select_components(docs), snap.map)
    assert engine.documents(docs.set_id) == docs
    with pytest.raises(ObjectNotFound):
        engine.documents(uuid.uuid4())


def test_a_target_that_is_not_empty_is_refused_unless_overwrite(engine: Engine, snap: Snapshot, tmp_path: Path) -> None:
    _restorable(engine)
    docs = documents()
    engine.backup(docs, select_components(docs), snap.map)
    target = tmp_path / "out"
    (target / VOLUME.lstrip("/")).mkdir(parents=True)
    stale = target / VOLUME.lstrip("/") / "small.txt"
    stale.write_text("stale")
    other = target / "other.txt"
    other.write_text("mine")
    with pytest.raises(TargetNotEmpty):
        engine.restore(docs.set_id, target)
    assert stale.read_text() == "stale" and sorted(p.name for p in target.iterdir()) == ["other.txt", "srv"]
    engine.restore(docs.set_id, target, overwrite=True)
    assert stale.read_text() == "hello\n" and other.read_text() == "mine"
    assert (target / VOLUME.lstrip("/") / "big.bin").read_bytes() == (snap.root / "big.bin").read_bytes()


def test_restore_of_chosen_components_only(engine: Engine, snap: Snapshot, tmp_path: Path) -> None:
    _restorable(engine)
    components = (
        Component(ComponentType.FILE_GROUP, "logs", files=(FileSpec(VOLUME, "logs", "*", recursive=True),)),
        Component(ComponentType.DATABASE, "db", database_files=(FileSpec(VOLUME, "db", "app.db"),)),
    )
    docs = documents(components=components)
    engine.backup(docs, select_components(docs), snap.map)
    writer = docs.writers[0].writer_id
    result = engine.restore(docs.set_id, tmp_path / "out", components=[(writer, "db")])
    assert result.components == ((writer, "db"),) and result.files == 1
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["srv/data/db/app.db"]
    assert (tmp_path / "out/srv/data/db/app.db").read_bytes() == (snap.root / "db" / "app.db").read_bytes()
    with pytest.raises(ObjectNotFound):
        engine.restore(docs.set_id, tmp_path / "other", components=[(writer, "nope")])
    assert not (tmp_path / "other").exists() or not any((tmp_path / "other").iterdir())
