"""`snapport verify` and `snapport backups`: exit codes, one line per problem, the JSON keys of DESIGN §9."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from snapport.cli.main import main
from snapport.engines import ArchiveEngine, SetDocuments, select_components
from snapport.engines.archive.format import ARCHIVE_FILE
from snapport.errors import ObjectNotFound, UsageError
from tests.support.snapshot_tree import documents, make_tree

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, SetDocuments]:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    docs = documents()
    ArchiveEngine(tmp_path / "repo").backup(docs, select_components(docs), snap.map)
    return tmp_path / "repo", docs


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_an_intact_set_exits_0(repo: tuple[Path, SetDocuments], capsys: pytest.CaptureFixture[str]) -> None:
    path, docs = repo
    rc, out, _ = run(capsys, "verify", "--repo", str(path), "--set", str(docs.set_id))
    assert rc == 0 and f"set {docs.set_id} is intact" in out
    rc, out, _ = run(capsys, "verify", "--repo", str(path), "--set", str(docs.set_id)[:8], "--json")
    payload = json.loads(out)
    assert rc == 0 and payload["set_id"] == str(docs.set_id) and payload["intact"] is True
    assert payload["problems"] == []


def test_a_damaged_set_exits_1_with_one_line_per_problem(
    repo: tuple[Path, SetDocuments], capsys: pytest.CaptureFixture[str]
) -> None:
    path, docs = repo
    set_dir = path / "sets" / str(docs.set_id)
    (set_dir / "stray-1").write_text("x")
    (set_dir / "stray-2").write_text("y")
    archive = set_dir / ARCHIVE_FILE
    archive.write_bytes(archive.read_bytes()[:-100])
    rc, out, err = run(capsys, "verify", "--repo", str(path), "--set", str(docs.set_id))
    lines = out.splitlines()
    assert rc == 1 and err == ""
    assert (
        "extra-part stray-1: not described by set.json" in lines
        and "extra-part stray-2: not described by set.json" in lines
    )
    assert any(line.startswith("truncated-archive data.tar.zst") for line in lines)
    rc, out, _ = run(capsys, "verify", "--repo", str(path), "--set", str(docs.set_id), "--json")
    payload = json.loads(out)
    assert rc == 1 and payload["intact"] is False and len(payload["problems"]) == len(lines)
    assert {"kind": "extra-part", "path": "stray-1", "detail": "not described by set.json"} in payload["problems"]


def test_a_missing_repository_or_set_is_a_one_line_error(
    repo: tuple[Path, SetDocuments], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, docs = repo
    rc, out, err = run(capsys, "verify", "--repo", str(tmp_path / "nowhere"), "--set", str(docs.set_id))
    assert rc == ObjectNotFound.exit_code and out == "" and len(err.splitlines()) == 1 and "OBJECT_NOT_FOUND" in err
    rc, _, err = run(capsys, "verify", "--repo", str(path), "--set", "0123abcd")
    assert rc == ObjectNotFound.exit_code and len(err.splitlines()) == 1
    rc, _, err = run(capsys, "verify", "--repo", str(path), "--set", "xyz")
    assert rc == UsageError.exit_code and len(err.splitlines()) == 1
    rc, _, err = run(capsys, "verify", "--repo", str(path))
    assert rc == UsageError.exit_code and "--set" in err


def test_backups_lists_the_sets(repo: tuple[Path, SetDocuments], capsys: pytest.CaptureFixture[str]) -> None:
    path, docs = repo
    rc, out, _ = run(capsys, "backups", "--repo", str(path), "--json")
    (listed,) = json.loads(out)["sets"]
    assert rc == 0 and listed["set_id"] == str(docs.set_id) and listed["originating_host"] == "prod1"
    rc, out, _ = run(capsys, "backups", "--repo", str(path))
    assert rc == 0 and str(docs.set_id) in out


def test_the_exit_code_reaches_the_shell(repo: tuple[Path, SetDocuments], tmp_path: Path) -> None:
    path, docs = repo
    manifest = path / "sets" / str(docs.set_id) / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"path":"/srv/data/caf', b'"path":"/srv/data/Caf'))
    env = {**os.environ, "SNAPPORT_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "snapport", "verify", "--repo", str(path), "--set", str(docs.set_id)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    lines = proc.stdout.splitlines()
    assert (
        proc.returncode == 1 and "manifest-digest-mismatch manifest.json: differs from its digest in set.json" in lines
    )
    assert "extra-member /srv/data/caf\\xe9.txt" in lines  # not UTF-8: escaped, the line stays readable
    assert "missing-file /srv/data/Caf\\xe9.txt: in the manifest, not in the archive" in lines
