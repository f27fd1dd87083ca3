"""`snapport forget` and `snapport prune` on real repositories of both engines: what a policy keeps is what
remains (and still verifies and restores), a set being read is not removed, an interrupted forget leaves nothing
visible and `prune` removes what it left."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapport.cli.main import main
from snapport.engines import Engine, get_engine, select_components
from snapport.engines.archive.repository import FORGOTTEN_PREFIX, Repository
from snapport.engines.restic.engine import ResticEngine
from snapport.faults import InjectedFault
from tests.support.snapshot_tree import Snapshot, documents, make_tree

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def _engine(name: str, repo: Path) -> Engine:
    return ResticEngine(repo, read_data_subset="100%") if name == "restic" else get_engine(name, repo)


def _back_up(engine: Engine, snap: Snapshot, n: int) -> list[uuid.UUID]:
    """`n` sets, each with data of its own (so forgetting one frees space in restic's repository too)."""
    made = []
    for _ in range(n):
        for old in snap.root.glob("unique-*"):
            old.unlink()
        (snap.root / f"unique-{len(made)}.bin").write_bytes(os.urandom(512 << 10))
        docs = documents()
        engine.backup(docs, select_components(docs), snap.map)
        made.append(docs.set_id)
    return made


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    rc = main([*args, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out else None


@pytest.mark.parametrize("engine_name", ["archive", pytest.param("restic", marks=pytest.mark.slow)])
def test_forget_keeps_what_the_policy_keeps_and_removes_the_rest(
    engine_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    repo = tmp_path / "repo"
    engine = _engine(engine_name, repo)
    oldest, middle, newest = _back_up(engine, snap, 3)
    size_before = sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())

    rc, dry = _cli(capsys, "forget", "--repo", str(repo), "--keep-last", "1", "--dry-run")
    assert rc == 0 and dry["dry_run"] is True
    assert [k["set_id"] for k in dry["kept"]] == [str(newest)] and dry["kept"][0]["reasons"] == ["last 1"]
    assert {r["set_id"] for r in dry["removed"]} == {str(oldest), str(middle)}
    assert {s.set_id for s in engine.list()} == {oldest, middle, newest}  # a dry run removes nothing

    rc, done = _cli(capsys, "forget", "--repo", str(repo), "--keep-daily", "1", "--keep-last", "2")
    assert rc == 0 and done["dry_run"] is False and done["engine"] == engine_name
    kept = {k["set_id"]: k["reasons"] for k in done["kept"]}
    assert kept == {str(newest): ["last 1", f"daily {done['kept'][0]['created'][:10]}"], str(middle): ["last 2"]}
    assert [r["set_id"] for r in done["removed"]] == [str(oldest)]
    assert {s.set_id for s in engine.list()} == {middle, newest}
    assert sum(p.stat().st_size for p in repo.rglob("*") if p.is_file()) < size_before  # the data went too

    # what is left is whole: it verifies and restores
    assert engine.verify(middle).intact
    restored = engine.restore(middle, tmp_path / "out")
    assert restored.files > 0

    # by id; a set that is not there is refused before anything is removed
    assert main(["forget", "--repo", str(repo), "--set", str(uuid.uuid4())]) == 2
    assert {s.set_id for s in engine.list()} == {middle, newest}
    capsys.readouterr()
    rc, named = _cli(capsys, "forget", "--repo", str(repo), "--set", str(middle)[:8])
    assert rc == 0 and [r["set_id"] for r in named["removed"]] == [str(middle)]
    assert {s.set_id for s in engine.list()} == {newest}


def test_forget_only_touches_the_host_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    repo = tmp_path / "repo"
    made = _back_up(_engine("archive", repo), snap, 2)
    rc, done = _cli(capsys, "forget", "--repo", str(repo), "--keep-last", "1", "--host", "web1")
    assert rc == 0 and done["kept"] == [] and done["removed"] == []  # the sets are prod1's
    assert {s.set_id for s in _engine("archive", repo).list()} == set(made)


def test_a_set_being_read_is_not_forgotten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    repo = tmp_path / "repo"
    engine = _engine("archive", repo)
    older, newer = _back_up(engine, snap, 2)
    reading, release = threading.Event(), threading.Event()

    def restore_slowly() -> None:
        with Repository(repo).reading(older):
            reading.set()
            release.wait(60)

    reader = threading.Thread(target=restore_slowly)
    reader.start()
    try:
        assert reading.wait(10)
        rc, done = _cli(capsys, "forget", "--repo", str(repo), "--keep-last", "1")
        assert rc == 6, done  # SET_IN_PROGRESS: some of it is still to do
        assert done["in_use"] == [str(older)] and done["removed"] == []
        assert {k["set_id"]: k["reasons"] for k in done["kept"]}[str(older)] == ["in use"]
    finally:
        release.set()
        reader.join()
    assert engine.verify(older).intact  # untouched
    rc, done = _cli(capsys, "forget", "--repo", str(repo), "--keep-last", "1")
    assert rc == 0 and [r["set_id"] for r in done["removed"]] == [str(older)]
    assert [s.set_id for s in engine.list()] == [newer]


def test_an_interrupted_forget_hides_the_whole_set_and_prune_removes_the_rest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    repo = tmp_path / "repo"
    engine = _engine("archive", repo)
    older, newer = _back_up(engine, snap, 2)
    env = {**os.environ, "SNAPPORT_FAULT": "engine.forget:kill", "SNAPPORT_HOME": str(tmp_path / "home")}
    argv = [sys.executable, "-m", "snapport", "forget", "--repo", str(repo), "--keep-last", "1", "--json"]
    killed = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert killed.returncode == -9, killed.stderr
    (left,) = (repo / "sets").glob(f"{FORGOTTEN_PREFIX}*")
    assert str(older) in left.name
    assert [s.set_id for s in engine.list()] == [newer]  # the forgotten set is gone whole, at once

    rc, pruned = _cli(capsys, "prune", "--repo", str(repo))
    assert rc == 0 and pruned["removed"] == [str(left)]
    assert not left.exists() and sorted(p.name for p in (repo / "sets").iterdir()) == [str(newer)]
    rc, again = _cli(capsys, "prune", "--repo", str(repo))
    assert rc == 0 and again["removed"] == []
    assert engine.verify(newer).intact


@pytest.mark.slow
def test_prune_forgets_an_interrupted_restic_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    repo = tmp_path / "repo"
    engine = ResticEngine(repo)
    (kept,) = _back_up(engine, snap, 1)
    monkeypatch.setenv("SNAPPORT_FAULT", "engine.publish:raise")  # the snapshot is written, never published
    with pytest.raises(InjectedFault):
        _back_up(engine, snap, 1)
    monkeypatch.delenv("SNAPPORT_FAULT")
    assert [s.complete for s in engine.snapshots()] == [True, False]
    rc, pruned = _cli(capsys, "prune", "--repo", str(repo))
    assert rc == 0 and len(pruned["removed"]) == 1
    assert [s.set_id for s in engine.snapshots()] == [kept]
