"""A second (third...) process on the same catalog, for the concurrency, race and concurrent-open tests.

Run as `python catalog_worker.py MODE URL ARGS...`. Modes that race wait for a start signal: they print `ready`,
then block until a line arrives on stdin, so the parent can release all workers at the same instant.
Every line a worker prints is flushed at once: the parent reads a printed line as "this was committed".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from snapport.catalog import Catalog
from snapport.errors import BadState
from snapport.model import Attr, Context, Locator, LunInformation, SetState, Snapshot, SnapshotSet, Volume, WriterState


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def wait_for_go() -> None:
    say("ready")
    sys.stdin.readline()


def new_set(snapshots: int, *, description: str = "", host: str = "systemone") -> SnapshotSet:
    set_id = uuid.uuid4()
    now = datetime.now(UTC)
    snaps = tuple(
        Snapshot(
            id=uuid.uuid4(),
            set_id=set_id,
            volume=Volume(host, f"/srv/vol{i}", "xfs", str(uuid.uuid4())),
            locator=Locator("reflink_array", None, LunInformation("array-1", f"lun-{i}", f"SN{i:04d}", 1 << 30)),
            attrs=Attr.TRANSPORTABLE,
            created_at=now,
        )
        for i in range(snapshots)
    )
    return SnapshotSet(
        id=set_id,
        context=Context.BACKUP,
        attrs=Attr.TRANSPORTABLE,
        state=SetState.PREPARING,
        originating_host=host,
        service_host=host,
        created_at=now,
        snapshots=snaps,
        description=description,
    )


def writes(url: str, tag: str, count: int, shared: str) -> None:
    """`count` rounds of: a new set taken to created, a writer event, a writer status, and an attempt to toggle
    the shared set between created and exposed (a read-then-transition that may lose the race)."""
    shared_id = uuid.UUID(shared)
    toggled = refused = 0
    sets = []
    with Catalog.open(url) as catalog:
        wait_for_go()
        for i in range(count):
            s = new_set(2)
            catalog.add_set(s)
            catalog.transition(s.id, SetState.SNAPSHOTTING)
            catalog.transition(s.id, SetState.CREATED)
            catalog.record_writer_event(
                s.id, f"writer-{tag}", "freeze", started_at=datetime.now(UTC), duration_ms=float(i), ok=True
            )
            catalog.upsert_writer_status(
                f"writer-{tag}",
                class_id="sqlite",
                kind="sqlite",
                name=f"writer {tag}",
                instance_name=tag,
                state=WriterState.STABLE,
                last_freeze_ms=float(i),
            )
            sets.append(str(s.id))
            state = catalog.get_set(shared_id).state
            target = SetState.EXPOSED if state is SetState.CREATED else SetState.CREATED
            try:
                catalog.transition(shared_id, target, reason=tag)
                toggled += 1
            except BadState:
                refused += 1
    say(json.dumps({"sets": sets, "toggled": toggled, "refused": refused}))


def race(url: str) -> None:
    """For each request read from stdin, `transition SET_ID STATE` or `complete SET_ID`: try it, and answer
    `won` or `lost` (refused with BadState)."""
    with Catalog.open(url) as catalog:
        say("ready")
        for line in sys.stdin:
            op, set_id, *rest = line.split()
            try:
                if op == "transition":
                    catalog.transition(uuid.UUID(set_id), SetState(rest[0]))
                else:
                    catalog.claim_completion(uuid.UUID(set_id), succeeded=True)
            except BadState:
                say("lost")
            else:
                say("won")


def open_each() -> None:
    """For each catalog URL read from stdin: open it (the first open creates it) and answer `opened BACKEND`."""
    say("ready")
    for line in sys.stdin:
        with Catalog.open(line.strip()) as catalog:
            say(f"opened {catalog.backend}")


# -- the parent's side ---------------------------------------------------------------------------------------------


@contextmanager
def workers(*argvs: tuple[str, ...]) -> Iterator[list[subprocess.Popen[str]]]:
    """Start one worker per argv (MODE, URL, ARGS...); any still running at the end is killed, by its pid."""
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in argvs
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def ready(procs: list[subprocess.Popen[str]]) -> None:
    """Wait until every worker has started (imports done, catalog open where the mode opens one first)."""
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", f"worker not ready: {line!r} {proc.stderr.read() if proc.stderr else ''}"


def ask(procs: list[subprocess.Popen[str]], line: str) -> list[str]:
    """Send `line` to every worker at once, then collect one answer line from each."""
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(line + "\n")
        proc.stdin.flush()
    answers = []
    for proc in procs:
        assert proc.stdout is not None
        answer = proc.stdout.readline()
        assert answer, f"worker died: {proc.stderr.read() if proc.stderr else ''}"
        answers.append(answer.strip())
    return answers


def release(procs: list[subprocess.Popen[str]]) -> None:
    """Wait until every worker is ready, then let them all go at once."""
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", f"worker not ready: {line!r} {proc.stderr.read() if proc.stderr else ''}"
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()


def outputs(procs: list[subprocess.Popen[str]], timeout: float = 60) -> list[str]:
    """Each worker's remaining output, after checking it exited cleanly."""
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"worker failed ({proc.returncode}): {err}"
        results.append(out)
    return results


def main() -> None:
    mode, url, *args = sys.argv[1:]
    if mode == "writes":
        writes(url, args[0], int(args[1]), args[2])
    elif mode == "race":
        race(url)
    elif mode == "open":
        open_each()
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (half a second with SQLAlchemy loaded); the catalog is closed already
