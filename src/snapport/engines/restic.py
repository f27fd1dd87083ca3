"""The restic engine: one restic snapshot per set, taken at the ORIGINAL paths under the production host's name, so
the next backup of the same volumes finds its parent and reads only what changed. See docs/engines.md.

restic runs in a private mount namespace (`restic_view`): the exposed copies are bind-mounted read-only at their
original mount points, the set's documents at `/.snapport`, the repository at a fixed path. Nothing it mounts can
outlive it. A snapshot is tagged `snapport`, `snapport-set:<uuid>`, `snapport-component:<writer-id>/<component>`
(percent-encoded) and totals; it is written with `snapport-incomplete` and published by removing that tag, so an
interrupted backup is never listed and may be retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import uuid
from builtins import list as _list
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import quote, unquote

from snapport.documents import BCD_FILE_NAME, WRITERS_DIR_NAME, read_document, save_documents
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentKey,
    ComponentResult,
    ComponentSource,
    PathMapper,
    Phase,
    Problem,
    ProblemKind,
    Progress,
    ProgressCallback,
    RestoreResult,
    SetDocuments,
    SetSummary,
    VerifyReport,
)
from snapport.engines.digest import default_digest_algorithm, new_hasher
from snapport.engines.restic_view import DOCUMENTS_IN_VIEW, REPO_IN_VIEW, RESTORE_IN_VIEW, ViewSpec, collides
from snapport.engines.walk import Entry, EntryType, Selection, path_key, select
from snapport.errors import (
    BadState,
    DocumentError,
    ObjectNotFound,
    SystemCommandError,
    TargetNotEmpty,
    UsageError,
)
from snapport.faults import inject
from snapport.model import BackupComponents, WriterMetadata
from snapport.osal.runner import PIPE, Process, Runner, Stream, SubprocessRunner

ENGINE_NAME = "restic"
RESTIC = "/usr/bin/restic"
TAG = "snapport"
TAG_INCOMPLETE = "snapport-incomplete"
TAG_SET = "snapport-set:"
TAG_COMPONENT = "snapport-component:"
TAG_FILES, TAG_BYTES, TAG_STORED = "snapport-files:", "snapport-bytes:", "snapport-stored:"
SET_FILE = "set.json"
EXCLUDES_FILE = "excludes.txt"
DEFAULT_READ_DATA_SUBSET = "10%"
BACKUP_TIMEOUT_S = 24 * 3600.0
COMMAND_TIMEOUT_S = 3600.0
LOCK_WAIT_S = 1800.0  # exclusive commands (tag, check) wait this long for other backups into the repository
MAX_DOCUMENT_BYTES = 4 << 20
STOP_GRACE_S = 10.0  # how long an interrupted restic may take to remove its lock before it is killed
_STDERR_LINES = 50  # what is kept of restic's stderr, for the error message
_Nodes = list[dict[str, Any]]
# restic runs in a private mount namespace whose init (`restic_view`) builds its view and execs it
_IN_VIEW = ("unshare", "--mount", "--propagation", "private", sys.executable, "-m", "snapport.engines.restic_view")


def key_file_for(repository: Path) -> Path:
    """Where the generated password of `repository` is kept: beside it (not in it), mode 0600."""
    return repository.parent / f".{repository.name}.restic-key"


def _encode_tag(text: str) -> str:
    """A tag value restic keeps whole: restic splits `--tag` on commas."""
    return quote(text, safe="/\\:._-")


@dataclass(frozen=True, slots=True)
class ResticSnapshot:
    id: str
    set_id: uuid.UUID
    hostname: str
    paths: tuple[str, ...]
    time: datetime | None
    tags: tuple[str, ...]
    parent: str | None = None  # the snapshot restic compared with (an incremental backup)

    @property
    def complete(self) -> bool:
        return TAG_INCOMPLETE not in self.tags

    def tag_value(self, prefix: str) -> str | None:
        return next((t.removeprefix(prefix) for t in self.tags if t.startswith(prefix)), None)

    def number(self, prefix: str) -> int:
        value = self.tag_value(prefix)
        return int(value) if value and value.isdigit() else 0


@dataclass(frozen=True, slots=True)
class Completed:
    rc: int
    stdout: str
    stderr: str


def _escape_pattern(path: str) -> str:
    """An exclude pattern matching exactly `path` (restic's filepath.Match syntax). restic trims lines, skips `#`
    lines and expands `$VAR` in exclude files: such characters become `?` (a single-character wildcard)."""
    escaped = "".join("\\" + c if c in "*?[]\\" else ("?" if c in "$\n\r" else c) for c in path)
    if escaped != escaped.strip() or escaped.lstrip().startswith("#"):
        escaped = "".join("?" if c.isspace() else c for c in escaped)
    return escaped


class ResticEngine:
    """The `restic` engine on the restic repository `repository` (initialised by the first backup into it).

    The password: RESTIC_PASSWORD_FILE or RESTIC_PASSWORD if set, else a random key generated beside the
    repository (`key_file_for`), mode 0600. It reaches restic through its environment only, never an argument.
    """

    name = ENGINE_NAME
    capabilities = Capabilities(
        restore=True,
        incremental=True,
        preserves=frozenset({"content", "mode", "owner", "mtime", "symlink", "hardlink", "device", "fifo"}),
        private_mount_namespace=True,
    )

    def __init__(
        self,
        repository: Path,
        *,
        read_data_subset: str = DEFAULT_READ_DATA_SUBSET,
        restic: str = RESTIC,
        timeout_s: float = BACKUP_TIMEOUT_S,
        runner: Runner | None = None,
    ) -> None:
        self.repository = Path(repository).absolute()
        self.read_data_subset = read_data_subset
        self.restic = restic
        self.timeout_s = timeout_s
        self.runner: Runner = runner or SubprocessRunner()
        self.last_summary: dict[str, Any] | None = None  # restic's JSON summary of the last backup

    @staticmethod
    def recognises(directory: Path) -> bool:
        """Whether `directory` is a restic repository (its `config` file and `keys` directory)."""
        return (directory / "config").is_file() and (directory / "keys").is_dir()

    # -- restic -------------------------------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.repository / "config").is_file()

    def _password(self, *, create: bool) -> str:
        if os.environ.get("RESTIC_PASSWORD_FILE"):
            try:
                return Path(os.environ["RESTIC_PASSWORD_FILE"]).read_text().rstrip("\n")
            except OSError as exc:
                raise UsageError(f"RESTIC_PASSWORD_FILE is unreadable: {exc.strerror}") from None
        if os.environ.get("RESTIC_PASSWORD"):
            return os.environ["RESTIC_PASSWORD"]
        key = key_file_for(self.repository)
        if not key.exists() and create:
            key.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
        try:
            return key.read_text().rstrip("\n")
        except OSError:
            raise UsageError(
                f"no password for restic repository {self.repository}: set RESTIC_PASSWORD_FILE or keep {key}"
            ) from None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(RESTIC_PASSWORD=self._password(create=False), LC_ALL="C", RESTIC_PROGRESS_FPS="4")
        return env

    def _argv(self, repo: str, *args: str) -> list[str]:
        return [self.restic, "-r", repo, "--no-cache", *args]

    def _start(self, argv: Sequence[str], stdout: Stream, stderr: IO[bytes]) -> Process:
        """restic (or its view) started in our process group, so that a Ctrl-C reaches it too (it removes its lock
        on SIGINT), and killed by the kernel if the thread that started it dies (a SIGKILLed backup takes its
        restic along before it writes a snapshot)."""
        return self.runner.start(
            argv, stdout=stdout, stderr=stderr, env=self._env(), own_group=False, die_with_parent=True
        )

    def _run(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S, exclusive: bool = False) -> Completed:
        """One restic command on the repository; a stale lock of a dead restic is removed (`restic unlock` removes
        only locks whose process is gone or that are 30 min old) and a live one waited for, up to LOCK_WAIT_S."""
        deadline = time.monotonic() + LOCK_WAIT_S
        attempt = 0
        while True:
            result = self._call(self._argv(str(self.repository), *args), timeout_s)
            if result.rc == 0 or "locked" not in result.stderr or time.monotonic() > deadline:
                return result
            self._call(self._argv(str(self.repository), "unlock"), 60.0)
            attempt += 1
            time.sleep(min(10.0, attempt * (0.5 if exclusive else 1.0)))

    def _call(self, argv: Sequence[str], timeout_s: float) -> Completed:
        """Run restic to its end (its output in temporary files: a listing may be large); one that outlives
        `timeout_s`, or whose caller is interrupted, is stopped (`_stop`)."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = self._start(argv, out, err)
            try:
                rc = proc.wait(timeout_s)
            finally:
                _stop(proc)
            if rc is None:
                raise SystemCommandError(f"restic did not finish within {timeout_s:g} s: {' '.join(argv[-3:])}")
            out.seek(0)
            err.seek(0)
            return Completed(rc, out.read().decode(errors="surrogateescape"), err.read().decode(errors="replace"))

    def _checked(self, *args: str, exclusive: bool = False) -> str:
        result = self._run(*args, exclusive=exclusive)
        if result.rc != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise SystemCommandError(f"`restic {args[0]}` exited {result.rc}: {lines[-1] if lines else 'no output'}")
        return result.stdout

    def _open(self) -> None:
        if not self.exists:
            raise ObjectNotFound(f"no restic repository at {self.repository}")

    def _init(self) -> None:
        if self.exists:
            return
        if self.repository.exists() and (not self.repository.is_dir() or any(self.repository.iterdir())):
            raise UsageError(f"{self.repository} is neither empty nor a restic repository")
        self._password(create=True)
        self._checked("init")

    def snapshots(self, *, set_id: uuid.UUID | None = None) -> tuple[ResticSnapshot, ...]:
        """snapport's snapshots in the repository (complete or not), oldest first."""
        self._open()
        tag = f"{TAG_SET}{set_id}" if set_id else TAG
        found = []
        for raw in json.loads(self._checked("snapshots", "--json", "--tag", tag) or "[]") or []:
            tags = tuple(raw.get("tags") or ())
            set_tag = next((t.removeprefix(TAG_SET) for t in tags if t.startswith(TAG_SET)), None)
            try:
                sid = uuid.UUID(set_tag or "")
            except ValueError:
                continue
            try:
                when: datetime | None = datetime.fromisoformat(str(raw.get("time", "")))
            except ValueError:
                when = None
            paths = tuple(raw.get("paths") or ())
            parent = str(raw["parent"]) if raw.get("parent") else None
            found.append(ResticSnapshot(str(raw["id"]), sid, str(raw.get("hostname", "")), paths, when, tags, parent))
        return tuple(found)

    def snapshot(self, set_id: uuid.UUID) -> ResticSnapshot:
        """The published snapshot of a set."""
        for snap in self.snapshots(set_id=set_id):
            if snap.complete:
                return snap
        raise ObjectNotFound(f"no set {set_id} in restic repository {self.repository}")

    # -- list and documents -------------------------------------------------------------------------------------

    def list(self) -> tuple[SetSummary, ...]:
        """The published sets, oldest first."""
        return tuple(
            SetSummary(
                set_id=s.set_id,
                originating_host=s.hostname,
                created=s.time,
                components=tuple(
                    unquote(t.removeprefix(TAG_COMPONENT)).partition("/")[2]
                    for t in s.tags
                    if t.startswith(TAG_COMPONENT)
                ),
                files=s.number(TAG_FILES),
                bytes=s.number(TAG_BYTES),
                stored_bytes=s.number(TAG_STORED),
            )
            for s in self.snapshots()
            if s.complete
        )

    def _dump(self, snap: ResticSnapshot, name: str) -> bytes:
        result = self._run("dump", snap.id, f"{DOCUMENTS_IN_VIEW}/{name}")
        if result.rc != 0:
            raise DocumentError(f"set {snap.set_id}: {name} cannot be read from snapshot {snap.id[:8]}")
        return result.stdout.encode(errors="surrogateescape")

    def _ls(self, snap: ResticSnapshot, *paths: str) -> _Nodes:
        out = self._checked("ls", "--json", "--recursive", snap.id, *paths)
        nodes = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                node = json.loads(line)
                if isinstance(node, dict) and node.get("struct_type") == "node":
                    nodes.append(node)
        return nodes

    def documents(self, set_id: uuid.UUID) -> SetDocuments:
        """The set's BCD and WMDs read back from its snapshot, validated as untrusted input."""
        snap = self.snapshot(set_id)
        bcd = read_document(self._dump(snap, BCD_FILE_NAME), max_bytes=MAX_DOCUMENT_BYTES)
        if not isinstance(bcd, BackupComponents) or bcd.set_id != set_id:
            raise DocumentError(f"the documents of snapshot {snap.id[:8]} do not describe set {set_id}")
        writers: _list[WriterMetadata] = []
        prefix = f"{DOCUMENTS_IN_VIEW}/{WRITERS_DIR_NAME}/"
        for node in self._ls(snap, f"{DOCUMENTS_IN_VIEW}/{WRITERS_DIR_NAME}"):
            path = str(node.get("path", ""))
            if not path.startswith(prefix) or node.get("type") != "file":
                continue
            name = path.removeprefix(prefix)
            wmd = read_document(self._dump(snap, f"{WRITERS_DIR_NAME}/{name}"), max_bytes=MAX_DOCUMENT_BYTES)
            if not isinstance(wmd, WriterMetadata) or name != f"{wmd.writer_id}.xml":
                raise DocumentError(f"snapshot {snap.id[:8]}: {path} is not the metadata document it is named for")
            writers.append(wmd)
        return SetDocuments(bcd, tuple(writers))

    def _record(self, snap: ResticSnapshot) -> dict[str, Any]:
        raw = json.loads(self._dump(snap, SET_FILE))
        if not isinstance(raw, dict) or raw.get("set_id") != str(snap.set_id):
            raise ValueError(f"{SET_FILE} does not describe set {snap.set_id}")
        return raw

    # -- backup -------------------------------------------------------------------------------------------------

    def backup(
        self,
        documents: SetDocuments,
        components: Sequence[ComponentSource],
        mapping: PathMapper,
        progress: ProgressCallback | None = None,
    ) -> BackupResult:
        """One restic snapshot of `components` at their original paths, under the production host's name."""
        started = time.monotonic()
        set_id = documents.set_id
        try:
            self._init()
        except OSError as exc:
            raise SystemCommandError(f"cannot use {self.repository} as a restic repository: {exc}") from exc
        if any(s.complete for s in self.snapshots(set_id=set_id)):
            raise BadState(f"set {set_id} is already in repository {self.repository}; a set is never overwritten")
        host = documents.bcd.originating_host or documents.bcd.snapshot_set.snapshots[0].original_volume.host
        emit = progress or (lambda _p: None)
        emit(Progress(Phase.SCAN, 0, 0))
        inject("engine.scan")
        selection = select(components, mapping)
        volumes = sorted({spec.volume for c in components for spec in c.component.all_files()}, key=path_key)
        for volume in volumes:
            if collides(volume):
                raise UsageError(f"volume {volume} collides with what restic needs in its view; not backed up")
        roots = _roots(selection, components)
        files = sum(1 for e in selection.entries if e.type is not EntryType.DIRECTORY)
        content = sum(e.size for e in selection.entries if e.type is EntryType.FILE)
        listed = sum(e.size for e in selection.entries if e.type in (EntryType.FILE, EntryType.HARDLINK))
        results = _component_results(selection, components)
        with tempfile.TemporaryDirectory(prefix="snapport-restic-") as scratch:
            docs_dir = Path(scratch) / "documents"
            docs_dir.mkdir(mode=0o700)
            save_documents(docs_dir, documents.bcd, documents.writers)
            record = {
                "format": 1,
                "set_id": str(set_id),
                "originating_host": host,
                "files": files,
                "bytes": content,
                "listed_bytes": listed,
                "roots": roots,
                "components": [
                    {
                        "writer_id": str(r.writer_id),
                        "component": r.component,
                        "roots": rs,
                        "files": r.files,
                        "bytes": r.bytes,
                        "digest": r.digest,
                        "skipped": list(r.skipped),
                    }
                    for r, rs in zip(results, _component_roots(components, selection), strict=True)
                ],
            }
            (docs_dir / SET_FILE).write_text(json.dumps(record, indent=1) + "\n")
            (docs_dir / EXCLUDES_FILE).write_bytes(_excludes(selection, roots, mapping))
            tags = [TAG, TAG_INCOMPLETE, f"{TAG_SET}{set_id}", f"{TAG_FILES}{files}", f"{TAG_BYTES}{content}"]
            tags += [_encode_tag(f"{TAG_COMPONENT}{r.writer_id}/{r.component}") for r in results]
            argv = self._argv(REPO_IN_VIEW, "backup", "--json", "--host", host)
            for tag in tags:
                argv += ["--tag", tag]
            argv += ["--exclude-file", f"{DOCUMENTS_IN_VIEW}/{EXCLUDES_FILE}", *roots, DOCUMENTS_IN_VIEW]
            binds = [(str(mapping(v)), v, True) for v in volumes]
            binds += [(str(self.repository), REPO_IN_VIEW, False), (str(docs_dir), DOCUMENTS_IN_VIEW, True)]
            summary = self._backup_in_view(ViewSpec(tuple(binds), tuple(argv)), emit, (files, content))
        self.last_summary = summary
        inject("engine.publish")
        emit(Progress(Phase.PUBLISH, files, content, files, content))
        short = str(summary.get("snapshot_id", ""))
        stored = int(summary.get("data_added", 0))
        self._checked(
            "tag", "--remove", TAG_INCOMPLETE, "--add", f"{TAG_STORED}{stored}", "--tag", f"{TAG_SET}{set_id}", short,
            exclusive=True,
        )  # fmt: skip
        published = self.snapshot(set_id)
        return BackupResult(
            set_id=set_id,
            engine=self.name,
            location=f"{self.repository}#{published.id[:8]}",
            digest_algorithm=default_digest_algorithm(),
            components=results,
            files=files,
            bytes=content,
            stored_bytes=stored,
            duration_s=time.monotonic() - started,
        )

    def _backup_in_view(self, spec: ViewSpec, emit: ProgressCallback, total: tuple[int, int]) -> dict[str, Any]:
        """Run restic backup in its namespace; its JSON status lines become `Progress`; returns its summary."""
        summary: dict[str, Any] | None = None
        errors: _list[str] = []
        injected = False
        expired = threading.Event()
        with tempfile.TemporaryFile() as err:
            proc = self._start([*_IN_VIEW, spec.to_json()], PIPE, err)

            def expire() -> None:
                expired.set()
                proc.signal(signal.SIGKILL)

            timer = threading.Timer(self.timeout_s, expire)  # a hung restic is killed even if it prints nothing
            try:
                timer.start()
                assert proc.stdout is not None
                for line in proc.stdout:
                    try:
                        message = json.loads(line)
                    except ValueError:
                        continue
                    kind = message.get("message_type") if isinstance(message, dict) else None
                    if kind == "status":
                        done = (int(message.get("files_done", 0)), int(message.get("bytes_done", 0)))
                        emit(Progress(Phase.BACKUP, done[0], done[1], total[0], total[1]))
                        if not injected:
                            injected = True
                            inject("engine.backup")  # restic is running (its first report): no snapshot yet
                    elif kind == "summary":
                        summary = message
                    elif kind == "error":
                        errors.append(str(message.get("error", message)))
                proc.wait()
            finally:
                timer.cancel()
                _stop(proc)  # after a failure here (a cancelling progress callback): restic must not run on
            err.seek(0)
            stderr_lines = err.read().decode(errors="replace").splitlines()[-_STDERR_LINES:]
        if expired.is_set():
            raise SystemCommandError(f"restic backup did not finish within {self.timeout_s:g} s")
        if not injected:
            inject("engine.backup")
        if proc.returncode != 0 or summary is None:
            said = (errors or [line.rstrip() for line in stderr_lines] or ["no output"])[-1]
            raise SystemCommandError(f"restic backup exited {proc.returncode}: {said}")
        emit(Progress(Phase.BACKUP, total[0], total[1], total[0], total[1]))
        return summary

    # -- verify -------------------------------------------------------------------------------------------------

    def verify(self, set_id: uuid.UUID, progress: ProgressCallback | None = None) -> VerifyReport:
        """`restic check --read-data-subset` over the repository, then the set itself: its description, its
        documents, and its files (count and sizes) against what the backup recorded."""
        started = time.monotonic()
        snap = self.snapshot(set_id)
        emit = progress or (lambda _p: None)
        emit(Progress(Phase.VERIFY, 0, 0))
        inject("engine.verify")
        problems: _list[Problem] = []
        check = self._run("check", f"--read-data-subset={self.read_data_subset}", exclusive=True)
        if check.rc != 0:
            problems += _check_problems(check)
        files = nbytes = 0
        try:
            record = self._record(snap)
            files, nbytes = int(record["files"]), int(record["bytes"])
        except (ValueError, KeyError, TypeError, DocumentError) as exc:
            problems.append(Problem(ProblemKind.SET_INVALID, f"{DOCUMENTS_IN_VIEW}/{SET_FILE}", str(exc)))
            record = None
        try:
            self.documents(set_id)
        except DocumentError as exc:
            problems.append(Problem(ProblemKind.DOCUMENT_INVALID, None, exc.message))
        if record is not None:
            problems += self._tree_problems(snap, record)
        emit(Progress(Phase.VERIFY, files, nbytes, files, nbytes))
        return VerifyReport(set_id, self.name, tuple(problems), files, nbytes, time.monotonic() - started)

    def _tree_problems(self, snap: ResticSnapshot, record: dict[str, Any]) -> _list[Problem]:
        roots = [str(r) for r in record.get("roots", [])]
        try:
            nodes = self._ls(snap, *roots) if roots else []
        except SystemCommandError as exc:
            return [Problem(ProblemKind.CORRUPT, None, exc.message)]
        below = [n for n in nodes if any(_within(str(n.get("path", "")), r) for r in roots)]
        stored = [n for n in below if n.get("type") != "dir"]
        size = sum(int(n.get("size", 0)) for n in stored if n.get("type") == "file")
        problems = []
        if len(stored) != int(record["files"]):
            problems.append(
                Problem(ProblemKind.MISSING_FILE, None, f"{len(stored)} files, the set had {record['files']}")
            )
        if size != int(record.get("listed_bytes", record["bytes"])):
            problems.append(Problem(ProblemKind.SIZE_MISMATCH, None, f"{size} bytes, the set had {record['bytes']}"))
        return problems

    # -- restore ------------------------------------------------------------------------------------------------

    def restore(
        self,
        set_id: uuid.UUID,
        target: Path,
        *,
        components: Sequence[ComponentKey] | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        """`restic restore` of the chosen components' roots into `target`, restic running in a view where the
        target is the only writable place (the repository is read-only, restic takes no lock)."""
        started = time.monotonic()
        snap = self.snapshot(set_id)
        try:
            record = self._record(snap)
            recorded = {(uuid.UUID(c["writer_id"]), str(c["component"])): [str(r) for r in c["roots"]]
                        for c in record["components"]}  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            raise DocumentError(f"set {set_id}: its description in the repository is unreadable: {exc}") from None
        chosen = list(recorded) if components is None else list(components)
        unknown = [c for c in chosen if c not in recorded]
        if unknown:
            raise ObjectNotFound(f"set {set_id} has no component {unknown[0][1]!r} of writer {unknown[0][0]}")
        roots = sorted({r for c in chosen for r in recorded[c]}, key=path_key)
        target = Path(target).absolute()
        target.mkdir(parents=True, exist_ok=True)
        if any(target.iterdir()) and not overwrite:
            raise TargetNotEmpty(f"{target} is not empty; restore into an empty directory or pass --overwrite")
        emit = progress or (lambda _p: None)
        emit(Progress(Phase.RESTORE, 0, 0))
        inject("engine.restore")
        nodes = [n for n in self._ls(snap, *roots) if any(_within(str(n.get("path", "")), r) for r in roots)]
        stored = [n for n in nodes if n.get("type") != "dir"]
        size = sum(int(n.get("size", 0)) for n in stored if n.get("type") == "file")
        if overwrite:
            _clear_for_restore(target, stored)
        if roots:
            argv = [self.restic, "-r", REPO_IN_VIEW, "--no-cache", "--no-lock", "restore", snap.id]
            argv += ["--target", RESTORE_IN_VIEW]
            for root in roots:
                argv += ["--include", _escape_pattern(root)]
            spec = ViewSpec(
                ((str(self.repository), REPO_IN_VIEW, True), (str(target), RESTORE_IN_VIEW, False)), tuple(argv)
            )
            result = self._call([*_IN_VIEW, spec.to_json()], self.timeout_s)
            if result.rc != 0:
                lines = (result.stderr or result.stdout).strip().splitlines()
                said = [line for line in lines if "error" in line.lower()][:3] or lines[-1:] or ["no output"]
                raise SystemCommandError(f"restic restore exited {result.rc}: {'; '.join(said)}")
        emit(Progress(Phase.RESTORE, len(stored), size, len(stored), size))
        return RestoreResult(set_id, self.name, target, tuple(chosen), len(stored), size, time.monotonic() - started)

    def prune_incomplete(self) -> tuple[str, ...]:
        """Forget the snapshots of interrupted backups (their data goes with the next `restic prune`)."""
        stale = [s.id for s in self.snapshots() if not s.complete]
        if stale:
            self._checked("forget", *stale, exclusive=True)
        return tuple(stale)


# -- helpers -----------------------------------------------------------------------------------------------------


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _component_roots(components: Sequence[ComponentSource], selection: Selection) -> list[list[str]]:
    """Per component: its file specs' roots that the snapshot holds."""
    present = {e.path for e in selection.entries}
    return [
        sorted({s.original_path for s in c.component.all_files() if s.original_path in present}, key=path_key)
        for c in components
    ]


def _roots(selection: Selection, components: Sequence[ComponentSource]) -> list[str]:
    """What restic is given: every component root present, without those below another (restic's `paths`)."""
    roots: list[str] = []
    for root in sorted({r for rs in _component_roots(components, selection) for r in rs}, key=path_key):
        if not any(_within(root, kept) for kept in roots):
            roots.append(root)
    return roots


def _component_results(selection: Selection, components: Sequence[ComponentSource]) -> tuple[ComponentResult, ...]:
    """Counts per component, and a digest of its listing (path, type, size, mode, owner, mtime, link target):
    restic keeps its own SHA-256 of every content blob."""
    algorithm = default_digest_algorithm()
    results = []
    for source, members, skipped in zip(components, selection.members, selection.skipped, strict=True):
        hasher = new_hasher(algorithm)
        entries = [selection.entries[i] for i in members]
        for e in entries:
            hasher.update(os.fsencode(_listing(e)) + b"\n")
        stored = [e for e in entries if e.type is not EntryType.DIRECTORY]
        results.append(
            ComponentResult(
                source.writer_id,
                source.full_path,
                len(stored),
                sum(e.size for e in stored if e.type is EntryType.FILE),
                hasher.hexdigest(),
                skipped,
            )
        )
    return tuple(results)


def _listing(e: Entry) -> str:
    return f"{e.path}\0{e.type.value}\0{e.size}\0{e.mode:o}\0{e.uid}\0{e.gid}\0{e.mtime_ns}\0{e.link_target}"


def _excludes(selection: Selection, roots: Sequence[str], mapping: PathMapper) -> bytes:
    """restic exclude patterns for everything below the roots that the selection leaves out (sockets, other
    file names, excluded specs), each anchored at its full original path."""
    selected = {e.path for e in selection.entries}
    out: list[str] = []
    for root in roots:
        pending = [(root, mapping(root))]
        while pending:
            path, source = pending.pop()
            if not source.is_dir() or source.is_symlink():
                continue
            try:
                children = sorted(os.scandir(source), key=lambda d: d.name)
            except OSError as exc:
                raise SystemCommandError(f"cannot read {source} in the exposed copy: {exc.strerror}") from None
            for child in children:
                original = ("" if path == "/" else path) + "/" + child.name
                if original not in selected:
                    out.append(_escape_pattern(original))
                elif child.is_dir(follow_symlinks=False):
                    pending.append((original, Path(child.path)))
    return os.fsencode("\n".join(out) + "\n") if out else b""


def _clear_for_restore(target: Path, nodes: _Nodes) -> None:
    """Before an overwriting restore: remove what stands where a non-directory will be restored (restic cannot
    replace a symbolic link or a special file). Only below `target`, never through a link."""
    for node in nodes:
        relative = PurePosixPath(str(node.get("path", "")).lstrip("/"))
        if not relative.parts or ".." in relative.parts:
            continue
        path = target / relative
        if not Path(os.path.realpath(path.parent)).is_relative_to(target.resolve()):
            continue
        with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if not path.is_dir() or path.is_symlink():
                path.unlink()


def _check_problems(check: Completed) -> list[Problem]:
    """restic check's complaints, one problem per line that reports damage."""
    words = ("error", "fatal", "does not match", "damaged", "invalid", "not found", "missing", "unexpected")
    found = []
    for line in (check.stdout + "\n" + check.stderr).splitlines():
        text = line.strip()
        if text and any(w in text.lower() for w in words):
            found.append(Problem(ProblemKind.CORRUPT, "restic check", text[:500]))
    unique = list(dict.fromkeys(found))[:50]
    return unique or [Problem(ProblemKind.CORRUPT, "restic check", f"exited {check.rc}")]


def _stop(proc: Process) -> None:
    """Interrupt restic (it removes its lock on SIGINT), then kill it if it does not stop within STOP_GRACE_S; a
    restic that has exited already is only reaped."""
    proc.stop(STOP_GRACE_S, first=signal.SIGINT)
