"""Real database servers on volumes that live on array LUNs, driven through the `snapport` command.

`db_world` is the array `world` with its volumes, homes and run directories moved into a `shared_dir` (the servers
run as `postgres` and `mysql`, which cannot enter pytest's private temporary directories). `servers` stops every
server a test started, by pid or pg_ctl, before the volumes are unmounted. The fixtures are registered by importing
them, with `world`, into the conftest of each directory that needs them.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Collection, Iterator
from pathlib import Path

import pytest

from snapport.catalog import Catalog, catalog_url
from snapport.documents import load_documents
from snapport.model import SelectedComponent
from tests.support.array_world import HOST_ONE, ArrayWorld
from tests.support.databases import MariaServer, PgServer, shared_dir, wait_for


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    with shared_dir() as path:
        yield path


@pytest.fixture
def db_world(shared_tmp: Path, world: ArrayWorld) -> ArrayWorld:
    """`world`, with everything it makes under `shared_tmp` (set up first, so removed after the unmounts)."""
    world.tmp = shared_tmp
    return world


@pytest.fixture
def servers(db_world: ArrayWorld) -> Iterator[list[PgServer | MariaServer]]:
    """Servers a test starts; each is stopped at the end, whatever happened (before the volumes go)."""
    started: list[PgServer | MariaServer] = []
    yield started
    for server in reversed(started):
        server.stop()


def snapport(
    world: ArrayWorld, *args: str, check: bool = True, timeout: float = 240, fault: str | None = None
) -> dict[str, object]:
    """Run `snapport ARGS --json` as host `one` (with `SNAPPORT_FAULT=fault`); its JSON, or {"rc", "stderr"} when
    `check` is off."""
    env = world.env(HOST_ONE) | ({"SNAPPORT_FAULT": fault} if fault else {})
    proc = subprocess.run(
        [sys.executable, "-m", "snapport", *args, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))
    return {"rc": proc.returncode, "stderr": proc.stderr}


def component_of(docs: Path, kind_class_id: uuid.UUID) -> SelectedComponent:
    """The one component a writer of this class put in the set's BCD (saved under `docs`)."""
    bcd, _ = load_documents(docs)
    [writer] = [w for w in bcd.writers if w.class_id == kind_class_id]
    [component] = writer.components
    return component


def events_of(world: ArrayWorld, set_id: str, kind: str) -> list[str]:
    """The events the writers of `kind` went through for the set, in order (from the catalog)."""
    with Catalog.open(catalog_url(world.tmp / f"home-{HOST_ONE}")) as catalog:
        ids = {w.writer_id for w in catalog.list_writers() if w.kind == kind}
        return [e.event for e in catalog.writer_events(uuid.UUID(set_id)) if e.writer_id in ids]


def copy_tree(source: Path, target: Path, excluded: Collection[str] = ()) -> None:
    """Copy a directory out of an exposed snapshot, symbolic links as links, leaving out `excluded` names at its
    top level (the writer's exclusions)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        return {n for n in names if n in excluded} if Path(directory) == source else set()

    shutil.copytree(source, target, symlinks=True, ignore=ignore)


def record_freeze_window(record_property: object, world: ArrayWorld, created: dict[str, object], what: str) -> float:
    """Note the freeze window of a `create` in the test report (and on stdout, for `pytest -s`), with how long
    each kind of writer took to freeze (from the catalog's writer events)."""
    window = created["freeze_window_ms"]
    assert isinstance(window, float) and window > 0
    with Catalog.open(catalog_url(world.tmp / f"home-{HOST_ONE}")) as catalog:
        kinds = {w.writer_id: w.kind for w in catalog.list_writers()}
        freezes = [
            f"{kinds[e.writer_id]} {e.duration_ms:.1f} ms"
            for e in catalog.writer_events(uuid.UUID(str(created["set_id"])))
            if e.event == "freeze"
        ]
    if callable(record_property):
        record_property(f"freeze_window_ms[{what}]", round(window, 1))
    print(f"\nfreeze window under load, {what}: {window:.1f} ms; freeze calls: {', '.join(freezes)}")
    return window


def create_under_pgbench(world: ArrayWorld, server: PgServer, *args: str) -> dict[str, object]:
    """`snapport create ARGS` while pgbench runs 4 clients; pgbench is stopped by its pid afterwards."""
    bench = server.pgbench("-c", "4", "-j", "2", "-T", "300", "-n", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        before = server.query("SELECT count(*) FROM pgbench_history")[0][0]
        wait_for(lambda: server.query("SELECT count(*) FROM pgbench_history")[0][0] > before + 200, "pgbench")
        created = snapport(world, "create", *args)
        assert bench.poll() is None, "pgbench stopped before the snapshot was done"
        done = server.query("SELECT count(*) FROM pgbench_history")[0][0]
        wait_for(lambda: server.query("SELECT count(*) FROM pgbench_history")[0][0] > done + 50, "load after thaw")
    finally:
        bench.send_signal(signal.SIGINT)
        try:
            bench.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            bench.kill()
            bench.communicate()
    return created
