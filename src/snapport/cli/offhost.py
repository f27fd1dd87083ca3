"""`snapport offhost-backup`: the two-host backup (DESIGN §5, §6) driven from the production host's agent.

The operator runs it with a certificate of the production host (by default this host's, from its agent.toml);
systemOne's agent runs the job `offhost-backup` and this command follows it, phase by phase.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import click
from pydantic import TypeAdapter

from snapport.agent.offhost.models import STALL_DEFAULT_S, DataMiningResult, OffhostResult
from snapport.cli.env import Env, json_option, pass_env
from snapport.cli.output import progress_line
from snapport.engines import DEFAULT_ENGINE, ENGINE_NAMES

_RESULT: TypeAdapter[OffhostResult | DataMiningResult] = TypeAdapter(OffhostResult | DataMiningResult)


@click.command("offhost-backup")
@click.option("--source", required=True, metavar="HOST:PORT", help="The production host's agent (systemOne).")
@click.option("--proxy", required=True, metavar="HOST:PORT", help="The proxy's agent (systemTwo), a peer of source.")
@click.option("--volume", "volumes", required=True, multiple=True, metavar="PATH", help="A volume's mount point.")
@click.option("--writer", "writer_specs", multiple=True, metavar="SPEC", help="KIND:TARGET[,key=value...]")
@click.option("--repo", required=True, metavar="PATH", help="The repository directory on the proxy.")
@click.option("--engine", type=click.Choice(ENGINE_NAMES), default=DEFAULT_ENGINE, show_default=True,
              help="The backup engine on the proxy (restic: incremental, parent found by host and paths).")  # fmt: skip
@click.option("--lease", "lease_s", type=click.FloatRange(1, 7 * 86400), default=None, metavar="SECONDS",
              help="The proxy's lease [default: the source agent's lease_default_s].")  # fmt: skip
@click.option("--freeze-timeout", type=click.FloatRange(0.1, 600), default=60.0, show_default=True, metavar="SECONDS")
@click.option("--event-timeout", type=click.FloatRange(0.1, 3600), default=60.0, show_default=True, metavar="SECONDS",
              help="The bound of every other writer event (prepare, thaw, post-snapshot, abort...).")  # fmt: skip
@click.option("--stall-timeout", "stall_s", type=click.FloatRange(1, 86400), default=STALL_DEFAULT_S, show_default=True,
              metavar="SECONDS", help="The proxy stops a backup whose progress stands still this long.")  # fmt: skip
@click.option("--no-backup-session", "no_backup_session", is_flag=True,
              help="Data mining: a persistent (app-rollback) set for the proxy; the source's session ends right "
              "after the handover, without BackupComplete; the command returns then.")  # fmt: skip
@click.option("--server-name", default=None, help="Host name the source's certificate must carry [default: HOST].")
@json_option
@pass_env
def offhost_backup(
    env: Env,
    source: str,
    proxy: str,
    volumes: tuple[str, ...],
    writer_specs: tuple[str, ...],
    repo: str,
    engine: str,
    lease_s: float | None,
    freeze_timeout: float,
    event_timeout: float,
    stall_s: float,
    no_backup_session: bool,
    server_name: str | None,
    as_json: bool,
) -> None:
    """Snapshot VOLUMEs on the source host and back them up on the proxy; BackupComplete only after success."""
    from snapport.agent.client import AgentClient, ClientTls  # noqa: PLC0415
    from snapport.agent.config import load_config  # noqa: PLC0415

    config = load_config(env.home, None)
    client = AgentClient(source, ClientTls.of(config, env.home), server_name=server_name, timeout_s=15.0)
    params: dict[str, Any] = {
        "volumes": list(volumes),
        "writers": list(writer_specs),
        "proxy": proxy,
        "repo": repo,
        "engine": engine,
        "lease_s": lease_s,
        "freeze_timeout_s": freeze_timeout,
        "event_timeout_s": event_timeout,
        "stall_s": stall_s,
        "backup_session": not no_backup_session,
    }
    job_id, result, phases = asyncio.run(_follow(client, params, as_json))
    if as_json:
        click.echo(json.dumps({**result.model_dump(mode="json"), "phases": phases, "job_id": job_id}, sort_keys=True))
        return
    freeze = f"freeze window {result.freeze_window_ms or 0:.1f} ms"
    if isinstance(result, DataMiningResult):
        click.echo(
            f"set {result.set_id} handed over to {result.proxy} (proxy job {result.proxy_job_id}, into "
            f"{result.location}); {freeze}; the session on {source} ended without BackupComplete (data mining)"
        )
        return
    click.echo(
        f"set {result.set_id} backed up on {result.proxy} into {result.location}: {result.files} files, "
        f"{result.bytes / 2**20:.1f} MiB; {freeze}, import {result.import_ms or 0:.0f} ms; "
        f"BackupComplete fired on {source}"
    )


async def _follow(
    client: Any, params: dict[str, Any], as_json: bool
) -> tuple[str, OffhostResult | DataMiningResult, list[dict[str, Any]]]:
    """Submit the job and poll it; phases stream as JSON lines on stderr (`--json`) or as rich progress bars."""
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn  # noqa: PLC0415

    phases: list[dict[str, Any]] = []
    started = time.monotonic()
    bars = Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=as_json,
    )
    current: TaskID | None = None
    last_event: tuple[Any, ...] = ()
    async with client:
        job = await client.submit_job("offhost-backup", params)
        with bars:
            while True:
                job = await client.get_job(job.id)
                phase, fraction = job.progress.phase, job.progress.fraction
                now = time.monotonic() - started
                if phase and (not phases or phases[-1]["phase"] != phase):
                    if phases:
                        phases[-1]["duration_s"] = round(now - phases[-1]["started_s"], 3)
                        if current is not None:
                            bars.update(current, completed=100)
                            bars.stop_task(current)
                    phases.append({"phase": phase, "started_s": round(now, 3)})
                    current = bars.add_task(phase, total=100)
                if current is not None and fraction is not None:
                    bars.update(current, completed=fraction * 100)
                if as_json and phase and (phase, fraction, job.progress.bytes_done) != last_event:
                    last_event = (phase, fraction, job.progress.bytes_done)
                    event = {"phase": phase, "fraction": fraction, "bytes_done": job.progress.bytes_done}
                    progress_line(now, event)
                if job.state.finished:
                    break
                await asyncio.sleep(0.25)
            if phases:
                phases[-1]["duration_s"] = round(time.monotonic() - started - phases[-1]["started_s"], 3)
            if current is not None and job.state.value == "succeeded":
                bars.update(current, completed=100)
    if job.state.value != "succeeded":
        raise _job_error(job)
    return str(job.id), _RESULT.validate_python(job.result), phases


def _job_error(job: Any) -> Exception:
    """The job's failure as the error class of its name (same exit code as a local failure)."""
    from snapport.errors import SnapportError  # noqa: PLC0415

    name = job.error.error if job.error else None
    message = job.error.message if job.error else f"job {job.id} ended {job.state.value}"
    return SnapportError.from_code(name, message)
