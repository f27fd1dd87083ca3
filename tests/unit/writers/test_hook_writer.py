"""The hook writer: a user's script per event, bounded by the event's deadline (real scripts, no root needed
except to check a script owned by someone else is refused)."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from snapport.errors import FreezeTimeout, UsageError, WriterError
from snapport.model import Attr, BackupType, ComponentType, Context, EventKind, FileSpec, Volume
from snapport.osal.mount import containing_mount
from snapport.writers.base import Deadline, LogEntry, RestoreContext, Session, WriterEvent, WriterPhase
from snapport.writers.guarded import GuardedWriter
from snapport.writers.hook import CLASS_ID, OUTPUT_TAIL_BYTES, HookWriter, check_script
from snapport.writers.registry import writer_from_spec

HOST = "unit-host"
pytestmark = pytest.mark.timeout(60)


def script(directory: Path, body: str, name: str = "hook.sh") -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o750)
    return path


def volume_of(path: Path) -> Volume:
    return Volume(HOST, containing_mount(path).mount_point, "ext4", "")


def session_for(path: Path, window_s: float = 30.0) -> Session:
    second = Volume(HOST, "/srv/other", "xfs", "")
    return Session(
        uuid.uuid4(), Context.APP_BACKUP, Attr.NONE, BackupType.INCREMENTAL, (volume_of(path), second), window_s
    )


def running(pid: int) -> bool:
    """Whether `pid` is alive (a killed orphan may stay a zombie until the container's init reaps it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def gone(pid: int, within_s: float = 2.0) -> bool:
    """Whether `pid` ends within `within_s` (a SIGKILL is delivered when the process next runs)."""
    end = time.monotonic() + within_s
    while running(pid):
        if time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def outputs(entries: list[LogEntry]) -> list[dict[str, object]]:
    assert all(e.kind is EventKind.HOOK_OUTPUT for e in entries)
    return [json.loads(e.message) for e in entries]


def test_the_script_sees_the_event_and_the_backup_in_its_environment(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    hook = script(tmp_path, f'env | grep ^SNAPPORT_ | sort > {seen}.$1\necho "args: $#"\n')
    writer = HookWriter(hook, [volume_of(tmp_path)], host=HOST)
    s = session_for(tmp_path)
    writer.freeze(s, Deadline.after(10))
    env = dict(line.split("=", 1) for line in Path(f"{seen}.freeze").read_text().splitlines())
    deadline_s = float(env.pop("SNAPPORT_DEADLINE_S"))
    assert 9 < deadline_s < 10
    assert env == {
        "SNAPPORT_EVENT": "freeze",
        "SNAPPORT_SET_ID": str(s.set_id),
        "SNAPPORT_CONTEXT": "app-backup",
        "SNAPPORT_BACKUP_TYPE": "incremental",
        "SNAPPORT_VOLUMES": f"{volume_of(tmp_path).mount_point}:/srv/other",
        "SNAPPORT_FREEZE_WINDOW_S": "30",
    }
    [output] = outputs(writer.take_event_log())
    assert output["event"] == "freeze" and output["exit"] == 0 and output["stdout"] == "args: 1\n"
    assert output["set_id"] == str(s.set_id)
    assert writer.take_event_log() == []


def test_every_event_but_identify_runs_the_script(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    writer = HookWriter(script(tmp_path, f"echo $1 >> {ran}\n"), [volume_of(tmp_path)], host=HOST)
    guarded = GuardedWriter(writer)
    s = session_for(tmp_path)
    metadata = guarded.identify(Deadline.after(5))
    assert not ran.exists()
    guarded.prepare_backup(s, (), Deadline.after(5))
    guarded.prepare_snapshot(s, Deadline.after(5))
    guarded.freeze(s, Deadline.after(5))
    guarded.thaw(s, Deadline.after(5))
    assert guarded.post_snapshot(s, Deadline.after(5)) == {}
    guarded.backup_complete(s, {metadata.components[0].full_path: True}, Deadline.after(5))
    guarded.backup_shutdown(s, Deadline.after(5))
    guarded.abort(s, Deadline.after(5))
    restore = RestoreContext(uuid.uuid4(), BackupType.FULL, tmp_path / "to", ("/srv/a", "/srv/b"))
    guarded.pre_restore(restore, Deadline.after(5))
    guarded.post_restore(restore, Deadline.after(5))
    assert ran.read_text().split() == [
        "prepare-backup", "prepare-snapshot", "freeze", "thaw", "post-snapshot", "backup-complete",
        "backup-shutdown", "abort", "pre-restore", "post-restore",
    ]  # fmt: skip
    assert len(writer.take_event_log()) == 10


def test_a_restore_event_tells_the_script_where_the_files_land(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    env = "$SNAPPORT_SET_ID $SNAPPORT_BACKUP_TYPE $SNAPPORT_RESTORE_TARGET $SNAPPORT_COMPONENTS"
    writer = HookWriter(script(tmp_path, f'echo "$1 {env}" >> {seen}\n'), [volume_of(tmp_path)], host=HOST)
    restore = RestoreContext(uuid.uuid4(), BackupType.FULL, tmp_path / "to", ("/srv/a", "/srv/b"))
    GuardedWriter(writer).post_restore(restore, Deadline.after(5))
    assert seen.read_text().split() == [
        "post-restore",
        str(restore.set_id),
        "full",
        str(tmp_path / "to"),
        "/srv/a:/srv/b",
    ]
    [entry] = writer.take_event_log()
    assert json.loads(entry.message)["set_id"] == str(restore.set_id)


def test_a_non_zero_exit_vetoes_with_the_last_line_of_stderr(tmp_path: Path) -> None:
    hook = script(
        tmp_path, 'if [ "$1" = freeze ]; then echo "checking" >&2; echo "app refuses: busy" >&2; exit 3; fi\n'
    )
    guarded = GuardedWriter(HookWriter(hook, [volume_of(tmp_path)], host=HOST))
    s = session_for(tmp_path)
    guarded.prepare_snapshot(s, Deadline.after(5))
    with pytest.raises(WriterError, match=r"hook .*hook.sh freeze exited with status 3: app refuses: busy") as caught:
        guarded.freeze(s, Deadline.after(5))
    assert type(caught.value) is WriterError
    status = guarded.status
    assert (status.phase, status.failed_at) == (WriterPhase.FAILED, WriterEvent.FREEZE)
    output = outputs(guarded.inner.take_event_log())[-1]  # type: ignore[attr-defined]
    assert output["exit"] == 3 and output["stderr"] == "checking\napp refuses: busy\n"


def test_a_hanging_script_is_killed_with_its_whole_group_at_the_deadline(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = script(tmp_path, f"sleep 300 &\necho $! > {pids}\necho $$ >> {pids}\necho started\nwait\n")
    writer = HookWriter(hook, [volume_of(tmp_path)], host=HOST)
    s = session_for(tmp_path)
    started = time.monotonic()
    with pytest.raises(FreezeTimeout, match=r"did not finish freeze within .* its process group was killed"):
        writer.freeze(s, Deadline.after(1.5))
    elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 2.5  # at its deadline (give or take a loaded machine), not after the sleep
    for pid in map(int, pids.read_text().split()):
        assert gone(pid)
    [output] = outputs(writer.take_event_log())
    assert output["timed_out"] is True and output["exit"] is None and output["stdout"] == "started\n"


def test_output_is_kept_to_its_last_bytes(tmp_path: Path) -> None:
    hook = script(tmp_path, 'i=0; while [ $i -lt 300 ]; do echo "line $i of the output........"; i=$((i+1)); done\n')
    writer = HookWriter(hook, [volume_of(tmp_path)], host=HOST)
    writer.thaw(session_for(tmp_path), Deadline.after(10))
    [output] = outputs(writer.take_event_log())
    stdout = str(output["stdout"])
    assert len(stdout) == OUTPUT_TAIL_BYTES and stdout.endswith("line 299 of the output........\n")
    written = sum(len(f"line {i} of the output........\n") for i in range(300))
    assert output["stdout_dropped"] == written - OUTPUT_TAIL_BYTES


def test_a_background_process_holding_the_output_does_not_hold_the_event(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    hook = script(tmp_path, f"sleep 30 &\necho $! > {pids}\nexit 0\n")
    writer = HookWriter(hook, [volume_of(tmp_path)], host=HOST)
    started = time.monotonic()
    writer.freeze(session_for(tmp_path), Deadline.after(10))
    assert time.monotonic() - started < 3
    os.kill(int(pids.read_text()), 9)  # it was left running: a hook may start a holder that thaw stops


def test_a_freeze_after_abort_of_the_same_set_is_refused(tmp_path: Path) -> None:
    ran = tmp_path / "ran"
    writer = HookWriter(script(tmp_path, f"echo $1 >> {ran}\n"), [volume_of(tmp_path)], host=HOST)
    s = session_for(tmp_path)
    writer.abort(s, Deadline.after(5))
    with pytest.raises(WriterError, match="was aborted"):
        writer.freeze(s, Deadline.after(5))
    writer.freeze(session_for(tmp_path), Deadline.after(5))  # another set is fine
    assert ran.read_text().split() == ["abort", "freeze"]


def test_metadata_names_the_script_and_the_declared_paths(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "app.log").write_text("x")
    hook = script(tmp_path, "exit 0\n")
    volume = volume_of(tmp_path)
    writer = writer_from_spec(f"hook:{hook},paths={data}:{data / 'app.log'}", [volume], HOST)
    assert isinstance(writer, HookWriter)
    metadata = writer.identify(Deadline.after(1))
    [component] = metadata.components
    assert (metadata.class_id, metadata.name, metadata.instance_name) == (CLASS_ID, "hook", str(hook))
    assert component.type is ComponentType.FILE_GROUP and component.name == "hook.sh"
    relative = str(data.relative_to(volume.mount_point))
    assert component.files == (
        FileSpec(volume.mount_point, relative, "*", recursive=True),
        FileSpec(volume.mount_point, relative, "app.log"),
    )
    bare = HookWriter(hook, [volume], host=HOST).identify(Deadline.after(1))
    assert bare.components[0].files == () and bare.writer_id == metadata.writer_id
    with pytest.raises(UsageError, match="does not exist"):
        writer_from_spec(f"hook:{hook},paths={tmp_path / 'missing'}", [volume], HOST)
    with pytest.raises(UsageError, match="not one of the snapshot set's volumes"):
        writer_from_spec(f"hook:{hook},paths={data}", [Volume(HOST, "/nowhere", "xfs", "")], HOST)


def test_unsafe_scripts_are_refused(tmp_path: Path) -> None:
    good = script(tmp_path, "exit 0\n")
    assert check_script(good) == good.resolve()
    not_exec = script(tmp_path, "exit 0\n", "plain.sh")
    not_exec.chmod(0o640)
    writable = script(tmp_path, "exit 0\n", "writable.sh")
    writable.chmod(0o757)
    group_writable = script(tmp_path, "exit 0\n", "group.sh")
    group_writable.chmod(0o770)
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    in_open_dir = script(open_dir, "exit 0\n")
    for path, message in [
        (Path("hook.sh"), "not an absolute path"),
        (tmp_path / "missing.sh", "No such file"),
        (tmp_path, "not a regular file"),
        (not_exec, "not executable"),
        (writable, r"writable by group or others \(mode 757\)"),
        (group_writable, "writable by group or others"),
        (in_open_dir, "world-writable directory"),
    ]:
        with pytest.raises(UsageError, match=message):
            check_script(path)
    with pytest.raises(WriterError, match="not executable"):
        check_script(not_exec, WriterError)
    if os.geteuid() == 0:
        os.chown(good, 65534, 65534)
        with pytest.raises(UsageError, match="owned by uid 65534"):
            check_script(good)


def test_a_script_changed_after_it_was_checked_is_checked_again(tmp_path: Path) -> None:
    hook = script(tmp_path, "exit 0\n")
    writer = HookWriter(hook, [volume_of(tmp_path)], host=HOST)
    hook.chmod(0o777)
    with pytest.raises(WriterError, match="writable by group or others"):
        writer.freeze(session_for(tmp_path), Deadline.after(5))
