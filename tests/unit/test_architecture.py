"""The layering of DESIGN §2, checked on the source: dependencies point inward, a plugin family is reached
through its protocol and registry, the public surfaces do not drift."""

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
    "lab": {"model", "osal", "providers", "catalog", "engines"},
    "cli": {
        "model", "documents", "catalog", "coordinator", "providers", "writers", "osal", "engines", "agent", "lab",
    },
}  # fmt: skip
# A plugin family's public face: what a module outside it may import. The `array` verbs and the lab drive the
# file-backed array itself, so they may import it.
FACES = {
    "providers": ({"snapport.providers.base", "snapport.providers.registry"}, {"cli/array.py", "cli/rbd.py", "lab/"}),
    "engines": (
        {"snapport.engines", "snapport.engines.base", "snapport.engines.registry", "snapport.engines.process"},
        set(),
    ),
}


def _modules(path: Path) -> set[str]:
    """Every snapport module `path` imports, by its dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("snapport."):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("snapport.")}
    return found


def _imports(path: Path) -> set[str]:
    return {module.split(".")[1] for module in _modules(path)}


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


def test_every_package_is_held_to_a_rule() -> None:
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(ALLOWED), f"a package without a rule: {sorted(packages ^ set(ALLOWED))}"


def test_a_plugin_family_is_reached_through_its_protocol_and_registry() -> None:
    for family, (face, exempt) in FACES.items():
        for path in SRC.rglob("*.py"):
            where = str(path.relative_to(SRC))
            if where.startswith(f"{family}/") or any(where.startswith(e) for e in exempt):
                continue
            inside = {m for m in _modules(path) if m.startswith(f"snapport.{family}")} - face
            assert not inside, f"{where} imports {', '.join(sorted(inside))}: {family}' internals"


def test_the_coordinator_and_the_agent_name_no_provider() -> None:
    """They ask every provider of the registry; a provider named in them would keep a new one from joining."""
    from snapport.providers.registry import PROVIDERS  # noqa: PLC0415

    checked = 0
    for package in ("coordinator", "agent"):
        for path in (SRC / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    named = [name for name in PROVIDERS if name in node.value]
                    assert not named, f"{path.relative_to(SRC)} names provider {named[0]!r}"
            checked += 1
    assert checked > 10


MODEL_SURFACE = {
    "Attr",
    "BackupComponents",
    "BackupSchema",
    "BackupType",
    "Component",
    "ComponentType",
    "Context",
    "EventKind",
    "FINAL_STATES",
    "FileSpec",
    "INITIAL_STATES",
    "JobState",
    "Locator",
    "LunInformation",
    "MAX_VOLUMES_PER_SET",
    "REQUESTER_MODIFIERS",
    "RestoreMethod",
    "RestoreMethodSpec",
    "SelectedComponent",
    "SetOrigin",
    "SetState",
    "Snapshot",
    "SnapshotDescription",
    "SnapshotSet",
    "SnapshotSetDescription",
    "UsageType",
    "Volume",
    "WriterComponents",
    "WriterMetadata",
    "WriterRestore",
    "WriterState",
    "allowed_job_transitions",
    "allowed_transitions",
    "check_job_transition",
    "check_transition",
    "context_attrs",
}


def test_public_surface_is_pinned() -> None:
    assert snapport.__all__ == ["__version__"]
    assert sorted(snapport.model.__all__) == sorted(MODEL_SURFACE), "snapport.model's public names changed"
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
