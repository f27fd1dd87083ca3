"""How long `snapport create` keeps an idle set of volumes frozen, against a bare `fsfreeze` of the same volumes.

Builds its own scratch world (needs root): an XFS filesystem on a loop device in a temporary directory, a
file-backed array on it, and N LUNs (default 4) with XFS volumes, presented to this "host" and mounted. Then, in
turns, it runs `snapport create VOLUMES... --json` through the CLI (and deletes the set), and a baseline:
`fsfreeze -f` of every volume then `fsfreeze -u` of every volume, timed from the first freeze to the last thaw.
It reports min / median / p95 / max of snapport's `freeze_window_ms` and `commit_ms` (as the CLI reports them),
of the wall time of each `snapport create` process, and of the baseline (also run with the volumes frozen in
parallel, as snapport freezes them), plus the ratio of the medians.

Everything it made is removed in a `finally`, by exact path and device, on Ctrl-C or SIGTERM too.

    sudo .venv/bin/python bench/freeze_window.py [--runs 20] [--volumes 4] [--json] [--base-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from commands import run_bounded, snapport

from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner
from snapport.providers.reflink_array import Array

HOST = "bench"
ARRAY_FS_MB = 4096  # sparse: only what is written takes space
VOLUME_MB = 400  # XFS wants at least 300 MB
MKFS_XFS = ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"]


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that the clean-up in `finally` runs."""


@dataclass
class World:
    """What the benchmark made, undone in reverse order by `cleanup`, each step by exact path or device."""

    root: Path
    runner: SubprocessRunner = field(default_factory=SubprocessRunner)
    volumes: list[Path] = field(default_factory=list)
    array: Array | None = None
    _undo: list[tuple[str, Callable[[], object]]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The environment of a `snapport` process acting as this benchmark's host."""
        return {
            **os.environ,
            "SNAPPORT_HOME": str(self.root / "home"),
            "SNAPPORT_HOST": HOST,
            "SNAPPORT_RUN_DIR": str(self.root / "run"),
        }

    def build(self, n_volumes: int) -> None:
        image = self.root / "arrayfs.img"
        with image.open("wb") as f:
            f.truncate(ARRAY_FS_MB * 1024 * 1024)
        self.runner.run([*MKFS_XFS, str(image)], timeout=120)
        array_fs = self._mount(self._loop(image), self.root / "arrayfs")
        self.array = array = Array.init(array_fs / "array", self.runner)
        self._undo.append(("detach what the array still presents", self._detach_strays))
        for i in range(n_volumes):
            lun = array.create_lun(f"bench{i}", VOLUME_MB * 1024 * 1024)
            device = array.present(lun.id, HOST)
            self._undo.append((f"unpresent LUN {lun.id}", partial(array.unpresent, lun.id, HOST)))
            self.runner.run([*MKFS_XFS, device], timeout=120)
            self.volumes.append(self._mount(device, self.root / "volumes" / f"v{i}"))

    def _loop(self, image: Path) -> str:
        # The undo is recorded first and finds the device by its exact backing file, so a Ctrl-C between the
        # attach and its bookkeeping leaks nothing.
        self._undo.append((f"detach the loop device of {image}", lambda: self._detach_image(image)))
        return loop.attach(self.runner, image)

    def _detach_image(self, image: Path) -> None:
        for device in loop.devices_for(self.runner, image):
            loop.detach(self.runner, device)

    def _mount(self, device: str, target: Path) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        self._undo.append((f"unmount {target}", lambda: self._unmount(target)))  # first, as above
        mnt.mount(self.runner, device, target, fs_type="xfs")
        return target

    def _unmount(self, target: Path) -> None:
        if mnt.mount_at(str(target)) is not None:
            ioctl.thaw(target)  # an interrupted run may have left it frozen; idempotent
            mnt.unmount(self.runner, target)

    def _detach_strays(self) -> None:
        """Loop devices on this array's images that the runs left (an interrupted import, say), by backing file."""
        assert self.array is not None
        prefix = f"{self.array.path}/"
        for device in loop.attached(self.runner):
            if device.backing_file.startswith(prefix):
                for m in mnt.mounts():
                    if m.source == device.device:
                        self._unmount(Path(m.mount_point))
                loop.detach(self.runner, device.device)

    def cleanup(self) -> list[str]:
        errors = []
        for what, undo in reversed(self._undo):
            try:
                undo()
            except Exception as exc:  # undo the rest whatever happened
                errors.append(f"{what}: {exc}")
        self._undo.clear()
        if not errors:
            shutil.rmtree(self.root)
        return errors


def snapport_run(world: World) -> tuple[float, float, float]:
    """One `snapport create` of every volume, then `snapport delete`: (freeze window, commit, wall) in ms."""
    started = time.perf_counter()
    rc, out, err = run_bounded([*snapport(), "create", *map(str, world.volumes), "--json"], world.env())
    wall_ms = (time.perf_counter() - started) * 1000
    if rc != 0:
        raise RuntimeError(f"snapport create failed ({rc}): {err.strip()}")
    created = json.loads(out)
    rc, _, err = run_bounded([*snapport(), "delete", created["set_id"], "--json"], world.env())
    if rc != 0:
        raise RuntimeError(f"snapport delete {created['set_id']} failed ({rc}): {err.strip()}")
    return float(created["freeze_window_ms"]), float(created["commit_ms"]), wall_ms


def fsfreeze_run(world: World) -> float:
    """`fsfreeze -f` of every volume, then `fsfreeze -u` of every volume: ms from the first freeze to the last thaw."""
    frozen: list[Path] = []
    started = time.perf_counter()
    try:
        for volume in world.volumes:
            subprocess.run(["fsfreeze", "-f", str(volume)], check=True, timeout=30)
            frozen.append(volume)
    finally:
        for volume in frozen:
            subprocess.run(["fsfreeze", "-u", str(volume)], check=True, timeout=30)
    return (time.perf_counter() - started) * 1000


def parallel_fsfreeze_run(world: World) -> float:
    """The same, with the volumes frozen in parallel (as snapport does, one guard per volume), then thawed in
    parallel: ms from starting the first freeze to the last thaw done."""
    started = time.perf_counter()
    freezes = [subprocess.Popen(["fsfreeze", "-f", str(v)]) for v in world.volumes]
    try:
        failed = [v for v, p in zip(world.volumes, freezes, strict=True) if p.wait(30) != 0]
    finally:
        thaws = [subprocess.Popen(["fsfreeze", "-u", str(v)]) for v in world.volumes]
        for p in freezes + thaws:
            p.wait(30)  # a failed freeze (EBUSY) makes its thaw fail too: both are reported below
    if failed:
        raise RuntimeError(f"fsfreeze -f failed on {', '.join(map(str, failed))}")
    return (time.perf_counter() - started) * 1000


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """min / median / p95 (nearest rank) / max, and the samples, in ms rounded to 0.01."""
    ordered = sorted(samples)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "min": round(ordered[0], 2),
        "median": round(statistics.median(ordered), 2),
        "p95": round(p95, 2),
        "max": round(ordered[-1], 2),
        "samples": [round(s, 2) for s in samples],
    }


def benchmark(world: World, runs: int, warmup: int, progress: bool) -> dict[str, Any]:
    freeze, commit, wall, baseline, parallel = [], [], [], [], []
    for i in range(warmup + runs):
        # Interleaved, so that drift (page cache, the array filesystem's log) affects all the same way.
        f, c, w = snapport_run(world)
        b = fsfreeze_run(world)
        p = parallel_fsfreeze_run(world)
        if i < warmup:
            continue
        freeze.append(f)
        commit.append(c)
        wall.append(w)
        baseline.append(b)
        parallel.append(p)
        if progress:
            print(
                f"run {i - warmup + 1}/{runs}: freeze window {f:.1f} ms, fsfreeze {b:.1f} ms (parallel {p:.1f} ms)",
                file=sys.stderr,
            )
    result: dict[str, Any] = {
        "runs": runs,
        "volumes": len(world.volumes),
        "freeze_window_ms": summary(freeze),
        "commit_ms": summary(commit),
        "create_wall_ms": summary(wall),
        "baseline_fsfreeze_ms": summary(baseline),
        "baseline_parallel_fsfreeze_ms": summary(parallel),
    }
    median = result["freeze_window_ms"]["median"]
    result["freeze_window_to_baseline"] = round(median / result["baseline_fsfreeze_ms"]["median"], 2)
    result["freeze_window_to_parallel_baseline"] = round(median / result["baseline_parallel_fsfreeze_ms"]["median"], 2)
    return result


def print_table(result: dict[str, Any]) -> None:
    rows = [
        ("snapport freeze window", result["freeze_window_ms"]),
        ("snapport commit", result["commit_ms"]),
        ("snapport create (wall)", result["create_wall_ms"]),
        ("fsfreeze -f/-u baseline", result["baseline_fsfreeze_ms"]),
        ("  the same, in parallel", result["baseline_parallel_fsfreeze_ms"]),
    ]
    print(f"{result['runs']} runs, {result['volumes']} idle XFS volumes on a reflink array; times in ms")
    print(f"{'':<26}{'min':>10}{'median':>10}{'p95':>10}{'max':>10}")
    for name, s in rows:
        print(f"{name:<26}{s['min']:>10.1f}{s['median']:>10.1f}{s['p95']:>10.1f}{s['max']:>10.1f}")
    print(
        f"median freeze window / median baseline: {result['freeze_window_to_baseline']:.2f}x "
        f"(/ parallel baseline: {result['freeze_window_to_parallel_baseline']:.2f}x)"
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20, help="measured runs of each (default 20)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs first (default 1)")
    parser.add_argument("--volumes", type=int, default=4, help="volumes in the set (default 4)")
    parser.add_argument("--base-dir", type=Path, default=None, help="where to make the scratch world (a temp dir)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or not 1 <= args.volumes <= 64:
        parser.error("--runs must be at least 1, --warmup at least 0, --volumes between 1 and 64")
    if os.geteuid() != 0:
        parser.error("needs root (loop devices, mounts, FIFREEZE): sudo .venv/bin/python bench/freeze_window.py")
    missing = [tool for tool in ("mkfs.xfs", "losetup", "fsfreeze") if shutil.which(tool) is None]
    if missing:
        parser.error(f"missing tools: {', '.join(missing)}")

    signal.signal(signal.SIGTERM, _on_sigterm)
    world = World(Path(tempfile.mkdtemp(prefix="snapport-bench-", dir=args.base_dir)).resolve())
    try:
        world.build(args.volumes)
        result = benchmark(world, args.runs, args.warmup, progress=not args.json)
    except (KeyboardInterrupt, Interrupted):
        print("interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # the clean-up itself must not be cut short
            signal.signal(signum, signal.SIG_IGN)
        errors = world.cleanup()
        if errors:
            print(f"clean-up left things behind in {world.root}: {'; '.join(errors)}", file=sys.stderr)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print_table(result)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
