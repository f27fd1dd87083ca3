"""The off-host backup with `--engine restic` across the lab's two hosts: the second backup of the volume finds the
first as its parent, although each set is imported and exposed at its own path on the proxy."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from snapport.engines.restic.engine import ResticEngine
from tests.support.lab_under_test import E2E_MARKS, LabUnderTest, result_of

pytestmark = [*E2E_MARKS, pytest.mark.timeout(600)]


def test_restic_offhost_backups_are_incremental(lab_up: LabUnderTest, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    first = result_of(lab_up.offhost(repo, "--engine", "restic"))
    second = result_of(lab_up.offhost(repo, "--engine", "restic"))
    first_id, second_id = uuid.UUID(first["set_id"]), uuid.UUID(second["set_id"])
    assert first["proxy"] == second["proxy"] == "systemTwo"
    assert lab_up.backup_completes(first_id) == lab_up.backup_completes(second_id) == 1
    assert lab_up.exposed_on_two() == []
    engine = ResticEngine(repo)
    snapshots = {s.set_id: s for s in engine.snapshots()}
    data = str(lab_up.lab.data_mount)
    for set_id in (first_id, second_id):
        assert snapshots[set_id].complete
        assert snapshots[set_id].hostname == "systemOne"  # the production host, not the proxy
        assert set(snapshots[set_id].paths) == {data, "/.snapport"}  # original paths, not the proxy's mounts
    assert snapshots[second_id].parent == snapshots[first_id].id  # found off-host, by host and paths
    assert [s.set_id for s in engine.list()] == [first_id, second_id]
    assert second["location"].startswith(f"{repo}#")
    assert engine.verify(second_id).intact
