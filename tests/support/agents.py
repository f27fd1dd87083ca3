"""Agents under test: real `snapport agent serve` processes on 127.0.0.1 (a free port each) in temporary homes with
certificates made by `snapport certs`, each stopped by its pid; and the in-process agent's coroutines awaited from
synchronous tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from snapport.agent.client import ClientTls
from snapport.agent.config import AgentConfig, render_config

T = TypeVar("T")

START_TIMEOUT_S = 30.0


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`snapport ARGS` as a user runs it, in `home`."""
    env = {**os.environ, "SNAPPORT_HOME": str(home)}
    env.pop("SNAPPORT_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "snapport", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def cli_json(home: Path, *args: str) -> Any:
    return json.loads(cli(home, *args, "--json").stdout)


@dataclass
class Host:
    """A host's home: its certificates, its agent.toml, its catalog."""

    name: str
    home: Path

    @property
    def tls(self) -> ClientTls:
        certs = self.home / "certs"
        return ClientTls(certs / f"{self.name}.crt", certs / f"{self.name}.key", certs / "ca.crt")


@dataclass
class Site:
    """One site CA (in systemone's home) with three hosts, and an intruder whose certificate another CA issued
    for the name systemone."""

    systemone: Host
    systemtwo: Host
    systemthree: Host
    intruder: Host


def write_config(home: Path, **settings: Any) -> None:
    """An agent.toml listening on 127.0.0.1 on a free port (the agent logs which)."""
    config = AgentConfig(listen_host="127.0.0.1", listen_port=0, **settings)
    (home / "agent.toml").write_text(render_config(config))


@dataclass
class AgentProcess:
    """`snapport agent serve` in a host's home, its JSON log in a file."""

    host: Host
    log_path: Path
    proc: subprocess.Popen[bytes]
    port: int = 0
    stopped: bool = field(default=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.log_path.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "agent.listening":
                    self.port = int(event["port"])
                    return
            if self.proc.poll() is not None:
                raise AssertionError(f"the agent exited {self.proc.returncode}: {self.log_path.read_text()}")
            time.sleep(0.05)
        raise AssertionError(f"the agent did not listen within {START_TIMEOUT_S} s: {self.log_path.read_text()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Signal the agent (by its pid) and wait for it; SIGKILL if it does not end in time."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
                raise AssertionError(f"the agent ignored {sig.name} for {timeout_s} s") from None
        self.stopped = True
        return self.proc.returncode


class Agents:
    """Starts agents and stops every one of them at the end, by pid."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[AgentProcess] = []

    def start(self, host: Host, *, test_jobs: bool = True, wait: bool = True) -> AgentProcess:
        env = {**os.environ, "SNAPPORT_HOME": str(host.home)}
        env.pop("SNAPPORT_TEST_JOBS", None)
        if test_jobs:
            env["SNAPPORT_TEST_JOBS"] = "1"
        log_path = self.logs / f"{host.name}-{len(self.started)}.log"
        with log_path.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "snapport", "agent", "serve"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
        agent = AgentProcess(host, log_path, proc)
        self.started.append(agent)
        if wait:
            agent.wait_listening()
        return agent

    def stop_all(self) -> None:
        for agent in self.started:
            if agent.proc.poll() is None:
                os.kill(agent.proc.pid, signal.SIGKILL)
                agent.proc.wait(timeout=10)


def run(coroutine: Awaitable[T]) -> T:
    """Await `coroutine` in a fresh event loop."""

    async def main() -> T:
        return await coroutine

    return asyncio.run(main())
