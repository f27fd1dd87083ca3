"""The verbs on a restic repository: `backups`, `verify` and `restore` recognise it without `--engine`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from snapport.cli.main import main
from snapport.engines import select_components
from snapport.engines.restic.engine import ResticEngine
from tests.support.snapshot_tree import VOLUME, documents, make_tree

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_verbs_recognise_a_restic_repository(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = make_tree(tmp_path / "snap", big_mib=1)
    repo = tmp_path / "repo"
    docs = documents()
    ResticEngine(repo, read_data_subset="100%").backup(docs, select_components(docs), snap.map)
    monkeypatch.setenv("SNAPPORT_HOME", str(tmp_path / "home"))  # absent: a restore host need not hold the set
    short = str(docs.set_id)[:8]

    assert main(["backups", "--repo", str(repo), "--json"]) == 0
    assert [s["set_id"] for s in json.loads(capsys.readouterr().out)["sets"]] == [str(docs.set_id)]
    assert main(["verify", "--repo", str(repo), "--set", short, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["intact"] is True

    target = tmp_path / "out"
    assert main(["restore", "--repo", str(repo), "--set", short, "--to", str(target), "--json"]) == 0
    restored = json.loads(capsys.readouterr().out)
    assert restored["engine"] == "restic" and restored["set_id"] == str(docs.set_id)
    copy = target / VOLUME.lstrip("/")
    assert (copy / "big.bin").read_bytes() == (snap.root / "big.bin").read_bytes()

    # a name the registry does not know is a usage error, before anything is read
    assert main(["restore", "--repo", str(repo), "--set", short, "--to", str(tmp_path / "x"), "--engine", "tape"]) == 2
    assert "'tape' is not one of 'archive', 'restic'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
