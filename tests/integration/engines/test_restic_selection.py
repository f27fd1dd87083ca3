"""The restic engine takes exactly what the components' file specs select (walk.select), as the archive does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapport.engines import select_components
from snapport.engines.restic.engine import ResticEngine
from snapport.engines.restic.selection import escape_pattern
from snapport.engines.walk import select
from snapport.model import Component, ComponentType, FileSpec
from tests.support.snapshot_tree import NON_UTF8, VOLUME, documents, make_tree

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(180)]


def test_the_snapshot_holds_the_selection_and_nothing_else(tmp_path: Path) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    for name in ("odd[1].txt", "star*.txt", "cost$HOME.txt", " lead.txt", "#hash.txt", "back\\slash.txt"):
        (snap.root / "logs" / name).write_text(name)
        (snap.root / "db" / name).write_text(name)
    components = (
        Component(ComponentType.FILE_GROUP, "logs", files=(FileSpec(VOLUME, "logs", "*", recursive=True),)),
        Component(ComponentType.DATABASE, "db", database_files=(FileSpec(VOLUME, "db", "app.db*"),)),
        Component(ComponentType.FILE_GROUP, "top", files=(FileSpec(VOLUME, "", "*.txt"),)),
    )
    excludes = (FileSpec(VOLUME, "logs", "*.txt", recursive=True), FileSpec(VOLUME, "", "private"))
    docs = documents(components=components, excludes=excludes)
    chosen = select_components(docs)
    engine = ResticEngine(tmp_path / "repo")
    engine.backup(docs, chosen, snap.map)
    snapshot = engine.snapshot(docs.set_id)
    stored = {str(n["path"]) for n in engine._ls(snapshot) if str(n["path"]).startswith(f"{VOLUME}/")}
    # restic's JSON spells a name that is not UTF-8 with U+FFFD
    selected = {os.fsencode(e.path).decode(errors="replace") for e in select(chosen, snap.map).entries} - {VOLUME}
    assert stored == selected
    assert f"{VOLUME}/db/app.db-wal" in stored and f"{VOLUME}/db/other.txt" not in stored
    assert f"{VOLUME}/logs/x.log" in stored and f"{VOLUME}/logs/odd[1].txt" not in stored
    assert os.fsencode(f"{VOLUME}/{NON_UTF8}").decode(errors="replace") in stored
    assert set(snapshot.paths) == {VOLUME, "/.snapport"}  # the db and logs roots are below the top one

    # `verify` and `backups` recognise a restic repository
    repo = str(tmp_path / "repo")
    checked = snapport_cli("verify", "--repo", repo, "--set", str(docs.set_id)[:8], "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["intact"] is True, checked.stderr
    listed = json.loads(snapport_cli("backups", "--repo", repo, "--json").stdout)["sets"]
    assert [s["set_id"] for s in listed] == [str(docs.set_id)] and listed[0]["originating_host"] == "prod1"
    assert sorted(listed[0]["components"]) == ["db", "logs", "top"]


def snapport_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_exclude_patterns_are_escaped() -> None:
    assert escape_pattern("/a/b[1]*?.txt") == "/a/b\\[1\\]\\*\\?.txt"
    assert escape_pattern("/a/$HOME") == "/a/?HOME"
    assert escape_pattern("/a/x\\y") == "/a/x\\\\y"
