"""The `snapport` command: parses, calls the domain, prints. No work happens here."""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

from snapport import __version__
from snapport.catalog import default_home
from snapport.cli.array import array
from snapport.cli.env import Env, find_set, json_option, pass_env
from snapport.cli.output import emit_json, error_line, fields, table
from snapport.cli.shadow import COMMANDS as SHADOW_COMMANDS
from snapport.documents import validate_file
from snapport.errors import SnapportError, UsageError
from snapport.model import BackupComponents, WriterMetadata


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="snapport", message="%(prog)s %(version)s")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="SNAPPORT_HOME",
    default=None,
    help="This host's state directory [env SNAPPORT_HOME; default /var/lib/snapport].",
)
@click.option("--catalog", "catalog", envvar="SNAPPORT_CATALOG_URL", default=None, help="Catalog URL (SQLAlchemy).")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, catalog: str | None, debug: bool) -> None:
    """Transportable, application-consistent shadow copies for Linux."""
    ctx.obj = Env(home or default_home(), catalog)
    ctx.call_on_close(ctx.obj.close)


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f} ms"


@cli.command("list")
@json_option
@pass_env
def list_sets(env: Env, as_json: bool) -> None:
    """List the snapshot sets this host knows."""
    sets = env.catalog.list_sets()
    if as_json:
        emit_json({"sets": sets})
        return
    table(
        None,
        ["SET", "STATE", "CONTEXT", "ATTRIBUTES", "VOLUMES", "CREATED", "FREEZE WINDOW"],
        [
            (
                s.id,
                s.state.value,
                s.context.value,
                ",".join(s.attrs.names()),
                len(s.snapshots),
                s.created_at.isoformat(timespec="seconds") if s.created_at else None,
                _ms(s.freeze_window_ms),
            )
            for s in sets
        ],
    )


@cli.command("show")
@click.argument("set_id", metavar="ID")
@json_option
@pass_env
def show(env: Env, set_id: str, as_json: bool) -> None:
    """Show one snapshot set: its snapshots, timings and writer events."""
    snapshot_set = find_set(env, set_id)
    events = env.catalog.writer_events(snapshot_set.id)
    if as_json:
        emit_json({"set": snapshot_set, "writer_events": events})
        return
    s = snapshot_set
    fields(
        [
            ("set", s.id),
            ("state", s.state.value),
            ("context", s.context.value),
            ("attributes", ", ".join(s.attrs.names())),
            ("originating host", s.originating_host),
            ("service host", s.service_host),
            ("created", s.created_at.isoformat(timespec="seconds") if s.created_at else None),
            ("freeze window", _ms(s.freeze_window_ms)),
            ("commit", _ms(s.commit_ms)),
            ("failure", s.failure),
        ]
    )
    table(
        "snapshots",
        ["SNAPSHOT", "VOLUME", "FS", "PROVIDER", "DEVICE", "EXPOSED AT"],
        [
            (snap.id, snap.volume.mount_point, snap.volume.fs_type, snap.locator.provider, snap.device, snap.exposed_at)
            for snap in s.snapshots
        ],
    )
    if events:
        table(
            "writer events",
            ["WRITER", "EVENT", "DURATION", "OK", "ERROR"],
            [(e.writer_id, e.event, _ms(e.duration_ms), "yes" if e.ok else "no", e.error) for e in events],
        )


@cli.command("writers")
@json_option
@pass_env
def writers(env: Env, as_json: bool) -> None:
    """List the writers this host has seen, with their state (like `vssadmin list writers`)."""
    statuses = env.catalog.list_writers()
    if as_json:
        emit_json({"writers": statuses})
        return
    table(
        None,
        ["WRITER", "INSTANCE", "KIND", "STATE", "LAST ERROR", "LAST FREEZE"],
        [(w.writer_id, w.instance_name, w.name, w.state, w.last_error, _ms(w.last_freeze_ms)) for w in statuses],
    )


@cli.group("docs")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; errors become one line on stderr and a documented exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = "--json" in args
    debug = "--debug" in args or bool(os.environ.get("SNAPPORT_DEBUG"))
    try:
        rc = cli.main(args=args, prog_name="snapport", standalone_mode=False)
    except SnapportError as error:
        if debug:
            traceback.print_exc()
        print(error_line(error, as_json=as_json), file=sys.stderr)
        return error.exit_code
    except click.exceptions.Exit as done:
        return int(done.exit_code)
    except click.Abort:
        print("snapport: interrupted", file=sys.stderr)
        return 130
    except click.ClickException as error:
        usage = UsageError(error.format_message())
        print(error_line(usage, as_json=as_json), file=sys.stderr)
        return usage.exit_code
    except Exception as error:  # a bug: still one line, unless the user asked for the traceback
        if debug:
            traceback.print_exc()
        internal = SnapportError(f"internal error: {type(error).__name__}: {error}")
        print(error_line(internal, as_json=as_json), file=sys.stderr)
        return internal.exit_code
    return rc if isinstance(rc, int) else 0


for command in (array, *SHADOW_COMMANDS):
    cli.add_command(command)
