"""`snapport.faults`: the points are one closed list, a typo in SNAPPORT_FAULT is refused, and each action acts
(and leaves its proof in SNAPPORT_FAULT_LOG). No root needed."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from snapport import faults
from snapport.errors import UsageError
from snapport.faults import POINTS, InjectedFault, inject
from snapport.writers.base import WriterEvent
from tests.faults.cases import CASES, CEPH_ON_ONE, CEPH_ON_TWO, OFF_FLOW, ON_ONE, ON_TWO

SRC = Path(faults.__file__).resolve().parent


def test_points_are_unique_and_each_is_tried_or_declared_off_the_flow() -> None:
    assert len(POINTS) == len(set(POINTS))
    assert set(POINTS) == set(ON_ONE) | set(ON_TWO) | set(OFF_FLOW)
    assert not (set(ON_ONE) | set(ON_TWO)) & set(OFF_FLOW)
    assert set(CEPH_ON_ONE) <= set(ON_ONE) and set(CEPH_ON_TWO) <= set(ON_TWO)
    assert len(CASES) == 2 * (len(ON_ONE) + len(ON_TWO) + len(CEPH_ON_ONE) + len(CEPH_ON_TWO))


def test_every_point_named_in_the_code_is_in_the_list() -> None:
    named: set[str] = set()
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        named |= set(re.findall(r'inject\("([^"]+)"\)', text))
        named |= set(re.findall(r'fault_point="([^"]+)"', text))
        if path.name == "build.py" and path.parent.name == "lab":
            named |= {f"lab.{step}" for step in re.findall(r'self\.done\("([^"]+)"', text)}
    named |= {f"writer.{event.value}" for event in WriterEvent}  # the GuardedWriter's f-string
    assert named - set(POINTS) == set()
    assert {"offhost.handover", "proxy.report", "writer.backup-complete", "document.save"} <= named


@pytest.mark.parametrize("wanted", ["provider.comit:kill", "provider.commit:explode", "provider.commit"])
def test_an_unknown_point_or_action_is_refused_wherever_inject_runs(
    monkeypatch: pytest.MonkeyPatch, wanted: str
) -> None:
    monkeypatch.setenv("SNAPPORT_FAULT", wanted)
    with pytest.raises(UsageError, match="not a fault point or action"):
        inject("document.save")


def test_a_point_not_in_the_list_is_refused_in_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNAPPORT_FAULT", "document.save:raise")
    with pytest.raises(UsageError):
        inject("document.saved")


def test_raise_acts_only_at_its_point_and_notes_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = tmp_path / "fault.log"
    monkeypatch.setenv("SNAPPORT_FAULT", "set.expose:raise")
    monkeypatch.setenv("SNAPPORT_FAULT_LOG", str(log))
    inject("set.import")
    assert not log.exists()
    with pytest.raises(InjectedFault) as caught:
        inject("set.expose")
    assert caught.value.exit_code == 99
    point, action, _pid = log.read_text().split()
    assert (point, action) == ("set.expose", "raise")


def test_unset_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SNAPPORT_FAULT", raising=False)
    for point in POINTS:
        inject(point)


def test_kill_is_a_sigkill_after_the_note(tmp_path: Path) -> None:
    log = tmp_path / "fault.log"
    code = "from snapport.faults import inject; inject('proxy.report'); print('survived')"
    env = {"SNAPPORT_FAULT": "proxy.report:kill", "SNAPPORT_FAULT_LOG": str(log), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL and "survived" not in done.stdout
    assert log.read_text().split()[:2] == ["proxy.report", "kill"]


def test_several_faults_each_act_at_their_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log = tmp_path / "fault.log"
    monkeypatch.setenv("SNAPPORT_FAULT", "writer.freeze:raise, writer.abort:raise")
    monkeypatch.setenv("SNAPPORT_FAULT_LOG", str(log))
    inject("writer.thaw")
    for point in ("writer.freeze", "writer.abort"):
        with pytest.raises(InjectedFault, match=point):
            inject(point)
    assert [line.split()[0] for line in log.read_text().splitlines()] == ["writer.freeze", "writer.abort"]
    monkeypatch.setenv("SNAPPORT_FAULT", "writer.freeze:raise,writer.abrot:kill")
    with pytest.raises(UsageError, match=r"writer\.abrot"):
        inject("writer.freeze")  # the typo is refused even at the other fault's point
