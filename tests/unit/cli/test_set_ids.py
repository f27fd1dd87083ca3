"""`resolve_set_id`: the one reader of a set id or unique prefix typed by a user (catalog sets and repository sets)."""

from __future__ import annotations

import uuid

import pytest

from snapport.cli.env import resolve_set_id
from snapport.errors import ObjectNotFound, UsageError

A = uuid.UUID("abcd1234-0000-4000-8000-000000000001")
B = uuid.UUID("abcd5678-0000-4000-8000-000000000002")


def test_a_full_id_is_taken_as_it_is_without_listing() -> None:
    def never() -> list[uuid.UUID]:
        raise AssertionError("a full id needs no list")

    other = uuid.uuid4()
    assert resolve_set_id(str(other), never, noun="set") == other
    assert resolve_set_id(str(A).upper(), never, noun="set") == A


def test_a_unique_prefix_names_its_set() -> None:
    assert resolve_set_id("abcd1", lambda: [A, B], noun="set") == A
    assert resolve_set_id("ABCD5", lambda: [A, B], noun="set") == B


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("abc", "'abc' is not a set id (a UUID, or a unique prefix of at least 4 hex digits)"),
        ("wxyz", "'wxyz' is not a set id"),
        ("abcd", "'abcd' matches 2 sets; give more of the id"),
    ],
)
def test_what_names_no_one_set_is_a_usage_error(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_set_id(text, lambda: [A, B], noun="set")


def test_a_prefix_no_set_has_is_not_found_in_the_callers_words() -> None:
    with pytest.raises(ObjectNotFound) as catalog:
        resolve_set_id("ffff", lambda: [A, B], noun="snapshot set")
    assert catalog.value.message == "no snapshot set with id 'ffff'"
    with pytest.raises(ObjectNotFound) as repository:
        resolve_set_id("ffff", lambda: [A], noun="set", where="in the repository")
    assert repository.value.message == "no set with id 'ffff' in the repository"
