"""An agent in this process, on a fresh catalog: for routing and job tests that need no TLS or subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapport.agent.certs import Role
from snapport.agent.config import AgentConfig
from snapport.agent.jobs import JobRegistry
from snapport.agent.registry import job_kinds
from snapport.agent.service import Agent
from snapport.catalog import Catalog

MakeAgent = Callable[..., Agent]


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[MakeAgent]:
    made: list[Agent] = []

    def make(*, max_jobs: int = 2, registry: JobRegistry | None = None, **config: object) -> Agent:
        catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}", host="systemone")
        settings = AgentConfig(host="systemone", role=Role.PRODUCTION, max_jobs=max_jobs, **config)  # type: ignore[arg-type]
        agent = Agent(settings, tmp_path, catalog, registry or job_kinds(test_jobs=True))
        made.append(agent)
        return agent

    yield make
    for agent in made:
        agent.close()
        agent.catalog.close()
