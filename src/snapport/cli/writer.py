"""Writers on the command line: `writers` (like `vssadmin list writers`), `writer run`, `writer list`."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from snapport.cli.env import Env, json_option, pass_env
from snapport.cli.output import emit_json, table
from snapport.errors import UsageError


def _ms(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f} ms"


@contextlib.contextmanager
def _registrations(home: Path) -> Iterator[list[dict[str, Any]]]:
    """Every registered writer socket of this host, asked who it is (and hung up on afterwards)."""
    from snapport.writers.remote import RemoteWriter, registrations, writer_id_of  # noqa: PLC0415 (lazy: see main)

    found: list[dict[str, Any]] = []
    opened = []
    for path in registrations(home):
        try:
            writer_id = writer_id_of(path)
        except UsageError:
            continue  # not a registration
        remote = RemoteWriter(path, connect_timeout_s=2.0)
        opened.append(remote)
        row: dict[str, Any] = {"writer_id": str(writer_id), "socket": str(path)}
        if remote.identity is not None:
            i = remote.identity
            state = "frozen" if i.frozen else "live"
            row |= {"state": state, "kind": i.kind, "instance_name": i.instance_name, "pid": i.pid, "uid": i.uid}
        else:
            row |= {"state": "stale" if remote.stale else "unusable", "error": str(remote.unavailable)}
        found.append(row)
    try:
        yield found
    finally:
        for remote in opened:
            remote.close()


@click.command("writers")
@json_option
@pass_env
def writers(env: Env, as_json: bool) -> None:
    """List the writers this host has seen, with their state, and the live out-of-process ones."""
    statuses = env.catalog.list_writers()
    with _registrations(env.home) as registered:
        live = {r["writer_id"]: r for r in registered if r["state"] in ("live", "frozen")}
    rows: list[dict[str, Any]] = []
    for w in statuses:
        process = live.pop(w.writer_id, None)
        rows.append(
            {
                "writer_id": w.writer_id,
                "class_id": w.class_id,
                "kind": w.kind,
                "name": w.name,
                "instance_name": w.instance_name,
                "state": w.state,
                "updated_at": w.updated_at,
                "last_error": w.last_error,
                "last_freeze_ms": w.last_freeze_ms,
                "process": process,
            }
        )
    for r in live.values():  # registered and running, but never in a set yet
        rows.append(
            {
                "writer_id": r["writer_id"],
                "class_id": None,
                "kind": r["kind"],
                "name": r["kind"],
                "instance_name": r["instance_name"],
                "state": "frozen" if r["state"] == "frozen" else "stable",
                "updated_at": None,
                "last_error": None,
                "last_freeze_ms": None,
                "process": r,
            }
        )
    if as_json:
        emit_json({"writers": rows})
        return
    table(
        None,
        ["WRITER", "INSTANCE", "KIND", "STATE", "LAST ERROR", "LAST FREEZE", "PROCESS"],
        [
            (
                r["writer_id"],
                r["instance_name"],
                r["kind"],
                getattr(r["state"], "value", r["state"]),
                r["last_error"],
                _ms(r["last_freeze_ms"]),
                f"pid {r['process']['pid']}" if r["process"] else None,
            )
            for r in rows
        ],
    )


@click.group("writer")
def writer() -> None:
    """Writers in their own processes (docs/writer-protocol.md)."""


@writer.command("run")
@click.argument("kind")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML: target = TARGET, the kind's keys, and optionally user = NAME.",
)
@json_option
@pass_env
def run(env: Env, kind: str, config_path: Path, as_json: bool) -> None:
    """Run a built-in writer of KIND in this process, registered on this host, until SIGTERM or SIGINT."""
    from snapport.osal.host import this_host_name  # noqa: PLC0415
    from snapport.writers.service import load_config, notify_ready, register  # noqa: PLC0415

    registered = register(kind, load_config(config_path), env.home, this_host_name())
    service = registered.service
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, lambda *_: service.request_stop())
        identity = service.identity()
        ready = {
            "writer_id": identity["writer_id"],
            "kind": identity["kind"],
            "instance_name": identity["instance_name"],
            "socket": str(registered.socket_path),
            "pid": identity["pid"],
            "uid": identity["uid"],
        }
        if as_json:
            emit_json(ready)
        else:
            click.echo(
                f"writer {ready['kind']} ({ready['instance_name']}) registered as {ready['socket']} "
                f"(pid {ready['pid']}, uid {ready['uid']})",
            )
        notify_ready()
        service.serve_forever()
    finally:
        registered.close()


@writer.command("list")
@json_option
@pass_env
def list_(env: Env, as_json: bool) -> None:
    """List the writers registered on this host: live, frozen, stale (no process) or unusable."""
    with _registrations(env.home) as registered:
        if as_json:
            emit_json({"registered": registered})
            return
        table(
            None,
            ["WRITER", "STATE", "KIND", "INSTANCE", "PID", "UID", "SOCKET / ERROR"],
            [
                (
                    r["writer_id"],
                    r["state"],
                    r.get("kind"),
                    r.get("instance_name"),
                    r.get("pid"),
                    r.get("uid"),
                    r.get("error", r["socket"]),
                )
                for r in registered
            ],
        )
