"""An engine that runs another engine in a child process, so that it can be stopped, and killed when it is stuck.

A thread cannot be killed: an engine stuck in a thread keeps the files it opened on an exposed copy open for the
life of its process, so the copy cannot be unmounted, nor its device detached, and a proxy could never let go of a
set whose lease it lost. A child process can be: the kernel closes its files when it dies.

`ProcessEngine(name, repository, stop=..., grace_s=...)` is an `Engine` like the one it wraps (same name and
capabilities, same contract). Each call starts `python -m snapport.engines.process`, which reads one `Request`
line on stdin and answers in JSON lines on stdout: progress, `map` requests (answered on stdin from the caller's
`PathMapper`, which stays the one authority on where a file is in the copy), then the result or the error. What
crosses the pipe is validated by pydantic at both ends; the documents travel as XML and are read by the hardened
parser. To stop a call, `stop` raises (it is polled) or the progress callback raises: the child gets SIGTERM (the
engine then publishes nothing), its process group SIGKILL after `grace_s`, and the caller's error is raised once
the child is reaped, so its open files are closed when the call returns. With `stall_s`, a backup whose progress
(files, bytes, phase, path lookups) stands still that long is stopped the same way, with `EngineStalled`: a read
of the exposed copy blocked on storage that stopped answering (an OSD down, say) fails the backup instead of
holding it for ever. The child dies with the thread that
started it (PR_SET_PDEATHSIG): call from a thread that waits for the result, as every caller does.
"""

from __future__ import annotations

import os
import selectors
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import BaseModel, ConfigDict, JsonValue, TypeAdapter, ValidationError

from snapport.documents import bcd_to_xml, read_set_documents, wmd_to_xml
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentKey,
    ComponentSource,
    Forgotten,
    PathMapper,
    Progress,
    ProgressCallback,
    RestoreResult,
    SetDocuments,
    SetSummary,
    VerifyReport,
)
from snapport.engines.registry import ENGINES, get_engine
from snapport.errors import (
    DocumentError,
    EngineStalled,
    JobInterrupted,
    SnapportError,
    SystemCommandError,
    UsageError,
)
from snapport.osal.runner import PIPE, Process, Runner, SubprocessRunner

MODULE = "snapport.engines.process"
GRACE_S = 5.0
POLL_S = 0.2
MAX_LINE = 64 << 20

Op = Literal["backup", "verify", "list", "documents", "restore", "forget", "prune"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Request(_Wire):
    """The one line the parent sends first: an operation of `engine` on `repository`, with its arguments."""

    op: Op
    engine: str
    repository: str
    set_id: uuid.UUID | None = None
    bcd: str = ""  # backup: the set's documents, as XML
    writers: tuple[str, ...] = ()
    components: tuple[ComponentKey, ...] | None = None  # backup: which (writer id, component); restore: None = all
    target: str = ""  # restore
    overwrite: bool = False
    set_ids: tuple[uuid.UUID, ...] = ()  # forget


class WireError(_Wire):
    code: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> WireError:
        if isinstance(exc, SnapportError):
            return cls(code=exc.code, message=exc.message)
        return cls(code=SnapportError.code, message=f"{type(exc).__name__}: {exc}")


class ChildLine(_Wire):
    """One line from the child: exactly one of its fields is set."""

    progress: Progress | None = None
    map: str | None = None
    result: JsonValue = None
    error: WireError | None = None


class MapReply(_Wire):
    path: str | None = None
    error: WireError | None = None


class DocumentsXml(_Wire):
    bcd: str
    writers: tuple[str, ...]

    @classmethod
    def of(cls, documents: SetDocuments) -> DocumentsXml:
        return cls(
            bcd=bcd_to_xml(documents.bcd).decode(), writers=tuple(wmd_to_xml(w).decode() for w in documents.writers)
        )

    def read(self, set_id: uuid.UUID | None) -> SetDocuments:
        """The documents, read by the hardened parser; they must describe `set_id` (when given)."""
        bcd, writers = read_set_documents(self.bcd.encode(), (w.encode() for w in self.writers), set_id=set_id)
        return SetDocuments(bcd, writers)


_RESULTS: dict[Op, TypeAdapter[Any]] = {
    "backup": TypeAdapter(BackupResult),
    "verify": TypeAdapter(VerifyReport),
    "list": TypeAdapter(tuple[SetSummary, ...]),
    "documents": TypeAdapter(DocumentsXml),
    "restore": TypeAdapter(RestoreResult),
    "forget": TypeAdapter(Forgotten),
    "prune": TypeAdapter(tuple[str, ...]),
}


def _no_mapping(original: str) -> Path:
    raise DocumentError(f"this operation maps no paths ({original})")


class ProcessEngine:
    """`Engine` `name` on `repository`, every call run in a child process (see the module docstring)."""

    def __init__(
        self,
        name: str,
        repository: Path,
        *,
        stop: Callable[[], None] | None = None,
        grace_s: float = GRACE_S,
        stall_s: float | None = None,
        runner: Runner | None = None,
    ) -> None:
        if name not in ENGINES:
            raise UsageError(f"unknown backup engine {name!r} (known: {', '.join(ENGINES)})")
        self._engine = ENGINES[name]
        self.repository = repository
        self._stop = stop or (lambda: None)
        self._grace_s = grace_s
        self._stall_s = stall_s
        self._runner = runner or SubprocessRunner()

    @property
    def name(self) -> str:
        return self._engine.name

    @property
    def capabilities(self) -> Capabilities:
        return self._engine.capabilities

    def backup(
        self,
        documents: SetDocuments,
        components: Sequence[ComponentSource],
        mapping: PathMapper,
        progress: ProgressCallback | None = None,
    ) -> BackupResult:
        xml = DocumentsXml.of(documents)
        keys = tuple((c.writer_id, c.full_path) for c in components)
        request = self._request("backup", documents.set_id, bcd=xml.bcd, writers=xml.writers, components=keys)
        result: BackupResult = self._call(request, mapping, progress)
        return result

    def verify(self, set_id: uuid.UUID, progress: ProgressCallback | None = None) -> VerifyReport:
        report: VerifyReport = self._call(self._request("verify", set_id), _no_mapping, progress)
        return report

    def list(self) -> tuple[SetSummary, ...]:
        summaries: tuple[SetSummary, ...] = self._call(self._request("list", None), _no_mapping, None)
        return summaries

    def documents(self, set_id: uuid.UUID) -> SetDocuments:
        xml: DocumentsXml = self._call(self._request("documents", set_id), _no_mapping, None)
        return xml.read(set_id)

    def restore(
        self,
        set_id: uuid.UUID,
        target: Path,
        *,
        components: Sequence[ComponentKey] | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        request = self._request(
            "restore",
            set_id,
            target=str(target),
            components=None if components is None else tuple(components),
            overwrite=overwrite,
        )
        result: RestoreResult = self._call(request, _no_mapping, progress)
        return result

    def forget(self, set_ids: Sequence[uuid.UUID]) -> Forgotten:
        forgotten: Forgotten = self._call(self._request("forget", None, set_ids=tuple(set_ids)), _no_mapping, None)
        return forgotten

    def prune_incomplete(self) -> tuple[str, ...]:
        removed: tuple[str, ...] = self._call(self._request("prune", None), _no_mapping, None)
        return removed

    # -- the parent's side --------------------------------------------------------------------------------------

    def _request(self, op: Op, set_id: uuid.UUID | None, **arguments: Any) -> Request:
        return Request(op=op, engine=self.name, repository=str(self.repository), set_id=set_id, **arguments)

    def _call(self, request: Request, mapping: PathMapper, progress: ProgressCallback | None) -> Any:
        # Leaving the `with`, whatever happened: SIGKILL of what is left of its process group, and the reap.
        with self._runner.start([sys.executable, "-m", MODULE], stdin=PIPE, stdout=PIPE, die_with_parent=True) as child:
            stall_s = self._stall_s if request.op == "backup" else None
            talk = _Parent(child, mapping, progress, self._stop, self._grace_s, stall_s=stall_s)
            if talk.converse(request):
                child.wait(self._grace_s)  # it closed its output: it is exiting
            child.stop(0.0)
        if talk.stopping is not None:
            raise talk.stopping
        line = talk.outcome
        if line is None:
            raise SystemCommandError(f"the engine process ended without a result ({_how_it_ended(child.returncode)})")
        if line.error is not None:
            raise SnapportError.from_code(line.error.code, line.error.message)
        return _RESULTS[request.op].validate_python(line.result)


class _Parent:
    """The parent's side of one call, until the child closes its output or must be killed."""

    def __init__(
        self,
        child: Process,
        mapping: PathMapper,
        progress: ProgressCallback | None,
        stop: Callable[[], None],
        grace_s: float,
        *,
        stall_s: float | None,
    ) -> None:
        assert child.stdin is not None and child.stdout is not None
        self.child, self.stdin, self.stdout = child, child.stdin, child.stdout
        self.mapping, self.progress, self.stop, self.grace_s = mapping, progress, stop, grace_s
        self.stall_s = stall_s
        self.stopping: BaseException | None = None  # what the caller raised to stop the call (or the stall)
        self.outcome: ChildLine | None = None
        self.term_deadline: float | None = None
        self.advanced = time.monotonic()  # when the child last got further
        self.last: Progress | None = None

    def converse(self, request: Request) -> bool:
        """True when the child closed its output; False when it must be killed (stopped, and stuck past grace)."""
        _send(self.stdin, request)
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
                    self._receive(ChildLine.model_validate_json(line))

    def _stuck(self) -> bool:
        """Poll `stop`; once it (or the progress callback) raised, SIGTERM the child; True when it has not ended
        within the grace period."""
        if self.stopping is None:
            try:
                self.stop()
            except Exception as exc:
                self.stopping = exc
        if self.stopping is None and self.stall_s is not None and time.monotonic() - self.advanced > self.stall_s:
            self.stopping = EngineStalled(
                f"the backup made no progress for {self.stall_s:g} s (its last: {_said(self.last)}); stopped. Its "
                "reads of the exposed copy may be blocked: is the storage reachable?"
            )
        if self.stopping is None:
            return False
        if self.term_deadline is None:
            self.child.signal(signal.SIGTERM)
            self.term_deadline = time.monotonic() + self.grace_s
        return time.monotonic() > self.term_deadline

    def _receive(self, line: ChildLine) -> None:
        if line.map is not None:
            self.advanced = time.monotonic()
            _send(self.stdin, _mapped(self.mapping, line.map))
        elif line.progress is not None:
            if line.progress != self.last:
                self.advanced, self.last = time.monotonic(), line.progress
            if self.progress is not None and self.stopping is None:
                try:
                    self.progress(line.progress)
                except Exception as exc:
                    self.stopping = exc
        else:
            self.outcome = line


def _said(p: Progress | None) -> str:
    if p is None:
        return "nothing yet"
    return f"{p.phase.value}, {p.files} files, {p.bytes} bytes"


def _mapped(mapping: PathMapper, original: str) -> MapReply:
    try:
        return MapReply(path=str(mapping(original)))
    except SnapportError as exc:
        return MapReply(error=WireError.of(exc))


def _send(stream: IO[bytes], message: BaseModel) -> None:
    try:
        stream.write(message.model_dump_json().encode() + b"\n")
        stream.flush()
    except (BrokenPipeError, ValueError):  # the child is gone (or its stdin closed): its end says why
        pass


def _how_it_ended(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}"


# -- the child ---------------------------------------------------------------------------------------------------


class _Child:
    """The child's side: its own copies of stdin and stdout (fds 0 and 1 are pointed away, so nothing the engine
    or its commands print can break a line)."""

    def __init__(self) -> None:
        self.replies = os.fdopen(os.dup(0), "rb")
        self.out = os.fdopen(os.dup(1), "wb")
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(2, 1)
        self.stopped = threading.Event()
        self.lock = threading.Lock()

    def send(self, line: ChildLine) -> None:
        with self.lock:
            _send(self.out, line)

    def check(self) -> None:
        if self.stopped.is_set():
            raise JobInterrupted("the engine process was stopped; it publishes nothing")

    def progress(self, p: Progress) -> None:
        self.check()
        self.send(ChildLine(progress=p))

    def map(self, original: str) -> Path:
        self.check()
        with self.lock:  # one request, one answer
            _send(self.out, ChildLine(map=original))
            raw = self.replies.readline()
        if not raw:
            raise JobInterrupted("the engine's caller went away while it worked")
        reply = MapReply.model_validate_json(raw)
        if reply.error is not None:
            raise SnapportError.from_code(reply.error.code, reply.error.message)
        assert reply.path is not None
        return Path(reply.path)

    def run(self, request: Request) -> Any:
        engine = get_engine(request.engine, Path(request.repository))
        set_id = request.set_id
        if request.op == "backup":
            documents = DocumentsXml(bcd=request.bcd, writers=request.writers).read(set_id)
            return engine.backup(documents, _sources(documents, request.components or ()), self.map, self.progress)
        if request.op == "list":
            return engine.list()
        if request.op == "forget":
            return engine.forget(request.set_ids)
        if request.op == "prune":
            return engine.prune_incomplete()
        if set_id is None:
            raise UsageError(f"engine operation {request.op} needs a set id")
        if request.op == "verify":
            return engine.verify(set_id, self.progress)
        if request.op == "documents":
            return DocumentsXml.of(engine.documents(set_id))
        return engine.restore(
            set_id,
            Path(request.target),
            components=request.components,
            overwrite=request.overwrite,
            progress=self.progress,
        )


def _sources(documents: SetDocuments, keys: Sequence[ComponentKey]) -> tuple[ComponentSource, ...]:
    """The components named by (writer id, full path), resolved against the writers' documents."""
    by_id = {w.writer_id: w for w in documents.writers}
    sources = []
    for writer_id, full_path in keys:
        wmd = by_id.get(writer_id)
        component = wmd.component(full_path) if wmd is not None else None
        if wmd is None or component is None:
            raise DocumentError(f"writer {writer_id} has no component {full_path!r} in the set's documents")
        sources.append(ComponentSource(writer_id, component, wmd.excludes))
    return tuple(sources)


def main() -> int:
    child = _Child()
    signal.signal(signal.SIGTERM, lambda _sig, _frame: child.stopped.set())
    raw = child.replies.readline()
    if not raw:
        return 1
    try:
        request = Request.model_validate_json(raw)
        result = _RESULTS[request.op].dump_python(child.run(request), mode="json")
    except ValidationError as exc:
        child.send(ChildLine(error=WireError(code=UsageError.code, message=f"invalid engine request: {exc}")))
        return 1
    except Exception as exc:  # reported to the parent, which owns the call's error
        child.send(ChildLine(error=WireError.of(exc)))
        return 1
    child.send(ChildLine(result=result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
