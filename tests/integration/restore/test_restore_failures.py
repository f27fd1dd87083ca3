"""`snapport restore` failure paths on a real backed-up set: a writer's veto at pre-restore writes nothing; a
failure at post-restore leaves every file in place and says so (RESTORE_INCOMPLETE); bad choices are refused."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from snapport.coordinator import lifecycle
from snapport.documents import load_documents
from snapport.engines import ArchiveEngine, SetDocuments, select_components
from snapport.errors import ObjectNotFound, RestoreIncomplete, UsageError, WriterError
from tests.support.array_world import HOST_ONE, ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def snapport(world: ArrayWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args, "--json"],
        capture_output=True,
        text=True,
        env=world.env(HOST_ONE),
        timeout=180,
        check=False,
    )


def test_a_veto_writes_nothing_and_a_late_failure_names_what_is_left(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data")
    (volume / "app").mkdir()
    (volume / "app" / "file").write_text("content")
    made = snapport(world, "create", str(volume), "--context", "app-backup", "--out", str(tmp_path / "docs"))
    assert made.returncode == 0, made.stderr
    set_id = uuid.UUID(json.loads(made.stdout)["set_id"])
    bcd, wmds = load_documents(tmp_path / "docs")
    documents = SetDocuments(bcd, tuple(wmds))
    host = world.host()
    lifecycle.expose(host, set_id)
    try:
        ArchiveEngine(tmp_path / "repo").backup(
            documents, select_components(documents), lambda p: Path(lifecycle.map_path(host, set_id, p))
        )
    finally:
        lifecycle.unexpose(host, set_id)
    assert snapport(world, "delete", str(set_id)).returncode == 0

    repo, target = str(tmp_path / "repo"), tmp_path / "restored"
    base = ["restore", "--repo", repo, "--set", str(set_id), "--to", str(target)]

    vetoing = tmp_path / "veto.sh"
    vetoing.write_text('#!/bin/sh\n[ "$1" != pre-restore ] || { echo "the application still runs" >&2; exit 3; }\n')
    vetoing.chmod(0o755)
    veto = snapport(world, *base, "--writer", f"hook:{vetoing}")
    assert veto.returncode == WriterError.exit_code, veto.stderr
    assert "the application still runs" in veto.stderr and "nothing was restored" in veto.stderr
    assert not target.exists()

    late = tmp_path / "late.sh"
    late.write_text('#!/bin/sh\n[ "$1" != post-restore ] || { echo "cannot start it" >&2; exit 4; }\n')
    late.chmod(0o755)
    failed = snapport(world, *base, "--writer", f"hook:{late}")
    assert failed.returncode == RestoreIncomplete.exit_code, failed.stderr
    assert "post-restore failed" in failed.stderr and str(target) in failed.stderr
    assert (target / str(volume).lstrip("/") / "app" / "file").read_text() == "content"

    unknown = snapport(world, *base, "--overwrite", "--component", "/nowhere")
    assert unknown.returncode == UsageError.exit_code and f"filesystem:{volume}" in unknown.stderr
    missing = snapport(world, "restore", "--repo", repo, "--set", str(uuid.uuid4()), "--to", str(tmp_path / "x"))
    assert missing.returncode == ObjectNotFound.exit_code, missing.stderr

    events = [e.kind for e in host.catalog.events(set_id)]
    assert events.count("restore-failed") == 2
    assert world.leftovers(host) == []
