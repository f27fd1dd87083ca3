"""The e2e tier: one lab for the module (`tests.support.lab_under_test`), torn down in a finally."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.lab_under_test import LabUnderTest, running_lab


@pytest.fixture(scope="module")
def lab_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabUnderTest]:
    yield from running_lab(tmp_path_factory, "e2e", LabUnderTest)
