"""What a bench backs up when it needs no real snapshot: a plain directory standing for the exposed copy of one
volume, filled with mixed files, and the documents of a set that selects all of it.

Bench-side on purpose: the tests' snapshot tree (`tests/support/snapshot_tree.py`) is a small tree of odd
cases for correctness, this is a large, reproducible one for throughput; and a bench must run without `tests/`.
Not a lab fixture either: `snapport.lab` builds real hosts, volumes and sets; nothing here is one.
"""

from __future__ import annotations

import os
import random
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from snapport.engines import SetDocuments
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

VOLUME = "/srv/data"  # the original mount point the tree stands for
_WRITER = uuid.UUID(int=0xBE7C4)
_WRITER_CLASS = uuid.UUID(int=0xBE7C5)


@dataclass(frozen=True)
class PlainCopy:
    """A directory holding what the exposed copy of VOLUME would."""

    root: Path

    def map(self, original: str) -> Path:
        """The engine's path mapper: an original path under VOLUME → the same path in the directory."""
        relative = relative_to_volume(VOLUME, original)
        return self.root / relative if relative else self.root


def whole_tree() -> Component:
    """One component taking every file of VOLUME."""
    return Component(ComponentType.FILE_GROUP, "tree", files=(FileSpec(VOLUME, "", "*", recursive=True),))


def set_documents(component: Component) -> SetDocuments:
    """A new set's documents: one snapshot of VOLUME on host "bench", one writer selecting `component`."""
    volume = Volume(host="bench", mount_point=VOLUME, fs_type="xfs", fs_uuid=str(uuid.UUID(int=1)))
    snapshot = SnapshotDescription(uuid.uuid4(), volume, Locator(provider="reflink-array"))
    description = SnapshotSetDescription(uuid.uuid4(), Context.APP_BACKUP, Attr.PERSISTENT, (snapshot,))
    chosen = SelectedComponent(component.type, component.name, component.logical_path)
    writer = WriterComponents(_WRITER, _WRITER_CLASS, components=(chosen,))
    bcd = BackupComponents(BackupType.FULL, description, writers=(writer,), originating_host="bench")
    return SetDocuments(bcd, (WriterMetadata(_WRITER, _WRITER_CLASS, "bench", components=(component,)),))


WORDS = ("alpha", "beta", "gamma", "delta", "select", "from", "where", "log", "request", "status")


def _text(rng: random.Random, size: int) -> bytes:
    vocabulary = [f"{rng.choice(WORDS)}{rng.randrange(5000)}" for _ in range(4000)]
    out = bytearray()
    while len(out) < size:
        out += (" ".join(rng.choices(vocabulary, k=12)) + "\n").encode()
    return bytes(out[:size])


def build_tree(root: Path, mib: int) -> tuple[int, int]:
    """Mixed files totalling about `mib` MiB; reused when already built with the same size."""
    marker = root / ".bench-tree"
    if marker.exists() and marker.read_text() == str(mib):
        files = [p for p in root.rglob("*") if p.is_file() and p != marker]
        return len(files), sum(p.stat().st_size for p in files)
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(20240601)  # noqa: S311  (reproducible test data, not secrets)
    budget = mib << 20
    plan = [(4 << 10, 16 << 10, budget // 4), (128 << 10, 512 << 10, budget // 4), (8 << 20, 12 << 20, budget // 2)]
    count = total = 0
    for kind, (low, high, share) in enumerate(plan):
        made = 0
        while made < share:
            size = min(rng.randrange(low, high), share - made) or 1
            directory = root / f"kind{kind}" / f"d{count // 100:03d}"
            directory.mkdir(parents=True, exist_ok=True)
            data = os.urandom(size) if count % 2 else _text(rng, size)
            (directory / f"f{count:05d}").write_bytes(data)
            made += size
            count += 1
            total += size
    marker.write_text(str(mib))
    return count, total
