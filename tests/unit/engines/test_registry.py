"""The engine registry: engines by name, and the one rule that chooses the engine of a repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapport.engines import (
    DEFAULT_ENGINE,
    ENGINE_NAMES,
    ENGINES,
    ArchiveEngine,
    get_engine,
    open_repository,
    recognise,
)
from snapport.engines.restic.engine import ResticEngine
from snapport.errors import UsageError


def test_the_names_are_every_engine_sorted() -> None:
    assert ENGINE_NAMES == ("archive", "restic") == tuple(sorted(ENGINES))
    assert DEFAULT_ENGINE == "archive"


def test_an_unknown_engine_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown backup engine 'tape'"):
        get_engine("tape", Path("/nonexistent"))
    with pytest.raises(UsageError, match="unknown backup engine"):
        open_repository(Path("/nonexistent"), "tape")


def test_a_restic_repository_is_recognised_and_anything_else_is_archive(tmp_path: Path) -> None:
    absent, empty, restic, half = tmp_path / "absent", tmp_path / "empty", tmp_path / "restic", tmp_path / "half"
    empty.mkdir()
    (restic / "keys").mkdir(parents=True)
    (restic / "config").write_bytes(b"restic's own")
    (half / "config").parent.mkdir()
    (half / "config").write_bytes(b"a config file alone is not restic's layout")
    assert [recognise(d) for d in (absent, empty, restic, half)] == ["archive", "archive", "restic", "archive"]
    assert isinstance(open_repository(restic), ResticEngine)
    assert isinstance(open_repository(empty), ArchiveEngine)
    assert isinstance(open_repository(restic, "archive"), ArchiveEngine)  # a name given wins
