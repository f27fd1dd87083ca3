"""A two-host lab that is up for a module of tests (random suffix, in a temporary directory), with what the e2e and
fault tests drive in it: the off-host backup, both hosts' catalogs, systemTwo's agent and link; torn down in a
finally, and nothing of it left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from snapport.catalog import Catalog, catalog_url
from snapport.lab import Lab
from snapport.lab.agents import serve_argv, wait_listening
from snapport.model import JobState
from snapport.osal import loop
from snapport.osal.runner import SubprocessRunner
from snapport.providers.reflink_array.array import Array
from tests.support.lab import SMALL, leftovers, needs_lab, new_suffix, recorded_processes, snapport

E2E_MARKS = [*needs_lab(), pytest.mark.slow]  # what every module of tests in such a lab is marked with


class LabUnderTest:
    """A lab that is up, with helpers to drive the off-host backup and to swap the proxy's agent."""

    def __init__(self, directory: Path, suffix: str) -> None:
        self.directory = directory
        self.suffix = suffix
        self.lab = Lab.open(directory)
        self.port = self.lab.state.agent_port
        self.proxy_agent: subprocess.Popen[bytes] | None = None  # one this fixture started (else the lab's)

    def offhost_argv(self, repo: Path, *extra: str) -> list[str]:
        lab = self.lab
        return lab.one.command(
            [sys.executable, "-m", "snapport", "offhost-backup",
             "--source", f"{lab.one.ip}:{self.port}", "--proxy", f"{lab.two.ip}:{self.port}",
             "--volume", str(lab.data_mount), "--writer", f"sqlite:{lab.data_mount}/app.db",
             "--repo", str(repo), "--json", *extra]
        )  # fmt: skip

    def offhost(self, repo: Path, *extra: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        argv = self.offhost_argv(repo, *extra)
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)

    def catalog(self, key: str) -> Catalog:
        return Catalog.open(catalog_url(self.lab.host(key).home))

    def backup_completes(self, set_id: uuid.UUID) -> int:
        catalog = self.catalog("one")
        try:
            return sum(1 for e in catalog.writer_events(set_id) if e.event == "backup-complete")
        finally:
            catalog.close()

    def set_state(self, key: str, set_id: uuid.UUID) -> str:
        catalog = self.catalog(key)
        try:
            return catalog.get_set(set_id).state.value
        finally:
            catalog.close()

    def proxy_jobs(self, states: Any = None) -> list[Any]:
        """systemTwo's proxy-backup jobs (from its catalog). Their creation times come from the proxy's clock, which
        a test may have set off: ask for a set's job, or a running one, rather than for the newest."""
        catalog = self.catalog("two")
        try:
            return catalog.list_jobs(states, kind="proxy-backup")
        finally:
            catalog.close()

    def proxy_job(self, set_id: uuid.UUID) -> Any:
        """The proxy-backup job of `set_id` (named in its parameters) on systemTwo, or None."""
        jobs = [j for j in self.proxy_jobs() if json.loads(j.params_json).get("set_id") == str(set_id)]
        return jobs[-1] if jobs else None

    def exposed_on_two(self) -> list[str]:
        run_dir = str(self.lab.two.run_dir)
        return [m.mount_point for m in self.lab.two.mounts() if m.mount_point.startswith(run_dir)]

    def snapshot_loops(self) -> list[str]:
        """Loop devices attached (on this machine: the hosts share the kernel) to a LUN image of the lab's array
        other than the data volume's: snapshots someone still presents."""
        array = Array.open(self.lab.array_path)
        data_lun = self.lab.data_lun.lun_id
        assert data_lun is not None
        data_image = array.image(data_lun)
        luns = str(data_image.parent) + "/"
        return [
            f"{d.device} on {d.backing_file}"
            for d in loop.attached(SubprocessRunner())
            if d.backing_file.startswith(luns) and d.backing_file != str(data_image)
        ]

    def stop_proxy_agent(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop systemTwo's agent: the one this fixture started, else the lab's (by its recorded pid)."""
        if self.proxy_agent is not None:
            self.proxy_agent.send_signal(sig)
            self.proxy_agent.wait(timeout=60)
            self.proxy_agent = None
            return
        record = self.lab.process("agent", "systemTwo")
        assert record is not None and record.pid
        os.kill(record.pid, sig)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{record.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def start_proxy_agent(self, env: dict[str, str] | None = None) -> None:
        log = self.directory.parent / f"agent-two-e2e-{uuid.uuid4().hex[:6]}.out"  # outlives the lab
        with log.open("wb") as out:
            self.proxy_agent = subprocess.Popen(
                self.lab.two.command(serve_argv(), env=env), stdout=out, stderr=subprocess.STDOUT
            )
        wait_listening(self.lab.two, self.port, log)

    def wait_proxy_phase(self, phase: str, *, timeout_s: float = 60) -> Any:
        deadline = time.monotonic() + timeout_s
        running: list[Any] = []
        while time.monotonic() < deadline:
            running = self.proxy_jobs([JobState.RUNNING])
            if len(running) == 1 and running[0].progress.phase == phase:
                return running[0]
            time.sleep(0.1)
        raise AssertionError(f"the proxy job did not reach {phase}: {running}")

    def release(self) -> None:
        """Stop what the tests started in the lab, before `lab down`."""
        if self.proxy_agent is not None:
            self.proxy_agent.kill()
            self.proxy_agent.wait(timeout=30)

    def link(self, up: bool) -> None:
        netns = self.lab.two.netns
        subprocess.run(["ip", "-n", netns, "link", "set", "lab0", "up" if up else "down"], check=True, timeout=30)


def wait_until(condition: Any, *, timeout_s: float, what: str) -> None:
    """Poll `condition` (a callable) until it holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


L = TypeVar("L", bound="LabUnderTest")


def running_lab(tmp_path_factory: pytest.TempPathFactory, name: str, cls: type[L], *options: str) -> Iterator[L]:
    """One lab for a module (`options`: more of `lab up`'s, e.g. `--storage ceph`): up, handed out as `cls`, then
    what the tests started released, `lab down`, and nothing of the lab left behind."""
    directory = tmp_path_factory.mktemp(name) / "lab"
    suffix = new_suffix()
    up = snapport("lab", "up", "--dir", str(directory), "--suffix", suffix, *SMALL, *options, "--json", timeout=300)
    under_test: L | None = None
    try:
        assert up.returncode == 0, up.stderr
        under_test = cls(directory, suffix)
        yield under_test
    finally:
        processes = recorded_processes(directory)
        if under_test is not None:
            subprocess.run(["ip", "-n", f"snapport-two-{suffix}", "link", "set", "lab0", "up"], check=False)
            under_test.release()
        down = snapport("lab", "down", "--dir", str(directory), timeout=300)
        assert down.returncode == 0, down.stderr
        assert leftovers(directory, suffix, processes) == []


def result_of(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON result of a `snapport ... --json` that must have succeeded."""
    assert done.returncode == 0, done.stderr[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result
