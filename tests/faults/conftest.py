"""The fault tier: the results file for `reliability.record`, the doc's regeneration at the session's end, and a
two-host lab whose agents (either host's) can be restarted with a fault set."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.lab.agents import serve_argv, wait_listening
from snapport.osal import loop
from snapport.providers.reflink_array.array import Array
from tests.faults import reliability
from tests.faults.cases import OFF_FLOW, PREAMBLE
from tests.support.lab_under_test import LabUnderTest, running_lab


@pytest.fixture(scope="session", autouse=True)
def _reliability_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.getbasetemp() / "reliability-results.jsonl"
    previous = os.environ.get(reliability.RESULTS_ENV)
    os.environ[reliability.RESULTS_ENV] = str(path)
    yield path
    if os.environ.get(reliability.UPDATE_ENV) == "1":
        preamble = PREAMBLE + "".join(f"\n- `{p}`: {where}" for p, where in OFF_FLOW.items())
        reliability.write_doc(preamble, path)
    if previous is None:
        os.environ.pop(reliability.RESULTS_ENV, None)
    else:
        os.environ[reliability.RESULTS_ENV] = previous


class FaultLab(LabUnderTest):
    """A lab that is up, whose agents this fixture may replace (with a fault in their environment) by host key."""

    def __init__(self, directory: Path, suffix: str) -> None:
        super().__init__(directory, suffix)
        self.agents: dict[str, subprocess.Popen[bytes]] = {}  # the agents this fixture started, by host key

    def stop_agent(self, key: str, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop a host's agent (the one this fixture started, else the lab's, by its recorded pid); a dead one is
        only reaped."""
        if key == "two" and self.proxy_agent is not None:
            self.agents["two"], self.proxy_agent = self.proxy_agent, None
        started = self.agents.pop(key, None)
        if started is not None:
            if started.poll() is None:
                started.send_signal(sig)
            started.wait(timeout=60)
            return
        record = self.lab.process("agent", self.lab.host(key).name)
        if record is None or not record.pid or not Path(f"/proc/{record.pid}").exists():
            return
        os.kill(record.pid, sig)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{record.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)

    def start_agent(self, key: str, env: dict[str, str] | None = None) -> None:
        host = self.lab.host(key)
        log = self.directory.parent / f"agent-{key}-fault-{uuid.uuid4().hex[:6]}.out"  # outlives the lab
        with log.open("wb") as out:
            started = subprocess.Popen(host.command(serve_argv(), env=env), stdout=out, stderr=subprocess.STDOUT)
        self.agents[key] = started
        # Its own "listening" line first (cheaper than probing the port from inside the host), then the probe.
        deadline = time.monotonic() + 30
        while b'"agent.listening"' not in log.read_bytes() and started.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        wait_listening(host, self.port, log)

    def agent_alive(self, key: str) -> bool:
        started = self.agents.get(key)
        return started is not None and started.poll() is None

    def restart_agent(self, key: str, env: dict[str, str] | None = None) -> None:
        self.stop_agent(key)
        self.start_agent(key, env)

    def scrub(self) -> list[str]:
        """Remove what a failed case left, each by its exact name: mounts under either host's run directory, then
        every snapshot LUN of the array (unpresented from the hosts it names, its loop devices detached); what was
        removed. Only after the case's invariants were recorded: it never hides a failure."""
        removed = []
        for key in ("one", "two"):
            host = self.lab.host(key)
            run_dir = str(host.run_dir).rstrip("/") + "/"
            for m in reversed(host.mounts()):
                if m.mount_point.startswith(run_dir):
                    host.run(["umount", m.mount_point], timeout=60, check=False)
                    removed.append(f"mount {m.mount_point} on {key}")
        array = Array.open(self.lab.array_path)
        for lun in array.luns():
            if lun.id == self.lab.data_lun.lun_id:
                continue
            for name in lun.hosts:
                array.unpresent(lun.id, name)
            for device in array.local_devices(lun.id):
                loop.detach(array.runner, device)
            array.delete_lun(lun.id)
            removed.append(f"LUN {lun.id}")
        return removed

    def kill_started(self) -> None:
        for started in [*self.agents.values(), *([self.proxy_agent] if self.proxy_agent else [])]:
            if started.poll() is None:
                started.kill()
            started.wait(timeout=30)
        self.agents.clear()
        self.proxy_agent = None

    def release(self) -> None:
        self.kill_started()
        self.scrub()  # a failed case's leftovers would keep `lab down` from unmounting the array


@pytest.fixture(scope="module")
def fault_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    yield from running_lab(tmp_path_factory, "faults", FaultLab)
