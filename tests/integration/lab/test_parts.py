"""The lab's parts that need no namespace: its address rule, its state file, the process guard, the sample app."""

from __future__ import annotations

import ipaddress
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapport.errors import BadState, ObjectNotFound, SystemCommandError, UsageError
from snapport.lab import LabConfig, process, sample_app, state
from snapport.lab.config import ONE, TWO, valid_subnet
from snapport.lab.state import LabState, LoopRecord, NetnsRecord, ProcessRecord


@pytest.mark.parametrize("subnet", ["10.0.0.0/30", "192.168.1.0/30", "198.20.0.0/30", "198.17.255.252/30"])
def test_addresses_outside_the_benchmarking_range_are_refused(subnet: str) -> None:
    with pytest.raises(UsageError, match=r"198\.18\.0\.0/15"):
        valid_subnet(subnet)


def test_addresses_inside_the_range() -> None:
    config = LabConfig(subnet=valid_subnet("198.19.255.252/30"))
    assert config.address(ONE) == ipaddress.IPv4Interface("198.19.255.253/30")
    assert config.address(TWO) == ipaddress.IPv4Interface("198.19.255.254/30")
    with pytest.raises(UsageError, match="no room"):
        valid_subnet("198.18.0.0/31")
    assert LabConfig().address(ONE) == ipaddress.IPv4Interface("198.18.0.1/30")


def test_names_carry_the_suffix() -> None:
    assert LabConfig().netns(ONE) == "snapport-one"
    assert LabConfig(suffix="ab12").netns(TWO) == "snapport-two-ab12"
    for bad in ("Upper", "a-b", "x" * 17, "../x"):
        with pytest.raises(UsageError):
            LabConfig(suffix=bad)


def test_state_round_trip_and_damage(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        state.load(tmp_path)
    lab = LabState(directory=str(tmp_path), suffix="", subnet="198.18.0.0/30", agent_port=8443)
    lab.records += [NetnsRecord(step="netns", name="snapport-one", made=True), LoopRecord(step="array", image="/x.img")]
    state.save(tmp_path, lab)
    again = state.load(tmp_path)
    assert again == lab
    assert [type(r) for r in again.records] == [NetnsRecord, LoopRecord]
    state.state_path(tmp_path).write_text('{"version": 1, "records": [{"kind": "bomb"}]}')
    with pytest.raises(BadState, match="damaged"):
        state.load(tmp_path)


def test_stop_spares_a_process_whose_start_time_differs() -> None:
    argv = ["sleep", "30"]
    started = process.spawn(argv, log=None)
    try:
        process.wait_exec(started, argv)
        impostor = process.ProcessId(started.pid, started.start_ticks + 1)  # as if the pid had been reused
        assert process.stop(impostor, argv, argv) == "already gone"
        assert process.alive(started.pid, started.start_ticks)
        with pytest.raises(SystemCommandError, match="left alone"):
            process.stop(started, ["sleep", "31"], ["sleep", "31"])  # right pid and time, another command
        assert process.alive(started.pid, started.start_ticks)
        assert process.stop(started, argv, argv) == "stopped"
        assert not process.alive(started.pid, started.start_ticks)
        assert process.stop(started, argv, argv) == "already gone"
    finally:
        if process.alive(started.pid, started.start_ticks):
            process.stop(started, argv, argv)


def test_identify_accepts_each_stage_of_a_launch() -> None:
    argv = [sys.executable, "-c", "import time; time.sleep(30)"]
    launcher = ["env", "A=1", *argv]
    started = process.spawn(launcher, log=None)
    try:
        process.wait_exec(started, argv)
        assert process.identify(started.pid, started.start_ticks, launcher, argv) == "ours"
        assert process.identify(started.pid, started.start_ticks, ["env", "B=2", *argv], argv) == "ours"  # exec'd
        assert process.identify(started.pid, started.start_ticks, ["sleep", "30"], ["sleep", "30"]) == "other"
    finally:
        process.stop(started, launcher, argv)


def test_process_record_keeps_its_identity(tmp_path: Path) -> None:
    record = ProcessRecord(step="holders", role="holder", host="systemOne", argv=["a"], launcher=["x", "a"], pid=5)
    assert ProcessRecord.model_validate_json(record.model_dump_json()) == record


def test_sample_app_commits_logs_and_verifies(tmp_path: Path) -> None:
    db, log = tmp_path / "app.db", tmp_path / "commits.log"
    app = subprocess.Popen(
        [sys.executable, "-m", "snapport.lab.sample_app", "--db", str(db), "--log", str(log), "--keep-rows", "50"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not log.exists() or sample_app.last_committed_before(log, time.time_ns()) < 120:
            assert time.monotonic() < deadline and app.poll() is None
            time.sleep(0.05)
        middle = time.time_ns()
    finally:
        app.terminate()
        out, _ = app.communicate(timeout=30)
    assert app.returncode == 0 and out.startswith("stopped after counter ")
    last = int(out.split()[-1])
    assert (
        120
        <= sample_app.last_committed_before(log, middle)
        <= last
        == sample_app.last_committed_before(log, time.time_ns())
    )
    found = sample_app.verify(db, keep_rows=50)
    assert found.ok, found.problems
    assert (found.first_counter, found.last_counter, found.rows) == (last - 49, last, 50)
    with sqlite3.connect(db) as conn:  # a torn copy: a row missing, another altered
        conn.execute("DELETE FROM ledger WHERE counter = ?", (last - 10,))
        conn.execute("UPDATE ledger SET payload = x'00' WHERE counter = ?", (last - 5,))
    damaged = sample_app.verify(db, keep_rows=50)
    assert not damaged.ok
    assert any("missing" in p for p in damaged.problems)
    assert any(f"row {last - 5}: checksum" in p for p in damaged.problems)
