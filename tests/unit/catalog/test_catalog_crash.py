"""A process SIGKILLed in the middle of writing leaves a catalog that is intact, complete and has every commit.

The writer is a forked child (fast to start, so many kills fit in a few seconds); the parent holds no database
connection across the fork.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from snapport.catalog import Catalog
from snapport.model import EventKind
from tests.unit.catalog.catalog_worker import new_set

SNAPSHOTS = 8  # per set, all written in the set's one transaction
ROUNDS = 16


def _write_until_killed(url: str, ack_fd: int) -> NoReturn:
    """The child: each set with all its snapshots and a large description in one transaction, acknowledged on the
    pipe only after its commit returned; large events in between."""
    try:
        with Catalog.open(url) as catalog:
            os.write(ack_fd, b"ready\n")
            i = 0
            while True:
                s = new_set(SNAPSHOTS, description=f"set {i} " + "d" * 16384)
                catalog.add_set(s)
                os.write(ack_fd, f"set {s.id}\n".encode())
                catalog.record_event(s.id, EventKind.HOOK_OUTPUT, f"bulk {i} " + "e" * 32768)
                catalog.record_writer_event(
                    s.id, "w", "freeze", started_at=datetime.now(UTC), duration_ms=1.0, ok=False, error="x" * 8192
                )
                i += 1
    finally:
        os._exit(1)  # never return into pytest


def _check(db: Path, acknowledged: list[str], note: str, *, read_all: bool = False) -> None:
    raw = sqlite3.connect(db)
    try:
        assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)], note
        assert raw.execute("PRAGMA foreign_key_check").fetchall() == [], note
    finally:
        raw.close()
    with Catalog.open(f"sqlite:///{db}") as catalog:
        sets = catalog.list_sets()
        present = {str(s.id) for s in sets}
        # All or nothing: a set is there with every one of its snapshots, or not at all.
        assert all(len(s.snapshots) == SNAPSHOTS for s in sets), note
        assert all(s.description.startswith("set ") for s in sets), note
        # Durable: every set the worker acknowledged (it prints only after the commit returned) is there.
        missing = [a for a in acknowledged if a not in present]
        assert not missing, f"{note}: acknowledged but lost: {missing}"
        if read_all:  # every row of every table still decodes
            assert len(catalog.events()) >= len(sets)
            for s in sets:
                catalog.writer_events(s.id)


def test_sigkill_mid_write_leaves_an_intact_complete_catalog(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    db = tmp_path / "catalog.db"
    url = f"sqlite:///{db}"
    acknowledged: list[str] = []
    kills_after_writes = 0
    for round_ in range(ROUNDS):
        note = f"round {round_}, seed {seed}"
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            _write_until_killed(url, write_fd)
        os.close(write_fd)
        with os.fdopen(read_fd) as acks_pipe:
            try:
                if round_ == 0:
                    # The first round may die anywhere from start-up through the first migration of a fresh file.
                    time.sleep(rng.uniform(0, 0.1))
                    lines = []
                else:
                    assert acks_pipe.readline() == "ready\n", note
                    lines = [acks_pipe.readline() for _ in range(rng.randint(1, 15))]
                    time.sleep(rng.uniform(0, 0.02))  # land anywhere in the write loop
            finally:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
            lines += acks_pipe.read().splitlines()  # acknowledgements written before it died
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, note
        acks = [line.split()[1] for line in lines if line.startswith("set ")]
        kills_after_writes += bool(acks)
        acknowledged += acks
        _check(db, acknowledged, note, read_all=round_ == ROUNDS - 1)
        if acks:
            assert acks[-1] in acknowledged
    assert kills_after_writes >= ROUNDS - 1
