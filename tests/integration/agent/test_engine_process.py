"""An engine in a child process (`snapport.engines.process.ProcessEngine`, what a proxy runs), on a real exposed
snapshot: it backs up and verifies as the engine does in-process, and a hung one holding files open on the copy is
stopped, killed, and leaves the copy free to unmount and delete."""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.documents import load_documents
from snapport.engines import ArchiveEngine, Progress, SetDocuments, select_components
from snapport.engines.process import ProcessEngine
from snapport.errors import EngineStalled, LeaseExpired
from tests.support.array_world import HOST_ONE, ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def _snapshot(world: ArrayWorld, volume: Path) -> tuple[uuid.UUID, SetDocuments, Host]:
    """A set of `volume`, exposed on a host, and its documents."""
    created = subprocess.run(
        [sys.executable, "-m", "snapport", "create", str(volume), "--context", "app-backup", "--json"],
        capture_output=True,
        text=True,
        env=world.env(HOST_ONE),
        timeout=180,
        check=False,
    )
    assert created.returncode == 0, created.stderr
    set_id = uuid.UUID(json.loads(created.stdout)["set_id"])
    bcd, wmds = load_documents(Path(json.loads(created.stdout)["documents"]))
    host = world.host()
    lifecycle.expose(host, set_id)
    return set_id, SetDocuments(bcd, tuple(wmds)), host


def _open_under(pid: int, directory: Path) -> list[str]:
    found = []
    for link in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(link)
        except OSError:
            continue
        if target.startswith(f"{directory}/"):
            found.append(target)
    return found


def test_a_backup_in_a_child_process_matches_the_engine_and_verifies(world: ArrayWorld) -> None:
    volume = world.volume("data")
    (volume / "blob").write_bytes(os.urandom(3 << 20))
    (volume / "note").write_text("a note")
    set_id, documents, host = _snapshot(world, volume)
    repo = world.tmp / "repo"
    engine = ProcessEngine("archive", repo)
    seen: list[Progress] = []
    try:
        result = engine.backup(
            documents,
            select_components(documents),
            lambda original: Path(lifecycle.map_path(host, set_id, original)),
            seen.append,
        )
    finally:
        lifecycle.delete(host, set_id)
    assert result.set_id == set_id and result.engine == "archive"
    assert result.files >= 2 and result.bytes >= 3 << 20 and seen
    assert Path(result.location).is_dir()
    report = engine.verify(set_id)
    assert report.intact and report.files == ArchiveEngine(repo).verify(set_id).files
    assert world.leftovers(host) == []


def _hang_after_half(
    world: ArrayWorld, fault_log: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[uuid.UUID, SetDocuments, Host]:
    """An exposed set whose backup hangs half-way, in the engine's child (the fault is in its environment)."""
    volume = world.volume("data")
    (volume / "a-first").write_bytes(os.urandom(8 << 20))  # the engine hangs after this one (half of the bytes)...
    (volume / "b-next").write_bytes(os.urandom(2 << 20))  # ...with this one open by its read-ahead (not small)
    monkeypatch.setenv("SNAPPORT_FAULT", "engine.backup:hang")  # the child inherits it; this process never hits it
    monkeypatch.setenv("SNAPPORT_FAULT_LOG", str(fault_log))
    return _snapshot(world, volume)


def _hung_child(fault_log: Path, running: concurrent.futures.Future[object]) -> int:
    """The pid of the engine's child once it hangs at its fault point."""
    deadline = time.monotonic() + 60
    while not fault_log.exists():
        assert not running.done(), running.exception()
        assert time.monotonic() < deadline, "the engine never reached its fault point"
        time.sleep(0.1)
    point, action, pid = fault_log.read_text().split()
    assert (point, action) == ("engine.backup", "hang") and int(pid) != os.getpid()
    return int(pid)


def _backing_up(
    pool: concurrent.futures.ThreadPoolExecutor,
    engine: ProcessEngine,
    documents: SetDocuments,
    host: Host,
    progress: Callable[[Progress], None] | None = None,
) -> concurrent.futures.Future[object]:
    """`engine`'s backup of the exposed set, running on `pool`."""
    set_id = documents.set_id

    def mapping(original: str) -> Path:
        return Path(lifecycle.map_path(host, set_id, original))

    return pool.submit(engine.backup, documents, select_components(documents), mapping, progress)


def _released(world: ArrayWorld, host: Host, set_id: uuid.UUID, repo: Path, pid: int) -> None:
    assert not Path(f"/proc/{pid}").exists()  # killed and reaped
    lifecycle.unexpose(host, set_id)  # nothing holds the copy any more
    lifecycle.delete(host, set_id)
    assert world.leftovers(host) == []
    assert ArchiveEngine(repo).list() == ()  # nothing was published


def test_a_hung_engine_is_killed_and_the_copy_can_be_released(
    world: ArrayWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fault_log = tmp_path / "fault.log"
    set_id, documents, host = _hang_after_half(world, fault_log, monkeypatch)
    repo = world.tmp / "repo"
    stop = threading.Event()

    def check() -> None:
        if stop.is_set():
            raise LeaseExpired("the test took the lease away")

    copy = world.tmp / f"run-{HOST_ONE}" / str(set_id)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = _backing_up(pool, ProcessEngine("archive", repo, stop=check, grace_s=1.0), documents, host)
        try:
            pid = _hung_child(fault_log, running)
            assert _open_under(pid, copy) != []  # it keeps the copy busy: umount would say EBUSY
        finally:
            stop.set()
        with pytest.raises(LeaseExpired, match="took the lease away"):
            running.result(timeout=30)
    _released(world, host, set_id, repo, pid)


def test_a_backup_whose_progress_stands_still_is_stopped_as_stalled(
    world: ArrayWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody stops it: the stall bound alone does, the engine child killed, nothing published."""
    fault_log = tmp_path / "fault.log"
    set_id, documents, host = _hang_after_half(world, fault_log, monkeypatch)
    repo = world.tmp / "repo"
    seen: list[Progress] = []
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        engine = ProcessEngine("archive", repo, grace_s=1.0, stall_s=2.0)
        running = _backing_up(pool, engine, documents, host, seen.append)
        pid = _hung_child(fault_log, running)
        with pytest.raises(EngineStalled, match=r"no progress for 2 s \(its last: backup, "):
            running.result(timeout=60)
    assert time.monotonic() - started >= 2.0 and seen
    _released(world, host, set_id, repo, pid)
