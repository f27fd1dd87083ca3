"""Where restored files land (no root needed): `RestoreContext.location` never leaves the target."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from snapport.errors import PathEscape
from snapport.model import BackupType
from snapport.writers.base import RestoreContext


def context(target: str) -> RestoreContext:
    return RestoreContext(uuid.uuid4(), BackupType.FULL, Path(target), ("/srv/pg/data",))


def test_an_original_path_lands_under_the_target_and_slash_restores_in_place() -> None:
    assert context("/restored").location("/srv/pg/data") == Path("/restored/srv/pg/data")
    assert context("/restored").location("/") == Path("/restored")
    assert not context("/restored").in_place
    assert context("/").location("/srv/pg/data") == Path("/srv/pg/data") and context("/").in_place


@pytest.mark.parametrize("original", ["relative/path", "/srv/../etc/passwd", "/srv/\x00x", ""])
def test_a_path_that_could_leave_the_target_is_refused(original: str) -> None:
    with pytest.raises(PathEscape):
        context("/restored").location(original)


def test_a_relative_target_is_refused() -> None:
    with pytest.raises(ValueError, match="absolute"):
        context("restored")
