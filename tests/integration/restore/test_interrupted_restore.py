"""A `snapport restore` process SIGKILLed mid-way (fault point `engine.restore-write`: a file part-written under its
temporary name) leaves no half-written file under a final name; a re-run is refused without --overwrite, and with
it completes: every file equal to the original, the temporary file gone (docs/restore.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snapport.engines import ArchiveEngine, SetDocuments
from snapport.engines.archive.restore import TMP_PREFIX
from snapport.errors import TargetNotEmpty
from tests.support.snapshot_tree import VOLUME, Snapshot, documents, whole_volume

pytestmark = pytest.mark.timeout(180)
FIRST = "a-first.bin"  # the first file the archive holds, several chunks long: killed after its first chunk


def _tree(root: Path) -> Snapshot:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / FIRST).write_bytes(os.urandom(3 << 20))
    (root / "b.txt").write_text("small\n")
    (root / "sub" / "c.bin").write_bytes(os.urandom(2 << 20))
    (root / "sub" / "deeper" / "d.txt").write_text("deep\n")
    (root / "sub").chmod(0o750)
    return Snapshot(root)


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under `root` by relative path: (content, mode)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o7777)
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def _restore(repo: Path, docs: SetDocuments, target: Path, tmp: Path, *args: str, fault: str = "") -> int:
    env = {**os.environ, "SNAPPORT_HOME": str(tmp / "home"), "SNAPPORT_FAULT_LOG": str(tmp / "fault.log")}
    env.pop("SNAPPORT_FAULT", None)
    if fault:
        env["SNAPPORT_FAULT"] = fault
    argv = ["restore", "--repo", str(repo), "--set", str(docs.set_id), "--to", str(target), "--json", *args]
    done = subprocess.run(
        [sys.executable, "-m", "snapport", *argv], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    return done.returncode


def test_a_killed_restore_leaves_no_half_written_file_and_a_rerun_with_overwrite_completes(tmp_path: Path) -> None:
    snap = _tree(tmp_path / "snap")
    repo = tmp_path / "repo"
    docs = documents()
    ArchiveEngine(repo).backup(docs, whole_volume(docs), snap.map)
    target = tmp_path / "restored"
    restored = target / VOLUME.lstrip("/")

    killed = _restore(repo, docs, target, tmp_path, fault="engine.restore-write:kill")
    assert killed == -signal.SIGKILL
    assert (tmp_path / "fault.log").read_text().split()[:2] == ["engine.restore-write", "kill"]
    original = _files(snap.root)
    temporaries = list(target.rglob(f"{TMP_PREFIX}*"))
    assert len(temporaries) == 1 and temporaries[0].parent == restored  # the part-written file, and only it
    assert 0 < temporaries[0].stat().st_size < len(original[FIRST][0])
    assert not (restored / FIRST).exists()
    for name, (content, _mode) in _files(target).items():  # whatever has a final name is whole
        if not Path(name).name.startswith(TMP_PREFIX):
            assert content == original[str(Path(name).relative_to(VOLUME.lstrip("/")))][0], name

    assert _restore(repo, docs, target, tmp_path) == TargetNotEmpty.exit_code  # what is there is never replaced
    assert _restore(repo, docs, target, tmp_path, "--overwrite") == 0
    assert _files(restored) == original
    assert not list(target.rglob(f"{TMP_PREFIX}*"))
    assert (restored / "sub").stat().st_mode & 0o7777 == 0o750
