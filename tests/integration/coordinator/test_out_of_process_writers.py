"""Writers in their own processes and hook scripts, through the `snapport` command, on volumes on array LUNs.

The happy paths use the real `snapport writer run`; failures at freeze are injected with a small writer process
that speaks the protocol until then (misbehaving_writer.py). Every process a test starts is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapport.documents import load_documents
from snapport.model import SetState
from tests.support.array_world import HOST_ONE, ArrayWorld
from tests.support.writer_processes import (
    WriterProcess,
    catalog,
    gone,
    set_events,
    started,
    writer_events,
    writer_run,
)

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

MISBEHAVING = Path(__file__).with_name("misbehaving_writer.py")


@dataclass
class Result:
    rc: int
    out: dict[str, object]
    stderr: str


def snapport(world: ArrayWorld, *args: str, check: bool = True, env: Mapping[str, str] | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "snapport", *args, "--json"],
        capture_output=True,
        text=True,
        env=dict(env or world.env(HOST_ONE)),
        timeout=120,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return Result(proc.returncode, out, proc.stderr)


def the_only_set(world: ArrayWorld) -> tuple[str, SetState, str | None]:
    with catalog(world) as c:
        [s] = c.list_sets()
        return str(s.id), s.state, s.failure


def make_db(path: Path) -> Path:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    return path


def db_writable(db: Path, within_s: float = 10.0) -> float:
    """Commit one row, waiting at most `within_s` for the lock; how long it took."""
    started = time.monotonic()
    with contextlib.closing(sqlite3.connect(db, timeout=within_s, isolation_level=None)) as conn:
        conn.execute("INSERT INTO t (v) VALUES ('after')")
    return time.monotonic() - started


def volume_writable(volume: Path) -> None:
    code = (
        f"import os; f = os.open({str(volume / 'probe')!r}, os.O_WRONLY | os.O_CREAT); os.write(f, b'x'); os.fsync(f)"
    )
    subprocess.run([sys.executable, "-c", code], timeout=10, check=True)


def hook(directory: Path, body: str, name: str = "hook.sh") -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def misbehaving(world: ArrayWorld, mode: str, volume: Path) -> contextlib.AbstractContextManager[WriterProcess]:
    registry = world.tmp / f"home-{HOST_ONE}" / "writers.d"
    return started(world, [sys.executable, str(MISBEHAVING), str(registry), mode, str(volume)])


# -- the happy path ----------------------------------------------------------------------------------------------


def test_an_out_of_process_sqlite_writer_takes_part_in_a_set_and_hears_backup_complete(world: ArrayWorld) -> None:
    volume = world.volume("data")
    db = make_db(volume / "app.db")
    with writer_run(world, "sqlite", {"target": str(db)}) as writer:
        [listed] = snapport(world, "writers").out["writers"]  # type: ignore[misc]
        assert (listed["writer_id"], listed["kind"], listed["state"]) == (writer.writer_id, "sqlite", "stable")
        assert listed["process"]["pid"] == writer.proc.pid

        created = snapport(world, "create", str(volume)).out  # no --writer: it registered itself
        set_id = str(created["set_id"])
        assert writer_events(world, set_id, writer.writer_id) == [
            (event, True)
            for event in ("identify", "prepare-backup", "prepare-snapshot", "freeze", "thaw", "post-snapshot")
        ]
        assert any(f"sqlite ({db})" in m for m in set_events(world, set_id, "writer-discovered"))
        bcd, wmds = load_documents(Path(str(created["documents"])))
        [remote] = [w for w in bcd.writers if str(w.writer_id) == writer.writer_id]
        assert [c.name for c in remote.components] == [str(db)] and remote.excluded is None
        assert [c.backup_metadata for c in remote.components] == ["journal-mode=wal"]
        [wmd] = [w for w in wmds if str(w.writer_id) == writer.writer_id]  # its metadata document is saved
        assert wmd.components[0].database_files[0].volume == str(volume)

        rows = {w["writer_id"]: w for w in snapport(world, "writers").out["writers"]}  # type: ignore[union-attr]
        assert rows[writer.writer_id]["state"] == "waiting-for-backup-complete"
        assert 0 < rows[writer.writer_id]["last_freeze_ms"] < 10_000

        snapport(world, "complete", set_id, "--succeeded")  # another process: it reaches the writer again
        assert writer_events(world, set_id, writer.writer_id)[-2:] == [
            ("backup-complete", True),
            ("backup-shutdown", True),
        ]
        assert db_writable(db) < 2
        assert writer.proc.poll() is None
    assert world.leftovers(world.host()) == []


# -- failures at freeze ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "rc", "code", "message"),
    [
        ("hang", 13, "FREEZE_TIMEOUT", "did not answer freeze within"),
        ("crash", 12, "WRITER_ERROR", "writer process died during freeze"),
        ("garbage", 12, "WRITER_ERROR", "protocol error: a line that is not JSON"),
    ],
)
def test_a_writer_process_failing_at_freeze_aborts_the_set_and_leaves_nothing_frozen(
    world: ArrayWorld, mode: str, rc: int, code: str, message: str
) -> None:
    volume = world.volume("data")
    db = make_db(volume / "app.db")
    with misbehaving(world, mode, volume) as bad:
        started_at = time.monotonic()
        result = snapport(
            world, "create", str(volume), "--writer", f"sqlite:{db}", "--freeze-timeout", "3", check=False
        )
        assert time.monotonic() - started_at < 30
        assert result.rc == rc, result.stderr
        error = json.loads(result.stderr)
        assert error["error"] == code and f"writer misbehaving (misbehaving-{mode})" in error["message"]
        assert message in error["message"]
        set_id, state, failure = the_only_set(world)
        assert state is SetState.ABORTED and failure is not None and message in failure
        # The sqlite writer froze beside it; it was thawed, and the application runs on.
        with catalog(world) as c:
            sqlite_id = next(w.writer_id for w in c.list_writers() if w.kind == "sqlite")
        sqlite_events = writer_events(world, set_id, sqlite_id)
        assert ("freeze", True) in sqlite_events and ("thaw", True) in sqlite_events
        assert db_writable(db) < 2
        volume_writable(volume)
        assert (bad.proc.poll() is not None) == (mode == "crash")
        if mode == "crash":  # its socket is left behind: reported, and no obstacle to the next set
            created = snapport(world, "create", str(volume)).out
            assert any(str(bad.socket) in m for m in set_events(world, str(created["set_id"]), "writer-stale"))
            snapport(world, "delete", str(created["set_id"]))
    assert world.leftovers(world.host()) == []


def test_the_writer_process_lets_go_when_its_coordinator_is_killed_while_frozen(world: ArrayWorld) -> None:
    volume = world.volume("data")
    db = make_db(volume / "app.db")
    with writer_run(world, "sqlite", {"target": str(db)}) as writer:
        killed = snapport(
            world, "create", str(volume), check=False, env={**world.env(), "SNAPPORT_FAULT": "provider.commit:kill"}
        )
        assert killed.rc == -signal.SIGKILL  # killed while every writer was frozen
        assert db_writable(db) < 3  # the writer process saw its connection drop and aborted
        volume_writable(volume)  # and the freeze guard thawed the filesystem
        assert writer.proc.poll() is None
        # The next creation rolls the interrupted set back, and the same writer process takes part again.
        created = snapport(world, "create", str(volume)).out
        assert ("freeze", True) in writer_events(world, str(created["set_id"]), writer.writer_id)
        snapport(world, "delete", str(created["set_id"]))
    assert "the coordinator closed the connection" in writer.log and "before the set was made; aborting" in writer.log
    assert world.leftovers(world.host()) == []


def test_a_writer_that_fails_before_the_freeze_is_left_out_when_the_requester_says_so(
    world: ArrayWorld, tmp_path: Path
) -> None:
    volume = world.volume("data")
    app = volume / "app"
    app.mkdir()
    ran = tmp_path / "ran"
    script = hook(
        tmp_path,
        f'echo "$1" >> {ran}\nif [ "$1" = prepare-snapshot ]; then echo "cannot flush the cache" >&2; exit 1; fi\n',
    )
    with writer_run(world, "hook", {"target": str(script), "paths": str(app)}) as writer:
        refused = snapport(world, "create", str(volume), check=False)
        assert refused.rc == 12 and "cannot flush the cache" in refused.stderr  # the default: abort

        created = snapport(world, "create", str(volume), "--on-writer-failure", "exclude").out
        set_id = str(created["set_id"])
        [excluded] = created["excluded_writers"]  # type: ignore[misc]
        assert excluded["writer_id"] == writer.writer_id and excluded["instance"] == str(script)
        assert "prepare-snapshot exited with status 1: cannot flush the cache" in excluded["reason"]
        bcd, wmds = load_documents(Path(str(created["documents"])))
        [left_out] = [w for w in bcd.writers if str(w.writer_id) == writer.writer_id]
        assert left_out.components == () and left_out.excluded == excluded["reason"]
        assert all(str(w.writer_id) != writer.writer_id for w in wmds)
        assert any("is left out of the set" in m for m in set_events(world, set_id, "writer-excluded"))

        ran.unlink()
        snapport(world, "complete", set_id, "--succeeded")
        assert not ran.exists()  # no BackupComplete for a writer whose components were left out
        assert writer_events(world, set_id, writer.writer_id)[-2:] == [("prepare-snapshot", False), ("abort", True)]
    assert world.leftovers(world.host()) == []


# -- hook scripts ------------------------------------------------------------------------------------------------


def test_a_hook_script_sees_the_backup_and_its_output_lands_in_the_catalog(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data")
    seen = tmp_path / "seen"
    seen.mkdir()
    script = hook(tmp_path, f'env | grep ^SNAPPORT_ | sort > {seen}/"$1"\necho "hook says $1"\n')
    created = snapport(world, "create", str(volume), "--writer", f"hook:{script}", "--backup-type", "copy").out
    set_id = str(created["set_id"])
    env = dict(line.split("=", 1) for line in (seen / "freeze").read_text().splitlines())
    assert env["SNAPPORT_SET_ID"] == set_id and env["SNAPPORT_VOLUMES"] == str(volume)
    assert (env["SNAPPORT_EVENT"], env["SNAPPORT_CONTEXT"], env["SNAPPORT_BACKUP_TYPE"]) == ("freeze", "backup", "copy")
    outputs = [json.loads(m) for m in set_events(world, set_id, "hook-output")]
    assert [o["event"] for o in outputs] == ["prepare-backup", "prepare-snapshot", "freeze", "thaw", "post-snapshot"]
    assert all(o["exit"] == 0 and o["stdout"] == f"hook says {o['event']}\n" for o in outputs)
    snapport(world, "complete", set_id, "--succeeded")
    assert [json.loads(m)["event"] for m in set_events(world, set_id, "hook-output")][-2:] == [
        "backup-complete",
        "backup-shutdown",
    ]
    assert world.leftovers(world.host()) == []


@pytest.mark.parametrize("mode", ["veto", "hang"])
def test_a_hook_that_vetoes_or_hangs_at_freeze_aborts_the_set(world: ArrayWorld, tmp_path: Path, mode: str) -> None:
    volume = world.volume("data")
    pid_file = tmp_path / "pid"
    freeze = {
        "veto": 'echo "the application is in the middle of a migration" >&2; exit 4',
        "hang": f"sleep 300 & echo $! > {pid_file}; wait",
    }[mode]
    script = hook(tmp_path, f'if [ "$1" = freeze ]; then {freeze}; fi\n')
    started_at = time.monotonic()
    result = snapport(world, "create", str(volume), "--writer", f"hook:{script}", "--freeze-timeout", "2", check=False)
    elapsed = time.monotonic() - started_at
    error = json.loads(result.stderr)
    set_id, state, _failure = the_only_set(world)
    assert state is SetState.ABORTED
    outputs = [json.loads(m) for m in set_events(world, set_id, "hook-output")]
    freeze_run = next(o for o in outputs if o["event"] == "freeze")
    if mode == "veto":
        assert (result.rc, error["error"]) == (12, "WRITER_ERROR")
        assert "freeze exited with status 4: the application is in the middle of a migration" in error["message"]
        assert freeze_run["exit"] == 4
    else:
        assert (result.rc, error["error"]) == (13, "FREEZE_TIMEOUT")
        assert "its process group was killed" in error["message"]
        assert freeze_run["timed_out"] is True and elapsed < 15
        assert gone(int(pid_file.read_text()))
    assert [o["event"] for o in outputs][-2:] == ["abort", "backup-shutdown"]
    volume_writable(volume)
    assert world.leftovers(world.host()) == []


def test_a_writer_process_runs_as_another_user(world: ArrayWorld) -> None:
    volume = world.volume("data")
    shared = Path("/tmp") / f"snapport-test-{uuid.uuid4().hex[:8]}"  # pytest's tmp_path is closed to others
    shared.mkdir(mode=0o755)
    try:
        out = shared / "out"
        out.mkdir()
        out.chmod(0o777)
        script = hook(shared, f'id -u >> {out}/"$1"\n')
        with writer_run(world, "hook", {"target": str(script), "paths": str(volume), "user": "nobody"}) as writer:
            st = writer.socket.stat()
            assert (st.st_uid, st.st_mode & 0o777) == (65534, 0o600)
            [registered] = snapport(world, "writer", "list").out["registered"]  # type: ignore[misc]
            assert (registered["state"], registered["uid"], registered["pid"]) == ("live", 65534, writer.proc.pid)
            created = snapport(world, "create", str(volume)).out
            assert ("freeze", True) in writer_events(world, str(created["set_id"]), writer.writer_id)
            assert (out / "freeze").read_text() == "65534\n"
            snapport(world, "delete", str(created["set_id"]))
    finally:
        shutil.rmtree(shared)
    assert world.leftovers(world.host()) == []
