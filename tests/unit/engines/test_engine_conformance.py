"""What every engine promises (engines/base.py), run over every engine in the registry."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from snapport.engines import ENGINES, Engine, Phase, Progress, get_engine, select_components
from snapport.errors import BadState, ObjectNotFound, UsageError
from snapport.model import Component, ComponentType, FileSpec
from tests.unit.engines.snapshot_tree import VOLUME, Snapshot, documents, make_tree

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Engine:
    return get_engine(request.param, tmp_path / "repo")


@pytest.fixture
def snap(tmp_path: Path) -> Snapshot:
    return make_tree(tmp_path / "snap", big_mib=1)


def test_an_engine_satisfies_the_protocol(engine: Engine) -> None:
    assert isinstance(engine, Engine)
    assert engine.name in ENGINES
    with pytest.raises(AttributeError):
        engine.capabilities.restore = True  # type: ignore[misc]
    with pytest.raises(UsageError, match="unknown backup engine"):
        get_engine("tape", Path("/nonexistent"))


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
