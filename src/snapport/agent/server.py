"""`snapport agent serve`: the HTTPS server, its start (own certificate checked, interrupted jobs recovered) and its
graceful stop on SIGTERM or SIGINT (queued and running jobs recorded as interrupted, then exit 0)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Collection, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from snapport import __version__
from snapport.agent import registry as agent_registry
from snapport.agent.certs import identity_of, load_certificate, verify_signed_by
from snapport.agent.config import AgentConfig
from snapport.agent.dispatch import PeerSource, Route, build_app, tls_peer
from snapport.agent.jobs import JobRegistry
from snapport.agent.log import log
from snapport.agent.openapi import OPENAPI, openapi_document
from snapport.agent.service import Agent
from snapport.agent.tls import server_context
from snapport.catalog import Catalog
from snapport.errors import BadState, CertificateError, SetInProgress, SnapportError
from snapport.osal.lock import FileLock

REQUEST_DRAIN_S = 5.0  # how long stopping waits for requests in flight
REPORT_WAIT_S = 15.0  # how long an offline recovery waits for its failure reports to reach the other hosts
_EXPIRY_WARNING = timedelta(days=30)


def make_app(
    agent: Agent, routes: Collection[Route] | None = None, *, peer_source: PeerSource = tls_peer
) -> web.Application:
    """The application for `agent`: its routes (default: the registry's) and their OpenAPI document."""
    routes = agent_registry.routes() if routes is None else routes
    app = build_app(agent, routes, peer_source=peer_source)
    app[OPENAPI] = openapi_document(routes, agent.registry)
    return app


def check_own_certificate(config: AgentConfig, home: Path) -> None:
    """Refuse to start with a certificate that is not this host's, not in its role, or not from the site CA."""
    cert = load_certificate(config.cert_path(home))
    identity = identity_of(cert)
    if not identity.is_host(config.host) or identity.role is not config.role:
        raise CertificateError(
            f"{config.cert_path(home)} is the certificate of {identity}, but agent.toml says this host is "
            f"{config.host} ({config.role.value})"
        )
    verify_signed_by(cert, load_certificate(config.ca_path(home)))
    if identity.not_after - datetime.now(UTC) < _EXPIRY_WARNING:
        log("certificate.expires-soon", level=30, not_after=identity.not_after.isoformat())


def serve(config: AgentConfig, home: Path, catalog: Catalog, *, registry: JobRegistry | None = None) -> None:
    """Run the agent until SIGTERM or SIGINT; one agent per home (a second is refused: it would take the first's
    running jobs for leftovers of a crash)."""
    check_own_certificate(config, home)
    context = server_context(config.cert_path(home), config.key_path(home), config.ca_path(home))
    with _one_agent(home):
        agent = Agent(config, home, catalog, registry or agent_registry.job_kinds())
        try:
            asyncio.run(_serve(agent, context))
        finally:
            agent.close()


@contextlib.contextmanager
def _one_agent(home: Path) -> Iterator[None]:
    lock = FileLock(home / "locks" / "agent.lock", timeout_s=0, what="this home's agent lock")
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock)
        except SetInProgress:
            holder = lock.path.read_text().strip() or "?"
            raise BadState(f"an agent already runs on {home} (pid {holder}); stop it first") from None
        yield


async def _serve(agent: Agent, ssl_context: Any) -> None:
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_loop_error)
    stop = asyncio.Event()
    received: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    await agent_registry.reconcile(agent, await agent.jobs.recover())
    await asyncio.to_thread(reconcile_machine, agent)
    config = agent.config
    runner = web.AppRunner(make_app(agent), access_log=None, handle_signals=False, shutdown_timeout=REQUEST_DRAIN_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.listen_host, config.listen_port, ssl_context=ssl_context)
        await site.start()
        host, port = runner.addresses[0][:2]
        log(
            "agent.listening",
            host=host,
            port=port,
            name=config.host,
            role=config.role.value,
            version=__version__,
            pid=os.getpid(),
            max_jobs=config.max_jobs,
            kinds=agent.registry.names(),
        )
        await stop.wait()
        log("agent.stopping", signal=received[0] if received else None)
        await agent.jobs.shutdown(config.shutdown_grace_s)
    finally:
        with contextlib.suppress(Exception):
            await runner.cleanup()
    log("agent.stopped")


def reconcile_machine(agent: Agent) -> None:
    """At start, once jobs and leases are recovered: bring the machine in line with the catalog (docs/doctor.md),
    before any request is served. Each finding and what was done is logged."""
    from snapport.coordinator.host import Host, run_dir  # noqa: PLC0415
    from snapport.coordinator.reconcile import Depth, reconcile  # noqa: PLC0415
    from snapport.osal.host import this_host_name  # noqa: PLC0415

    host = Host(name=this_host_name(), home=agent.home, catalog=agent.catalog, run_dir=run_dir())
    try:
        report = reconcile(host, repair=True, depth=Depth.FULL, agent_running=True)
    except SnapportError as exc:  # the agent still starts: `snapport doctor` shows what is left
        log("reconcile.failed", level=40, error=exc.code, message=exc.message)
        return
    for repair in report.repaired:
        log("reconcile.repaired", kind=repair.kind, object=repair.object, action=repair.action)
    for left in report.left:
        log("reconcile.left", level=30, kind=left.kind, object=left.object, detail=left.detail)


def recover_offline(config: AgentConfig, home: Path, catalog: Catalog) -> None:
    """The agent's start-up recovery of its jobs and leases, for a home whose agent is not running (`snapport
    doctor --repair`): the interrupted jobs are failed, each protocol cleans up after them and tells the other
    host. Refused (`BadState`) if an agent runs."""
    with _one_agent(home):
        agent = Agent(config, home, catalog, agent_registry.job_kinds())
        try:
            asyncio.run(_recover(agent))
        finally:
            agent.close()


async def _recover(agent: Agent) -> None:
    await agent_registry.reconcile(agent, await agent.jobs.recover())
    await agent.background_settled(REPORT_WAIT_S)  # failure reports to other hosts


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """asyncio's complaints (a TLS handshake refused, a peer gone mid-write) as one log line, not a traceback."""
    error = context.get("exception")
    log(
        "loop.error",
        level=30,
        message=context.get("message"),
        error=None if error is None else f"{type(error).__name__}: {error}",
    )
