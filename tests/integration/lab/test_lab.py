"""`snapport lab up` builds two hosts that reach each other over 198.18.0.0/15 only, each with its own mounts and
home, an array both see, and an application writing on systemOne; `lab down` leaves nothing behind."""

from __future__ import annotations

import ipaddress
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from snapport.lab import Lab
from snapport.lab.sample_app import last_committed_before
from snapport.lab.state import ProcessRecord
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner
from tests.support.lab import (
    SMALL,
    leftovers,
    needs_lab,
    new_suffix,
    ok_json,
    recorded_processes,
    snapport,
)

pytestmark = [*needs_lab(), pytest.mark.slow]


@dataclass
class UpLab:
    directory: Path
    suffix: str
    summary: dict[str, Any]
    lab: Lab
    processes: list[ProcessRecord]

    def exec(self, host: str, *argv: str) -> Any:
        return snapport("lab", "exec", "--dir", str(self.directory), host, "--", *argv)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpLab]:
    directory = tmp_path_factory.mktemp("lab") / "lab"
    suffix = new_suffix()
    summary = ok_json("lab", "up", "--dir", str(directory), "--suffix", suffix, *SMALL)
    lab = Lab.open(directory, SubprocessRunner())
    processes = recorded_processes(directory)
    try:
        yield UpLab(directory, suffix, summary, lab, processes)
    finally:
        snapport("lab", "down", "--dir", str(directory))  # the last test does it; this is for a failed run
        assert leftovers(directory, suffix, processes) == []


def test_up_reports_the_hosts(up: UpLab) -> None:
    hosts = up.summary["hosts"]
    assert list(hosts) == ["systemOne", "systemTwo"]
    assert hosts["systemOne"]["address"] == "198.18.0.1/30"
    assert hosts["systemTwo"]["address"] == "198.18.0.2/30"
    assert hosts["systemOne"]["netns"] == f"snapport-one-{up.suffix}"
    assert hosts["systemTwo"]["netns"] == f"snapport-two-{up.suffix}"
    assert hosts["systemOne"]["processes"]["holder"]["running"]
    assert hosts["systemOne"]["processes"]["sample-app"]["running"]
    assert up.summary["status"] == "up"
    for host in hosts.values():
        assert ipaddress.ip_interface(host["address"]).ip in ipaddress.ip_network("198.18.0.0/15")


def test_hosts_reach_each_other_and_only_inside_their_namespaces(up: UpLab) -> None:
    for host, peer in (("systemOne", "198.18.0.2"), ("systemTwo", "198.18.0.1")):
        done = up.exec(host, sys.executable, "-m", "snapport.lab.netcheck", peer)
        assert done.returncode == 0, done.stdout + done.stderr
        addresses = up.exec(host, "ip", "-j", "-4", "address", "show")
        assert done.returncode == 0
        found = {a["local"] for link in json.loads(addresses.stdout) for a in link["addr_info"]}
        assert found == {"127.0.0.1", up.lab.host(host).address.ip.compressed}
    machine = SubprocessRunner().run(["ip", "-j", "-4", "address", "show"]).stdout
    assert "198.18." not in machine  # the machine itself has no lab address, so no lab traffic leaves it


def test_data_volume_is_mounted_on_systemone_only(up: UpLab) -> None:
    lun = up.lab.data_lun
    on_one = up.lab.one.mount_at("/srv/data")
    assert on_one is not None and on_one.fs_type == "xfs" and on_one.source == lun.device
    assert up.lab.two.mount_at("/srv/data") is None
    assert all(m.source != lun.device for m in mnt.mounts())  # nor anywhere in the machine's own namespace
    assert up.exec("systemOne", "test", "-f", "/srv/data/app.db").returncode == 0
    assert up.exec("systemTwo", "test", "-e", "/srv/data/app.db").returncode != 0


def test_both_hosts_see_the_array(up: UpLab) -> None:
    manifest = up.lab.array_path / "manifest.json"
    for host in ("systemOne", "systemTwo"):
        assert up.exec(host, "test", "-f", str(manifest)).returncode == 0
    # The array's filesystem is the machine's mount, made before the hosts' mount namespaces (a SAN both reach).
    assert mnt.mount_at(up.lab.array_path.parent) is not None


def test_sample_app_makes_progress_and_its_database_checks_out(up: UpLab) -> None:
    log = up.lab.commit_log
    first = last_committed_before(log, time.time_ns())
    time.sleep(0.5)
    second = last_committed_before(log, time.time_ns())
    assert second > first > 0
    check = (
        "import json, pathlib; from snapport.lab.sample_app import verify; "
        "v = verify(pathlib.Path('/srv/data/app.db')); print(json.dumps([v.ok, v.last_counter, v.problems]))"
    )
    done = up.exec("systemOne", sys.executable, "-c", check)
    assert done.returncode == 0, done.stderr
    ok, last, problems = json.loads(done.stdout)
    assert ok, problems
    assert last >= second


def test_each_host_has_its_own_home_and_name(up: UpLab) -> None:
    seen = {}
    for host in ("systemOne", "systemTwo"):
        done = up.exec(host, "env")
        env = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
        assert env["SNAPPORT_HOST"] == host
        seen[host] = env["SNAPPORT_HOME"]
        assert Path(env["SNAPPORT_HOME"]).is_dir()
    assert seen == {"systemOne": str(up.directory / "homes" / "one"), "systemTwo": str(up.directory / "homes" / "two")}


def test_exec_returns_the_command_exit_status(up: UpLab) -> None:
    assert up.exec("two", "sh", "-c", "exit 7").returncode == 7


def test_agents_step_matches_what_is_built(up: UpLab) -> None:
    has_agent = snapport("agent", "serve", "--help").returncode == 0
    notes = up.summary["notes"]
    if has_agent:
        port = str(up.summary["agent_port"])
        for name, peer in (("systemOne", "systemTwo"), ("systemTwo", "systemOne")):
            host = up.summary["hosts"][name]
            assert host["processes"]["agent"]["running"]
            assert (Path(host["home"]) / "agent.toml").is_file()
            assert (Path(host["home"]) / "certs" / f"{name}.crt").is_file()
            address = host["address"].split("/")[0]
            done = up.exec(peer, sys.executable, "-m", "snapport.lab.netcheck", address, port, "--open")
            assert done.returncode == 0, done.stdout  # each agent answers the other host on its lab address
    else:
        assert any(n.startswith("agents: skipped: agent not built yet") for n in notes), notes


def test_a_second_up_is_refused(up: UpLab) -> None:
    done = snapport("lab", "up", "--dir", str(up.directory), "--suffix", up.suffix, *SMALL)
    assert done.returncode == 4
    assert "snapport lab down" in done.stderr
    assert Lab.open(up.directory).state.status == "up"  # untouched


def test_down_removes_everything_and_twice_is_fine(up: UpLab) -> None:
    report = ok_json("lab", "down", "--dir", str(up.directory))
    assert report["failed"] == []
    assert "network namespace snapport-one-" + up.suffix in report["removed"]
    assert leftovers(up.directory, up.suffix, up.processes) == []
    assert not up.directory.exists()
    again = ok_json("lab", "down", "--dir", str(up.directory))
    assert again == {"already_gone": [], "dir": str(up.directory), "failed": [], "removed": []}
