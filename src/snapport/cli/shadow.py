"""The verbs of a snapshot set's life on one host: create, import, expose, map, unexpose, delete, break, complete."""

from __future__ import annotations

from pathlib import Path

import click

from snapport.cli.env import Env, find_set, json_option, pass_env
from snapport.cli.output import emit_json, table
from snapport.coordinator import lifecycle
from snapport.coordinator.session import OnWriterFailure, SessionOptions, create_set
from snapport.documents import validate_file
from snapport.errors import UsageError
from snapport.model import Attr, BackupComponents, BackupType, Context, SnapshotSet


def _snapshots_json(snapshot_set: SnapshotSet) -> list[dict[str, object]]:
    return [
        {
            "snapshot_id": str(s.id),
            "volume": s.volume.mount_point,
            "fs_type": s.volume.fs_type,
            "provider": s.locator.provider,
            "device": s.device,
            "exposed_at": s.exposed_at,
        }
        for s in snapshot_set.snapshots
    ]


@click.command("create")
@click.argument("volumes", nargs=-1, required=True, metavar="VOLUME...")
@click.option(
    "--context",
    type=click.Choice([c.value for c in Context]),
    default=Context.BACKUP.value,
    show_default=True,
    help="What the set is for (persistence, auto-release, writers).",
)
@click.option("--transportable", is_flag=True, help="Make the set importable on another host.")
@click.option("--writer", "writer_specs", multiple=True, metavar="SPEC", help="KIND:TARGET[,key=value...]")
@click.option("--backup-type", type=click.Choice([t.value for t in BackupType]), default="full", show_default=True)
@click.option("--provider", default=None, help="Force a provider by name (default: the first that supports it).")
@click.option(
    "--out", type=click.Path(file_okay=False, path_type=Path), default=None, help="Where to write the documents."
)
@click.option("--freeze-timeout", type=click.FloatRange(0.1, 600), default=60.0, show_default=True, metavar="SECONDS")
@click.option("--commit-timeout", type=click.FloatRange(0.01, 120), default=10.0, show_default=True, metavar="SECONDS")
@click.option("--event-timeout", type=click.FloatRange(0.1, 3600), default=60.0, show_default=True, metavar="SECONDS",
              help="The bound of every other writer event (prepare, thaw, post-snapshot, abort...).")  # fmt: skip
@click.option("--description", default="", help="A note kept with the set.")
@click.option(
    "--on-writer-failure",
    type=click.Choice([m.value for m in OnWriterFailure]),
    default=OnWriterFailure.ABORT.value,
    show_default=True,
    help="When an application writer fails before the freeze: fail the set, or leave the writer out.",
)
@json_option
@pass_env
def create(
    env: Env,
    volumes: tuple[str, ...],
    context: str,
    transportable: bool,
    writer_specs: tuple[str, ...],
    backup_type: str,
    provider: str | None,
    out: Path | None,
    freeze_timeout: float,
    commit_timeout: float,
    event_timeout: float,
    description: str,
    on_writer_failure: str,
    as_json: bool,
) -> None:
    """Create a snapshot set of VOLUME... (mount points), consistent across them and their writers."""
    options = SessionOptions(
        context=Context(context),
        modifiers=Attr.TRANSPORTABLE if transportable else Attr.NONE,
        backup_type=BackupType(backup_type),
        freeze_timeout_s=freeze_timeout,
        commit_timeout_s=commit_timeout,
        event_timeout_s=event_timeout,
        provider=provider,
        description=description,
        writer_specs=writer_specs,
        on_writer_failure=OnWriterFailure(on_writer_failure),
    )
    created = create_set(env.host, volumes, options, out)
    s = created.snapshot_set
    if as_json:
        emit_json(
            {
                "set_id": str(s.id),
                "snapshots": _snapshots_json(s),
                "freeze_window_ms": s.freeze_window_ms,
                "commit_ms": s.commit_ms,
                "documents": str(created.documents),
                "excluded_writers": [
                    {"writer_id": str(w.writer_id), "instance": w.instance_name, "reason": w.excluded}
                    for w in created.bcd.writers
                    if w.excluded is not None
                ],
            }
        )
        return
    click.echo(f"created set {s.id} ({s.context.value}; {', '.join(s.attrs.names()) or 'no attributes'})")
    click.echo(f"freeze window {s.freeze_window_ms:.1f} ms, provider commit {s.commit_ms or 0:.1f} ms")
    click.echo(f"documents in {created.documents}")
    for w in created.bcd.writers:
        if w.excluded is not None:
            click.echo(f"left out writer {w.writer_id} ({w.instance_name}): {w.excluded}")


@click.command("import")
@click.argument("bcd_file", metavar="BCD_FILE", type=click.Path(dir_okay=False, path_type=Path))
@json_option
@pass_env
def import_(env: Env, bcd_file: Path, as_json: bool) -> None:
    """Import a transportable set described by a Backup Components Document."""
    document = validate_file(bcd_file)
    if not isinstance(document, BackupComponents):
        raise UsageError(f"{bcd_file} is a writer metadata document; import takes the backup components document")
    s = lifecycle.import_snapshot_set(env.host, document)
    if as_json:
        emit_json({"set_id": str(s.id), "snapshots": _snapshots_json(s)})
        return
    click.echo(f"imported set {s.id} from {s.originating_host}")
    table(None, ["VOLUME", "DEVICE"], [(x.volume.mount_point, x.device) for x in s.snapshots])


@click.command("expose")
@click.argument("set_id", metavar="ID")
@click.option("--at", type=click.Path(file_okay=False, path_type=Path), default=None, help="Base directory.")
@json_option
@pass_env
def expose(env: Env, set_id: str, at: Path | None, as_json: bool) -> None:
    """Mount the set's snapshots read-only (default under /run/snapport/ID/)."""
    exposed = lifecycle.expose(env.host, find_set(env, set_id).id, at)
    if as_json:
        emit_json({"exposed": exposed})
        return
    table(None, ["VOLUME", "EXPOSED AT"], sorted(exposed.items()))


@click.command("map")
@click.argument("set_id", metavar="ID")
@click.argument("original_path", metavar="ORIGINAL_PATH")
@json_option
@pass_env
def map_(env: Env, set_id: str, original_path: str, as_json: bool) -> None:
    """Print where ORIGINAL_PATH (a path on the original host) is inside the exposed copy."""
    mapped = lifecycle.map_path(env.host, find_set(env, set_id).id, original_path)
    if as_json:
        emit_json({"original": original_path, "path": mapped})
    else:
        click.echo(mapped)


def _state_verb(name: str, help_text: str, action: str) -> click.Command:
    @click.command(name, help=help_text)
    @click.argument("set_id", metavar="ID")
    @json_option
    @pass_env
    def verb(env: Env, set_id: str, as_json: bool) -> None:
        snapshot_set = find_set(env, set_id)
        result = getattr(lifecycle, action)(env.host, snapshot_set.id)
        if action == "break_set":
            payload: dict[str, object] = {
                "set_id": str(snapshot_set.id),
                "volumes": [{"original": b.original, "device": b.device} for b in result],
            }
        else:
            payload = {"set_id": str(result.id), "state": result.state.value}
        if as_json:
            emit_json(payload)
        else:
            click.echo(" ".join(f"{k}={v}" for k, v in payload.items()))

    return verb


unexpose = _state_verb("unexpose", "Unmount the set's exposed snapshots.", "unexpose")
delete = _state_verb("delete", "Delete the set's snapshots (persistent sets are deleted only this way).", "delete")
break_ = _state_verb("break", "Turn the set's snapshots into standalone read-write volumes.", "break_set")


@click.command("complete")
@click.argument("set_id", metavar="ID")
@click.option("--succeeded/--failed", "succeeded", default=None, help="How the backup went.")
@json_option
@pass_env
def complete(env: Env, set_id: str, succeeded: bool | None, as_json: bool) -> None:
    """Report the backup's outcome: BackupComplete fires on the writers once, and only for --succeeded."""
    if succeeded is None:
        raise UsageError("say how the backup went: --succeeded or --failed")
    s = lifecycle.complete(env.host, find_set(env, set_id).id, succeeded=succeeded)
    if as_json:
        emit_json({"set_id": str(s.id), "state": s.state.value, "succeeded": succeeded})
    else:
        click.echo(f"set {s.id}: backup {'succeeded' if succeeded else 'failed'}; set is {s.state.value}")
