"""The README's main job: `snapport demo --json` builds its own lab, backs the live sample application up off-host,
finds the copy consistent, and takes the lab down, leaving nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from snapport.lab import ceph
from tests.support.lab import leftovers
from tests.support.lab_under_test import E2E_MARKS

pytestmark = [*E2E_MARKS, pytest.mark.timeout(900)]


@pytest.mark.parametrize("storage", ["array", "ceph"])
def test_the_demo_reports_a_consistent_copy_and_leaves_nothing(tmp_path: Path, storage: str) -> None:
    if storage == "ceph" and (reason := ceph.unavailable()) is not None:
        pytest.skip(reason)
    lab_dir = tmp_path / "lab"
    repo = tmp_path / "kept-repo"
    run = subprocess.run(
        [sys.executable, "-m", "snapport", "demo", "--json", "--keep-repo", str(repo), "--storage", storage],
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
        env={**os.environ, "SNAPPORT_LAB_DIR": str(lab_dir)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert set(summary) == {
        "set_id", "consistent", "freeze_window_ms", "import_ms", "backup_mib_s", "systemone_cpu_s", "systemtwo_cpu_s",
        "storage",
    }  # fmt: skip
    assert summary["consistent"] is True and summary["storage"] == storage
    assert summary["freeze_window_ms"] > 0 and summary["import_ms"] > 0 and summary["backup_mib_s"] > 0
    assert 0 < summary["systemone_cpu_s"] < summary["systemtwo_cpu_s"]  # the production host pays little
    kept = subprocess.run(
        [sys.executable, "-m", "snapport", "verify", "--repo", str(repo), "--set", summary["set_id"], "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert kept.returncode == 0 and json.loads(kept.stdout)["intact"] is True, kept.stderr
    said = [json.loads(line)["demo"] for line in run.stderr.splitlines() if line.startswith('{"demo"')]
    suffix = next(m.group(1) for line in said if (m := re.search(r"\(namespaces \*-(\w+)\)", line)))
    assert leftovers(lab_dir, suffix, []) == []
