"""The test tree's layout, checked on its source: what several test modules share lives in `tests/support/`.

A module under tests/ imports, of the tests, only `tests/support/`, the root `tests/conftest.py` (the session's
scratch fixture, marks and leak check, the base of every tier) and non-test modules of its own directory; from its
own directory's conftest only types (of the fixtures it defines). Nothing outside tests/ imports them.
"""

from __future__ import annotations

import ast
import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

TESTS = Path(__file__).parents[1]
ROOT = TESTS.parent
SUPPORT = TESTS / "support"
ROOT_CONFTEST = TESTS / "conftest.py"


def _python_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def _module_file(parts: list[str]) -> Path | None:
    """The file of module `parts` (a dotted name split) in this tree, or None."""
    for candidate in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _test_imports(path: Path, source: str) -> Iterator[tuple[Path, str | None]]:
    """(file imported, name taken from it or None) for every import of a module under tests/ in `source` (the
    module at `path`), at any depth: inside functions too, and in the code of a child process given as a string;
    `from PACKAGE import MODULE` yields MODULE's file."""
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "tests" in node.value:
            with contextlib.suppress(SyntaxError, ValueError):
                yield from _test_imports(path, textwrap.dedent(node.value))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "tests" and (found := _module_file(alias.name.split("."))):
                    yield found, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = path.parents[node.level - 1].relative_to(ROOT).parts
                parts = [*base, *(node.module.split(".") if node.module else [])]
            else:
                parts = node.module.split(".") if node.module else []
            if not parts or parts[0] != "tests" or (module := _module_file(parts)) is None:
                continue
            for alias in node.names:
                submodule = _module_file([*parts, alias.name])
                yield (submodule, None) if submodule else (module, alias.name)


def _types_defined(conftest: Path) -> set[str]:
    """The names a conftest defines as classes or type aliases (`X = Callable[..., Y]`)."""
    names: set[str] = set()
    for node in ast.parse(conftest.read_text()).body:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Subscript):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _violations(path: Path, source: str | None = None) -> list[str]:
    """What the module at `path` (its text, or `source` in its place) imports against the layout."""
    here = path.relative_to(ROOT)
    found: list[str] = []
    for target, name in _test_imports(path, path.read_text() if source is None else source):
        there = target.relative_to(ROOT)
        if target.name.startswith("test_"):
            found.append(f"{here} imports the test module {there}")
        elif target.is_relative_to(SUPPORT) or target == ROOT_CONFTEST or target.name == "__init__.py":
            continue
        elif target.parent != path.parent:
            found.append(f"{here} imports {there}, of another directory (shared helpers belong in tests/support/)")
        elif target.name == "conftest.py" and name is not None and name not in _types_defined(target):
            found.append(f"{here} takes {name} from its conftest, which is no type (helpers belong in tests/support/)")
    return found


def test_no_test_module_imports_another_test_module_or_another_directorys_helpers() -> None:
    files = _python_files(TESTS)
    assert len(files) > 100  # the walk found the tree
    found = sorted({v for path in files for v in _violations(path)})
    assert not found, "\n".join(found)


def test_nothing_outside_the_tests_imports_them() -> None:
    checked = 0
    for directory in ("bench", "src", "scripts"):
        for path in _python_files(ROOT / directory):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                bad = [n for n in names if n.split(".")[0] == "tests"]
                assert not bad, f"{path.relative_to(ROOT)} imports {', '.join(bad)}"
            checked += 1
    assert checked > 50


def test_the_layout_check_sees_each_kind_of_violation() -> None:
    """The check itself, on planted imports: each kind it must refuse, and what it must allow (PKG stands for
    `tests`, so that this module's own strings are no such imports)."""
    refused = [
        ("integration/coordinator/test_one_host.py", "from PKG.integration.engines.conftest import world"),
        ("integration/coordinator/test_one_host.py", "from PKG.unit.test_errors import ALL"),
        ("integration/coordinator/test_one_host.py", "from PKG.unit.catalog import catalog_worker"),
        ("integration/coordinator/test_one_host.py", "import PKG.unit.catalog.catalog_worker"),
        ("unit/agent/test_jobs.py", "def f():\n    from PKG.unit.agent.conftest import make_agent"),
        ("unit/agent/test_jobs.py", "from .conftest import make_agent"),
        ("unit/writers/test_hook_writer.py", 'CHILD = """\nfrom PKG.unit.writers.test_writer_protocol import X\n"""'),
        ("support/fakes.py", "from PKG.unit.agent.conftest import MakeAgent"),
    ]
    for importer, source in refused:
        assert len(_violations(TESTS / importer, source.replace("PKG", "tests"))) == 1, source
    allowed = [
        ("unit/agent/test_jobs.py", "from PKG.unit.agent.conftest import MakeAgent"),
        ("unit/catalog/test_catalog_crash.py", "from PKG.unit.catalog.catalog_worker import new_set"),
        ("unit/catalog/test_catalog_crash.py", "from PKG.unit.catalog import catalog_worker"),
        ("unit/test_errors.py", "from PKG.conftest import Scratch\nfrom PKG.support import fakes"),
        ("unit/test_errors.py", "from PKG.support.fakes import FakeWriter"),
    ]
    for importer, source in allowed:
        assert _violations(TESTS / importer, source.replace("PKG", "tests")) == [], source
