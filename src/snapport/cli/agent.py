"""`snapport agent init|serve|health` and `snapport jobs`: this host's agent, and other hosts' agents."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from snapport.cli.env import Env, json_option, pass_env
from snapport.cli.output import emit_json, fields, table

if TYPE_CHECKING:
    from snapport.agent.client import AgentClient

F = TypeVar("F", bound=Callable[..., Any])

_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The agent configuration [default: $SNAPPORT_HOME/agent.toml].",
)


@click.group("agent")
def agent() -> None:
    """This host's agent: the HTTPS service (mutual TLS) other hosts talk to."""


@agent.command("init")
@click.option("--host", "host", default=None, help="This host's name [default: $SNAPPORT_HOST or the system's].")
@click.option("--role", type=click.Choice(["production", "proxy"]), required=True, help="This host's role.")
@click.option("--listen", default="127.0.0.1:8443", show_default=True, help="Address and port to listen on.")
@click.option("--max-jobs", type=int, default=2, show_default=True, help="Jobs run at once; the rest queue.")
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="NAME=ROLE@HOST:PORT",
    help="Another agent this host talks to (repeatable), e.g. systemtwo=proxy@198.18.0.2:8443.",
)
@click.option("--force", is_flag=True, help="Replace an existing agent.toml.")
@json_option
@pass_env
def init(
    env: Env,
    host: str | None,
    role: str,
    listen: str,
    max_jobs: int,
    peers: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Write $SNAPPORT_HOME/agent.toml (certificates are looked for in $SNAPPORT_HOME/certs)."""
    from snapport.agent.config import AgentConfig, config_path, parse_address, render_config  # noqa: PLC0415
    from snapport.errors import ConfigError, UsageError  # noqa: PLC0415
    from snapport.osal.host import this_host_name  # noqa: PLC0415

    address = parse_address(listen, any_port=True)
    peer_rows = []
    for spec in peers:
        name, _, rest = spec.partition("=")
        peer_role, _, peer_address = rest.partition("@")
        if not (name and peer_role and peer_address):
            raise UsageError(f"--peer {spec!r}: expected NAME=ROLE@HOST:PORT")
        peer_rows.append({"name": name, "role": peer_role, "address": peer_address})
    text = render_config(
        _validated(
            AgentConfig,
            {
                "host": host or this_host_name(),
                "role": role,
                "listen_host": address.host,
                "listen_port": address.port,
                "max_jobs": max_jobs,
                "peers": peer_rows,
            },
        )
    )
    path = config_path(env.home)
    if path.exists() and not force:
        raise ConfigError(f"{path} exists; pass --force to replace it")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
    if as_json:
        emit_json({"config": str(path)})
    else:
        click.echo(f"wrote {path}")


def _validated(model: Any, data: dict[str, Any]) -> Any:
    from pydantic import ValidationError  # noqa: PLC0415

    from snapport.agent.config import describe_validation  # noqa: PLC0415
    from snapport.errors import UsageError  # noqa: PLC0415

    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise UsageError(describe_validation(exc)) from None


@agent.command("serve")
@_config_option
@click.option("--debug-log", is_flag=True, help="Log debug events and tracebacks too.")
@pass_env
def serve(env: Env, config_file: Path | None, debug_log: bool) -> None:
    """Run the agent until SIGTERM or SIGINT; logs are JSON lines on stderr."""
    from snapport.agent import log  # noqa: PLC0415
    from snapport.agent.config import load_config  # noqa: PLC0415
    from snapport.agent.server import serve as run_agent  # noqa: PLC0415

    config = load_config(env.home, config_file)
    log.setup(debug=debug_log)
    run_agent(config, env.home, env.catalog)


# -- clients of an agent ------------------------------------------------------------------------------------------


def client_options(command: F) -> F:
    """`--agent HOST:PORT` and how to reach it: this host's certificate (from agent.toml unless given)."""
    options = [
        click.option("--agent", "address", required=True, metavar="HOST:PORT", help="The agent to ask."),
        click.option(
            "--server-name", default=None, help="Host name the agent's certificate must carry [default: HOST]."
        ),
        click.option(
            "--cert", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Client certificate."
        ),
        click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Its key."),
        click.option("--ca", type=click.Path(dir_okay=False, path_type=Path), default=None, help="The site CA."),
        _config_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _client(
    env: Env,
    address: str,
    server_name: str | None,
    cert: Path | None,
    key: Path | None,
    ca: Path | None,
    config_file: Path | None,
) -> AgentClient:
    from snapport.agent.client import AgentClient, ClientTls  # noqa: PLC0415
    from snapport.agent.config import config_path, load_config  # noqa: PLC0415
    from snapport.errors import UsageError  # noqa: PLC0415

    if cert is None or key is None or ca is None:
        if config_file is None and not config_path(env.home).exists():
            raise UsageError("give --cert, --key and --ca, or write this host's agent.toml (`snapport agent init`)")
        config = load_config(env.home, config_file)
        tls = ClientTls.of(config, env.home)
        tls = ClientTls(cert or tls.cert, key or tls.key, ca or tls.ca)
    else:
        tls = ClientTls(cert, key, ca)
    return AgentClient(address, tls, server_name=server_name)


def with_client(command: Callable[..., Any]) -> Callable[..., Any]:
    """Hand the command an opened `AgentClient` (closed after it) instead of the connection options."""

    @functools.wraps(command)
    def wrapper(
        env: Env,
        address: str,
        server_name: str | None,
        cert: Path | None,
        key: Path | None,
        ca: Path | None,
        config_file: Path | None,
        **kwargs: Any,
    ) -> None:
        client = _client(env, address, server_name, cert, key, ca, config_file)

        async def run() -> None:
            async with client:
                await command(client, **kwargs)

        asyncio.run(run())

    return wrapper


@agent.command("health")
@client_options
@json_option
@pass_env
@with_client
async def health(client: AgentClient, as_json: bool) -> None:
    """Ask an agent who it is (and who it takes this host for)."""
    answer = await client.health()
    if as_json:
        emit_json(answer.model_dump(mode="json"))
        return
    fields(
        [
            ("agent", f"{answer.host} ({answer.role.value})"),
            ("version", answer.version),
            ("you are", f"{answer.peer.host} ({answer.peer.role.value})"),
            ("started", answer.started_at.isoformat(timespec="seconds")),
            (
                "jobs",
                f"{answer.jobs.running} running, {answer.jobs.queued} queued, at most {answer.jobs.max_jobs} at once",
            ),
        ]
    )


@click.command("jobs")
@client_options
@click.option(
    "--state",
    type=click.Choice(["queued", "running", "succeeded", "failed", "cancelled"]),
    default=None,
    help="Only jobs in this state.",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="The newest N jobs.")
@json_option
@pass_env
@with_client
async def jobs(client: AgentClient, state: str | None, limit: int, as_json: bool) -> None:
    """List an agent's jobs, oldest first."""
    from snapport.model import JobState  # noqa: PLC0415

    listing = await client.list_jobs(state=None if state is None else JobState(state), limit=limit)
    if as_json:
        emit_json(listing.model_dump(mode="json"))
        return
    table(
        None,
        ["JOB", "KIND", "STATE", "BY", "PHASE", "PROGRESS", "CREATED", "ERROR"],
        [
            (
                job.id,
                job.kind,
                job.state.value,
                job.requested_by,
                job.progress.phase,
                None if job.progress.fraction is None else f"{job.progress.fraction:.0%}",
                job.created_at.isoformat(timespec="seconds"),
                None if job.error is None else f"{job.error.error}: {job.error.message}",
            )
            for job in listing.jobs
        ],
    )
