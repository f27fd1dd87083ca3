"""`verify` and `backups`: check a backed-up set in a repository, and list the sets a repository holds."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import click

from snapport.cli.env import json_option, resolve_set_id
from snapport.cli.output import emit_json, table
from snapport.engines import ENGINE_NAMES, Engine, open_repository

repo_option = click.option(
    "--repo",
    "repo",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The backup repository (a directory).",
)


engine_option = click.option(
    "--engine",
    "engine_name",
    type=click.Choice(ENGINE_NAMES),
    default=None,
    help="The repository's backup engine [default: recognised from the repository].",
)


def resolve_set(engine: Engine, set_id: str) -> uuid.UUID:
    """A set of the repository by full id or by a unique prefix of at least 4 hex digits."""
    return resolve_set_id(set_id, lambda: (s.set_id for s in engine.list()), noun="set", where="in the repository")


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover


@click.command("verify")
@repo_option
@click.option("--set", "set_id", required=True, metavar="ID", help="The set's id (or a unique prefix).")
@engine_option
@json_option
@click.pass_context
def verify(ctx: click.Context, repo: Path, set_id: str, engine_name: str | None, as_json: bool) -> None:
    """Re-read a backed-up set and check every file against its digest: exit 0 intact, 1 damaged (says what)."""
    engine = open_repository(repo, engine_name)
    report = engine.verify(resolve_set(engine, set_id))
    if as_json:
        emit_json(
            {
                "set_id": str(report.set_id),
                "intact": report.intact,
                "problems": [{"kind": p.kind.value, "path": p.path, "detail": p.detail} for p in report.problems],
                "files": report.files,
                "bytes": report.bytes,
                "duration_s": round(report.duration_s, 3),
            }
        )
    elif report.intact:
        click.echo(f"set {report.set_id} is intact: {report.files} files, {_size(report.bytes)} re-read and checked")
    else:
        for problem in report.problems:
            # A file name that is not UTF-8 is shown with \x escapes, so each problem stays one readable line.
            click.echo(os.fsencode(str(problem)).decode("utf-8", "backslashreplace"))
    if not report.intact:
        ctx.exit(1)


@click.command("backups")
@repo_option
@engine_option
@json_option
def backups(repo: Path, engine_name: str | None, as_json: bool) -> None:
    """List the sets backed up in a repository."""
    sets = open_repository(repo, engine_name).list()
    if as_json:
        emit_json({"sets": sets})
        return
    table(
        None,
        ["SET", "HOST", "CREATED", "COMPONENTS", "FILES", "SIZE", "STORED"],
        [
            (
                s.set_id,
                s.originating_host,
                s.created.isoformat(timespec="seconds") if s.created else "unreadable",
                len(s.components),
                s.files,
                _size(s.bytes),
                _size(s.stored_bytes),
            )
            for s in sets
        ],
    )
