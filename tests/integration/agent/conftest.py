"""Agents as real processes (`tests.support.agents`) for a site of three hosts, and the array world for the engine
child's tests. Every process started here is stopped here, by its pid."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.agent.certs import Role, init_ca, issue
from tests.support.agents import AgentProcess, Agents, Host, Site, cli_json, write_config
from tests.support.array_world import world

__all__ = ["world"]


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("site")
    one, two, three = (
        Host("systemone", root / "one"),
        Host("systemtwo", root / "two"),
        Host("systemthree", root / "three"),
    )
    cli_json(one.home, "certs", "init")
    cli_json(one.home, "certs", "issue", "systemone", "--role", "production", "--ip", "127.0.0.1")
    for host, role in ((two, "proxy"), (three, "production")):
        cli_json(
            one.home,
            "certs",
            "issue",
            host.name,
            "--role",
            role,
            "--ip",
            "127.0.0.1",
            "--out",
            str(host.home / "certs"),
        )
    # Another site's CA, and its certificate for the name systemone (made in this process: it is not under test).
    intruder = Host("systemone", root / "intruder")
    init_ca(intruder.home / "certs")
    issue(intruder.home / "certs", "systemone", Role.PRODUCTION, ips=["127.0.0.1"])
    for host, role, jobs in ((one, Role.PRODUCTION, 2), (two, Role.PROXY, 2), (three, Role.PRODUCTION, 1)):
        write_config(host.home, host=host.name, role=role, max_jobs=jobs)
    return Site(one, two, three, intruder)


@pytest.fixture(scope="module")
def module_agents(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    agents = Agents(tmp_path_factory.mktemp("agent-logs"))
    try:
        yield agents
    finally:
        agents.stop_all()


@pytest.fixture
def agents(tmp_path: Path) -> Iterator[Agents]:
    made = Agents(tmp_path)
    try:
        yield made
    finally:
        made.stop_all()


@pytest.fixture(scope="module")
def systemone_agent(site: Site, module_agents: Agents) -> AgentProcess:
    """systemone's agent (production, at most 2 jobs at once), with the test-only job kinds."""
    return module_agents.start(site.systemone)
