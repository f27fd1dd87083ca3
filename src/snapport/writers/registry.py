"""Every writer kind by short name, and the `--writer SPEC` parser (DESIGN §9).

SPEC is `KIND:TARGET[,key=value...]`, one writer per SPEC; repeat `--writer` for several databases, e.g.
`--writer sqlite:/srv/a.db --writer sqlite:/srv/b.db,checkpoint=passive`. A TARGET cannot contain a comma.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapport.errors import UsageError
from snapport.model import Volume
from snapport.osal.runner import Runner
from snapport.writers.base import Writer
from snapport.writers.filesystem import FilesystemWriter
from snapport.writers.hook import HookWriter
from snapport.writers.mariadb import LOCKS, MariadbWriter
from snapport.writers.postgresql import MODES, PostgresqlWriter
from snapport.writers.remote import RemoteWriter
from snapport.writers.sqlite import CHECKPOINT_MODES, SqliteWriter, volume_holding


@dataclass(frozen=True, slots=True)
class WriterKind:
    """How to build one kind of writer from a SPEC: its class, the keys it takes, and the builder."""

    cls: type[Writer]
    keys: Mapping[str, tuple[str, ...] | None]  # key → allowed values (None: any non-empty value)
    build: Callable[[str, Mapping[str, str], Sequence[Volume], str], Writer]
    target: str  # what TARGET names, for help and errors


def _filesystem(target: str, options: Mapping[str, str], volumes: Sequence[Volume], host: str) -> Writer:
    mount_point = os.path.realpath(target)
    for volume in volumes:
        if volume.mount_point == mount_point:
            return FilesystemWriter(volume, host=host)
    listed = ", ".join(v.mount_point for v in volumes) or "none"
    raise UsageError(f"filesystem writer: {target} is not one of the snapshot set's volumes ({listed})")


def _sqlite(target: str, options: Mapping[str, str], volumes: Sequence[Volume], host: str) -> Writer:
    path = Path(target)
    if not path.is_file():
        raise UsageError(f"sqlite writer: no database file at {target}")
    volume_holding(path, volumes)
    return SqliteWriter([path], volumes, host=host, checkpoint=options.get("checkpoint", "truncate"))


def _port(kind: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise UsageError(f"{kind} writer: port must be a number from 1 to 65535, not {value!r}")
    return int(value)


def _postgresql(target: str, options: Mapping[str, str], volumes: Sequence[Volume], host: str) -> Writer:
    writer = PostgresqlWriter(
        target,
        volumes,
        host=host,
        mode=options.get("mode", "backup-mode"),
        server=options.get("host", "/run/postgresql"),
        port=_port("postgresql", options.get("port", "5432")),
        user=options.get("user", "postgres"),
        dbname=options.get("dbname", "postgres"),
        archive=options.get("purge_archive"),
        wal_archive=options.get("wal_archive"),
    )
    writer.check_volumes(volumes)  # refused here, before anything is frozen (atomic needs the whole cluster)
    return writer


def _mariadb(target: str, options: Mapping[str, str], volumes: Sequence[Volume], host: str) -> Writer:
    return MariadbWriter(
        target,
        volumes,
        host=host,
        user=options.get("user", "root"),
        lock=options.get("lock", "backup-stage"),
        purge_binlogs=options.get("purge_binlogs", "no") == "yes",
        defaults_file=options.get("defaults_file"),
    )


def _hook(target: str, options: Mapping[str, str], volumes: Sequence[Volume], host: str) -> Writer:
    paths = [p for p in options.get("paths", "").split(":") if p]
    return HookWriter(target, volumes, host=host, paths=paths)


def _remote(target: str, options: Mapping[str, str], volumes: Sequence[Volume], host: str) -> Writer:
    # Connects at once; a writer process that is not there fails the first event (so `complete` still runs).
    return RemoteWriter(Path(target))


WRITERS: Mapping[str, WriterKind] = {
    "filesystem": WriterKind(FilesystemWriter, {}, _filesystem, "a volume's mount point"),
    "sqlite": WriterKind(SqliteWriter, {"checkpoint": CHECKPOINT_MODES}, _sqlite, "a database file"),
    "postgresql": WriterKind(
        PostgresqlWriter,
        {
            "mode": MODES,
            "host": None,
            "port": None,
            "user": None,
            "dbname": None,
            "purge_archive": None,
            "wal_archive": None,
        },
        _postgresql,
        "a cluster's data directory",
    ),
    "mariadb": WriterKind(
        MariadbWriter,
        {"user": None, "lock": LOCKS, "purge_binlogs": ("yes", "no"), "defaults_file": None},
        _mariadb,
        "the server's Unix socket",
    ),
    "hook": WriterKind(HookWriter, {"paths": None}, _hook, "an executable script"),
    "remote": WriterKind(RemoteWriter, {}, _remote, "a registered writer's socket ($SNAPPORT_HOME/writers.d/ID.sock)"),
}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split `KIND:TARGET[,key=value...]` into its parts, checking the kind, the keys and their values."""
    kind, colon, rest = spec.partition(":")
    if not colon or not kind:
        raise UsageError(f"writer spec {spec!r} is not KIND:TARGET[,key=value...]")
    if kind not in WRITERS:
        raise UsageError(f"unknown writer kind {kind!r} in {spec!r}; known kinds: {', '.join(sorted(WRITERS))}")
    known = WRITERS[kind]
    target, *pairs = rest.split(",")
    if not target:
        raise UsageError(f"writer spec {spec!r} names no target ({known.target})")
    if not target.startswith("/"):
        raise UsageError(f"writer spec {spec!r}: the target must be an absolute path ({known.target})")
    options: dict[str, str] = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if key not in known.keys:
            allowed = ", ".join(sorted(known.keys)) or "none"
            raise UsageError(f"unknown key {key!r} for a {kind} writer in {spec!r}; allowed keys: {allowed}")
        values = known.keys[key]
        if not equals or not value or (values is not None and value not in values):
            expected = " | ".join(values) if values else "a value"
            raise UsageError(f"{kind} writer key {key!r} in {spec!r} needs {expected}")
        if key in options:
            raise UsageError(f"key {key!r} given twice in {spec!r}")
        options[key] = value
    return kind, target, options


def writer_from_spec(spec: str, volumes: Sequence[Volume], host: str) -> Writer:
    """The writer a `--writer SPEC` asks for; its target must lie on one of the set's volumes."""
    kind, target, options = parse_spec(spec)
    return WRITERS[kind].build(target, options, volumes, host)


def writers_from_specs(specs: Sequence[str], volumes: Sequence[Volume], host: str) -> list[Writer]:
    """Every `--writer SPEC` in order; the same writer asked for twice is a usage error."""
    writers: list[Writer] = []
    for spec in specs:
        writer = writer_from_spec(spec, volumes, host)
        if any(w.writer_id == writer.writer_id for w in writers):
            raise UsageError(f"writer {spec!r} is given twice")
        writers.append(writer)
    return writers


def filesystem_writers(volumes: Sequence[Volume], host: str, runner: Runner) -> list[Writer]:
    """One filesystem writer per volume of the set, starting its freeze guard through `runner`."""
    return [FilesystemWriter(volume, host=host, runner=runner) for volume in volumes]
