"""The proxy's engine work (backup, verify) in a child process that can be stopped, and killed when it is stuck.

A thread cannot be killed: an engine stuck in a thread keeps the files it opened on the exposed copy open for the
life of the agent, so the copy cannot be unmounted, nor its loop device detached, nor the LUN released, and the
proxy never lets go of a set whose lease it lost. A child process can be: the kernel closes its files when it
dies. The child (`python -m snapport.agent.engine_process PARENT_PID`) reads one request line on stdin and speaks
JSON lines on stdout: `{"progress": ...}`, `{"map": ORIGINAL}` (answered on stdin by the parent's `map_path`, the
one authority on where a file is in the copy), then `{"result": ...}` or `{"error": {"code", "message"}}`. It
gives up at SIGTERM (the engine publishes nothing) and dies with the agent (PR_SET_PDEATHSIG); the parent sends
SIGTERM when asked to stop, and SIGKILLs the child's process group (its own, made for it) after a grace period.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from snapport.documents import read_document
from snapport.engines import (
    BackupResult,
    ComponentResult,
    PathMapper,
    Phase,
    Problem,
    ProblemKind,
    Progress,
    ProgressCallback,
    SetDocuments,
    VerifyReport,
    get_engine,
    select_components,
)
from snapport.errors import DocumentError, LeaseExpired, SnapportError, SystemCommandError, all_error_classes
from snapport.model import BackupComponents, WriterMetadata

MODULE = "snapport.agent.engine_process"
KILL_WAIT_S = 10.0  # how long a SIGKILLed child may take to be reaped (its files closed) before we stop waiting
POLL_S = 0.2
MAX_LINE = 64 << 20
MAX_DOCUMENT_BYTES = 4 << 20
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True, slots=True)
class EngineRequest:
    """What the child runs: `op` (backup or verify) with `engine` on `repo`, for the set the documents describe."""

    op: str
    engine: str
    repo: str
    set_id: uuid.UUID
    bcd: str = ""  # XML; the child parses it with the hardened parser
    writers: tuple[str, ...] = ()


def error_from(code: str | None, message: str) -> SnapportError:
    """The `SnapportError` class named `code`, carrying `message`."""
    for cls in all_error_classes():
        if cls.code == code:
            return cls(message)
    return SnapportError(f"{code}: {message}" if code else message)


# -- the parent (the proxy's job thread) -------------------------------------------------------------------------


def backup(
    request: EngineRequest, *, mapper: PathMapper, progress: ProgressCallback, check: Callable[[], None], grace_s: float
) -> BackupResult:
    """The engine's backup in a child process (see `run`)."""
    return _backup_from_json(run(request, mapper=mapper, progress=progress, check=check, grace_s=grace_s))


def verify(request: EngineRequest, *, check: Callable[[], None], grace_s: float) -> VerifyReport:
    """The engine's verify in a child process (see `run`)."""
    done = run(request, mapper=_no_mapping, progress=lambda _p: check(), check=check, grace_s=grace_s)
    return _verify_from_json(done)


def run(
    request: EngineRequest,
    *,
    mapper: PathMapper,
    progress: ProgressCallback,
    check: Callable[[], None],
    grace_s: float,
) -> dict[str, Any]:
    """Run `request` in a child process and return its result. `check` (polled, and raising from `progress`)
    stops it: SIGTERM, then SIGKILL of its process group after `grace_s`; the error `check` raised is raised once
    the child is gone, whatever it was doing, so its open files are closed when this returns."""
    child = subprocess.Popen(
        [sys.executable, "-m", MODULE, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # its own process group: a kill reaches what it started, and nothing else
    )
    talk = _Parent(child, mapper, progress, check, grace_s)
    ended = False  # the child closed its output (it is exiting); else it is killed without waiting
    try:
        ended = talk.converse(request)
    finally:
        _end(child, grace_s if ended else 0.0)
    if talk.stopping is not None:
        raise talk.stopping
    outcome = talk.outcome
    if outcome is None:
        raise SystemCommandError(f"the engine process ended without a result ({_how_it_ended(child.returncode)})")
    if "error" in outcome:
        raise error_from(outcome["error"].get("code"), str(outcome["error"].get("message", "")))
    result: dict[str, Any] = outcome["result"]
    return result


class _Parent:
    """The parent's side of the protocol, until the child ends or must be killed."""

    def __init__(
        self,
        child: subprocess.Popen[bytes],
        mapper: PathMapper,
        progress: ProgressCallback,
        check: Callable[[], None],
        grace_s: float,
    ) -> None:
        assert child.stdin is not None and child.stdout is not None
        self.child, self.stdin, self.stdout = child, child.stdin, child.stdout
        self.mapper, self.progress, self.check, self.grace_s = mapper, progress, check, grace_s
        self.stopping: SnapportError | None = None
        self.outcome: dict[str, Any] | None = None
        self.term_deadline: float | None = None

    def converse(self, request: EngineRequest) -> bool:
        """True when the child closed its output; False when it must be killed (stopped, and stuck past grace)."""
        _send(self.stdin, {"request": _request_to_json(request)})
        with selectors.DefaultSelector() as selector:
            selector.register(self.stdout, selectors.EVENT_READ)
            pending = b""
            while True:
                if self._stuck():
                    return False
                if not selector.select(POLL_S):
                    continue
                chunk = os.read(self.stdout.fileno(), 1 << 16)
                if not chunk:
                    return True
                pending += chunk
                if len(pending) > MAX_LINE:
                    raise SystemCommandError("the engine process sent a line longer than the protocol allows")
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._receive(json.loads(line))

    def _stuck(self) -> bool:
        """Poll `check`; once it raised, SIGTERM the child; True when it has not ended within the grace period."""
        if self.stopping is None:
            try:
                self.check()
            except SnapportError as exc:
                self.stopping = exc
        if self.stopping is None:
            return False
        if self.term_deadline is None:
            _signal(self.child, signal.SIGTERM)
            self.term_deadline = time.monotonic() + self.grace_s
        return time.monotonic() > self.term_deadline

    def _receive(self, message: dict[str, Any]) -> None:
        if "map" in message:
            _send(self.stdin, _mapped(self.mapper, str(message["map"])))
        elif "progress" in message:
            try:
                self.progress(_progress_from_json(message["progress"]))
            except SnapportError as exc:
                self.stopping = self.stopping or exc
        elif "result" in message or "error" in message:
            self.outcome = message


def _no_mapping(original: str) -> Path:
    raise DocumentError(f"no path mapping while verifying ({original})")


def _mapped(mapper: PathMapper, original: str) -> dict[str, Any]:
    try:
        return {"path": str(mapper(original))}
    except SnapportError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}


def _send(stream: IO[bytes], message: dict[str, Any]) -> None:
    try:
        stream.write(json.dumps(message).encode() + b"\n")
        stream.flush()
    except (BrokenPipeError, ValueError):  # the child is gone (or its stdin closed): its end says why
        pass


def _signal(child: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """`sig` to the child's process group (its pid: `start_new_session`), only while the child is not reaped."""
    if child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, sig)


def _end(child: subprocess.Popen[bytes], wait_s: float) -> None:
    """Make sure the child is gone and reaped: let it exit by itself for `wait_s`, then SIGKILL its group."""
    if child.stdin is not None:
        with contextlib.suppress(BrokenPipeError):
            child.stdin.close()
    if child.poll() is None and wait_s > 0:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=wait_s)
    _signal(child, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # else in uninterruptible sleep: nothing more to do
        child.wait(timeout=KILL_WAIT_S)
    if child.stdout is not None:
        child.stdout.close()


def _how_it_ended(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


# -- (de)serialisation -------------------------------------------------------------------------------------------


def _request_to_json(request: EngineRequest) -> dict[str, Any]:
    return {**dataclasses.asdict(request), "set_id": str(request.set_id), "writers": list(request.writers)}


def _request_from_json(raw: dict[str, Any]) -> EngineRequest:
    return EngineRequest(
        op=str(raw["op"]),
        engine=str(raw["engine"]),
        repo=str(raw["repo"]),
        set_id=uuid.UUID(str(raw["set_id"])),
        bcd=str(raw.get("bcd", "")),
        writers=tuple(str(w) for w in raw.get("writers", ())),
    )


def _progress_to_json(p: Progress) -> dict[str, Any]:
    return {**dataclasses.asdict(p), "phase": p.phase.value}


def _progress_from_json(raw: dict[str, Any]) -> Progress:
    return Progress(
        Phase(raw["phase"]), int(raw["files"]), int(raw["bytes"]), raw.get("total_files"), raw.get("total_bytes")
    )


def _backup_to_json(result: BackupResult) -> dict[str, Any]:
    raw = dataclasses.asdict(result)
    raw["set_id"] = str(result.set_id)
    raw["components"] = [
        {**dataclasses.asdict(c), "writer_id": str(c.writer_id), "skipped": list(c.skipped)} for c in result.components
    ]
    return raw


def _backup_from_json(raw: dict[str, Any]) -> BackupResult:
    components = tuple(
        ComponentResult(
            writer_id=uuid.UUID(c["writer_id"]),
            component=c["component"],
            files=int(c["files"]),
            bytes=int(c["bytes"]),
            digest=c["digest"],
            skipped=tuple(c.get("skipped", ())),
        )
        for c in raw["components"]
    )
    return BackupResult(
        set_id=uuid.UUID(raw["set_id"]),
        engine=raw["engine"],
        location=raw["location"],
        digest_algorithm=raw["digest_algorithm"],
        components=components,
        files=int(raw["files"]),
        bytes=int(raw["bytes"]),
        stored_bytes=int(raw["stored_bytes"]),
        duration_s=float(raw["duration_s"]),
    )


def _verify_to_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "set_id": str(report.set_id),
        "engine": report.engine,
        "problems": [{"kind": p.kind.value, "path": p.path, "detail": p.detail} for p in report.problems],
        "files": report.files,
        "bytes": report.bytes,
        "duration_s": report.duration_s,
    }


def _verify_from_json(raw: dict[str, Any]) -> VerifyReport:
    return VerifyReport(
        set_id=uuid.UUID(raw["set_id"]),
        engine=raw["engine"],
        problems=tuple(Problem(ProblemKind(p["kind"]), p["path"], p["detail"]) for p in raw["problems"]),
        files=int(raw["files"]),
        bytes=int(raw["bytes"]),
        duration_s=float(raw["duration_s"]),
    )


# -- the child ---------------------------------------------------------------------------------------------------


def _documents(request: EngineRequest) -> SetDocuments:
    bcd = read_document(request.bcd.encode(), max_bytes=MAX_DOCUMENT_BYTES)
    if not isinstance(bcd, BackupComponents) or bcd.snapshot_set.set_id != request.set_id:
        raise DocumentError(f"the documents given for set {request.set_id} do not describe it")
    writers = tuple(read_document(text.encode(), max_bytes=MAX_DOCUMENT_BYTES) for text in request.writers)
    if not all(isinstance(w, WriterMetadata) for w in writers):
        raise DocumentError(f"a writer document of set {request.set_id} is not a writer metadata document")
    return SetDocuments(bcd, tuple(w for w in writers if isinstance(w, WriterMetadata)))


class _Child:
    """The child's side of the protocol: its own copies of stdin and stdout (fds 0 and 1 are pointed away, so
    nothing the engine or its commands print can break a line)."""

    def __init__(self) -> None:
        self.replies = os.fdopen(os.dup(0), "rb")
        self.out = os.fdopen(os.dup(1), "wb")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> None:
        with self.lock:
            self.out.write(json.dumps(message).encode() + b"\n")
            self.out.flush()

    def check(self) -> None:
        if self.stop.is_set():
            raise LeaseExpired("the agent stopped this engine process; the backup publishes nothing")

    def progress(self, p: Progress) -> None:
        self.check()
        self.send({"progress": _progress_to_json(p)})

    def map(self, original: str) -> Path:
        self.check()
        with self.lock:  # one request, one answer
            self.out.write(json.dumps({"map": original}).encode() + b"\n")
            self.out.flush()
            line = self.replies.readline()
        if not line:
            raise LeaseExpired("the agent went away while the engine worked")
        reply = json.loads(line)
        if "error" in reply:
            raise error_from(reply["error"].get("code"), str(reply["error"].get("message", "")))
        return Path(str(reply["path"]))

    def run(self, request: EngineRequest) -> dict[str, Any]:
        engine = get_engine(request.engine, Path(request.repo))
        if request.op == "backup":
            documents = _documents(request)
            return _backup_to_json(engine.backup(documents, select_components(documents), self.map, self.progress))
        if request.op == "verify":
            return _verify_to_json(engine.verify(request.set_id, self.progress))
        raise DocumentError(f"unknown engine operation {request.op!r}")


def _die_with(parent: int) -> None:
    """SIGKILL this process when its parent dies (an agent killed takes its engine along); exit at once if it is
    gone already."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    _die_with(int(args[0]))
    child = _Child()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: child.stop.set())
    line = child.replies.readline()
    if not line:
        return 1
    try:
        result = child.run(_request_from_json(json.loads(line)["request"]))
    except SnapportError as exc:
        child.send({"error": {"code": exc.code, "message": exc.message}})
        return 1
    except Exception as exc:  # reported to the agent, which owns the job's error
        child.send({"error": {"code": "INTERNAL", "message": f"{type(exc).__name__}: {exc}"}})
        return 1
    child.send({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
