"""`restore` (a backed-up set's files back, between the writers' restore events) and `revert` (a volume rolled back
to a persistent snapshot): docs/restore.md."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

from snapport.cli.env import Env, find_set, json_option, pass_env
from snapport.cli.output import emit_json, progress_line
from snapport.cli.verify import engine_option, repo_option, resolve_set

if TYPE_CHECKING:
    from snapport.engines.base import Progress


@click.command("restore")
@repo_option
@click.option("--set", "set_id", required=True, metavar="ID", help="The set's id (or a unique prefix).")
@engine_option
@click.option(
    "--component",
    "components",
    multiple=True,
    metavar="C",
    help="writer-name:component-path, or a component path only one writer has [default: every component].",
)
@click.option(
    "--to",
    "target",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to restore: an original path P lands at DIR/P ('/' restores in place).",
)
@click.option("--overwrite", is_flag=True, help="Restore into a directory that is not empty, replacing what it writes.")
@click.option("--writer", "writer_specs", multiple=True, metavar="SPEC", help="KIND:TARGET[,key=value...]")
@json_option
@pass_env
def restore(
    env: Env,
    repo: Path,
    set_id: str,
    engine_name: str | None,
    components: tuple[str, ...],
    target: Path,
    overwrite: bool,
    writer_specs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Restore a backed-up set (or some of its components) under DIR, with the writers' pre- and post-restore."""
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeElapsedColumn  # noqa: PLC0415
    from rich.progress import Progress as Bars  # noqa: PLC0415

    from snapport.coordinator import restore as restoring  # noqa: PLC0415
    from snapport.engines.registry import open_repository  # noqa: PLC0415

    engine = open_repository(repo, engine_name)
    resolved = resolve_set(engine, set_id)
    catalog = env.catalog if env.home.is_dir() else None  # a restore host need not have made or imported the set
    started = time.monotonic()
    bars = Bars(
        TextColumn("{task.description:<14}"),
        BarColumn(),
        DownloadColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=as_json,
    )
    task = bars.add_task("restore", total=None)
    last = [0.0]

    def line(payload: dict[str, object]) -> None:
        progress_line(time.monotonic() - started, payload)

    def progress(p: Progress) -> None:
        if as_json:
            now = time.monotonic()
            if now - last[0] >= 0.2 or (p.total_bytes is not None and p.bytes >= p.total_bytes):
                last[0] = now
                line(
                    {
                        "phase": p.phase.value,
                        "files": p.files,
                        "bytes": p.bytes,
                        "total_files": p.total_files,
                        "total_bytes": p.total_bytes,
                    }
                )
        else:
            bars.update(task, completed=p.bytes, total=p.total_bytes)

    def step(name: str, what: str) -> None:
        if as_json:
            line({"phase": name, "what": what})
        elif name != "restore":
            bars.console.print(f"{name}: {what}")

    with bars:
        outcome = restoring.restore(
            engine,
            resolved,
            target,
            components=components,
            overwrite=overwrite,
            writer_specs=writer_specs,
            catalog=catalog,
            progress=progress,
            on_step=step,
        )
    result = outcome.result
    if as_json:
        emit_json(
            {
                "set_id": str(result.set_id),
                "engine": result.engine,
                "target": str(result.target),
                "components": [{"writer_id": str(w), "component": c} for w, c in result.components],
                "files": result.files,
                "bytes": result.bytes,
                "duration_s": round(outcome.duration_s, 3),
                "writers": list(outcome.writers),
                "not_told": list(outcome.not_told),
            }
        )
        return
    click.echo(
        f"set {result.set_id} restored under {result.target}: {len(result.components)} components, {result.files} "
        f"files, {result.bytes / 2**20:.1f} MiB in {outcome.duration_s:.1f} s; writers told: "
        + (", ".join(f"{w['kind']} ({w['instance_name']})" for w in outcome.writers) or "none")
    )
    for note in outcome.not_told:
        click.echo(f"  {note}")


@click.command("revert")
@click.argument("set_id", metavar="ID")
@click.option("--volume", "volumes", multiple=True, metavar="MOUNT", help="Only this volume [default: every one].")
@click.option("--yes", is_flag=True, help="Do not ask: the volumes' current content is lost.")
@json_option
@pass_env
def revert(env: Env, set_id: str, volumes: tuple[str, ...], yes: bool, as_json: bool) -> None:
    """Roll the original volumes back to a persistent set's snapshots (they must be unmounted)."""
    from snapport.coordinator import lifecycle  # noqa: PLC0415
    from snapport.errors import UsageError  # noqa: PLC0415

    snapshot_set = find_set(env, set_id)
    if not yes:
        if as_json or not sys.stdin.isatty():
            raise UsageError("revert replaces the volumes' current content; pass --yes to confirm")
        which = ", ".join(volumes) or ", ".join(s.volume.mount_point for s in snapshot_set.snapshots)
        click.confirm(f"Replace the content of {which} with set {snapshot_set.id}'s snapshots?", abort=True)
    reverted = lifecycle.revert(env.host, snapshot_set.id, volumes=volumes)
    if as_json:
        emit_json(
            {
                "set_id": str(snapshot_set.id),
                "reverted": [
                    {"volume": r.volume, "device": r.device, "snapshot_id": str(r.snapshot_id)} for r in reverted
                ],
            }
        )
        return
    for r in reverted:
        click.echo(f"{r.volume} ({r.device}) reverted to snapshot {r.snapshot_id}; mount it to use it")
