"""snapport on Ceph RBD: the freeze window against a bare freeze + snapshot + thaw, import and expose, and the
proxy's read rate from the exposed clone against raw reads of the same image.

As root. Starts a throwaway cluster (`snapport.lab.ceph.up`: mon, mgr, one BlueStore OSD, cephx) in a temporary
directory, or uses the one `--cluster DIR` names (left running). Makes 3 RBD images, presents them (rbd-fuse +
a loop device, as the `ceph-rbd` provider does) for a "production" home, with XFS on each, mounted, and a file of
`--size` MiB of random bytes on the first. Then:

1. `--runs` times, interleaved: `snapport create V1 V2 V3 --json` (and `delete`) as a process, its
   `freeze_window_ms` and `commit_ms`; and the bare baseline on the same images: parallel `fsfreeze -f` of the 3
   mounts, one snapshot per image, parallel `fsfreeze -u`, the snapshot taken by librbd on an open connection
   (what the provider does), by one `rbd snap create` process per image in turn, and by the three in parallel.
2. `--runs` times: `snapport create --transportable` on production, then `snapport import BCD` and
   `snapport expose SET` on a second ("proxy") home, each a process, timed.
3. In the first `--read-runs` of those, every byte of the file read cold (page cache dropped, and the OSD's
   BlueStore cache: `ceph tell osd.0 cache drop`) from the exposed clone, from the original volume, from the
   original image's block device (the file's extents, by FIEMAP), and through librbd (the same extents).

Prints a table, or with `--json` one object with every figure and the ratios. Everything it made (sets, mounts,
loop devices, rbd-fuse mounts, images, the cluster) is removed at the end, Ctrl-C and SIGTERM included; what
stayed is listed and the exit status is 1.

    sudo .venv/bin/python bench/ceph.py [--runs 10] [--read-runs 3] [--size 512] [--cluster DIR] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any

from commands import COMMAND_TIMEOUT_S, run_bounded, snapport

from snapport.errors import SnapportError
from snapport.lab import ceph
from snapport.lab.ceph import CephSite
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner
from snapport.providers.ceph_rbd.cluster import CONFIG_FILE, ImageRef, load_config
from snapport.providers.ceph_rbd.presentation import FUSE_TYPE, FusePresenter

PRODUCTION, PROXY = "snapport-production", "snapport-proxy"  # the cephx clients lab/ceph.py makes
VOLUMES = 3
SMALL_IMAGE_MIB = 400  # XFS wants at least 300 MB
DATA_FILE = "data.bin"
CHUNK = 4 << 20  # one RBD object
PROCESS_EXIT_WAIT_S = 10.0  # rbd-fuse ends a moment after its mount goes
FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC, FIEMAP_EXTENT_LAST = 0x1, 0x1
FIEMAP_HEADER, FIEMAP_EXTENT, FIEMAP_BATCH = struct.Struct("=QQIIII"), struct.Struct("=QQQQQIIII"), 256


class Interrupted(Exception):
    """SIGTERM, turned into an exception so that the clean-up in `finally` runs."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    """Run a command (bounded, see `run_bounded`) and return its stdout; a failure raises."""
    rc, out, err = run_bounded(argv, env)
    if rc != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({rc}): {err.strip()}")
    return out


@dataclass(frozen=True, slots=True)
class Home:
    """A snapport host of the bench: its SNAPPORT_HOME, run directory and cephx client."""

    host: str
    path: Path
    run_dir: Path
    client: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "SNAPPORT_HOME": str(self.path), "SNAPPORT_HOST": self.host,
                "SNAPPORT_RUN_DIR": str(self.run_dir)}  # fmt: skip

    def snapport(self, *args: str) -> tuple[dict[str, Any], float]:
        """`snapport ARGS --json` as a process: its JSON answer and its wall time in ms."""
        started = time.perf_counter()
        out = run([*snapport(), *args, "--json"], self.env())
        return (json.loads(out) if out.strip() else {}), (time.perf_counter() - started) * 1000


class Connection:
    """librados + librbd as one cephx client, on the bench's pool."""

    def __init__(self, site: CephSite, client: str) -> None:
        import rados  # type: ignore[import-not-found]  # noqa: PLC0415  (Debian's, linked by scripts/setup)
        import rbd  # type: ignore[import-not-found]  # noqa: PLC0415

        self.rbd: Any = rbd
        self.handle: Any = rados.Rados(
            conffile=str(site.conf), rados_id=client, conf={"keyring": str(site.keyring(client))}
        )
        self.handle.connect(timeout=10)
        self.io: Any = self.handle.open_ioctx(site.pool)

    def image(self, name: str, *, read_only: bool = False) -> Any:
        return self.rbd.Image(self.io, name, read_only=read_only)

    def images(self) -> list[str]:
        return sorted(self.rbd.RBD().list(self.io))

    def remove_snapshots(self, name: str, snapshots: Sequence[str]) -> None:
        with self.image(name) as image:
            present = {s["name"] for s in image.list_snaps()}
            for snapshot in snapshots:
                if snapshot in present:
                    image.remove_snap(snapshot)

    def remove_image(self, name: str) -> None:
        """Remove an image and every snapshot of it; idempotent."""
        if name not in self.images():
            return
        with self.image(name) as image:
            for snap in list(image.list_snaps()):
                image.remove_snap(snap["name"])
        self.rbd.RBD().remove(self.io, name)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.io.close()
        with contextlib.suppress(Exception):
            self.handle.shutdown()


@dataclass
class World:
    """What the bench made. `cleanup` finds all of it by what makes it ours: the sets it recorded, mounts and loop
    backing files under `root`, images named `prefix-*`, the cluster's recorded pids."""

    root: Path
    cluster_dir: Path | None  # given: not ours to stop
    runner: SubprocessRunner = field(default_factory=SubprocessRunner)
    prefix: str = field(default_factory=lambda: f"bench-{uuid.uuid4().hex[:8]}")
    site: CephSite | None = None
    admin: Connection | None = None
    production_conn: Connection | None = None
    images: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)
    volumes: list[Path] = field(default_factory=list)
    sets: dict[str, list[Home]] = field(default_factory=dict)  # set id -> the homes holding it, the proxy first
    production: Home = field(init=False)
    proxy: Home = field(init=False)

    def __post_init__(self) -> None:
        self.production = Home("bench-prod", self.root / "home-prod", self.root / "run-prod", PRODUCTION)
        self.proxy = Home("bench-proxy", self.root / "home-proxy", self.root / "run-proxy", PROXY)

    @property
    def our_cluster(self) -> Path:
        return self.root / "cluster"

    def build(self, size_mib: int) -> None:
        if self.cluster_dir is None:
            started = time.perf_counter()
            log(f"starting a Ceph cluster in {self.our_cluster}")
            self.site = ceph.up(self.our_cluster)
            log(f"cluster {self.site.fsid} up in {time.perf_counter() - started:.1f} s")
        else:
            self.site = ceph.site(self.cluster_dir)
        self.admin = Connection(self.site, "admin")
        self.production_conn = Connection(self.site, PRODUCTION)
        for home in (self.production, self.proxy):
            home.path.mkdir(parents=True)
            (home.path / CONFIG_FILE).write_text(
                f'conf = "{self.site.conf}"\nclient = "{home.client}"\n'
                f'keyring = "{self.site.keyring(home.client)}"\npresent = "fuse"\n'
            )
        presenter = self.presenter(self.production)
        for i in range(VOLUMES):
            name = f"{self.prefix}-v{i + 1}"
            mib = max(SMALL_IMAGE_MIB, size_mib + size_mib // 4 + 300) if i == 0 else SMALL_IMAGE_MIB
            self.images.append(name)  # before it exists: cleanup removes it by name
            self.admin.rbd.RBD().create(self.admin.io, name, mib << 20)
            device = presenter.present(ImageRef(self.site.pool, "", name), read_only=False)
            self.devices.append(device)
            run(["mkfs.xfs", "-q", "-f", device])
            target = self.root / "volumes" / f"v{i + 1}"
            target.mkdir(parents=True)
            mnt.mount(self.runner, device, target, fs_type="xfs")
            self.volumes.append(target)
        started = time.perf_counter()
        with (self.volumes[0] / DATA_FILE).open("wb") as f:
            for _ in range(size_mib * (1 << 20) // CHUNK):
                f.write(os.urandom(CHUNK))
            f.flush()
            os.fsync(f.fileno())
        log(f"wrote {size_mib} MiB to {self.volumes[0] / DATA_FILE} in {time.perf_counter() - started:.1f} s")

    def presenter(self, home: Home) -> FusePresenter:
        config = load_config(home.path)
        assert config is not None
        return FusePresenter(home.path, config, self.runner)

    # -- clean-up ------------------------------------------------------------------------------------------------

    def cleanup(self) -> list[str]:
        """Undo everything, each step whatever the others did; say what failed."""
        errors: list[str] = []

        def step(what: str, action: Callable[[], object]) -> None:
            try:
                action()
            except Exception as exc:
                errors.append(f"{what}: {exc}")

        for set_id, homes in list(self.sets.items()):
            for home in homes:
                if home is self.proxy:
                    step(f"unexpose set {set_id} on {home.host}", partial(home.snapport, "unexpose", set_id))
                step(f"delete set {set_id} on {home.host}", partial(home.snapport, "delete", set_id))
        step("unmount what is mounted under the bench's directory", self._unmount_ours)
        for home in (self.production, self.proxy):
            if (home.path / CONFIG_FILE).exists():
                step(f"unpresent the images of {home.host}", partial(self._unpresent_all, home))
        step("detach the loop devices on the bench's files", self._detach_ours)
        if self.admin is not None:
            step(f"remove the images {self.prefix}-*", self._remove_images)
        for connection in (self.production_conn, self.admin):
            if connection is not None:
                connection.close()
        if self.cluster_dir is None and self.our_cluster.exists():
            step("stop the cluster", partial(ceph.down, self.our_cluster))
        if not errors and not self._mounts_ours():
            shutil.rmtree(self.root, ignore_errors=True)
        return errors

    def _mounts_ours(self) -> list[mnt.MountInfo]:
        prefix = f"{self.root}/"
        return [m for m in mnt.mounts() if m.mount_point.startswith(prefix)]

    def _unmount_ours(self) -> None:
        """Every mount under the bench's directory but rbd-fuse's (unpresent ends those), deepest first."""
        for m in sorted(self._mounts_ours(), key=lambda m: m.mount_point, reverse=True):
            if m.fs_type == FUSE_TYPE:
                continue
            with contextlib.suppress(OSError):
                ioctl.thaw(Path(m.mount_point))  # an interrupted baseline may have left it frozen
            mnt.unmount(self.runner, Path(m.mount_point))

    def _unpresent_all(self, home: Home) -> None:
        presenter = self.presenter(home)
        images = {p.image for p in presenter.presented() if p.home == home.path}
        images |= {ref for ref, _ in presenter.serving()}
        for image in sorted(images):
            presenter.unpresent(image)

    def _detach_ours(self) -> None:
        prefix = f"{self.root}/"
        for device in loop.attached(self.runner):
            if device.backing_file.startswith(prefix):
                loop.detach(self.runner, device.device)
        for m in self._mounts_ours():  # an rbd-fuse mount whose loop device went another way
            mnt.unmount(self.runner, Path(m.mount_point))

    def _remove_images(self) -> None:
        assert self.admin is not None
        ours = [n for n in self.admin.images() if n.startswith(f"{self.prefix}-")]
        for name in sorted(ours, key=lambda n: n in self.images):  # clones before their parents
            self.admin.remove_image(name)

    def left_behind(self) -> list[str]:
        """What of the bench still exists: loop devices on its files, mounts under its directory, processes
        naming it (rbd-fuse, the cluster's daemons), images `prefix-*` on a cluster it did not start."""
        prefix = f"{self.root}/"
        deadline = time.monotonic() + PROCESS_EXIT_WAIT_S
        while True:
            found = [f"loop device {d.device} on {d.backing_file}" for d in loop.attached(self.runner)
                     if d.backing_file.startswith(prefix)]  # fmt: skip
            found += [f"mount {m.mount_point} ({m.fs_type})" for m in mnt.mounts() if m.mount_point.startswith(prefix)]
            found += [f"process {pid}: {argv}" for pid, argv in _processes_naming(str(self.root))]
            if not found or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        if self.cluster_dir is not None and self.site is not None:
            with contextlib.suppress(Exception):
                admin = Connection(self.site, "admin")
                try:
                    found += [f"image {n}" for n in admin.images() if n.startswith(f"{self.prefix}-")]
                finally:
                    admin.close()
        return found


def _processes_naming(text: str) -> Iterator[tuple[int, str]]:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            if text in argv:
                yield int(entry.name), argv


# -- figures -----------------------------------------------------------------------------------------------------


def summary(samples: Sequence[float]) -> dict[str, Any]:
    """min / median / p95 (nearest rank) / max, and the samples, rounded to 0.01."""
    ordered = sorted(samples)
    p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
    return {
        "min": round(ordered[0], 2),
        "median": round(statistics.median(ordered), 2),
        "p95": round(p95, 2),
        "max": round(ordered[-1], 2),
        "samples": [round(s, 2) for s in samples],
    }


def ratio(a: float, b: float) -> float:
    return round(a / b, 2) if b else math.inf


# -- 1. the freeze window ----------------------------------------------------------------------------------------


def snapport_window(world: World) -> tuple[float, float, float]:
    """`snapport create V1 V2 V3 --json`, then `snapport delete`: (freeze window, commit, wall) in ms."""
    created, wall_ms = world.production.snapport("create", *map(str, world.volumes))
    set_id = str(created["set_id"])
    world.sets[set_id] = [world.production]
    world.production.snapport("delete", set_id)
    del world.sets[set_id]
    return float(created["freeze_window_ms"]), float(created["commit_ms"]), wall_ms


class Snapshotter:
    """One way to take the bare baseline's snapshots: `open` outside the freeze, `take` inside, `close` after."""

    name: str = ""

    def open(self) -> None:
        return None

    def take(self, snapshots: Sequence[str]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        return None


class LibrbdSnapshots(Snapshotter):
    """`Image.create_snap` on images opened before the freeze, on one open connection: in turn (the provider's
    way), or one thread per image (the binding releases the GIL for the call)."""

    def __init__(self, world: World, *, parallel: bool) -> None:
        assert world.production_conn is not None
        self.connection, self.images, self.parallel = world.production_conn, world.images, parallel
        self.name = "librbd, a thread per image" if parallel else "librbd (open connection)"
        self.opened: list[Any] = []
        self.pool: ThreadPoolExecutor | None = None

    def open(self) -> None:
        self.opened = [self.connection.image(name) for name in self.images]
        if self.parallel:
            self.pool = ThreadPoolExecutor(len(self.opened))

    def take(self, snapshots: Sequence[str]) -> None:
        pairs = list(zip(self.opened, snapshots, strict=True))
        if self.pool is None:
            for image, snapshot in pairs:
                image.create_snap(snapshot)
            return
        for future in [self.pool.submit(image.create_snap, snapshot) for image, snapshot in pairs]:
            future.result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None
        for image in self.opened:
            image.close()
        self.opened = []


class RbdCommandSnapshots(Snapshotter):
    """One `rbd snap create` process per image, in turn or all at once."""

    def __init__(self, world: World, *, parallel: bool) -> None:
        assert world.site is not None
        site = world.site
        self.parallel = parallel
        self.name = "rbd snap create, parallel" if parallel else "rbd snap create, in turn"
        self.base = ["rbd", "-c", str(site.conf), "--id", PRODUCTION, "--keyring", str(site.keyring(PRODUCTION))]
        self.images = [f"{site.pool}/{name}" for name in world.images]

    def take(self, snapshots: Sequence[str]) -> None:
        argvs = [[*self.base, "snap", "create", "--no-progress", f"{image}@{snapshot}"]
                 for image, snapshot in zip(self.images, snapshots, strict=True)]  # fmt: skip
        if not self.parallel:
            for argv in argvs:
                run(argv)
            return
        procs = [subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for argv in argvs]
        failed = [p for p in procs if p.wait(COMMAND_TIMEOUT_S) != 0]
        if failed:
            assert failed[0].stderr is not None
            raise RuntimeError(f"rbd snap create failed: {failed[0].stderr.read().decode().strip()}")


def bare_window(world: World, snapshotter: Snapshotter) -> tuple[float, float]:
    """Parallel `fsfreeze -f` of the volumes, a snapshot of each image, parallel `fsfreeze -u`: (ms from the first
    freeze started to the last thaw done, ms of the snapshots). The snapshots are removed after, outside."""
    assert world.production_conn is not None
    snapshots = [f"{world.prefix}-bare-{uuid.uuid4().hex[:8]}" for _ in world.images]
    snapshotter.open()
    try:
        started = time.perf_counter()
        freezes = [subprocess.Popen(["fsfreeze", "-f", str(v)]) for v in world.volumes]
        try:
            failed = [v for v, p in zip(world.volumes, freezes, strict=True) if p.wait(30) != 0]
            if failed:
                raise RuntimeError(f"fsfreeze -f failed on {', '.join(map(str, failed))}")
            snap_started = time.perf_counter()
            snapshotter.take(snapshots)
            snap_ms = (time.perf_counter() - snap_started) * 1000
        finally:
            thaws = [subprocess.Popen(["fsfreeze", "-u", str(v)]) for v in world.volumes]
            for p in freezes + thaws:
                p.wait(30)
        window_ms = (time.perf_counter() - started) * 1000
    finally:
        snapshotter.close()
        for name, snapshot in zip(world.images, snapshots, strict=True):
            world.production_conn.remove_snapshots(name, [snapshot])
    return window_ms, snap_ms


def freeze_windows(world: World, runs: int, warmup: int) -> dict[str, Any]:
    snapshotters: list[Snapshotter] = [
        LibrbdSnapshots(world, parallel=False),
        LibrbdSnapshots(world, parallel=True),
        RbdCommandSnapshots(world, parallel=False),
        RbdCommandSnapshots(world, parallel=True),
    ]
    keys = list(BARE)
    freeze: list[float] = []
    commit: list[float] = []
    wall: list[float] = []
    bare: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in keys}
    for i in range(warmup + runs):
        # interleaved, so that drift (the OSD's caches, the machine's load) affects all alike
        f, c, w = snapport_window(world)
        measured = {k: bare_window(world, s) for k, s in zip(keys, snapshotters, strict=True)}
        if i < warmup:
            continue
        freeze.append(f)
        commit.append(c)
        wall.append(w)
        for k, (window, snap) in measured.items():
            bare[k][0].append(window)
            bare[k][1].append(snap)
        log(
            f"freeze run {i - warmup + 1}/{runs}: snapport {f:.1f} ms (commit {c:.1f}); bare "
            + ", ".join(f"{k.removeprefix('bare_')} {m[0]:.1f} ms (snapshots {m[1]:.1f})" for k, m in measured.items())
        )
    result: dict[str, Any] = {
        "freeze_window_ms": summary(freeze),
        "commit_ms": summary(commit),
        "create_wall_ms": summary(wall),
    }
    for k, s in zip(keys, snapshotters, strict=True):
        result[k] = {"how": s.name, "window_ms": summary(bare[k][0]), "snapshots_ms": summary(bare[k][1])}
    median = result["freeze_window_ms"]["median"]
    for k in keys:
        result[f"freeze_window_to_{k}"] = ratio(median, result[k]["window_ms"]["median"])
    librbd_snap = result["bare_librbd"]["snapshots_ms"]["median"]
    result["rbd_command_to_librbd_snapshots"] = ratio(result["bare_rbd_command"]["snapshots_ms"]["median"], librbd_snap)
    result["commit_to_librbd_snapshots"] = ratio(result["commit_ms"]["median"], librbd_snap)
    result["librbd_parallel_to_librbd_snapshots"] = ratio(
        result["bare_librbd_parallel"]["snapshots_ms"]["median"], librbd_snap
    )
    return result


# -- 2. import and expose; 3. reading the clone ------------------------------------------------------------------


def extents(path: Path) -> list[tuple[int, int]]:
    """The file's extents on its device, (physical offset, length) in bytes, by FIEMAP (flushed first)."""
    found: list[tuple[int, int]] = []
    start, done = 0, False
    with path.open("rb") as f:
        while not done:
            buf = bytearray(FIEMAP_HEADER.size + FIEMAP_EXTENT.size * FIEMAP_BATCH)
            FIEMAP_HEADER.pack_into(buf, 0, start, 2**64 - 1 - start, FIEMAP_FLAG_SYNC, 0, FIEMAP_BATCH, 0)
            fcntl.ioctl(f.fileno(), FS_IOC_FIEMAP, buf)
            mapped = FIEMAP_HEADER.unpack_from(buf, 0)[3]
            if mapped == 0:
                break
            for i in range(mapped):
                logical, physical, length, _, _, flags, *_ = FIEMAP_EXTENT.unpack_from(
                    buf, FIEMAP_HEADER.size + i * FIEMAP_EXTENT.size
                )
                found.append((physical, length))
                start = logical + length
                done = done or bool(flags & FIEMAP_EXTENT_LAST)
    return found


def drop_caches(world: World) -> None:
    """The page cache, and the OSD's BlueStore cache (a clone's reads are its parent's objects: whichever path read
    them first would warm them for the next)."""
    assert world.site is not None
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
    site = world.site
    run(["ceph", "-c", str(site.conf), "-n", "client.admin", "-k", str(site.keyring("admin")),
         "tell", "osd.0", "cache", "drop"])  # fmt: skip


def read_file(path: Path) -> int:
    buf = bytearray(CHUNK)
    total = 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def read_device(device: str, spans: Sequence[tuple[int, int]]) -> int:
    buf = bytearray(CHUNK)
    total = 0
    fd = os.open(device, os.O_RDONLY)
    try:
        for offset, length in spans:
            end = offset + length
            while offset < end:
                view = memoryview(buf)[: min(CHUNK, end - offset)]
                n = os.preadv(fd, [view], offset)
                if n <= 0:
                    raise RuntimeError(f"short read of {device} at {offset}")
                offset += n
                total += n
    finally:
        os.close(fd)
    return total


def read_librbd(world: World, spans: Sequence[tuple[int, int]]) -> int:
    assert world.production_conn is not None
    total = 0
    with world.production_conn.image(world.images[0], read_only=True) as image:
        for offset, length in spans:
            end = offset + length
            while offset < end:
                total += len(image.read(offset, min(CHUNK, end - offset)))
                offset += min(CHUNK, end - offset)
    return total


BARE = {  # the bare baselines: JSON key -> what the table calls them
    "bare_librbd": "librbd",
    "bare_librbd_parallel": "librbd parallel",
    "bare_rbd_command": "rbd in turn",
    "bare_rbd_command_parallel": "rbd parallel",
}
READ_PATHS = {
    "exposed_file": "the file on the exposed clone (XFS ro, loop ro, rbd-fuse of the clone)",
    "original_file": "the same file on the original volume (XFS, loop, rbd-fuse of the image)",
    "original_device": "its extents on the original image's loop device",
    "original_librbd": "its extents through librbd (no FUSE, no loop device)",
}


def import_expose(world: World, runs: int, read_runs: int) -> dict[str, Any]:
    imported: list[float] = []
    exposed_ms: list[float] = []
    floor: list[float] = []  # `snapport list`: what any snapport process costs before it does anything
    rates: dict[str, list[float]] = {k: [] for k in READ_PATHS}
    original = world.volumes[0] / DATA_FILE
    spans = extents(original)
    size = original.stat().st_size
    for i in range(runs):
        out = world.root / f"documents-{i}"
        created, _ = world.production.snapport("create", *map(str, world.volumes), "--transportable",
                                               "--out", str(out))  # fmt: skip
        set_id = str(created["set_id"])
        world.sets[set_id] = [world.production]
        floor.append(world.proxy.snapport("list")[1])
        _, import_ms = world.proxy.snapport("import", str(out / "backup-components.xml"))
        world.sets[set_id].insert(0, world.proxy)
        answer, expose_ms = world.proxy.snapport("expose", set_id)
        imported.append(import_ms)
        exposed_ms.append(expose_ms)
        line = f"import run {i + 1}/{runs}: import {import_ms:.0f} ms, expose {expose_ms:.0f} ms"
        if i < read_runs:
            copy = Path(answer["exposed"][str(world.volumes[0])]) / DATA_FILE
            readers: dict[str, Callable[[], int]] = {
                "exposed_file": partial(read_file, copy),
                "original_file": partial(read_file, original),
                "original_device": partial(read_device, world.devices[0], spans),
                "original_librbd": partial(read_librbd, world, spans),
            }
            order = list(readers)
            order = order[i % len(order) :] + order[: i % len(order)]  # each path first in turn
            for name in order:
                drop_caches(world)
                started = time.perf_counter()
                got = readers[name]()
                seconds = time.perf_counter() - started
                if got != size:
                    raise RuntimeError(f"{name}: read {got} bytes, the file has {size}")
                rates[name].append(size / (1 << 20) / seconds)
            line += "; MiB/s " + ", ".join(f"{k} {rates[k][-1]:.0f}" for k in READ_PATHS)
        log(line)
        world.proxy.snapport("unexpose", set_id)
        world.proxy.snapport("delete", set_id)
        world.sets[set_id].remove(world.proxy)
        world.production.snapport("delete", set_id)
        del world.sets[set_id]
        shutil.rmtree(out)
    result: dict[str, Any] = {
        "import_ms": summary(imported),
        "expose_ms": summary(exposed_ms),
        "list_ms": summary(floor),
    }
    if read_runs:
        result["read_mib_s"] = {k: {"what": READ_PATHS[k], **summary(v)} for k, v in rates.items()}
        result["file_extents"] = len(spans)
        exposed = result["read_mib_s"]["exposed_file"]["median"]
        for k in ("original_file", "original_device", "original_librbd"):
            result[f"exposed_to_{k}"] = ratio(exposed, result["read_mib_s"][k]["median"])
    return result


# -- report ------------------------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    fw = result["freeze"]
    print(f"Ceph {result['ceph_version']}, 1 OSD; {result['runs']} runs; {VOLUMES} idle XFS volumes on RBD images "
          f"(rbd-fuse + loop); times in ms")  # fmt: skip
    print(f"{'':<44}{'min':>9}{'median':>9}{'p95':>9}{'max':>9}")

    def row(name: str, s: dict[str, Any]) -> None:
        print(f"{name:<44}{s['min']:>9.1f}{s['median']:>9.1f}{s['p95']:>9.1f}{s['max']:>9.1f}")

    row("snapport create: freeze window", fw["freeze_window_ms"])
    row("  its provider commit", fw["commit_ms"])
    row("  the create process (wall)", fw["create_wall_ms"])
    for key in BARE:
        row(f"bare fsfreeze + {fw[key]['how']}", fw[key]["window_ms"])
        row("  its snapshots, inside the freeze", fw[key]["snapshots_ms"])
    ratios = {k: fw[f"freeze_window_to_{k}"] for k in BARE}
    print("freeze window / bare window: " + ", ".join(f"{v:.2f}x {BARE[k]}" for k, v in ratios.items()))
    print(
        f"snapshot time: rbd command in turn / librbd in turn {fw['rbd_command_to_librbd_snapshots']:.2f}x, "
        f"provider commit / librbd in turn {fw['commit_to_librbd_snapshots']:.2f}x, "
        f"librbd parallel / in turn {fw['librbd_parallel_to_librbd_snapshots']:.2f}x"
    )
    ie = result["import_expose"]
    row("snapport import (proxy, process)", ie["import_ms"])
    row("snapport expose (proxy, process)", ie["expose_ms"])
    row("  snapport list (any process's floor)", ie["list_ms"])
    if "read_mib_s" in ie:
        print(f"cold read of a {result['size_mib']} MiB file ({ie['file_extents']} extents), MiB/s, "
              f"{result['read_runs']} runs")  # fmt: skip
        for k, s in ie["read_mib_s"].items():
            row(f"  {k}", s)
        print(
            f"exposed clone / original: {ie['exposed_to_original_file']:.2f}x the file, "
            f"{ie['exposed_to_original_device']:.2f}x the device, {ie['exposed_to_original_librbd']:.2f}x librbd"
        )
    print(f"load average {result['load_before']} -> {result['load_after']}")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signal.Signals(signum).name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="measured runs of each (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured freeze-window runs first (default 1)")
    parser.add_argument("--read-runs", type=int, default=3, help="import runs that also time the reads (default 3)")
    parser.add_argument("--size", type=int, default=512, help="MiB of the file read back (default 512)")
    parser.add_argument("--cluster", type=Path, default=None, help="a cluster lab/ceph.py made (default: start one)")
    parser.add_argument("--base-dir", type=Path, default=None, help="where the scratch directory goes")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.read_runs < 0 or args.size < 4:
        parser.error("--runs must be at least 1, --warmup and --read-runs at least 0, --size at least 4")
    args.read_runs = min(args.read_runs, args.runs)
    if os.geteuid() != 0:
        parser.error("needs root (loop devices, mounts, FIFREEZE, drop_caches): sudo .venv/bin/python bench/ceph.py")
    missing = [t for t in ("mkfs.xfs", "losetup", "fsfreeze") if shutil.which(t) is None]
    reason = ceph.unavailable()
    if missing or reason:
        parser.error("; ".join([*([f"missing tools: {', '.join(missing)}"] if missing else []), reason or ""]))

    signal.signal(signal.SIGTERM, _on_sigterm)
    world = World(Path(tempfile.mkdtemp(prefix="snapport-bench-ceph-", dir=args.base_dir)).resolve(), args.cluster)
    result: dict[str, Any] = {"runs": args.runs, "read_runs": args.read_runs, "size_mib": args.size,
                              "volumes": VOLUMES, "load_before": os.getloadavg()}  # fmt: skip
    result["ceph_version"] = run(["ceph", "--version"]).split()[2]
    status = 0
    try:
        world.build(args.size)
        result["freeze"] = freeze_windows(world, args.runs, args.warmup)
        result["import_expose"] = import_expose(world, args.runs, args.read_runs)
        result["load_after"] = os.getloadavg()
    except (KeyboardInterrupt, Interrupted):
        log("interrupted; cleaning up")
        status = 130
    except (SnapportError, RuntimeError) as exc:
        log(f"failed: {exc}; cleaning up")
        status = 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):  # the clean-up itself must not be cut short
            signal.signal(signum, signal.SIG_IGN)
        errors = world.cleanup()
        for error in errors:
            log(f"clean-up: {error}")
        left = world.left_behind()
        for thing in left:
            log(f"left behind: {thing}")
    result["left_behind"] = left
    if status == 0 and args.json:
        print(json.dumps(result, sort_keys=True))
    elif status == 0:
        print_table(result)
    return status or (1 if errors or left else 0)


if __name__ == "__main__":
    sys.exit(main())
