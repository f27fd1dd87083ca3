"""The restic engine when its process dies: nothing is published, restic goes too, the repository stays usable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from snapport.engines import select_components
from snapport.engines.restic.engine import ResticEngine
from snapport.errors import UsageError
from snapport.model import Component, ComponentType, FileSpec
from tests.support.snapshot_tree import documents, make_tree

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[3]
CHILD = """
import sys, uuid
from pathlib import Path
from snapport.engines import select_components
from snapport.engines.restic.engine import ResticEngine
from tests.support.snapshot_tree import Snapshot, documents
docs = documents(set_id=uuid.UUID(sys.argv[1]))
ResticEngine(Path(sys.argv[2])).backup(docs, select_components(docs), Snapshot(Path(sys.argv[3])).map)
"""


def restic_processes(set_id: uuid.UUID) -> list[int]:
    """Processes whose command line names the set (restic's tags do)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if f"snapport-set:{set_id}".encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.parametrize("point", ["engine.scan", "engine.backup", "engine.publish"])
def test_a_killed_backup_publishes_nothing_and_can_be_retried(point: str, tmp_path: Path) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=4)
    repo = tmp_path / "repo"
    engine = ResticEngine(repo, read_data_subset="100%")
    first = documents()
    engine.backup(first, select_components(first), snap.map)  # the repository exists and has a parent
    docs = documents()
    child = subprocess.run(
        [sys.executable, "-c", CHILD, str(docs.set_id), str(repo), str(snap.root)],
        env={**os.environ, "SNAPPORT_FAULT": f"{point}:kill"},
        cwd=ROOT,
        capture_output=True,
        timeout=240,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    deadline = time.monotonic() + 10
    while restic_processes(docs.set_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert restic_processes(docs.set_id) == []  # restic died with the process that ran it
    assert [s.set_id for s in engine.list()] == [first.set_id]  # nothing published
    left = [s for s in engine.snapshots() if s.set_id == docs.set_id]
    # killed mid-run: restic wrote no snapshot; killed before publishing: one, still marked incomplete
    assert [s.complete for s in left] == ([False] if point == "engine.publish" else [])
    with pytest.raises(Exception, match="no set"):
        engine.verify(docs.set_id)
    result = engine.backup(docs, select_components(docs), snap.map)  # a retry of the same set is allowed
    assert result.files > 20
    assert engine.verify(docs.set_id).intact  # check takes an exclusive lock: no stale lock stands in its way
    assert engine.verify(first.set_id).intact
    engine.prune_incomplete()
    assert not any(not s.complete for s in engine.snapshots())
    assert {s.set_id for s in engine.list()} == {first.set_id, docs.set_id}


def test_a_volume_on_what_restic_needs_is_refused(tmp_path: Path) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    docs = documents(components=(Component(ComponentType.FILE_GROUP, "etc", files=(FileSpec("/etc", "", "*"),)),))
    engine = ResticEngine(tmp_path / "repo")
    with pytest.raises(UsageError, match="collides"):
        engine.backup(docs, select_components(docs), lambda original: snap.root)
    assert engine.list() == ()
