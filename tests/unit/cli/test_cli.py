"""The CLI contract (DESIGN §9), driven as a user would: a real process, its stdout, stderr and exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from snapport import __version__
from snapport.catalog import Catalog, catalog_url
from snapport.model import Attr, Context, Locator, SetState, Snapshot, SnapshotSet, Volume, WriterState


def run(home: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "SNAPPORT_HOME": str(home), **(env or {})}
    full_env.pop("SNAPPORT_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture
def seeded(tmp_path: Path) -> tuple[Path, SnapshotSet]:
    home = tmp_path / "home"
    set_id = uuid.uuid4()
    volume = Volume(host="one", mount_point="/srv/data", fs_type="xfs", fs_uuid=str(uuid.uuid4()), device="/dev/loop9")
    snapshot_set = SnapshotSet(
        id=set_id,
        context=Context.APP_BACKUP,
        attrs=Attr.PERSISTENT | Attr.NO_AUTO_RELEASE | Attr.TRANSPORTABLE,
        state=SetState.PREPARING,
        originating_host="one",
        service_host="one",
        created_at=datetime.now(UTC),
        snapshots=(
            Snapshot(
                id=uuid.uuid4(),
                set_id=set_id,
                volume=volume,
                locator=Locator(provider="reflink-array"),
                attrs=Attr.NONE,
            ),
        ),
    )
    with Catalog.open(catalog_url(home)) as catalog:
        catalog.add_set(snapshot_set)
        catalog.transition(set_id, SetState.SNAPSHOTTING)
        catalog.record_timings(set_id, freeze_window_ms=12.5, commit_ms=3.25)
        catalog.transition(set_id, SetState.CREATED)
    return home, snapshot_set


def test_version(tmp_path: Path) -> None:
    proc = run(tmp_path, "--version")
    assert (proc.returncode, proc.stdout.strip()) == (0, f"snapport {__version__}")


def test_list_and_show_in_both_forms(seeded: tuple[Path, SnapshotSet]) -> None:
    home, snapshot_set = seeded
    listed = json.loads(run(home, "list", "--json").stdout)
    assert [s["id"] for s in listed["sets"]] == [str(snapshot_set.id)]
    assert listed["sets"][0]["state"] == "created"
    assert listed["sets"][0]["attrs"] == ["persistent", "no-auto-release", "transportable"]
    human = run(home, "list")
    assert human.returncode == 0 and str(snapshot_set.id) in human.stdout and "12.5 ms" in human.stdout

    shown = json.loads(run(home, "show", str(snapshot_set.id), "--json").stdout)
    assert shown["set"]["freeze_window_ms"] == 12.5 and shown["set"]["commit_ms"] == 3.25
    assert shown["set"]["snapshots"][0]["volume"]["mount_point"] == "/srv/data"
    by_prefix = run(home, "show", str(snapshot_set.id)[:8])
    assert by_prefix.returncode == 0
    assert "freeze window" in by_prefix.stdout and "12.5 ms" in by_prefix.stdout and "3.2" in by_prefix.stdout


def test_writers_lists_the_catalog_rows(seeded: tuple[Path, SnapshotSet]) -> None:
    home, _ = seeded
    assert json.loads(run(home, "writers", "--json").stdout) == {"writers": []}
    with Catalog.open(catalog_url(home)) as catalog:
        catalog.upsert_writer_status(
            "w-1",
            class_id="c",
            kind="sqlite",
            name="sqlite",
            instance_name="/srv/data/app.db",
            state=WriterState.STABLE,
            last_freeze_ms=8.0,
        )
    rows = json.loads(run(home, "writers", "--json").stdout)["writers"]
    assert [(r["kind"], r["state"], r["last_freeze_ms"]) for r in rows] == [("sqlite", "stable", 8.0)]


@pytest.mark.parametrize(
    ("args", "code", "exit_code"),
    [
        (["show", str(uuid.UUID(int=1))], "OBJECT_NOT_FOUND", 3),
        (["show", "zz"], "BAD_ARGUMENT", 2),
        (["list", "--bogus"], "BAD_ARGUMENT", 2),
        (["nosuchverb"], "BAD_ARGUMENT", 2),
        (["docs", "validate", "/nonexistent/bcd.xml"], "INVALID_DOCUMENT", 1),
    ],
)
def test_errors_are_one_line_with_a_stable_name(tmp_path: Path, args: list[str], code: str, exit_code: int) -> None:
    proc = run(tmp_path, *args)
    line = one_line_error(proc)
    assert proc.returncode == exit_code
    assert f"[{code}]" in line and "hint:" in line
    as_json = run(tmp_path, *args, "--json")
    assert as_json.returncode == exit_code
    assert json.loads(one_line_error(as_json))["error"] == code
    assert as_json.stdout == ""


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    proc = run(tmp_path, "--debug", "show", str(uuid.UUID(int=1)))
    assert proc.returncode == 3 and "Traceback" in proc.stderr


def test_an_unusable_home_is_a_catalog_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    proc = run(blocker / "home", "list")
    assert "[CATALOG_ERROR]" in one_line_error(proc) and proc.returncode == 5
