"""The postgresql writer on real PostgreSQL clusters whose files live on array LUNs, through the `snapport` command.

The restore follows PostgreSQL's documentation: a crash-consistent copy (atomic mode) starts by crash recovery; a
base backup (backup-mode) gets back its `backup_label` and `tablespace_map` from the BCD, a `recovery.signal` and a
`restore_command` reading the WAL archive, because the WAL up to `pg_backup_stop` was written after the snapshot.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from snapport.documents import load_documents
from snapport.errors import BadState, UnsupportedContext, WriterError
from snapport.writers import postgresql
from snapport.writers.postgresql import parse_backup_metadata
from tests.support.array_world import ArrayWorld
from tests.support.database_world import (
    component_of,
    copy_tree,
    create_under_pgbench,
    events_of,
    record_freeze_window,
    snapport,
)
from tests.support.databases import (
    SUMS,
    MariaServer,
    PgServer,
    chown_tree,
    missing_postgresql,
    owned_dir,
    wait_for,
    wal_archiving,
    wal_files,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.postgresql,
    pytest.mark.timeout(300),
    pytest.mark.skipif(missing_postgresql() is not None, reason=f"PostgreSQL: {missing_postgresql()}"),
]

Servers = list[PgServer | MariaServer]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["atomic", "backup-mode"])
def test_a_copy_taken_under_pgbench_load_restores_and_keeps_the_invariant(
    mode: str, db_world: ArrayWorld, servers: Servers, record_property: object
) -> None:
    world, shared = db_world, db_world.tmp
    data_volume = world.volume("pgdata")
    # atomic: the WAL on a second volume (one cut across both); backup-mode: the pgbench tables in a tablespace there
    other_volume = world.volume("pgwal" if mode == "atomic" else "pgspace")
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
    init = server.pgbench(*init_args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert init.wait(120) == 0

    docs = shared / "docs"
    created = create_under_pgbench(
        world, server, str(data_volume), str(other_volume), "--writer", server.spec(mode=mode), "--out", str(docs)
    )
    record_freeze_window(record_property, world, created, f"postgresql {mode}")
    set_id = str(created["set_id"])
    live_history = server.query("SELECT count(*) FROM pgbench_history")[0][0]

    # The documents: the cluster as one database component, its WAL as log files, the lock file excluded.
    _, wmds = load_documents(docs)
    [wmd] = [w for w in wmds if w.class_id == postgresql.CLASS_ID]
    [described] = wmd.components
    assert described.name == str(server.data)
    assert {s.original_path for s in described.database_files} >= {str(server.data)}
    [wal_spec] = described.log_files
    assert wal_spec.original_path == str(other_volume / "wal" if mode == "atomic" else server.data / "pg_wal")
    excluded = {e.pattern for e in wmd.excludes}
    assert "postmaster.pid" in excluded
    metadata = parse_backup_metadata(str(component_of(docs, postgresql.CLASS_ID).backup_metadata))
    assert metadata["mode"] == mode

    restored = owned_dir(shared / "restored", "postgres")
    snapport(world, "expose", set_id)
    try:
        data_copy = Path(str(snapport(world, "map", set_id, str(server.data))["path"]))
        copy_tree(data_copy, restored / "data", excluded)
        if mode == "atomic":
            wal_link = restored / "data" / "pg_wal"
            assert wal_link.is_symlink()  # to the live cluster's WAL: replaced by the copy's
            wal_link.unlink()
            copy_tree(Path(str(snapport(world, "map", set_id, str(other_volume / "wal"))["path"])), wal_link)
        else:
            new_map = []
            for line in str(metadata["tablespace_map"]).splitlines():
                oid, location = line.split(" ", 1)
                copy_tree(Path(str(snapport(world, "map", set_id, location)["path"])), restored / "spaces" / oid)
                new_map.append(f"{oid} {restored / 'spaces' / oid}\n")
            assert new_map, "the tablespace is missing from the tablespace map"
            (restored / "data" / "backup_label").write_text(str(metadata["backup_label"]))
            (restored / "data" / "tablespace_map").write_text("".join(new_map))
    finally:
        snapport(world, "unexpose", set_id)

    copy = PgServer(restored / "data", owned_dir(shared / "restored-sock", "postgres", 0o755))
    settings = {"unix_socket_directories": f"'{copy.socket_dir}'", "archive_mode": "off"}
    if mode == "backup-mode":
        # The WAL from pg_backup_start to pg_backup_stop, whose end record is after the snapshot, is archived.
        stop_file = str(metadata["stop_wal_file"])
        wait_for((archive / stop_file).exists, f"{stop_file} in the archive")
        settings |= {
            "restore_command": f"'cp {archive}/%f %p'",
            "recovery_target": "'immediate'",
            "recovery_target_action": "'promote'",
        }
        (restored / "data" / "recovery.signal").touch()
    copy.configure(settings)
    chown_tree(restored, "postgres")
    (restored / "data").chmod(0o700)
    servers.append(copy)
    copy.start(timeout_s=120)
    # pg_ctl returns once connections are accepted; in backup-mode that is at consistency, before the promotion.
    wait_for(lambda: copy.query("SELECT pg_is_in_recovery()")[0][0] is False, "the end of recovery")
    accounts, tellers, branches, history, count = copy.query(SUMS)[0]
    assert accounts == tellers == branches == history, (accounts, tellers, branches, history)
    assert 200 < count < live_history, "the copy is not a past state taken under load"
    if mode == "backup-mode":
        assert "starting backup recovery" in copy.log.read_text()
        assert copy.query("SELECT spcname FROM pg_tablespace WHERE spcname = 'bench'") == [("bench",)]

    snapport(world, "complete", set_id, "--succeeded")
    assert world.leftovers(world.host()) == []


def test_atomic_mode_is_refused_unless_the_set_holds_the_whole_cluster(db_world: ArrayWorld, servers: Servers) -> None:
    world, shared = db_world, db_world.tmp
    data_volume, wal_volume, space_volume = (world.volume(n) for n in ("pgdata", "pgwal", "pgspace"))
    server = PgServer(data_volume / "data", shared / "sock")
    servers.append(server)
    server.init(waldir=wal_volume / "wal")
    server.start()
    space = owned_dir(space_volume / "space", "postgres")
    server.query(f"CREATE TABLESPACE elsewhere LOCATION '{space}'")
    atomic = server.spec(mode="atomic")

    for volumes, missing in (
        ((data_volume, space_volume), f"WAL (pg_wal) ({wal_volume / 'wal'})"),
        ((data_volume, wal_volume), f"tablespace {server.query(_OID)[0][0]} ({space})"),
    ):
        refused = snapport(world, "create", *map(str, volumes), "--writer", atomic, check=False)
        assert refused["rc"] == UnsupportedContext.exit_code, refused
        assert missing in str(refused["stderr"]) and "atomic mode needs every volume" in str(refused["stderr"])
    assert snapport(world, "list")["sets"] == []  # refused before anything was made, let alone frozen
    assert world.leftovers(world.host()) == []

    # backup-mode needs the WAL archived after the snapshot: refused while the server does not archive it...
    backup_mode = server.spec(mode="backup-mode")
    refused = snapport(world, "create", str(data_volume), str(space_volume), "--writer", backup_mode, check=False)
    assert refused["rc"] == WriterError.exit_code, refused
    assert "does not archive its WAL (archive_mode is off)" in str(refused["stderr"]), refused
    sets = snapport(world, "list")["sets"]
    assert isinstance(sets, list) and [s["state"] for s in sets] == ["aborted"], sets  # before the freeze
    assert world.leftovers(world.host()) == []
    server.stop()
    server.configure(wal_archiving(owned_dir(shared / "archive", "postgres")))
    server.start()
    # ...and then takes it from the archive, so the WAL volume may stay out; the whole cluster is atomic.
    for volumes, spec in (
        ((data_volume, space_volume), backup_mode),
        ((data_volume, wal_volume, space_volume), atomic),
    ):
        created = snapport(world, "create", *map(str, volumes), "--writer", spec)
        snapport(world, "complete", str(created["set_id"]), "--succeeded")
    assert world.leftovers(world.host()) == []


_OID = "SELECT oid FROM pg_tablespace WHERE spcname = 'elsewhere'"


def test_backup_complete_purges_archived_wal_once_for_a_full_backup_and_never_for_a_copy(
    db_world: ArrayWorld, servers: Servers
) -> None:
    world, shared = db_world, db_world.tmp
    data_volume = world.volume("pgdata")
    archive = owned_dir(shared / "archive", "postgres")
    server = PgServer(data_volume / "data", shared / "sock")
    servers.append(server)
    server.init(settings=wal_archiving(archive))
    server.start()
    server.query("CREATE TABLE filler (x int)")

    def switch_wal(times: int) -> None:
        for _ in range(times):
            server.query("INSERT INTO filler VALUES (1)")
            server.query("SELECT pg_switch_wal()")
        target = server.query("SELECT pg_walfile_name(pg_current_wal_lsn())")[0][0]
        wait_for(lambda: bool(wal_files(archive)) and wal_files(archive)[-1][8:] >= target[8:], "archiving")

    spec = server.spec(mode="backup-mode", purge_archive=str(archive))
    switch_wal(3)
    before = wal_files(archive)

    # A copy backup: BackupComplete comes, and leaves the archive alone.
    docs = shared / "copy-docs"
    copy_set = str(snapport(world, "create", str(data_volume), "--writer", spec, "--backup-type", "copy",
                            "--out", str(docs))["set_id"])  # fmt: skip
    switch_wal(2)
    snapport(world, "complete", copy_set, "--succeeded")
    assert events_of(world, copy_set, "postgresql").count("backup-complete") == 1
    assert set(before) <= set(wal_files(archive))

    # A set whose creation failed (the provider commit raised) never reaches BackupComplete; its backup was aborted.
    failed = snapport(world, "create", str(data_volume), "--writer", spec, fault="provider.commit:raise", check=False)
    assert failed["rc"] != 0
    [aborted] = [s for s in snapport(world, "list")["sets"] if s["state"] == "aborted"]  # type: ignore[union-attr]
    refused = snapport(world, "complete", str(aborted["id"]), "--succeeded", check=False)
    assert refused["rc"] == BadState.exit_code
    assert "backup-complete" not in events_of(world, str(aborted["id"]), "postgresql")
    assert server.query(f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{_APP}'") == [(0,)]

    # A backup reported failed: BackupShutdown, no BackupComplete, nothing purged.
    failed_set = str(snapport(world, "create", str(data_volume), "--writer", spec)["set_id"])
    snapport(world, "complete", failed_set, "--failed")
    assert events_of(world, failed_set, "postgresql")[-1:] == ["backup-shutdown"]
    assert "backup-complete" not in events_of(world, failed_set, "postgresql")
    assert set(before) <= set(wal_files(archive))

    # A full backup: once it succeeded, the WAL archived before its start is removed, and only that.
    docs = shared / "full-docs"
    full_set = str(snapport(world, "create", str(data_volume), "--writer", spec, "--out", str(docs))["set_id"])
    oldest = str(parse_backup_metadata(str(component_of(docs, postgresql.CLASS_ID).backup_metadata))["oldest_wal_file"])
    switch_wal(1)
    kept_history = sorted(p.name for p in archive.iterdir() if p.name.endswith(".backup"))
    snapport(world, "complete", full_set, "--succeeded")
    after = wal_files(archive)
    assert after and all(name[8:] >= oldest[8:] for name in after)
    assert oldest in after and not set(before) & set(after)
    assert sorted(p.name for p in archive.iterdir() if p.name.endswith(".backup")) == kept_history
    # ... and only once: a second report is refused, and the writer hears nothing more.
    again = snapport(world, "complete", full_set, "--succeeded", check=False)
    assert again["rc"] == BadState.exit_code and "already" in str(again["stderr"])
    assert events_of(world, full_set, "postgresql").count("backup-complete") == 1
    assert world.leftovers(world.host()) == []


_APP = postgresql.APPLICATION_NAME
