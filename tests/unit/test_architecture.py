"""The layering of DESIGN §2, checked on the source: dependencies point inward."""

import ast
import re
from pathlib import Path

import snapport
import snapport.faults  # its error class belongs in the exit-code table
import snapport.model
from snapport.errors import all_error_classes

SRC = Path(snapport.__file__).parent
ROOT = SRC.parent.parent

# package -> the snapport packages it may import (besides itself and the leaf modules `errors` and `faults`)
ALLOWED = {
    "model": set(),
    "documents": {"model", "osal"},
    "catalog": {"model"},
    "osal": set(),
    "providers": {"model", "osal"},
    "writers": {"model", "osal"},
    "engines": {"model", "osal", "documents"},
    "coordinator": {"model", "documents", "catalog", "providers", "writers", "osal", "engines"},
    "agent": {"model", "documents", "catalog", "coordinator", "providers", "writers", "osal", "engines"},
    "lab": {"model", "osal", "providers"},
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("snapport."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("snapport.")}
    return found


def test_dependencies_point_inward() -> None:
    checked = 0
    for package, allowed in ALLOWED.items():
        for path in (SRC / package).rglob("*.py") if (SRC / package).is_dir() else []:
            bad = _imports(path) - allowed - {package, "errors", "faults"}
            assert not bad, f"{path.relative_to(SRC)} imports snapport.{', snapport.'.join(sorted(bad))}"
            checked += 1
    assert checked > 0


def test_nothing_below_the_cli_imports_it() -> None:
    for path in SRC.rglob("*.py"):
        if path.parent.name != "cli" and path.name != "__main__.py":
            assert "cli" not in _imports(path), path


def test_public_surface_is_pinned() -> None:
    assert snapport.__all__ == ["__version__"]
    assert len(snapport.model.__all__) == len(set(snapport.model.__all__))
    for name in snapport.model.__all__:
        assert hasattr(snapport.model, name), name
    assert (SRC / "py.typed").exists()


def test_exit_code_table_matches_the_error_classes() -> None:
    text = (ROOT / "docs" / "exit-codes.md").read_text()
    rows = {(code, int(exit_code)) for code, exit_code in re.findall(r"^\| `([A-Z_]+)` \| (\d+) \|", text, re.M)}
    expected = {(cls.code, cls.exit_code) for cls in all_error_classes()}
    assert rows == expected
    assert len({cls.exit_code for cls in all_error_classes()}) == len(all_error_classes())
