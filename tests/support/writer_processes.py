"""Writers in their own processes for the tests: `snapport writer run` (or any program that registers as one)
started as host `one`, stopped by its pid and unregistered afterwards; and the events the catalog recorded of them."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from snapport.catalog import Catalog, catalog_url
from snapport.model import EventKind
from tests.support.array_world import HOST_ONE, ArrayWorld

ROOT = Path(__file__).parents[2]  # the repository's root, on the writer processes' PYTHONPATH


def catalog(world: ArrayWorld) -> Catalog:
    return Catalog.open(catalog_url(world.tmp / f"home-{HOST_ONE}"))


def writer_events(world: ArrayWorld, set_id: str, writer_id: str) -> list[tuple[str, bool]]:
    with catalog(world) as c:
        return [(e.event, e.ok) for e in c.writer_events(uuid.UUID(set_id)) if e.writer_id == writer_id]


def set_events(world: ArrayWorld, set_id: str, kind: str) -> list[str]:
    with catalog(world) as c:
        return [e.message for e in c.events(uuid.UUID(set_id), kind=EventKind(kind))]


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def gone(pid: int, within_s: float = 2.0) -> bool:
    """Whether `pid` ends within `within_s` (a SIGKILL is delivered when the process next runs)."""
    end = time.monotonic() + within_s
    while running(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


@dataclass
class WriterProcess:
    proc: subprocess.Popen[str]
    socket: Path
    writer_id: str
    log: str = ""  # its stderr, once it has stopped


@contextlib.contextmanager
def started(world: ArrayWorld, argv: list[str]) -> Iterator[WriterProcess]:
    """A writer process, ready once it printed its registration; stopped (by pid) and unregistered afterwards."""
    env = {**world.env(HOST_ONE), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    socket_path: Path | None = None
    writer: WriterProcess | None = None
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, f"the writer process did not start: {proc.stderr.read() if proc.stderr else ''}"
        ready = json.loads(line)
        socket_path = Path(ready["socket"])
        writer = WriterProcess(proc, socket_path, ready["writer_id"])
        yield writer
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if writer is not None and proc.stderr is not None:
            writer.log = proc.stderr.read()
        if socket_path is not None:
            socket_path.unlink(missing_ok=True)  # left behind by a killed writer, or by one running as another user
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def writer_run(
    world: ArrayWorld, kind: str, config: Mapping[str, str]
) -> contextlib.AbstractContextManager[WriterProcess]:
    path = world.tmp / f"{kind}-{uuid.uuid4().hex[:6]}.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in config.items()))
    return started(world, [sys.executable, "-m", "snapport", "writer", "run", kind, "--config", str(path), "--json"])
