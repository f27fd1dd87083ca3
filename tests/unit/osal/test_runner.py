import signal
import threading
import time
from pathlib import Path

import pytest

from snapport.errors import SystemCommandError
from snapport.osal.runner import PIPE, STDOUT, Process, RecordingRunner, SubprocessRunner


def test_subprocess_runner_reports_rc_output_and_duration() -> None:
    result = SubprocessRunner().run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert (result.rc, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.duration_ms > 0
    with pytest.raises(SystemCommandError, match="exited 3: err"):
        result.check()


def test_subprocess_runner_times_out_and_reports_missing_commands() -> None:
    with pytest.raises(SystemCommandError, match=r"did not finish within 0\.2 s"):
        SubprocessRunner().run(["sleep", "5"], timeout=0.2)
    with pytest.raises(SystemCommandError, match="cannot run"):
        SubprocessRunner().run(["/nonexistent/tool"])


def test_recording_runner_records_and_answers() -> None:
    runner = RecordingRunner(responders=[lambda argv: (0, "/dev/loop9\n", "") if argv[0] == "losetup" else None])
    assert runner.run(["losetup", "--find"]).stdout == "/dev/loop9\n"
    with pytest.raises(SystemCommandError):
        RecordingRunner(responders=[lambda argv: (1, "", "boom")]).run(["x"])
    assert runner.calls == [("losetup", "--find")]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return False
    return stat[0] != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    """A SIGKILLed process orphaned by its parent's death is reaped by init a moment later."""
    deadline = time.monotonic() + seconds
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_started_process_talks_over_pipes_and_is_reaped_by_wait() -> None:
    with SubprocessRunner().start(["sh", "-c", "read x; echo got $x; exit 4"], stdin=PIPE, stdout=PIPE) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"hello\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == b"got hello\n"
        assert proc.wait(5) == 4
        assert proc.returncode == 4 and not proc.running()


def test_stop_signals_waits_the_grace_then_kills_the_whole_group() -> None:
    # The leader ignores SIGTERM and has a child of its own: both are gone once `stop` returns.
    script = "trap '' TERM; sleep 60 & echo $!; wait"
    proc = SubprocessRunner().start(["sh", "-c", script], stdout=PIPE)
    assert proc.stdout is not None
    grandchild = int(proc.stdout.readline())
    assert proc.running() and _alive(grandchild)
    started = time.monotonic()
    assert proc.stop(grace_s=0.3) == -signal.SIGKILL
    assert time.monotonic() - started >= 0.3
    assert _gone_within(grandchild, 5)
    assert proc.stop() == -signal.SIGKILL  # idempotent


def test_stop_of_a_process_that_ends_on_sigterm_does_not_wait_the_grace() -> None:
    proc = SubprocessRunner().start(["sleep", "60"])
    started = time.monotonic()
    assert proc.stop(grace_s=30) == -signal.SIGTERM
    assert time.monotonic() - started < 5


def test_a_process_with_a_death_signal_dies_with_the_thread_that_started_it() -> None:
    started: list[Process] = []
    thread = threading.Thread(
        target=lambda: started.append(SubprocessRunner().start(["sleep", "60"], die_with_parent=True))
    )
    thread.start()
    thread.join()
    proc = started[0]
    assert proc.wait(5) == -signal.SIGKILL


def test_start_refuses_a_missing_command_in_one_line() -> None:
    with pytest.raises(SystemCommandError, match="cannot start `/nonexistent/tool`"):
        SubprocessRunner().start(["/nonexistent/tool"])


def test_the_recording_runner_records_a_start_and_answers_with_an_exited_process() -> None:
    runner = RecordingRunner(responders=[lambda argv: (3, "out", "err") if argv[0] == "rbd" else None])
    with runner.start(["rbd", "device", "map", "pool/image"], stdout=PIPE) as proc:
        assert proc.stdout is not None and proc.stdout.read() == b"out"
        assert proc.wait() == 3 and not proc.running()
    assert runner.calls == [("rbd", "device", "map", "pool/image")]


def test_a_started_process_gets_the_environment_directory_and_output_it_is_given(tmp_path: Path) -> None:
    # As the lab starts its agents (output to a log file, stderr with it) and the hook writer its scripts.
    log = tmp_path / "log"
    with log.open("ab") as out:
        proc = SubprocessRunner().start(
            ["sh", "-c", 'echo "$ONLY $PWD"; echo oops >&2'], stdout=out, stderr=STDOUT, env={"ONLY": "me"}, cwd="/"
        )
    assert proc.wait(5) == 0
    assert log.read_text() == "me /\noops\n"


def test_stop_with_sigkill_first_does_not_wait_for_the_process_to_agree() -> None:
    proc = SubprocessRunner().start(["sh", "-c", "trap '' TERM; sleep 60"])
    started = time.monotonic()
    assert proc.stop(grace_s=30, first=signal.SIGKILL) == -signal.SIGKILL
    assert time.monotonic() - started < 5
