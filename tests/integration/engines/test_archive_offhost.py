"""The archive engine on a real exposed snapshot: a set of an array volume backed up through path mapping."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from blake3 import blake3

from snapport.coordinator import lifecycle
from snapport.documents import load_documents
from snapport.engines import ArchiveEngine, SetDocuments, select_components
from snapport.engines.archive.format import Manifest
from tests.support.array_world import HOST_ONE, ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def snapport(world: ArrayWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args],
        capture_output=True,
        text=True,
        env=world.env(HOST_ONE),
        timeout=180,
        check=False,
    )


def test_a_set_is_backed_up_from_its_exposed_copy_and_verifies(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data")
    (volume / "app" / "deep").mkdir(parents=True)
    (volume / "app" / "blob").write_bytes(os.urandom(3 << 20))
    (volume / "app" / "deep" / "note").write_text("deep")
    (volume / "app" / "empty").write_bytes(b"")
    (volume / "escape").symlink_to("/etc")
    (volume / "payload").write_text("before")
    created = snapport(world, "create", str(volume), "--context", "app-backup", "--json")
    assert created.returncode == 0, created.stderr
    (volume / "payload").write_text("after the snapshot")  # the backup must read the copy, not the volume
    set_id = uuid.UUID(json.loads(created.stdout)["set_id"])
    bcd, wmds = load_documents(Path(json.loads(created.stdout)["documents"]))
    docs = SetDocuments(bcd, tuple(wmds))
    filesystem = [w.writer_id for w in wmds if w.name == "filesystem"]
    components = select_components(docs, writer_ids=filesystem)
    assert [c.full_path for c in components] == [str(volume)]

    host = world.host()
    exposed = lifecycle.expose(host, set_id)[str(volume)]
    engine = ArchiveEngine(tmp_path / "repo")
    try:
        result = engine.backup(docs, components, lambda original: Path(lifecycle.map_path(host, set_id, original)))
    finally:
        lifecycle.unexpose(host, set_id)
    assert result.components[0].files >= 5 and result.bytes >= 3 << 20

    report = engine.verify(set_id)
    assert report.intact, report.problems
    manifest = Manifest.from_bytes((engine.sets_dir / str(set_id) / "manifest.json").read_bytes())
    by_path = {e.path: e for e in manifest.entries}
    assert all(p == str(volume) or p.startswith(f"{volume}/") for p in by_path)  # original paths only
    assert not any(p.startswith(exposed) for p in by_path)
    assert by_path[f"{volume}/payload"].digest == blake3(b"before").hexdigest()
    assert by_path[f"{volume}/escape"].link_target == "/etc"
    assert not any(p.startswith(f"{volume}/escape/") for p in by_path)
    checked = snapport(world, "verify", "--repo", str(tmp_path / "repo"), "--set", str(set_id), "--json")
    assert checked.returncode == 0 and json.loads(checked.stdout)["intact"] is True, checked.stdout

    assert snapport(world, "complete", str(set_id), "--succeeded").returncode == 0
    assert snapport(world, "delete", str(set_id)).returncode == 0
    assert world.leftovers(host) == []
    assert engine.verify(set_id).intact  # the backup outlives the snapshot
