"""The agent as deployed: a real `snapport agent serve` process, mutual TLS with certificates from `snapport certs`,
clients with and without the right certificate, jobs queued beyond the pool, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
import pytest

from snapport.agent.certs import Role
from snapport.agent.client import AgentClient, ClientTls
from snapport.agent.config import AgentConfig, PeerConfig
from snapport.agent.tls import client_context
from snapport.errors import AccessDenied, AgentUnreachable
from snapport.model import JobState
from tests.support.agents import AgentProcess, Agents, Host, Site, cli, write_config

T = TypeVar("T")


def with_client(agent: AgentProcess, tls: ClientTls, use: Callable[[AgentClient], Awaitable[T]], **options: Any) -> T:
    async def main() -> T:
        async with AgentClient(agent.address, tls, **options) as client:
            return await use(client)

    return asyncio.run(main())


def raw_exchange(port: int, context: ssl.SSLContext) -> bytes | BaseException:
    """A TLS connection and one HTTP request, by hand: what came back, or the error that ended it."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            received = b""
            while chunk := tls.recv(4096):
                received += chunk
            return received
    except (ssl.SSLError, OSError) as exc:
        return exc


def trusting_site(site: Site) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(site.systemone.home / "certs" / "ca.crt"))
    return context


def test_a_client_without_a_certificate_is_refused(site: Site, systemone_agent: AgentProcess) -> None:
    answer = raw_exchange(systemone_agent.port, trusting_site(site))
    # TLS 1.3 lets the client finish its side of the handshake before the server checks: the refusal arrives as
    # an alert (or a closed connection) instead of any HTTP answer.
    assert not (isinstance(answer, bytes) and answer.startswith(b"HTTP/")), answer
    assert isinstance(answer, BaseException) or answer == b""


def test_a_certificate_from_another_ca_is_refused(site: Site, systemone_agent: AgentProcess) -> None:
    context = trusting_site(site)
    intruder = site.intruder.tls
    context.load_cert_chain(str(intruder.cert), str(intruder.key))
    answer = raw_exchange(systemone_agent.port, context)
    assert not (isinstance(answer, bytes) and answer.startswith(b"HTTP/")), answer

    tls = ClientTls(intruder.cert, intruder.key, site.systemone.tls.ca)
    with pytest.raises(AgentUnreachable):
        with_client(systemone_agent, tls, lambda c: c.health())
    with_client(systemone_agent, site.systemtwo.tls, lambda c: c.health())  # the agent still serves the site


def test_the_client_accepts_only_the_agent_it_expects(site: Site, systemone_agent: AgentProcess) -> None:
    two = site.systemtwo.tls
    foreign_ca = ClientTls(two.cert, two.key, site.intruder.tls.ca)
    with pytest.raises(AgentUnreachable, match="not trusted"):
        with_client(systemone_agent, foreign_ca, lambda c: c.health())
    with pytest.raises(AgentUnreachable, match="not trusted for systemtwo"):
        with_client(systemone_agent, two, lambda c: c.health(), server_name="systemtwo")
    with pytest.raises(AccessDenied, match="not a proxy host"):
        with_client(systemone_agent, two, lambda c: c.health(), expected_role=Role.PROXY)

    def as_peer(role: Role) -> AgentConfig:
        peer = PeerConfig(name="systemone", address=systemone_agent.address, role=role)
        return AgentConfig(host="systemtwo", role=Role.PROXY, peers=(peer,))

    async def ask_peer(config: AgentConfig) -> Any:
        async with AgentClient.for_peer(config, site.systemtwo.home, "systemone") as client:
            return await client.health()

    assert asyncio.run(ask_peer(as_peer(Role.PRODUCTION))).host == "systemone"
    with pytest.raises(AccessDenied, match="not a proxy host"):
        asyncio.run(ask_peer(as_peer(Role.PROXY)))
    health = with_client(
        systemone_agent, two, lambda c: c.health(), server_name="systemone", expected_role=Role.PRODUCTION
    )
    assert (health.host, health.role, health.peer.host, health.peer.role) == (
        "systemone",
        Role.PRODUCTION,
        "systemtwo",
        Role.PROXY,
    )


def test_the_wrong_role_gets_403_with_a_json_error(site: Site, systemone_agent: AgentProcess) -> None:
    two = site.systemtwo.tls

    async def submit() -> tuple[int, str, Any]:
        connector = aiohttp.TCPConnector(ssl=client_context(two.cert, two.key, two.ca))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.post(
                f"https://{systemone_agent.address}/v1/jobs", json={"kind": "test.sleep", "params": {"seconds": 0}}
            ) as response,
        ):
            return response.status, response.content_type, await response.json()

    status, content_type, body = asyncio.run(submit())
    assert (status, content_type) == (403, "application/json")
    assert body["error"] == "ACCESS_DENIED" and set(body) == {"error", "message", "advice"}
    assert "systemtwo (proxy) may not" in body["message"]
    with pytest.raises(AccessDenied):  # the client raises the same error by name
        with_client(systemone_agent, two, lambda c: c.submit_job("test.sleep", {"seconds": 0}))


def test_a_proxy_lists_the_jobs_with_the_cli(site: Site, systemone_agent: AgentProcess) -> None:
    async def submit(client: AgentClient) -> list[str]:
        return [str((await client.submit_job("test.sleep", {"seconds": 0, "label": "x" * 64})).id) for _ in range(40)]

    submitted = with_client(systemone_agent, site.systemone.tls, submit)
    answer = cli(site.systemtwo.home, "jobs", "--agent", systemone_agent.address, "--json").stdout
    assert len(answer) > 16 << 10  # more than one TLS record: the client reads the whole body
    assert set(submitted) <= {job["id"] for job in json.loads(answer)["jobs"]}
    refused = cli(
        site.systemtwo.home, "jobs", "--agent", systemone_agent.address, "--server-name", "systemtwo", check=False
    )
    assert refused.returncode == AgentUnreachable.exit_code
    assert refused.stderr.startswith("snapport: error [AGENT_UNREACHABLE]") and "Traceback" not in refused.stderr


def test_jobs_beyond_max_jobs_queue_and_run_in_order(site: Site, systemone_agent: AgentProcess) -> None:
    async def use(client: AgentClient) -> tuple[list[Any], Any, list[Any]]:
        submitted = [await client.submit_job("test.sleep", {"seconds": 0.6, "label": str(n)}) for n in range(5)]
        await asyncio.sleep(0.2)
        health = await client.health()
        during = [await client.get_job(job.id) for job in submitted]
        done = [await client.wait_job(job.id, timeout_s=20) for job in submitted]
        return during, health, done

    during, health, done = with_client(systemone_agent, site.systemone.tls, use)
    assert (health.jobs.running, health.jobs.max_jobs) == (2, 2) and health.jobs.queued >= 1
    states = "".join(j.state.value[0] for j in during)
    assert re.fullmatch("s*r{1,2}q+", states), states  # in order: some done, at most two running, the rest queued
    assert [j.state for j in done] == [JobState.SUCCEEDED] * 5
    starts = [j.started_at for j in done]
    assert starts == sorted(starts), "jobs started out of order"
    edges = sorted([(j.started_at, 1) for j in done] + [(j.finished_at, -1) for j in done])  # type: ignore[list-item]
    at_once = [sum(step for _, step in edges[: i + 1]) for i in range(len(edges))]
    assert max(at_once) == 2  # never more than two at once
    assert done[0].progress.fraction == 1.0 and done[0].result == {"slept_s": 0.6, "label": "0"}


def test_only_the_submitter_or_the_host_itself_cancels_a_job(site: Site, systemone_agent: AgentProcess) -> None:
    job = with_client(systemone_agent, site.systemone.tls, lambda c: c.submit_job("test.sleep", {"seconds": 30}))
    with pytest.raises(AccessDenied, match="belongs to systemone"):
        with_client(systemone_agent, site.systemtwo.tls, lambda c: c.cancel_job(job.id))

    async def cancel(client: AgentClient) -> Any:
        await client.cancel_job(job.id)
        return await client.wait_job(job.id, timeout_s=10)

    assert with_client(systemone_agent, site.systemone.tls, cancel).state is JobState.CANCELLED


def test_sigterm_stops_the_agent_cleanly_and_jobs_end_interrupted(site: Site, agents: Agents) -> None:
    three = site.systemthree  # at most one job at a time: one running, one queued

    def submit(agent: AgentProcess) -> list[uuid.UUID]:
        async def use(client: AgentClient) -> list[uuid.UUID]:
            running = await client.submit_job("test.sleep", {"seconds": 30, "blocking": True})
            queued = await client.submit_job("test.sleep", {"seconds": 30})
            await asyncio.sleep(0.3)
            return [running.id, queued.id]

        return with_client(agent, three.tls, use)

    agent = agents.start(three)
    jobs = submit(agent)
    started = time.monotonic()
    assert agent.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    lines = agent.log_path.read_text().splitlines()
    assert "Traceback" not in "\n".join(lines)
    events = [json.loads(line)["event"] for line in lines]  # every line is one JSON object
    assert events[-2:] == ["job.failed", "agent.stopped"] and "agent.stopping" in events

    # Killed outright, an agent cannot record anything: the next one marks what it left as interrupted.
    again = agents.start(three)
    killed_jobs = submit(again)
    again.stop(signal.SIGKILL)
    third = agents.start(three)
    recovered = [e for e in third.log() if e["event"] == "job.interrupted"]
    assert {e["job"] for e in recovered} == {str(j) for j in killed_jobs}

    async def states(client: AgentClient) -> dict[uuid.UUID, tuple[JobState, str | None]]:
        listing = await client.list_jobs()
        return {j.id: (j.state, j.error.error if j.error else None) for j in listing.jobs}

    seen = with_client(third, three.tls, states)
    for job_id in jobs + killed_jobs:
        assert seen[job_id] == (JobState.FAILED, "JOB_INTERRUPTED")
    assert third.stop() == 0


def test_one_agent_per_home_and_no_start_with_a_wrong_certificate(site: Site, agents: Agents, tmp_path: Any) -> None:
    first = agents.start(site.systemtwo, test_jobs=False)
    second = agents.start(site.systemtwo, test_jobs=False, wait=False)
    assert second.proc.wait(timeout=30) == 4  # BAD_STATE
    assert "an agent already runs" in second.log_path.read_text()
    assert first.proc.poll() is None
    assert first.stop() == 0

    # A home whose agent.toml claims another identity than its certificate carries.
    home = tmp_path / "liar"
    (home / "certs").mkdir(parents=True)
    for name in ("ca.crt", "systemtwo.crt", "systemtwo.key"):
        (home / "certs" / name).write_bytes((site.systemtwo.home / "certs" / name).read_bytes())
    write_config(home, host="systemtwo", role=Role.PRODUCTION)
    liar = agents.start(Host("systemtwo", home), wait=False)
    assert liar.proc.wait(timeout=30) == 21  # CERTIFICATE_ERROR
    assert "systemtwo (proxy), but agent.toml says" in liar.log_path.read_text()
