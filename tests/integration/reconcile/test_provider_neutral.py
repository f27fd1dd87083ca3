"""The coordinator's reconciliation knows no provider by name: it asks every provider of the registry. A provider
named in it (an import of a provider's package, its name as a string) would keep a new provider from joining."""

from __future__ import annotations

import ast
from pathlib import Path

import snapport.coordinator.reconcile
from snapport.providers.registry import PROVIDERS

PACKAGE = Path(snapport.coordinator.reconcile.__file__).parent


def test_reconciliation_names_no_provider() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) > 1
    for path in modules:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            imported = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                imported = [node.module]
            for module in imported:
                if module.startswith("snapport.providers."):
                    assert module in ("snapport.providers.base", "snapport.providers.registry"), (path, module)
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named = [name for name in PROVIDERS if name in node.value]
                assert not named, f"{path.name} names provider {named[0]!r}"
