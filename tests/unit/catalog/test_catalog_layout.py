"""The catalog's face is the union of its record families: each method is defined once, in one family, so no
family's method silently shadows another's through the mixin order, and `Catalog` itself adds nothing."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from snapport.catalog import Catalog
from snapport.catalog.core import CatalogCore

FAMILIES = [base for base in Catalog.__mro__[1:] if issubclass(base, CatalogCore) and base is not CatalogCore]
CORE_MEMBERS = {"_write", "_read", "_transaction", "_host", "_boot_id", "_engine"}


def _own_members(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("__")}


def test_catalog_adds_nothing_to_its_families() -> None:
    assert _own_members(Catalog) == set()
    assert len(FAMILIES) == 7


def test_no_two_families_define_the_same_member() -> None:
    seen: dict[str, str] = {}
    for family in [CatalogCore, *FAMILIES]:
        for name in _own_members(family):
            assert name not in seen, f"{name} is defined by both {seen[name]} and {family.__name__}"
            seen[name] = family.__name__


def test_a_family_uses_only_the_core_and_itself_through_self() -> None:
    """What families share goes through module functions taking the connection, imported explicitly."""
    for family in FAMILIES:
        allowed = CORE_MEMBERS | _own_members(family) | _own_members(CatalogCore)
        tree = ast.parse(Path(inspect.getfile(family)).read_text())
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
        }
        assert used <= allowed, f"{family.__name__} reaches {sorted(used - allowed)} of another family"
