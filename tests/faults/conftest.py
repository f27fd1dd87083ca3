"""The fault tier: the results file for `reliability.record`, the doc's regeneration at the session's end, and a
two-host lab whose agents (either host's) can be restarted with a fault set."""

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
from typing import Any

import pytest

from snapport.lab import ceph
from snapport.lab.agents import serve_argv, wait_listening
from snapport.lab.config import DATA_IMAGE
from snapport.osal import loop
from snapport.osal.runner import SubprocessRunner
from snapport.providers.ceph_rbd.presentation import FUSE_TYPE
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

    def storage_leftovers(self) -> list[str]:
        """What the storage keeps of the sets: snapshot LUNs and orphan images of the array, loop devices on an
        array image but the data volume's."""
        array = Array.open(self.lab.array_path)
        data_lun = self.lab.data_lun.lun_id
        assert data_lun is not None
        left = [f"LUN {lun.id} (set {lun.snapshot_of_set})" for lun in array.luns() if lun.id != data_lun]
        left += [f"orphan image {p.name}" for p in array.orphan_images()]
        data_image = str(array.image(data_lun))
        luns_dir = str(array.image(data_lun).parent) + "/"
        left += [
            f"loop {d.device} on {d.backing_file}"
            for d in loop.attached(SubprocessRunner())
            if d.backing_file.startswith(luns_dir) and d.backing_file != data_image
        ]
        return left

    def unmount_run_dirs(self) -> list[str]:
        removed = []
        for key in ("one", "two"):
            host = self.lab.host(key)
            run_dir = str(host.run_dir).rstrip("/") + "/"
            for m in reversed(host.mounts()):
                if m.mount_point.startswith(run_dir):
                    host.run(["umount", m.mount_point], timeout=60, check=False)
                    removed.append(f"mount {m.mount_point} on {key}")
        return removed

    def scrub(self) -> list[str]:
        """Remove what a failed case left, each by its exact name: mounts under either host's run directory, then
        every snapshot LUN of the array (unpresented from the hosts it names, its loop devices detached); what was
        removed. Only after the case's invariants were recorded: it never hides a failure."""
        removed = self.unmount_run_dirs()
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


class CephFaultLab(FaultLab):
    """The same, its data volume an RBD image of the Ceph cluster the lab started (`lab up --storage ceph`)."""

    @property
    def site(self) -> ceph.CephSite:
        return ceph.site(self.directory / "ceph")

    def osd_pid(self) -> int:
        """The pid of the cluster's one OSD, as `lab up` recorded it."""
        state = ceph.ClusterState.model_validate_json((self.directory / "ceph" / ceph.STATE_FILE).read_text())
        pids = [r.pid for r in state.processes if r.role == "ceph-osd" and r.pid]
        assert len(pids) == 1, state.processes
        return pids[0]

    def _rbd_json(self, *args: str) -> Any:
        return json.loads(ceph.admin(self.site, "rbd", *args, "--format", "json") or "[]")

    def storage_leftovers(self) -> list[str]:
        """Snapshots and snapport records on the data image, any other image in the pool (a clone), and rbd-fuse
        mounts or loop devices on this machine but the data volume's."""
        pool = self.site.pool
        left = [f"image {name}" for name in self._rbd_json("ls", pool) if name != DATA_IMAGE]
        left += [f"snapshot {s['name']}" for s in self._rbd_json("snap", "ls", "--all", f"{pool}/{DATA_IMAGE}")]
        records = self._rbd_json("image-meta", "list", f"{pool}/{DATA_IMAGE}")
        left += [f"record {k}" for k in (records if isinstance(records, dict) else {}) if k.startswith("snapport.")]
        data_file = f"/{DATA_IMAGE}/{DATA_IMAGE}"
        left += [
            f"loop {d.device} on {d.backing_file}"
            for d in loop.attached(SubprocessRunner())
            if d.backing_file.startswith(str(self.directory)) and not d.backing_file.endswith(data_file)
        ]
        for key in ("one", "two"):
            left += [
                f"rbd-fuse mount {m.mount_point} on {key}"
                for m in self.lab.host(key).mounts()
                if m.fs_type == FUSE_TYPE and not m.mount_point.endswith(f"/{DATA_IMAGE}")
            ]
        return left

    def scrub(self) -> list[str]:
        """Remove what a failed case left, each by its name: run-directory mounts, the clones (unpresented on the
        proxy first), the data image's snapshots and records."""
        removed = self.unmount_run_dirs()
        pool = self.site.pool
        for name in self._rbd_json("ls", pool):
            if name == DATA_IMAGE:
                continue
            for key in ("two", "one"):
                unpresent = [sys.executable, "-m", "snapport", "rbd", "unpresent", f"{pool}/{name}"]
                self.lab.host(key).run(unpresent, timeout=120, check=False)
            ceph.admin(self.site, "rbd", "rm", f"{pool}/{name}")
            removed.append(f"image {name}")
        for snap in self._rbd_json("snap", "ls", f"{pool}/{DATA_IMAGE}"):
            ceph.admin(self.site, "rbd", "snap", "rm", f"{pool}/{DATA_IMAGE}@{snap['name']}")
            removed.append(f"snapshot {snap['name']}")
        records = self._rbd_json("image-meta", "list", f"{pool}/{DATA_IMAGE}")
        for key in records if isinstance(records, dict) else {}:
            if key.startswith("snapport."):
                ceph.admin(self.site, "rbd", "image-meta", "remove", f"{pool}/{DATA_IMAGE}", key)
                removed.append(f"record {key}")
        return removed


@pytest.fixture(scope="module")
def fault_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultLab]:
    yield from running_lab(tmp_path_factory, "faults", FaultLab)


@pytest.fixture(scope="module")
def ceph_fault_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephFaultLab]:
    reason = ceph.unavailable()
    if reason is not None:
        pytest.skip(reason)
    yield from running_lab(tmp_path_factory, "faults-ceph", CephFaultLab, "--storage", "ceph")
