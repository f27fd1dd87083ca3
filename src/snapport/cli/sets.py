"""Reading what a host knows: `list`, `show`."""

from __future__ import annotations

import click

from snapport.cli.env import Env, find_set, json_option, pass_env
from snapport.cli.output import emit_json, fields, table


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f} ms"


@click.command("list")
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


@click.command("show")
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
