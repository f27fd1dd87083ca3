"""The lab tests' session check: no namespace named with one of their suffixes is left (`tests.support.lab`)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.lab import netns_with, suffixes_used


@pytest.fixture(scope="session", autouse=True)
def _no_lab_namespace_left() -> Iterator[None]:
    yield
    left = [n for suffix in suffixes_used() for n in netns_with(suffix)]
    assert not left, f"lab namespaces left behind: {left}"
