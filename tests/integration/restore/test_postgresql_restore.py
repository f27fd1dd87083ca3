"""The issue's "done when": a PostgreSQL cluster backed up off-host is restored by `snapport restore` into a new
directory and starts, in backup-mode and in atomic mode.

On one machine: `one` (the production home) makes a transportable set under pgbench load; `two` (the backup home)
imports, exposes and backs it up with the archive engine through path mapping, as a proxy does; then a real
`snapport restore` process restores it under a new directory, and the restored cluster is started with pg_ctl.
"""

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
from snapport.errors import TargetNotEmpty, WriterError
from snapport.writers import postgresql
from tests.support.array_world import HOST_ONE, HOST_TWO, ArrayWorld
from tests.support.database_world import create_under_pgbench
from tests.support.databases import SUMS, MariaServer, PgServer, missing_postgresql, owned_dir, wait_for, wal_archiving

pytestmark = [
    pytest.mark.root,
    pytest.mark.postgresql,
    pytest.mark.timeout(420),
    pytest.mark.skipif(missing_postgresql() is not None, reason=f"PostgreSQL: {missing_postgresql()}"),
]
Servers = list[PgServer | MariaServer]


def restore_process(world: ArrayWorld, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapport", "restore", *args, "--json"],
        capture_output=True,
        text=True,
        env=world.env(host),
        timeout=240,
        check=False,
    )


def as_host(world: ArrayWorld, host: str, *args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "snapport", *args, "--json"],
        capture_output=True,
        text=True,
        env=world.env(host),
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return dict(json.loads(proc.stdout))


def back_up_offhost(world: ArrayWorld, docs: Path, repo: Path) -> uuid.UUID:
    """As a proxy: `two` imports the transportable set, exposes it, backs it up into `repo`, and lets it go."""
    set_id = str(as_host(world, HOST_TWO, "import", str(docs / "backup-components.xml"))["set_id"])
    two = world.host(HOST_TWO)
    bcd, wmds = load_documents(docs)
    documents = SetDocuments(bcd, tuple(wmds))
    lifecycle.expose(two, uuid.UUID(set_id))
    try:
        ArchiveEngine(repo).backup(
            documents,
            select_components(documents),
            lambda original: Path(lifecycle.map_path(two, uuid.UUID(set_id), original)),
        )
    finally:
        lifecycle.unexpose(two, uuid.UUID(set_id))
    as_host(world, HOST_TWO, "delete", set_id)
    as_host(world, HOST_ONE, "complete", set_id, "--succeeded")
    return uuid.UUID(set_id)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["atomic", "backup-mode"])
def test_a_cluster_backed_up_offhost_is_restored_by_snapport_restore_and_starts(
    mode: str, db_world: ArrayWorld, servers: Servers
) -> None:
    world, shared = db_world, db_world.tmp
    data_volume = world.volume("pgdata", size_mb=300)
    # atomic: the WAL on a second volume (pg_wal a link there); backup-mode: the pgbench tables in a tablespace there
    other_volume = world.volume("pgwal" if mode == "atomic" else "pgspace", size_mb=300)
    archive = owned_dir(shared / "archive", "postgres")
    server = PgServer(data_volume / "data", shared / "sock")
    servers.append(server)
    server.init(
        waldir=other_volume / "wal" if mode == "atomic" else None,
        settings=wal_archiving(archive) if mode == "backup-mode" else {},
    )
    server.start()
    init_args = ["-i", "-s", "1", "-q"]
    if mode == "backup-mode":
        space = owned_dir(other_volume / "space", "postgres")
        server.query(f"CREATE TABLESPACE bench LOCATION '{space}'")
        init_args += ["--tablespace=bench", "--index-tablespace=bench"]
    assert server.pgbench(*init_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE).wait(120) == 0

    docs = shared / "docs"
    # backup-mode names its WAL archive in the spec: the backup metadata carries it to the restore
    spec = server.spec(mode=mode, **({"wal_archive": str(archive)} if mode == "backup-mode" else {}))
    volumes = (str(data_volume), str(other_volume))
    created = create_under_pgbench(world, server, *volumes, "--transportable", "--writer", spec, "--out", str(docs))
    live_history = server.query("SELECT count(*) FROM pgbench_history")[0][0]
    repo = shared / "repo"
    set_id = back_up_offhost(world, docs, repo)
    assert str(set_id) == created["set_id"]
    if mode == "backup-mode":  # the WAL up to pg_backup_stop's end record, written after the snapshot, is archived
        metadata = postgresql.parse_backup_metadata(
            next(c.backup_metadata for w in load_documents(docs)[0].writers for c in w.components if c.backup_metadata)
            or ""
        )
        stop_file = str(metadata["stop_wal_file"])
        wait_for((archive / stop_file).exists, f"{stop_file} in the archive")

    target = shared / "restored"
    component = f"postgresql:{server.data}"
    done = restore_process(world, HOST_TWO, "--repo", str(repo), "--set", str(set_id), "--to", str(target),
                           "--component", component)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    [told] = result["writers"]
    assert told["kind"] == "postgresql" and [e["event"] for e in told["events"]] == ["pre-restore", "post-restore"]
    progress = [json.loads(line) for line in done.stderr.splitlines()]
    assert [p["phase"] for p in progress if p["phase"] != "restore"] == ["pre-restore", "post-restore"]
    assert any(p["phase"] == "restore" and p.get("bytes", 0) > 0 for p in progress)

    restored = target / str(server.data).lstrip("/")
    assert not (restored / "postmaster.pid").exists()
    if mode == "atomic":  # the WAL link now leads into the restore, never to the live cluster's WAL
        assert (restored / "pg_wal").resolve() == target / str(other_volume / "wal").lstrip("/")
    else:
        assert (restored / "recovery.signal").exists() and (restored / "backup_label").exists()
        assert str(target) in (restored / "tablespace_map").read_text()
        assert f"cp {archive}/%f" in (restored / "postgresql.auto.conf").read_text()

    # A second restore into the same place is refused, and changes nothing.
    again = restore_process(world, HOST_TWO, "--repo", str(repo), "--set", str(set_id), "--to", str(target))
    assert again.returncode == TargetNotEmpty.exit_code, again.stderr

    copy = PgServer(restored, owned_dir(shared / "restored-sock", "postgres", 0o755))
    copy.configure({"unix_socket_directories": f"'{copy.socket_dir}'"})
    servers.append(copy)
    copy.start(timeout_s=120)
    wait_for(lambda: copy.query("SELECT pg_is_in_recovery()")[0][0] is False, "the end of recovery")
    accounts, tellers, branches, history, count = copy.query(SUMS)[0]
    assert accounts == tellers == branches == history, (accounts, tellers, branches, history)
    assert 200 < count < live_history, "the restore is not the past state taken under load"
    assert copy.query("SELECT count(*) FROM pgbench_accounts")[0][0] == 100000
    if mode == "backup-mode":
        assert "starting backup recovery" in copy.log.read_text()
        [(location,)] = copy.query("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'bench'")
        assert location.startswith(str(target))

    # pre-restore refuses while a live server owns the restored data directory: nothing is written
    live = restore_process(world, HOST_TWO, "--repo", str(repo), "--set", str(set_id), "--to", str(target),
                           "--component", component, "--overwrite")  # fmt: skip
    assert live.returncode == WriterError.exit_code, live.stderr
    assert "runs on" in live.stderr and "nothing was restored" in live.stderr
    assert copy.query("SELECT count(*) FROM pgbench_history")[0][0] == count

    two = world.host(HOST_TWO)
    kinds = [e.kind for e in two.catalog.events(set_id)]
    assert "restore" in kinds and kinds.count("restore-failed") == 1
    assert world.leftovers(world.host(HOST_ONE), two) == []
