"""`docs validate`: check a Backup Components or Writer Metadata Document."""

from __future__ import annotations

from pathlib import Path

import click

from snapport.cli.env import json_option
from snapport.cli.output import emit_json
from snapport.documents import validate_file
from snapport.model import BackupComponents, WriterMetadata


@click.group("docs")
def docs() -> None:
    """Backup Components and Writer Metadata Documents."""


@docs.command("validate")
@click.argument("path", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def docs_validate(path: Path, as_json: bool) -> None:
    """Check FILE is a valid document: exit 0 if it is, 1 with the reason if not."""
    document = validate_file(path)
    if isinstance(document, BackupComponents):
        kind, summary = "backup-components", f"set {document.set_id}, {len(document.snapshot_set.snapshots)} snapshots"
    else:
        assert isinstance(document, WriterMetadata)
        kind, summary = "writer-metadata", f"writer {document.name} ({document.writer_id})"
    if as_json:
        emit_json({"valid": True, "kind": kind, "path": str(path)})
    else:
        click.echo(f"{path}: valid {kind} document: {summary}")
