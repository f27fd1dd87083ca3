"""Throughput of the archive engine's backup and verify, against a raw read of the same files in the same run.

Builds (once, then reuses) a tree of mixed files standing for an exposed snapshot: by default about 200 MiB in
~5 200 files (many small, some medium, a few large; half random, half compressible text). Then, in one run:

- raw: `tar -cf - -C TREE . | cat > /dev/null` (what reading the files costs at all),
- backup: `ArchiveEngine.backup` of the whole tree into a fresh repository, for each configuration asked for,
- verify: `ArchiveEngine.verify` of that set,

each timed best of `--runs`, with the page cache warm for all of them (the tree is read once first; nothing is
dropped from the cache, so the figures compare CPU-bound pipelines, not disks). Prints MiB/s of the tree's
content, the ratio of each time to the raw read, CPU seconds, and the repository size.

    .venv/bin/python bench/archive_engine.py [--mib 200] [--runs 3] [--config 3:auto --config 1:auto ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trees import PlainCopy, build_tree, set_documents, whole_tree

from snapport.engines import ArchiveEngine, select_components


@dataclass
class Timing:
    wall_s: float
    cpu_s: float


def timed(action: Callable[[], object], runs: int, children: bool = False) -> Timing:
    best: Timing | None = None
    who = resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF
    for _ in range(runs):
        before, cpu_before = time.perf_counter(), resource.getrusage(who)
        action()
        cpu_after = resource.getrusage(who)
        t = Timing(
            time.perf_counter() - before,
            cpu_after.ru_utime - cpu_before.ru_utime + cpu_after.ru_stime - cpu_before.ru_stime,
        )
        best = t if best is None or t.wall_s < best.wall_s else best
    assert best is not None
    return best


def raw_read(root: Path) -> None:
    subprocess.run(["sh", "-c", 'tar -cf - -C "$1" . | cat > /dev/null', "sh", str(root)], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "snapport-bench-archive")
    parser.add_argument(
        "--config", action="append", help="LEVEL:WORKERS (zstd level; compressing threads, a number or auto)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    configs = args.config or ["1:auto", "1:0", "3:auto"]

    tree = args.dir / "tree"
    files, content = build_tree(tree, args.mib)
    mib = content / (1 << 20)
    snap = PlainCopy(tree)
    raw_read(tree)  # warm the cache
    raw = timed(lambda: raw_read(tree), args.runs, children=True)
    results: dict[str, object] = {
        "files": files,
        "mib": round(mib, 1),
        "cpus": os.cpu_count(),
        "raw": {"s": round(raw.wall_s, 3), "mib_s": round(mib / raw.wall_s), "cpu_s": round(raw.cpu_s, 2)},
    }
    component = whole_tree()
    for config in configs:
        level_text, _, workers_text = config.partition(":")
        level, workers = int(level_text), None if workers_text in ("", "auto") else int(workers_text)
        repo = args.dir / f"repo-{uuid.uuid4().hex[:8]}"
        engine = ArchiveEngine(repo, level=level, workers=workers)
        sets: list[uuid.UUID] = []

        def backup(engine: ArchiveEngine = engine, sets: list[uuid.UUID] = sets) -> None:
            docs = set_documents(component)
            engine.backup(docs, select_components(docs), snap.map)
            sets.append(docs.set_id)

        def verify(engine: ArchiveEngine = engine, sets: list[uuid.UUID] = sets) -> None:
            assert engine.verify(sets[-1]).intact

        try:
            b = timed(backup, args.runs)
            stored = (engine.sets_dir / str(sets[-1]) / "data.tar.zst").stat().st_size
            v = timed(verify, args.runs)
        finally:
            shutil.rmtree(repo, ignore_errors=True)
        results[f"level {level}, workers {engine.workers}"] = {
            "backup": {
                "s": round(b.wall_s, 3),
                "mib_s": round(mib / b.wall_s),
                "x_raw": round(b.wall_s / raw.wall_s, 2),
                "cpu_s": round(b.cpu_s, 2),
            },
            "verify": {
                "s": round(v.wall_s, 3),
                "mib_s": round(mib / v.wall_s),
                "x_raw": round(v.wall_s / raw.wall_s, 2),
                "cpu_s": round(v.cpu_s, 2),
            },
            "stored_mib": round(stored / (1 << 20), 1),
        }
    if args.json:
        print(json.dumps(results))
        return
    print(f"{files} files, {mib:.0f} MiB, {os.cpu_count()} CPUs, page cache warm, best of {args.runs}")
    print(f"raw tar read      {raw.wall_s:6.2f} s  {mib / raw.wall_s:6.0f} MiB/s            cpu {raw.cpu_s:5.2f} s")
    for name, r in results.items():
        if not name.startswith("level"):
            continue
        assert isinstance(r, dict)
        for phase in ("backup", "verify"):
            p = r[phase]
            figures = f"{p['s']:6.2f} s  {p['mib_s']:6} MiB/s  {p['x_raw']:5.2f}x raw  cpu {p['cpu_s']:5.2f} s"
            print(f"{phase:6} {name:22} {figures}")
        print(f"       stored {r['stored_mib']} MiB")


if __name__ == "__main__":
    main()
