"""The restic engine: one restic snapshot per set, taken at the ORIGINAL paths under the production host's name, so
the next backup of the same volumes finds its parent and reads only what changed. See docs/engines.md.

restic runs in a private mount namespace (`view`): the exposed copies are bind-mounted read-only at their
original mount points, the set's documents at `/.snapport`, the repository at a fixed path. Nothing it mounts can
outlive it. A snapshot is tagged `snapport`, `snapport-set:<uuid>`, `snapport-component:<writer-id>/<component>`
(percent-encoded) and totals; it is written with `snapport-incomplete` and published by removing that tag, so an
interrupted backup is never listed and may be retried.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
import uuid
from builtins import list as _list
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote

from snapport.documents import BCD_FILE_NAME, TRANSPORT_MAX_BYTES, WRITERS_DIR_NAME, read_document, save_documents
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentKey,
    ComponentSource,
    Forgotten,
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
from snapport.engines.digest import default_digest_algorithm
from snapport.engines.restic.command import IN_VIEW, RESTIC, Completed, Restic, stop
from snapport.engines.restic.selection import (
    component_results,
    component_roots,
    escape_pattern,
    excludes,
    top_roots,
    within,
)
from snapport.engines.restic.view import DOCUMENTS_IN_VIEW, REPO_IN_VIEW, RESTORE_IN_VIEW, ViewSpec, collides
from snapport.engines.walk import EntryType, path_key, select
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
from snapport.osal.runner import PIPE, Runner

ENGINE_NAME = "restic"
TAG = "snapport"
TAG_INCOMPLETE = "snapport-incomplete"
TAG_SET = "snapport-set:"
TAG_COMPONENT = "snapport-component:"
TAG_FILES, TAG_BYTES, TAG_STORED = "snapport-files:", "snapport-bytes:", "snapport-stored:"
SET_FILE = "set.json"
EXCLUDES_FILE = "excludes.txt"
DEFAULT_READ_DATA_SUBSET = "10%"
BACKUP_TIMEOUT_S = 24 * 3600.0
_STDERR_LINES = 50  # what is kept of restic's stderr, for the error message
_Nodes = list[dict[str, Any]]


def encode_tag(text: str) -> str:
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


class ResticEngine:
    """The `restic` engine on the restic repository `repository` (initialised by the first backup into it).

    The password: RESTIC_PASSWORD_FILE or RESTIC_PASSWORD if set, else a random key generated beside the
    repository (`command.key_file_for`), mode 0600. It reaches restic through its environment only, never an
    argument.
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
        self.timeout_s = timeout_s
        self._restic = Restic(self.repository, restic, runner)
        self.last_summary: dict[str, Any] | None = None  # restic's JSON summary of the last backup

    @staticmethod
    def recognises(directory: Path) -> bool:
        """Whether `directory` is a restic repository (its `config` file and `keys` directory)."""
        return (directory / "config").is_file() and (directory / "keys").is_dir()

    # -- snapshots ----------------------------------------------------------------------------------------------

    def _open(self) -> None:
        if not self._restic.exists:
            raise ObjectNotFound(f"no restic repository at {self.repository}")

    def snapshots(self, *, set_id: uuid.UUID | None = None) -> tuple[ResticSnapshot, ...]:
        """snapport's snapshots in the repository (complete or not), oldest first."""
        self._open()
        tag = f"{TAG_SET}{set_id}" if set_id else TAG
        found = []
        for raw in json.loads(self._restic.checked("snapshots", "--json", "--tag", tag) or "[]") or []:
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
        result = self._restic.run("dump", snap.id, f"{DOCUMENTS_IN_VIEW}/{name}")
        if result.rc != 0:
            raise DocumentError(f"set {snap.set_id}: {name} cannot be read from snapshot {snap.id[:8]}")
        return result.stdout.encode(errors="surrogateescape")

    def _ls(self, snap: ResticSnapshot, *paths: str) -> _Nodes:
        out = self._restic.checked("ls", "--json", "--recursive", snap.id, *paths)
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
        bcd = read_document(self._dump(snap, BCD_FILE_NAME), max_bytes=TRANSPORT_MAX_BYTES)
        if not isinstance(bcd, BackupComponents) or bcd.set_id != set_id:
            raise DocumentError(f"the documents of snapshot {snap.id[:8]} do not describe set {set_id}")
        writers: _list[WriterMetadata] = []
        prefix = f"{DOCUMENTS_IN_VIEW}/{WRITERS_DIR_NAME}/"
        for node in self._ls(snap, f"{DOCUMENTS_IN_VIEW}/{WRITERS_DIR_NAME}"):
            path = str(node.get("path", ""))
            if not path.startswith(prefix) or node.get("type") != "file":
                continue
            name = path.removeprefix(prefix)
            wmd = read_document(self._dump(snap, f"{WRITERS_DIR_NAME}/{name}"), max_bytes=TRANSPORT_MAX_BYTES)
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
            self._restic.init()
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
        roots = top_roots(selection, components)
        files = sum(1 for e in selection.entries if e.type is not EntryType.DIRECTORY)
        content = sum(e.size for e in selection.entries if e.type is EntryType.FILE)
        listed = sum(e.size for e in selection.entries if e.type in (EntryType.FILE, EntryType.HARDLINK))
        results = component_results(selection, components)
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
                    for r, rs in zip(results, component_roots(components, selection), strict=True)
                ],
            }
            (docs_dir / SET_FILE).write_text(json.dumps(record, indent=1) + "\n")
            (docs_dir / EXCLUDES_FILE).write_bytes(excludes(selection, roots, mapping))
            tags = [TAG, TAG_INCOMPLETE, f"{TAG_SET}{set_id}", f"{TAG_FILES}{files}", f"{TAG_BYTES}{content}"]
            tags += [encode_tag(f"{TAG_COMPONENT}{r.writer_id}/{r.component}") for r in results]
            argv = self._restic.argv(REPO_IN_VIEW, "backup", "--json", "--host", host)
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
        self._restic.checked(
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
            proc = self._restic.start([*IN_VIEW, spec.to_json()], PIPE, err)

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
                stop(proc)  # after a failure here (a cancelling progress callback): restic must not run on
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
        check = self._restic.run("check", f"--read-data-subset={self.read_data_subset}", exclusive=True)
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
        below = [n for n in nodes if any(within(str(n.get("path", "")), r) for r in roots)]
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
        nodes = [n for n in self._ls(snap, *roots) if any(within(str(n.get("path", "")), r) for r in roots)]
        stored = [n for n in nodes if n.get("type") != "dir"]
        size = sum(int(n.get("size", 0)) for n in stored if n.get("type") == "file")
        if overwrite:
            _clear_for_restore(target, stored)
        if roots:
            argv = self._restic.argv(REPO_IN_VIEW, "--no-lock", "restore", snap.id)
            argv += ["--target", RESTORE_IN_VIEW]
            for root in roots:
                argv += ["--include", escape_pattern(root)]
            spec = ViewSpec(
                ((str(self.repository), REPO_IN_VIEW, True), (str(target), RESTORE_IN_VIEW, False)), tuple(argv)
            )
            result = self._restic.call([*IN_VIEW, spec.to_json()], self.timeout_s)
            if result.rc != 0:
                lines = (result.stderr or result.stdout).strip().splitlines()
                said = [line for line in lines if "error" in line.lower()][:3] or lines[-1:] or ["no output"]
                raise SystemCommandError(f"restic restore exited {result.rc}: {'; '.join(said)}")
        emit(Progress(Phase.RESTORE, len(stored), size, len(stored), size))
        return RestoreResult(set_id, self.name, target, tuple(chosen), len(stored), size, time.monotonic() - started)

    def forget(self, set_ids: Sequence[uuid.UUID]) -> Forgotten:
        """`restic forget --prune` of the sets' snapshots: restic's exclusive lock waits for every backup, check
        and restore of the repository to end first, so nothing being read is removed (and none is in use after)."""
        wanted = set(set_ids)
        chosen = [s for s in self.snapshots() if s.set_id in wanted]
        if chosen:
            self._restic.checked("forget", "--prune", *(s.id for s in chosen), exclusive=True)
        return Forgotten(tuple(dict.fromkeys(s.set_id for s in chosen if s.complete)))

    def prune_incomplete(self) -> tuple[str, ...]:
        """Forget the snapshots of interrupted backups, and prune the data only they held."""
        stale = [s.id for s in self.snapshots() if not s.complete]
        if stale:
            self._restic.checked("forget", "--prune", *stale, exclusive=True)
        return tuple(stale)


# -- helpers -----------------------------------------------------------------------------------------------------


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
