"""Backup engines on a real exposed snapshot, against a raw read of the same files, page cache cold and warm.

As root. Makes, through snapport itself: an XFS scratch filesystem on a loop device (in a temporary directory under
--base-dir), `snapport array init` on it, a LUN, mkfs.xfs, mounted and filled with --gib GiB in --files files of
mixed sizes (seeded; half incompressible, half text); `snapport create --transportable` on the "production" home,
`snapport import` + `snapport expose` on the "backup" home. Then, once cold (`echo 3 > /proc/sys/vm/drop_caches`
before each timed run: a proxy reads a freshly imported LUN it never cached) and once warm:

- raw: `tar -cf - -C EXPOSED . | cat > /dev/null`
- archive: `ArchiveEngine.backup` of the whole volume into a fresh repository
- restic: the same with the `restic` engine, if the registry has it
- archive@LEVEL: the archive engine at another zstd level, for each --level; archive@adaptive with --adaptive

printing wall seconds, the ratio to the raw read of the same cache state, and CPU seconds (children included).
Everything it made is removed by exact id (set, mounts, LUN, loop device, directory), Ctrl-C and SIGTERM included.

    sudo .venv/bin/python bench/engine.py [--gib 2] [--files 20000] [--base-dir /var/tmp] [--json]
        [--engines archive] [--level -5] [--adaptive]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from snapport.documents import load_documents
from snapport.engines import ENGINES, ArchiveEngine, Engine, SetDocuments, get_engine, select_components
from snapport.model.paths import relative_to_volume

PRODUCTION, BACKUP = "bench-prod", "bench-proxy"


def sh(argv: list[str], env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def retry(argv: list[str], attempts: int = 120) -> None:
    for _ in range(attempts - 1):
        with contextlib.suppress(RuntimeError):
            sh(argv)
            return
        time.sleep(0.5)
    sh(argv)


def snapport(home: str, base: Path, *args: str) -> dict[str, object]:
    env = {**os.environ, "SNAPPORT_HOME": str(base / f"home-{home}"), "SNAPPORT_HOST": home}
    env["SNAPPORT_RUN_DIR"] = str(base / f"run-{home}")
    out = sh([sys.executable, "-m", "snapport", *args, "--json"], env)
    return json.loads(out) if out.strip() else {}


def fill(root: Path, gib: float, files: int, seed: int = 20261125) -> tuple[int, int]:
    """`files` files totalling about `gib` GiB: 80% small, 19% medium, 1% large by count; about half the bytes
    random, half text."""
    rng = random.Random(seed)  # noqa: S311  (reproducible data, not secrets)
    words = [f"{rng.choice(('log', 'row', 'key', 'user', 'GET', 'POST'))}{rng.randrange(90000)}" for _ in range(5000)]
    pool = (" ".join(rng.choices(words, k=1_000_000)) + "\n").encode()
    kinds = [(0.80, 4 << 10, 36 << 10), (0.19, 64 << 10, 316 << 10), (0.01, 2 << 20, 8 << 20)]
    sizes = []
    for share, low, high in kinds:
        sizes += [rng.randrange(low, high) for _ in range(int(files * share))]
    scale = gib * (1 << 30) / sum(sizes)
    total = 0
    for i, raw in enumerate(sizes):
        size = max(1, int(raw * scale))
        directory = root / f"d{i // 200:03d}"
        directory.mkdir(exist_ok=True)
        if i % 2:
            data = rng.randbytes(size)
        else:
            start = rng.randrange(0, len(pool) - 1)
            data = (pool[start:] + pool)[:size] if size > len(pool) - start else pool[start : start + size]
            while len(data) < size:
                data += pool[: size - len(data)]
        (directory / f"f{i:05d}").write_bytes(data)
        total += size
    return len(sizes), total


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def measure(action: Callable[[], object]) -> dict[str, float]:
    before = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    after = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(a.ru_utime - b.ru_utime + a.ru_stime - b.ru_stime for a, b in zip(after, before, strict=True))
    return {"s": round(wall, 3), "cpu_s": round(cpu, 2)}


@contextlib.contextmanager
def world(base: Path, gib: float, files: int) -> Iterator[tuple[Path, Path, SetDocuments, str]]:
    """The exposed snapshot: (exposed path, volume mount point, documents, set id); torn down by id."""
    undo: list[Callable[[], object]] = []
    try:
        image = base / "arrayfs.img"
        with image.open("wb") as f:
            f.truncate(int(gib * 2.5 * (1 << 30)) + (2 << 30))
        sh(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", str(image)])
        array_mount = base / "arrayfs"
        device = sh(["losetup", "--find", "--show", str(image)]).strip()
        undo.append(lambda: None if os.path.ismount(array_mount) else sh(["losetup", "-d", device]))
        array_mount.mkdir()
        sh(["mount", device, str(array_mount)])
        # busy while the LUN's loop device detaches, or for as long as a mount namespace made meanwhile holds a copy of
        # the volume's mount: run the bench under `flock -s /tmp/snapport-lab.lock` beside the lab's tests
        undo.append(lambda: retry(["umount", str(array_mount)]))
        array = array_mount / "array"
        snapport(PRODUCTION, base, "array", "init", str(array))
        lun = str(snapport(PRODUCTION, base, "array", "lun", "create", str(array), "--name", "data", "--size",
                           f"{int(gib * 1.3 * 1024) + 512}M")["lun"])  # fmt: skip
        lun_device = str(snapport(PRODUCTION, base, "array", "present", str(array), lun)["device"])
        undo.append(lambda: snapport(PRODUCTION, base, "array", "unpresent", str(array), lun))
        sh(["mkfs.xfs", "-q", "-f", lun_device])
        volume = base / "volume"
        volume.mkdir()
        sh(["mount", lun_device, str(volume)])
        undo.append(lambda: sh(["umount", str(volume)]))
        count, total = fill(volume, gib, files)
        print(f"filled {volume}: {count} files, {total / (1 << 30):.2f} GiB", file=sys.stderr)
        out = base / "documents"
        created = snapport(PRODUCTION, base, "create", str(volume), "--transportable", "--out", str(out))
        set_id = str(created["set_id"])
        undo.append(lambda: snapport(PRODUCTION, base, "delete", set_id))
        snapport(BACKUP, base, "import", str(out / "backup-components.xml"))
        undo.append(lambda: snapport(BACKUP, base, "delete", set_id))
        exposed = snapport(BACKUP, base, "expose", set_id)["exposed"]
        assert isinstance(exposed, dict)
        undo.append(lambda: snapport(BACKUP, base, "unexpose", set_id))
        bcd, wmds = load_documents(out)
        yield Path(exposed[str(volume)]), volume, SetDocuments(bcd, tuple(wmds)), set_id
    finally:
        for step in reversed(undo):
            try:
                step()
            except Exception as exc:  # keep undoing the rest; say what stayed
                print(f"cleanup: {exc}", file=sys.stderr)


def run(base: Path, gib: float, files: int, engines: list[str], repo_dir: Path | None = None) -> dict[str, object]:
    results: dict[str, object] = {"gib": gib, "files": files, "load_before": os.getloadavg()}
    results["repo_dir"] = str(repo_dir or base)
    with world(base, gib, files) as (exposed, volume, docs, _set_id):
        filesystem = [w.writer_id for w in docs.writers if w.name == "filesystem"]
        components = select_components(docs, writer_ids=filesystem)

        def mapping(original: str) -> Path:
            relative = relative_to_volume(str(volume), original)
            return exposed / relative if relative else exposed

        def raw() -> None:
            sh(["sh", "-c", 'tar -cf - -C "$1" . | cat > /dev/null', "sh", str(exposed)])

        stored: dict[str, float] = {}

        def engine_backup(name: str) -> Callable[[], object]:
            def action() -> None:
                repo = (repo_dir or base) / f"snapport-bench-repo-{name}-{uuid.uuid4().hex[:6]}"
                try:
                    engine, _, variant = name.partition("@")  # archive@LEVEL (fixed), @adaptive, @none
                    if variant in ("adaptive", "none"):
                        chosen: Engine = ArchiveEngine(repo, compression=variant)
                    elif variant:
                        chosen = ArchiveEngine(repo, level=int(variant), compression="fixed")
                    else:
                        chosen = get_engine(engine, repo)
                    result = chosen.backup(docs, components, mapping)
                    stored[name] = round(result.stored_bytes / (1 << 20), 1)
                finally:
                    shutil.rmtree(repo, ignore_errors=True)

            return action

        if "restic" in engines and "restic" not in ENGINES:
            engines = [e for e in engines if e != "restic"]
            results["note"] = "no restic engine registered: skipped"
        for cache in ("cold", "warm"):
            figures: dict[str, dict[str, float]] = {}
            for name, action in [("raw", raw), *((n, engine_backup(n)) for n in engines)]:
                if cache == "cold":
                    drop_caches()
                else:
                    raw()  # everything in the page cache
                figures[name] = measure(action)
                if name in stored:
                    figures[name]["stored_mib"] = stored[name]
                figures[name]["x_raw"] = round(figures[name]["s"] / figures["raw"]["s"], 2)
            results[cache] = figures
    results["load_after"] = os.getloadavg()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--base-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--engines", default="archive,restic", help="comma-separated (default: archive,restic)")
    parser.add_argument("--level", type=int, action="append", default=[], help="also the archive engine at LEVEL")
    parser.add_argument("--adaptive", action="store_true", help="also the archive engine, adaptive compression")
    parser.add_argument("--none", action="store_true", help="also the archive engine, without compression")
    parser.add_argument(
        "--repo-dir",
        type=Path,
        default=None,
        help="where the repositories go (default: --base-dir's disk; e.g. "
        "/dev/shm to time the engine without the cost of writing its output, which the raw read does not pay)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/engine.py needs root (loop devices, mounts, drop_caches)")
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    engines = args.engines.split(",") + [f"archive@{level}" for level in args.level]
    engines += ["archive@adaptive"] if args.adaptive else []
    engines += ["archive@none"] if args.none else []
    base = Path(tempfile.mkdtemp(prefix="snapport-bench-engine-", dir=args.base_dir))
    try:
        results = run(base, args.gib, args.files, engines, args.repo_dir)
    finally:
        mounted = [p for p in (base / "volume", base / "arrayfs") if os.path.ismount(p)]
        if mounted:  # never delete through a mount that stayed: say so, and leave it for a human
            print(f"left mounted (remove by hand): {', '.join(map(str, mounted))}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{args.gib} GiB in {args.files} files; load {results['load_before']} -> {results['load_after']}")
    for cache in ("cold", "warm"):
        figures = results[cache]
        assert isinstance(figures, dict)
        for name, f in figures.items():
            print(f"{cache:4} {name:11} {f['s']:7.2f} s  {f['x_raw']:5.2f}x raw  cpu {f['cpu_s']:6.2f} s")
    if "note" in results:
        print(results["note"])


if __name__ == "__main__":
    main()
