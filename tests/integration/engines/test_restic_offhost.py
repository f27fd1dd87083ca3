"""The restic engine on real exposed snapshots: incrementals that find their parent off-host, round trip, damage."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.documents import load_documents
from snapport.engines import BackupResult, SetDocuments, select_components
from snapport.engines.restic.engine import ResticEngine
from snapport.errors import TargetNotEmpty
from tests.support.array_world import HOST_ONE, HOST_TWO, ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(600)]

FILES, FILE_BYTES = 200, 48 << 10


def snapport(world: ArrayWorld, host: str, *args: str) -> dict[str, object]:
    done = world.cli(host, *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def offhost_backup(
    world: ArrayWorld, two: Host, volume: Path, engine: ResticEngine, out: Path
) -> tuple[uuid.UUID, BackupResult, SetDocuments, str]:
    """systemOne makes a transportable set; systemTwo imports it, exposes it at its per-set path, backs it up,
    unexposes and deletes it (as the proxy job does)."""
    created = snapport(world, HOST_ONE, "create", str(volume), "--transportable", "--out", str(out))
    set_id = uuid.UUID(str(created["set_id"]))
    bcd, wmds = load_documents(out)
    docs = SetDocuments(bcd, tuple(wmds))
    lifecycle.import_snapshot_set(two, bcd, cluster_check=False)
    exposed = lifecycle.expose(two, set_id)[str(volume)]
    try:
        result = engine.backup(
            docs, select_components(docs), lambda original: Path(lifecycle.map_path(two, set_id, original))
        )
    finally:
        lifecycle.unexpose(two, set_id)
        lifecycle.delete(two, set_id)
    snapport(world, HOST_ONE, "complete", str(set_id), "--succeeded")
    return set_id, result, docs, exposed


def test_an_incremental_off_host_backup_reads_only_what_changed(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data")
    (volume / "files").mkdir()
    for i in range(FILES):
        (volume / "files" / f"f{i:03}").write_bytes(os.urandom(FILE_BYTES))
    (volume / "link").symlink_to("/etc/passwd")
    (volume / "private").write_text("secret")
    (volume / "private").chmod(0o600)
    two = world.host(HOST_TWO)
    engine = ResticEngine(tmp_path / "repo", read_data_subset="100%")

    first_id, first, docs, first_exposed = offhost_backup(world, two, volume, engine, tmp_path / "docs1")
    assert first.files >= FILES + 2 and first.bytes >= FILES * FILE_BYTES
    changed = FILES // 100  # 1% of the files, and so of the data
    for i in range(changed):
        (volume / "files" / f"f{i:03}").write_bytes(os.urandom(FILE_BYTES))
    second_id, second, _, second_exposed = offhost_backup(world, two, volume, engine, tmp_path / "docs2")
    assert first_exposed != second_exposed  # each set is exposed at its own path on the backup host

    summary = engine.last_summary
    assert summary is not None
    total = FILES * FILE_BYTES
    assert summary["files_unmodified"] >= FILES - changed  # the parent was found: unchanged files are not read
    assert summary["files_changed"] >= changed
    assert changed * FILE_BYTES <= summary["data_added"] <= 2 * changed * FILE_BYTES + (64 << 10)
    assert summary["data_added"] < 0.03 * total
    assert second.stored_bytes == summary["data_added"]
    assert first.stored_bytes >= total  # the first backup stored everything

    snapshots = {s.set_id: s for s in engine.snapshots()}
    for set_id in (first_id, second_id):
        snap = snapshots[set_id]
        assert snap.complete and snap.hostname == HOST_ONE  # the production host, not the proxy
        assert set(snap.paths) == {str(volume), "/.snapport"}  # the original paths, not the exposed ones
    assert snapshots[second_id].parent == snapshots[first_id].id
    assert [s.set_id for s in engine.list()] == [first_id, second_id]
    assert all(s.originating_host == HOST_ONE and s.files == first.files for s in engine.list())
    assert engine.documents(first_id) == docs
    assert engine.verify(second_id).intact

    # Round trip: the second set restored is the volume as it is now.
    target = tmp_path / "restored"
    restored = engine.restore(second_id, target)
    assert restored.files == second.files and restored.bytes == second.bytes
    copy = target / str(volume).lstrip("/")
    for i in range(FILES):
        name = f"files/f{i:03}"
        assert (copy / name).read_bytes() == (volume / name).read_bytes(), name
    assert os.readlink(copy / "link") == "/etc/passwd"
    assert (copy / "private").stat().st_mode & 0o777 == 0o600
    assert (copy / "files" / "f000").stat().st_mtime_ns == (volume / "files" / "f000").stat().st_mtime_ns
    assert not (target / ".snapport").exists()  # the set's description is not restored as data
    with pytest.raises(TargetNotEmpty):
        engine.restore(second_id, target)
    engine.restore(second_id, target, overwrite=True)

    # Damage: a flipped byte in a pack file is found by verify (read-data-subset=100%).
    packs = sorted(p for p in (tmp_path / "repo" / "data").rglob("*") if p.is_file())
    victim = max(packs, key=lambda p: p.stat().st_size)
    victim.chmod(0o600)
    with victim.open("r+b") as f:
        f.seek(victim.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = engine.verify(first_id)
    assert not report.intact and report.problems
    assert world.leftovers(world.host(HOST_ONE), two) == []
