"""The archive engine on XFS: POSIX ACLs (set with setfacl), xattrs of every namespace, sparse files; and
`tar --xattrs --acls` restores the same archive by hand."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from backports.zstd import ZstdFile

from snapport.engines import ArchiveEngine
from snapport.engines.archive.format import ARCHIVE_FILE
from tests.conftest import Scratch, needs_tool
from tests.support.snapshot_tree import VOLUME, Snapshot, documents, whole_volume

pytestmark = [pytest.mark.root, pytest.mark.timeout(180), needs_tool("setfacl", "getfacl", "mkfs.xfs")]


def getfacl(path: Path) -> str:
    out = subprocess.run(
        ["getfacl", "-n", "--omit-header", "-p", str(path)], capture_output=True, text=True, check=True
    )
    return out.stdout


def test_acls_xattrs_and_holes_survive_a_round_trip_on_xfs(scratch: Scratch, tmp_path: Path) -> None:
    fs = scratch.filesystem("xfs")
    root = fs.mount_point / "data"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "file").write_text("acl'd")
    subprocess.run(["setfacl", "-m", "u:1234:rw,g:99:r", str(root / "dir" / "file")], check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx", str(root / "dir")], check=True)
    os.setxattr(root / "dir" / "file", "user.k", b"v")
    os.setxattr(root / "dir" / "file", "trusted.t", b"\x00\x01")
    with (root / "vm.img").open("wb") as f:
        f.write(b"head")
        f.seek(64 << 20)
        f.write(b"tail")
    snap = Snapshot(root)
    engine = ArchiveEngine(tmp_path / "repo")
    docs = documents()
    engine.backup(docs, whole_volume(docs), snap.map)
    assert engine.verify(docs.set_id).intact
    out_root = fs.mount_point / "out"
    engine.restore(docs.set_id, out_root)
    out = out_root / VOLUME.lstrip("/")
    for name in ("dir", "dir/file"):
        assert getfacl(out / name) == getfacl(root / name) and "1234" in getfacl(out / name)
    assert os.getxattr(out / "dir" / "file", "trusted.t") == b"\x00\x01"
    assert (out / "vm.img").stat().st_size == (root / "vm.img").stat().st_size
    assert (out / "vm.img").stat().st_blocks * 512 <= 1 << 20
    assert (out / "vm.img").read_bytes() == (root / "vm.img").read_bytes()
    # GNU tar restores the same archive by hand, ACLs and holes included
    by_hand = fs.mount_point / "tar"
    by_hand.mkdir()
    with ZstdFile(engine.sets_dir / str(docs.set_id) / ARCHIVE_FILE) as stream:
        subprocess.run(
            ["tar", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner", "-xpf", "-", "-C", str(by_hand)],
            input=stream.read(),
            check=True,
            capture_output=True,
        )
    tarred = by_hand / VOLUME.lstrip("/")
    assert getfacl(tarred / "dir" / "file") == getfacl(root / "dir" / "file")
    assert os.getxattr(tarred / "dir" / "file", "user.k") == b"v"
    assert (tarred / "vm.img").read_bytes() == (root / "vm.img").read_bytes()
    assert (tarred / "vm.img").stat().st_blocks * 512 <= 1 << 20
