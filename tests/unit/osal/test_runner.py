import pytest

from snapport.errors import SystemCommandError
from snapport.osal.runner import RecordingRunner, SubprocessRunner


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
