"""A plain directory standing for an exposed snapshot of volume /srv/data, and a set's documents describing it."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from snapport.engines import ComponentSource, SetDocuments, select_components
from snapport.model import (
    Attr,
    BackupComponents,
    BackupType,
    Component,
    ComponentType,
    Context,
    FileSpec,
    Locator,
    SelectedComponent,
    SnapshotDescription,
    SnapshotSetDescription,
    Volume,
    WriterComponents,
    WriterMetadata,
)
from snapport.model.paths import relative_to_volume

VOLUME = "/srv/data"
WRITER_ID = uuid.UUID("3f0c3c0e-2a39-4d55-9a0b-1b5b7b3f0001")
CLASS_ID = uuid.UUID("3f0c3c0e-2a39-4d55-9a0b-1b5b7b3f0002")
MTIME_NS = 1_700_000_000_123_456_789
NON_UTF8 = os.fsdecode(b"caf\xe9.txt")


@dataclass
class Snapshot:
    root: Path  # the "exposed copy" of VOLUME

    def map(self, original: str) -> Path:
        """The mapper handed to the engine: original path on the production host → path in the copy."""
        relative = relative_to_volume(VOLUME, original)
        return self.root / relative if relative else self.root


def make_tree(root: Path, *, big_mib: int = 3) -> Snapshot:
    """Files of many sizes and kinds; a few things the engine must treat with care (links out, a socket)."""
    root.mkdir(parents=True)
    (root / "empty").write_bytes(b"")
    (root / "small.txt").write_text("hello\n")
    (root / "block.bin").write_bytes(os.urandom(512))
    (root / "odd.bin").write_bytes(os.urandom(1000))
    (root / "big.bin").write_bytes(os.urandom(big_mib << 20) + b"tail")
    (root / "text.log").write_text("".join(f"line {i} of a compressible log\n" for i in range(20_000)))
    (root / "nested" / "a" / "b").mkdir(parents=True)
    (root / "nested" / "a" / "b" / "deep.txt").write_text("deep")
    (root / "nested" / "a" / "mid.txt").write_text("mid")
    (root / "db").mkdir()
    (root / "db" / "app.db").write_bytes(os.urandom(8192))
    (root / "db" / "app.db-wal").write_bytes(os.urandom(4096))
    (root / "db" / "other.txt").write_text("not the database")
    (root / "logs" / "sub").mkdir(parents=True)
    (root / "logs" / "x.log").write_text("x")
    (root / "logs" / "sub" / "y.log").write_text("y")
    (root / "logs" / "sub" / "z.txt").write_text("z")
    (root / "cache").mkdir()
    (root / "cache" / "tmp-1").write_text("scratch")
    (root / "cache" / "keep").write_text("kept")
    (root / "link-inside").symlink_to("small.txt")
    (root / "link-outside").symlink_to("/etc")
    (root / "link-dotdot").symlink_to("../../../etc/passwd")
    (root / "link-dir").symlink_to("nested")
    (root / "hard-1").write_text("two names")
    os.link(root / "hard-1", root / "hard-2")
    os.mkfifo(root / "fifo")
    (root / NON_UTF8).write_text("latin-1 name")
    (root / "private").write_text("secret")
    (root / "private").chmod(0o600)
    (root / "nested").chmod(0o750)
    os.utime(root / "small.txt", ns=(MTIME_NS, MTIME_NS))
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(root / "sock"))
    except OSError:
        pass  # a path too long for AF_UNIX: the socket case is then simply absent
    return Snapshot(root)


def documents(
    *,
    set_id: uuid.UUID | None = None,
    components: tuple[Component, ...] | None = None,
    excludes: tuple[FileSpec, ...] = (),
) -> SetDocuments:
    """A BCD selecting every component of one writer, and that writer's WMD."""
    if components is None:
        components = (Component(ComponentType.FILE_GROUP, "data", files=(FileSpec(VOLUME, "", "*", recursive=True),)),)
    wmd = WriterMetadata(WRITER_ID, CLASS_ID, "test", components=components, excludes=excludes)
    volume = Volume(host="prod1", mount_point=VOLUME, fs_type="xfs", fs_uuid=str(uuid.UUID(int=7)))
    description = SnapshotSetDescription(
        set_id or uuid.uuid4(),
        Context.APP_BACKUP,
        Attr.PERSISTENT,
        (SnapshotDescription(uuid.uuid4(), volume, Locator(provider="btrfs", properties=(("subvol", "s"),))),),
    )
    selected = WriterComponents(
        WRITER_ID, CLASS_ID, components=tuple(SelectedComponent(c.type, c.name, c.logical_path) for c in components)
    )
    bcd = BackupComponents(BackupType.FULL, description, writers=(selected,), originating_host="prod1")
    return SetDocuments(bcd, (wmd,))


def whole_volume(docs: SetDocuments) -> tuple[ComponentSource, ...]:
    return select_components(docs)
