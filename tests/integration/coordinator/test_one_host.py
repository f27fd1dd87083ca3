"""The life of a shadow copy set on one host, through the `snapport` command, on real XFS/ext4 volumes.

A second home (`two`) stands for the backup host: it imports what `one` made transportable.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from snapport.catalog import Catalog, catalog_url
from snapport.coordinator import lifecycle
from snapport.documents import load_documents
from snapport.errors import BadState, ImportRefused, PathEscape
from snapport.model import Attr, LunInformation, SetState
from tests.support.array_world import HOST_ONE, HOST_TWO, ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]

RECORD = 33  # bytes per checksummed record: 12 digits, 20 hex digits of its SHA-256, a newline


def snapport(world: ArrayWorld, host: str, *args: str, check: bool = True) -> dict[str, object]:
    proc = world.cli(host, *args)
    if check:
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))
    return {"rc": proc.returncode, "stderr": proc.stderr}


LOADER = textwrap.dedent(
    """
    import hashlib, os, sqlite3, sys, time
    db, log = sys.argv[1], sys.argv[2]
    con = sqlite3.connect(db, isolation_level=None, timeout=120)
    con.execute("pragma journal_mode=wal")
    con.execute("create table if not exists t(i integer primary key, payload blob)")
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        con.execute("begin")
        con.execute("insert into t values (?, ?)", (i, os.urandom(64)))
        con.execute("commit")
        print(i, time.time(), flush=True)
        os.write(out, (f"{i:012d}" + hashlib.sha256(str(i).encode()).hexdigest()[:20] + "\\n").encode())
    """
)


class Loader:
    """A process committing SQLite transactions and appending checksummed records, without pause."""

    def __init__(self, db: Path, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", LOADER, str(db), str(log)], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "ready"
        self.acks: list[tuple[int, float]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            i, at = line.split()
            self.acks.append((int(i), float(at)))

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while len(self.acks) < count:
            assert time.monotonic() < deadline, "the loader does not make progress"
            time.sleep(0.01)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._reader.join(5)


def _writer_event_times(world: ArrayWorld, set_id: str, kind: str, event: str) -> list[tuple[float, float]]:
    """(start, end) in wall-clock seconds of each `event` the writers of `kind` took for the set."""
    with Catalog.open(catalog_url(world.tmp / "home-one")) as catalog:
        ids = {w.writer_id for w in catalog.list_writers() if w.kind == kind}
        return [
            (e.started_at.timestamp(), e.started_at.timestamp() + e.duration_ms / 1000)
            for e in catalog.writer_events(uuid.UUID(set_id))
            if e.event == event and e.writer_id in ids
        ]


@pytest.mark.parametrize("fs_type", ["xfs", "ext4"])
def test_copy_under_load_is_consistent(world: ArrayWorld, fs_type: str, tmp_path: Path) -> None:
    volume = world.volume("data", fs_type)
    db, log = volume / "app.db", volume / "records.log"
    loader = Loader(db, log)
    try:
        loader.wait_for(200)
        created = snapport(world, HOST_ONE, "create", str(volume), "--writer", f"sqlite:{db}")
        loader.wait_for(len(loader.acks) + 50)  # writes go on after the thaw
    finally:
        loader.stop()
    set_id = str(created["set_id"])
    assert isinstance(created["freeze_window_ms"], float) and created["freeze_window_ms"] > 0
    exposed = snapport(world, HOST_ONE, "expose", set_id)["exposed"]
    assert isinstance(exposed, dict)
    copy = Path(exposed[str(volume)])
    try:
        # Take the database files off the read-only copy, as a backup would, and open them there.
        restored = tmp_path / "restored"
        restored.mkdir()
        for name in ("app.db", "app.db-wal"):
            mapped = snapport(world, HOST_ONE, "map", set_id, str(volume / name))["path"]
            assert str(mapped).startswith(str(copy))
            if Path(str(mapped)).exists():
                shutil.copy2(str(mapped), restored / name)
        records = (copy / "records.log").read_bytes()
    finally:
        snapport(world, HOST_ONE, "unexpose", set_id)
    con = sqlite3.connect(restored / "app.db")
    assert con.execute("pragma integrity_check").fetchone() == ("ok",)
    rows = [r[0] for r in con.execute("select i from t order by i")]
    con.close()
    last = rows[-1]
    assert rows == list(range(1, last + 1)), "a transaction is missing or half on the copy"
    # Every commit acknowledged before the writer froze is on the copy; none acknowledged after the thaw is.
    [(freeze_started, _)] = _writer_event_times(world, set_id, "sqlite", "freeze")
    [(_, thaw_ended)] = _writer_event_times(world, set_id, "sqlite", "thaw")
    acked_before_freeze = [i for i, at in loader.acks if at < freeze_started]
    assert acked_before_freeze and max(acked_before_freeze) <= last
    assert dict(loader.acks)[last] <= thaw_ended
    assert any(i > last for i, _ in loader.acks), "the loader never ran after the snapshot"
    # The record file ends on a whole record, and every record is intact.
    assert len(records) % RECORD == 0
    for n, offset in enumerate(range(0, len(records), RECORD), start=1):
        line = records[offset : offset + RECORD].decode()
        assert int(line[:12]) == n and line[12:32] == hashlib.sha256(str(n).encode()).hexdigest()[:20]
    snapport(world, HOST_ONE, "complete", set_id, "--succeeded")  # auto-release: the session end deletes it
    assert world.leftovers(world.host()) == []


CUT_WRITER = textwrap.dedent(
    """
    import os, sys
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT) for p in sys.argv[1:]]
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        for fd in fds:
            os.pwrite(fd, str(i).rjust(12).encode(), 0)
            os.fsync(fd)
    """
)


def test_three_volumes_are_one_consistent_cut(world: ArrayWorld) -> None:
    volumes = [world.volume(name) for name in ("a", "b", "c")]
    writer = subprocess.Popen(
        [sys.executable, "-c", CUT_WRITER, *(str(v / "counter") for v in volumes)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        created = snapport(world, HOST_ONE, "create", *map(str, volumes), "--context", "app-backup")
    finally:
        writer.kill()
        writer.wait()
    set_id = str(created["set_id"])
    exposed = snapport(world, HOST_ONE, "expose", set_id)["exposed"]
    assert isinstance(exposed, dict) and len(exposed) == 3
    try:
        a, b, c = (int((Path(exposed[str(v)]) / "counter").read_text()) for v in volumes)
    finally:
        snapport(world, HOST_ONE, "unexpose", set_id)
    assert a >= b >= c >= a - 1 and a > 0, (a, b, c)
    # A persistent set outlives the end of its session; only an explicit delete removes it.
    snapport(world, HOST_ONE, "complete", set_id, "--succeeded")
    assert world.snapshot_luns(), "an app-backup set was deleted when its session ended"
    assert snapport(world, HOST_ONE, "delete", set_id)["state"] == "deleted"
    assert world.leftovers(world.host()) == []


def test_transportable_set_is_imported_by_another_host(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data", "ext4")
    (volume / "payload").write_text("before")
    docs = tmp_path / "docs"
    created = snapport(world, HOST_ONE, "create", str(volume), "--transportable", "--out", str(docs))
    (volume / "payload").write_text("after")
    set_id = str(created["set_id"])
    # Transportable: never surfaced on the host that made it.
    refused = snapport(world, HOST_ONE, "expose", set_id, check=False)
    assert refused["rc"] == BadState.exit_code and "not surfaced" in str(refused["stderr"])

    bcd_file = str(docs / "backup-components.xml")
    imported = snapport(world, HOST_TWO, "import", bcd_file)
    assert imported["set_id"] == set_id
    again = snapport(world, HOST_TWO, "import", bcd_file)
    assert again == imported  # re-import returns the set unchanged
    two = world.host(HOST_TWO)
    snapshot_set = two.catalog.get_set(uuid.UUID(set_id))
    assert Attr.IMPORTED in snapshot_set.attrs and snapshot_set.originating_host == HOST_ONE
    exposed = snapport(world, HOST_TWO, "expose", set_id)["exposed"]
    assert isinstance(exposed, dict)
    mapped = Path(str(snapport(world, HOST_TWO, "map", set_id, str(volume / "payload"))["path"]))
    assert mapped.read_text() == "before"
    assert str(mapped).startswith(exposed[str(volume)])
    # A third host cannot import what `two` holds.
    third = snapport(world, "three", "import", bcd_file, check=False)
    assert third["rc"] == ImportRefused.exit_code and "already imported by two" in str(third["stderr"])
    assert world.host("three").catalog.list_sets() == []
    # BackupComplete belongs to the host that made the set.
    assert snapport(world, HOST_TWO, "complete", set_id, "--succeeded", check=False)["rc"] == BadState.exit_code
    assert snapport(world, HOST_TWO, "delete", set_id)["state"] == "deleted"
    snapport(world, HOST_ONE, "complete", set_id, "--succeeded")
    assert world.leftovers(world.host(HOST_ONE), two) == []


def test_import_refuses_a_lun_absent_from_the_array(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data")
    docs = tmp_path / "docs"
    snapport(world, HOST_ONE, "create", str(volume), "--transportable", "--context", "app-backup", "--out", str(docs))
    bcd, _ = load_documents(docs)
    snap = bcd.snapshot_set.snapshots[0]
    assert snap.locator.destination is not None
    ghost = dataclasses.replace(snap.locator.destination, lun_id="0123456789ab", serial="SNP0123456789AB")
    assert isinstance(ghost, LunInformation)
    forged = dataclasses.replace(
        bcd,
        snapshot_set=dataclasses.replace(
            bcd.snapshot_set,
            snapshots=(dataclasses.replace(snap, locator=dataclasses.replace(snap.locator, destination=ghost)),),
        ),
    )
    two = world.host(HOST_TWO)
    with pytest.raises(ImportRefused, match="LUN 0123456789ab"):
        lifecycle.import_snapshot_set(two, forged)
    assert two.catalog.list_sets() == []  # refused before anything was recorded or presented
    snapport(world, HOST_ONE, "delete", str(bcd.set_id))
    assert world.leftovers(world.host(), two) == []


def test_path_mapping_never_leaves_the_exposed_copy(world: ArrayWorld) -> None:
    volume = world.volume("data")
    (volume / "dir").mkdir()
    (volume / "dir" / "file").write_text("x")
    (volume / "escape").symlink_to("/etc")
    host = world.host()
    created = snapport(world, HOST_ONE, "create", str(volume), "--context", "app-backup")
    set_id = uuid.UUID(str(created["set_id"]))
    with pytest.raises(BadState, match="not exposed"):
        lifecycle.map_path(host, set_id, str(volume / "dir" / "file"))
    exposed = lifecycle.expose(host, set_id)
    try:
        root = exposed[str(volume)]
        assert lifecycle.map_path(host, set_id, str(volume / "dir" / "file")) == f"{root}/dir/file"
        assert lifecycle.map_path(host, set_id, str(volume)) == root
        for outside in (f"{volume}/../etc/passwd", "/etc/passwd", f"{volume}/escape/passwd", "relative/path"):
            with pytest.raises(PathEscape):
                lifecycle.map_path(host, set_id, outside)
    finally:
        lifecycle.unexpose(host, set_id)
    assert host.catalog.get_set(set_id).state is SetState.CREATED
    lifecycle.delete(host, set_id)
    lifecycle.delete(host, set_id)  # idempotent
    assert world.leftovers(host) == []


def _wait(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _has_open(pid: int, path: Path) -> bool:
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd) == str(path):
                return True
    return False


def test_break_waits_for_the_set_lock_and_leaves_a_standalone_writable_volume(world: ArrayWorld) -> None:
    volume = world.volume("data", "ext4")
    (volume / "f").write_text("kept")
    host = world.host()
    created = snapport(world, HOST_ONE, "create", str(volume), "--context", "app-rollback")
    set_id = uuid.UUID(str(created["set_id"]))
    lock = lifecycle.set_lock_path(host, set_id)
    go = world.tmp / "go"
    holder = subprocess.Popen(  # another process in the middle of an expose, unexpose or delete of this set
        ["flock", "-x", str(lock), "sh", "-c", f"touch {world.tmp}/held; while [ ! -e {go} ]; do sleep 0.05; done"]
    )
    try:
        _wait((world.tmp / "held").exists, "the holder's lock")
        breaking = subprocess.Popen(
            [sys.executable, "-m", "snapport", "break", str(set_id), "--json"],
            env=world.env(HOST_ONE),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait(lambda: _has_open(breaking.pid, lock), "break to wait on the set's lock")
        time.sleep(0.5)
        assert breaking.poll() is None and host.catalog.get_set(set_id).state is SetState.CREATED
    finally:
        go.touch()
        holder.wait(timeout=30)
    out, err = breaking.communicate(timeout=120)
    assert breaking.returncode == 0, err
    volumes = json.loads(out)["volumes"]
    assert isinstance(volumes, list) and len(volumes) == 1
    device = volumes[0]["device"]
    lun = next(lun.id for lun in world.array.luns() if lun.id not in world.luns.values())
    # A plain volume now: removed as any LUN would be, after its mount (cleanup runs in reverse order).
    world.scratch.defer(lambda: world.array.delete_lun(lun, unpresent_from=HOST_ONE), f"delete broken LUN {lun}")
    target = world.scratch.mount(device, world.tmp / "broken", fs_type="ext4")
    (target / "new").write_text("writable")
    assert (target / "f").read_text() == "kept"
    assert host.catalog.get_set(uuid.UUID(str(created["set_id"]))).state is SetState.BROKEN


def test_import_refuses_a_lun_outside_the_documents_own_set(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data")
    docs_a, docs_b = tmp_path / "a", tmp_path / "b"
    for docs in (docs_a, docs_b):
        snapport(
            world, HOST_ONE, "create", str(volume), "--transportable", "--context", "app-backup", "--out", str(docs)
        )
    bcd_a, _ = load_documents(docs_a)
    bcd_b, _ = load_documents(docs_b)
    # Set A's document, pointing at set B's (real, ready) snapshot LUN: the array's record says whose LUN it is.
    stolen = dataclasses.replace(
        bcd_a,
        snapshot_set=dataclasses.replace(
            bcd_a.snapshot_set,
            snapshots=(
                dataclasses.replace(bcd_a.snapshot_set.snapshots[0], locator=bcd_b.snapshot_set.snapshots[0].locator),
            ),
        ),
    )
    two = world.host(HOST_TWO)
    with pytest.raises(ImportRefused, match="outside its own snapshot set"):
        lifecycle.import_snapshot_set(two, stolen)
    assert two.catalog.list_sets() == []
    for bcd in (bcd_a, bcd_b):
        snapport(world, HOST_ONE, "delete", str(bcd.set_id))
    assert world.leftovers(world.host(), two) == []
