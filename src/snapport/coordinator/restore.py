"""A restore: a backed-up set's files (all, or chosen components) written under a target, between the writers'
`pre_restore` and `post_restore` (VSS: PreRestore, restore, PostRestore).

Order: read the set's documents from the engine → resolve the components → build the writers of those components
→ every writer's `pre_restore` (all must agree before any file is written) → the engine's restore → every
writer's `post_restore`. A failure names its step; once files were written it is `RestoreIncomplete`, naming
the target that holds them (nothing is removed behind the user's back: it may be all they have).

Writers are rebuilt from the set's Writer Metadata Documents: the kinds that need nothing from this host
(`filesystem`, `postgresql`, `mariadb`, `sqlite`) by themselves; `--writer SPEC` adds configuration (e.g. the PostgreSQL
WAL archive, `postgresql:DATADIR,wal_archive=DIR`) and is the only way a `hook` script or a `remote` writer
process of this host takes part: nothing a document names is ever run.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapport.catalog import Catalog
from snapport.coordinator.recording import record_writer
from snapport.engines.base import ComponentKey, Engine, ProgressCallback, RestoreResult, SetDocuments
from snapport.errors import ObjectNotFound, RestoreIncomplete, SnapportError, TargetNotEmpty, UsageError
from snapport.model import EventKind, WriterMetadata
from snapport.writers.base import Deadline, RestoreContext, Tier, Writer
from snapport.writers.filesystem import FilesystemWriter
from snapport.writers.guarded import GuardedWriter
from snapport.writers.hook import HookWriter
from snapport.writers.mariadb import MariadbWriter
from snapport.writers.postgresql import PostgresqlWriter
from snapport.writers.registry import parse_spec
from snapport.writers.remote import RemoteWriter
from snapport.writers.sqlite import SqliteWriter

RESTORE_EVENT_TIMEOUT_S = 300.0
StepCallback = Callable[[str, str], None]  # (step, what): "pre-restore", "writer postgresql (/srv/pg/data)"


@dataclass(frozen=True, slots=True)
class RestoreOutcome:
    """What a restore did: the engine's result and each writer's part."""

    result: RestoreResult
    writers: tuple[dict[str, object], ...]  # kind, instance, components, events (event, ms)
    not_told: tuple[str, ...] = ()  # writers of restored components that take no part, and why
    duration_s: float = 0.0


@dataclass
class _Planned:
    writer: GuardedWriter
    context: RestoreContext


def component_choices(documents: SetDocuments) -> dict[ComponentKey, str]:
    """Every component the set holds, as `writer-name:component-path` (what `--component` accepts)."""
    names = {w.writer_id: w.name for w in documents.writers}
    return {
        (wc.writer_id, c.full_path): f"{names.get(wc.writer_id, wc.writer_id)}:{c.full_path}"
        for wc in documents.bcd.writers
        for c in wc.components
    }


def resolve_components(documents: SetDocuments, wanted: Sequence[str]) -> tuple[ComponentKey, ...]:
    """`--component` values as component keys: `writer-name:component-path` (or `writer-id:...`), or a component
    path that only one writer has. None given: every component of the set."""
    choices = component_choices(documents)
    if not wanted:
        return tuple(choices)
    listed = ", ".join(sorted(choices.values())) or "none"
    chosen: list[ComponentKey] = []
    for given in wanted:
        matches = [key for key, label in choices.items() if given in (label, key[1], f"{key[0]}:{key[1]}")]
        if not matches:
            raise UsageError(f"the set has no component {given!r}; its components: {listed}")
        if len(matches) > 1:
            raise UsageError(
                f"{given!r} names {len(matches)} components; say which as writer-name:component-path: "
                + ", ".join(sorted(choices[k] for k in matches))
            )
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return tuple(chosen)


def _spec_writer(spec: str, wmds: Sequence[WriterMetadata], host: str) -> tuple[Writer, dict[str, str]]:
    """A `--writer SPEC` for a restore: a hook or remote writer of this host, or configuration for a kind."""
    kind, target, options = parse_spec(spec)
    if kind == "remote":
        return RemoteWriter(Path(target)), options
    if kind == "hook":
        return HookWriter(target, (), host=host), options
    for wmd in wmds:
        if wmd.name == kind and target in (wmd.instance_name, *(c.full_path for c in wmd.components)):
            built = _document_writer(wmd, options, host)
            if built is not None:
                return built, options
    names = ", ".join(f"{w.name}:{w.instance_name}" for w in wmds) or "none"
    raise UsageError(f"--writer {spec!r} names no writer of the restored components ({names})")


def _document_writer(wmd: WriterMetadata, options: Mapping[str, str], host: str) -> Writer | None:
    """A writer rebuilt from its metadata document alone, for the kinds whose restore events need nothing else."""
    writer: Writer
    if wmd.name == "filesystem":
        from snapport.model import Volume  # noqa: PLC0415

        writer = FilesystemWriter(Volume(host=host, mount_point=wmd.instance_name, fs_type="", fs_uuid=""), host=host)
    elif wmd.name == "postgresql":
        writer = PostgresqlWriter(
            wmd.instance_name,
            (),
            host=host,
            archive=options.get("purge_archive"),
            wal_archive=options.get("wal_archive"),
        )
    elif wmd.name == "mariadb":
        writer = MariadbWriter(wmd.instance_name, (), host=host)
    elif wmd.name == "sqlite":
        writer = SqliteWriter.for_restore(wmd.instance_name, host=host)
    else:
        return None
    writer.writer_id = wmd.writer_id  # the id the documents know it by, whatever host rebuilt it
    return writer


def plan_writers(
    documents: SetDocuments, keys: Sequence[ComponentKey], target: Path, writer_specs: Sequence[str]
) -> tuple[list[tuple[Writer, RestoreContext]], list[str]]:
    """The writers to tell about restoring `keys` under `target`, each with its context; and those not told."""
    bcd = documents.bcd
    host = bcd.originating_host
    by_writer: dict[uuid.UUID, list[str]] = {}
    for writer_id, path in keys:
        by_writer.setdefault(writer_id, []).append(path)
    wmds = {w.writer_id: w for w in documents.writers}
    restored = [wmds[i] for i in by_writer if i in wmds]
    metadata = {
        (wc.writer_id, c.full_path): c.backup_metadata
        for wc in bcd.writers
        for c in wc.components
        if c.backup_metadata is not None
    }

    def context(writer_id: uuid.UUID) -> RestoreContext:
        paths = tuple(by_writer.get(writer_id, ()))
        return RestoreContext(
            set_id=bcd.set_id,
            backup_type=bcd.backup_type,
            target=target,
            components=paths,
            backup_metadata={p: t for p in paths if (t := metadata.get((writer_id, p))) is not None},
            originating_host=host,
        )

    planned: dict[uuid.UUID, Writer] = {}
    extra: list[Writer] = []
    for spec in writer_specs:
        writer, _ = _spec_writer(spec, restored, host)
        if writer.writer_id in planned or any(w.writer_id == writer.writer_id for w in extra):
            raise UsageError(f"--writer {spec!r} is given twice")
        if writer.writer_id in by_writer:
            planned[writer.writer_id] = writer
        elif isinstance(writer, HookWriter):
            extra.append(writer)  # a hook of this host takes part in every restore it is named for
        else:
            raise UsageError(f"--writer {spec!r} is writer {writer.writer_id}, which has no restored component")
    not_told = []
    for wmd in restored:
        if wmd.writer_id in planned:
            continue
        built = _document_writer(wmd, {}, host)
        if built is None:
            not_told.append(f"{wmd.name} ({wmd.instance_name}): not told; name it with --writer to make it take part")
            continue
        planned[wmd.writer_id] = built
    writers = [*planned.values(), *extra]
    return [(w, context(w.writer_id)) for w in writers], not_told


def _target_is_empty(target: Path) -> bool:
    return not target.exists() or (target.is_dir() and not any(target.iterdir()))


def restore(
    engine: Engine,
    set_id: uuid.UUID,
    target: Path,
    *,
    components: Sequence[str] = (),
    overwrite: bool = False,
    writer_specs: Sequence[str] = (),
    catalog: Catalog | None = None,
    progress: ProgressCallback | None = None,
    on_step: StepCallback | None = None,
    event_timeout_s: float = RESTORE_EVENT_TIMEOUT_S,
) -> RestoreOutcome:
    """Restore the set's components under `target` between the writers' restore events (see the module)."""
    started = time.monotonic()
    target = Path(target).resolve()
    documents = engine.documents(set_id)
    keys = resolve_components(documents, components)
    if target.exists() and not target.is_dir():
        raise UsageError(f"the restore target {target} is not a directory")
    if not overwrite and not _target_is_empty(target):
        raise TargetNotEmpty(f"the restore target {target} is not empty; choose an empty directory or --overwrite")
    writers, not_told = plan_writers(documents, keys, target, writer_specs)
    plan = [_Planned(GuardedWriter(w), ctx) for w, ctx in writers]
    step = on_step or (lambda _step, _what: None)
    journal = _Journal(catalog, set_id, target)

    # pre-restore: applications first, as they freeze first; every writer must agree before any file is written
    for planned in sorted(plan, key=lambda p: p.writer.tier):
        step("pre-restore", planned.writer.name)
        try:
            planned.writer.pre_restore(planned.context, Deadline.after(event_timeout_s))
        except SnapportError as exc:
            journal.failed("pre-restore", exc.message, plan)
            raise type(exc)(f"pre-restore: {exc.message}; nothing was restored") from exc
    written_before = not _target_is_empty(target)
    step("restore", str(target))
    try:
        result = engine.restore(set_id, target, components=keys, overwrite=overwrite, progress=progress)
    except SnapportError as exc:
        journal.failed("restore", exc.message, plan)
        if not written_before and _target_is_empty(target):
            raise type(exc)(f"restoring the files failed: {exc.message}; nothing was written to {target}") from exc
        raise RestoreIncomplete(
            f"restoring the files failed: {exc.message}; {target} holds part of the set's files and no writer "
            "ran post-restore"
        ) from exc
    # post-restore: filesystems first, so an application finds its files settled
    done: list[str] = []
    for planned in sorted(plan, key=lambda p: -p.writer.tier):
        step("post-restore", planned.writer.name)
        try:
            planned.writer.post_restore(planned.context, Deadline.after(event_timeout_s))
        except SnapportError as exc:
            journal.failed("post-restore", exc.message, plan)
            finished = f" (post-restore finished for: {', '.join(done)})" if done else ""
            raise RestoreIncomplete(
                f"post-restore failed: {exc.message}; every file is restored under {target}, but the application "
                f"may not start from it as it is{finished}"
            ) from exc
        done.append(planned.writer.name)
    outcome = RestoreOutcome(
        result=result,
        writers=tuple(_writer_report(p) for p in plan),
        not_told=tuple(not_told),
        duration_s=time.monotonic() - started,
    )
    journal.succeeded(outcome, plan)
    return outcome


def _writer_report(planned: _Planned) -> dict[str, object]:
    writer = planned.writer
    return {
        "writer_id": str(writer.writer_id),
        "kind": writer.kind,
        "instance_name": writer.instance_name,
        "tier": Tier(writer.tier).name.lower(),
        "components": list(planned.context.components),
        "events": [
            {"event": r.event.value, "ok": r.ok, "duration_ms": round(r.duration_ms, 1), "error": r.error}
            for r in writer.records
        ],
    }


class _Journal:
    """The restore's line in the catalog's event log (when there is a catalog): `restore` or `restore-failed`."""

    def __init__(self, catalog: Catalog | None, set_id: uuid.UUID, target: Path) -> None:
        self.catalog, self.set_id, self.target = catalog, set_id, target
        self.knows_set = False  # writer events need the set in the catalog (it made or imported it)
        if catalog is not None:
            try:
                catalog.get_set(set_id)
                self.knows_set = True
            except ObjectNotFound:
                pass

    def _record(self, kind: EventKind, message: dict[str, object], plan: Sequence[_Planned]) -> None:
        if self.catalog is None:
            return
        message = {"target": str(self.target), **message, "writers": [_writer_report(p) for p in plan]}
        self.catalog.record_event(self.set_id, kind, json.dumps(message, sort_keys=True))
        self._record_writer_events(plan)

    def _record_writer_events(self, plan: Sequence[_Planned]) -> None:
        if self.catalog is None or not self.knows_set:
            return
        for planned in plan:
            record_writer(self.catalog, self.set_id, planned.writer)

    def failed(self, step: str, reason: str, plan: Sequence[_Planned]) -> None:
        self._record(EventKind.RESTORE_FAILED, {"step": step, "error": reason}, plan)

    def succeeded(self, outcome: RestoreOutcome, plan: Sequence[_Planned]) -> None:
        result = outcome.result
        message: dict[str, object] = {
            "engine": result.engine,
            "components": [f"{w}:{p}" for w, p in result.components],
            "files": result.files,
            "bytes": result.bytes,
            "duration_s": round(outcome.duration_s, 3),
        }
        if self.catalog is not None:
            self.catalog.record_event(
                self.set_id,
                EventKind.RESTORE,
                json.dumps({"target": str(self.target), **message, "writers": list(outcome.writers)}, sort_keys=True),
            )
        self._record_writer_events(plan)
