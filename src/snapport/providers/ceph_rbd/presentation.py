"""How an RBD image becomes a block device on this host: the kernel client (`rbd device map`) where the kernel has
the rbd module, else `rbd-fuse` and a loop device.

Through FUSE, an image `POOL[/NS]/NAME` is served by one rbd-fuse daemon (`-r NAME`: that image only) mounted at
`$SNAPPORT_HOME/rbd/POOL/NS|-/NAME`, and a loop device on the file it serves, opened with O_DIRECT (no page cache
between the loop device and the daemon). Nothing else records a presentation: the loop device's backing file names
the image and the home it was presented for, and unmounting the FUSE mount ends its daemon, so a crash leaves
nothing a scan of the loop devices and of this home's mounts cannot find. rbd-fuse daemonises once its mount is
up; it outlives the command that presented the image, as a loop device does. Unpresenting waits for the daemon
(found by its mount point, its last argument) to close the image and exit, so that nothing of it is left running
when the command returns: closing may wait for the cluster (a dead client's exclusive lock, say).

Through the kernel, `rbd device map` gives `/dev/rbdN`; `/sys/bus/rbd/devices/N` names its pool, namespace and
image, and `/sys/bus/rbd/devices/N/block/rbdN/ro` whether it is read-only. Which home mapped it is recorded in
`$SNAPPORT_HOME/rbd/kernel/<N>` (the image's spec; the kernel knows no homes).

Present and unpresent take the home's `rbd` lock, so two commands never race on one image's mount.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from snapport.errors import BadState, SystemCommandError
from snapport.osal import loop
from snapport.osal import mount as mnt
from snapport.osal.lock import FileLock
from snapport.osal.runner import Runner
from snapport.providers.ceph_rbd.cluster import CephConfig, ImageRef

PRESENT_DIR = "rbd"
FUSE_TYPE = "fuse.rbd-fuse"
SYS_RBD = Path("/sys/bus/rbd")
FUSE_START_S = 20.0
DAEMON_EXIT_S = 45.0  # for rbd-fuse to close its image once unmounted: past a dead client's watch (30 s)
KILLED_EXIT_S = 5.0
LOCK_WAIT_S = 120.0
_RBD_DEVICE = re.compile(r"^/dev/rbd(\d+)$")


class Via(StrEnum):
    """How an image is presented: rbd-fuse and a loop device, or the kernel client."""

    FUSE = "fuse"
    KERNEL = "kernel"


@dataclass(frozen=True, slots=True)
class Presented:
    """An image presented on this machine: at `device`, for the home `home` (None: no snapport home)."""

    image: ImageRef
    device: str
    read_only: bool
    home: Path | None
    via: Via


class Presenter(Protocol):
    @property
    def via(self) -> Via: ...

    def present(self, image: ImageRef, *, read_only: bool, device: str | None = None) -> str: ...

    def unpresent(self, image: ImageRef) -> list[str]: ...

    def presented(self) -> list[Presented]: ...


def presenter(home: Path, config: CephConfig, runner: Runner, sys_rbd: Path = SYS_RBD) -> Presenter:
    """The presenter `config.present` asks for (`auto`: the kernel client where the kernel has it)."""
    kernel = config.present == "kernel" or (config.present == "auto" and (sys_rbd / "add").exists())
    return KernelPresenter(home, config, runner, sys_rbd) if kernel else FusePresenter(home, config, runner)


def _lock(home: Path) -> FileLock:
    return FileLock(home / "locks" / "rbd.lock", timeout_s=LOCK_WAIT_S, what="this home's RBD presentation lock")


def lock_path(home: Path) -> Path:
    return home / "locks" / "rbd.lock"


class FusePresenter:
    """rbd-fuse + a loop device."""

    via = Via.FUSE

    def __init__(self, home: Path, config: CephConfig, runner: Runner) -> None:
        self.home = home
        self.root = home / PRESENT_DIR
        self.config = config
        self.runner = runner

    def mount_point(self, image: ImageRef) -> Path:
        return self.root / image.pool / (image.namespace or "-") / image.name

    def image_file(self, image: ImageRef) -> Path:
        return self.mount_point(image) / image.name

    def present(self, image: ImageRef, *, read_only: bool, device: str | None = None) -> str:
        """The loop device presenting `image` (made if absent; at `device` if given and free). Idempotent; an image
        presented the other way (read-write vs read-only) is `BadState`."""
        with _lock(self.home):
            for known in self._presented(image):
                if known.read_only != read_only:
                    mode = "read-only" if known.read_only else "read-write"
                    raise BadState(f"RBD image {image} is presented {mode} at {known.device}; unpresent it first")
                return known.device
            self.serve(image)
            try:
                return loop.attach(
                    self.runner, self.image_file(image), read_only=read_only, direct_io=True, device=device
                )
            except BaseException:
                self._stop_serving(image)
                raise

    def serve(self, image: ImageRef) -> None:
        """Start rbd-fuse serving `image` at its mount point (no loop device yet); idempotent."""
        point = self.mount_point(image)
        current = mnt.mount_at(point)
        if current is not None and current.fs_type == FUSE_TYPE and self.image_file(image).exists():
            return
        if current is not None:  # a dead daemon's mount ("transport endpoint is not connected")
            mnt.unmount(self.runner, point)
        point.mkdir(parents=True, exist_ok=True)
        argv = ["rbd-fuse", "-c", str(self.config.conf), "-p", image.pool, "-r", image.name, str(point)]
        if image.namespace:
            argv[5:5] = ["-s", image.namespace]
        env = {**os.environ, "CEPH_ARGS": f"--id {self.config.client} --keyring {self.config.keyring}"}
        started = self.runner.start(argv, env=env, stderr=None)
        status = started.wait(FUSE_START_S)  # it forks once its mount is up; the parent exits
        if status != 0:
            started.stop(0.0)
            self._stop_serving(image)
            raise SystemCommandError(f"rbd-fuse could not serve RBD image {image} (exit {status})")
        deadline = time.monotonic() + FUSE_START_S
        while not self.image_file(image).exists():  # the daemon opens the image once it has mounted
            if time.monotonic() > deadline:
                self._stop_serving(image)
                raise SystemCommandError(f"rbd-fuse did not serve RBD image {image} within {FUSE_START_S:g} s")
            time.sleep(0.05)

    def _stop_serving(self, image: ImageRef) -> None:
        point = self.mount_point(image)
        daemons = serving_daemons(point)
        if mnt.mount_at(point) is not None:
            mnt.unmount(self.runner, point)
        _await_exit(daemons, f"rbd-fuse serving RBD image {image}")
        for directory in (point, point.parent, point.parent.parent):
            with contextlib.suppress(OSError):
                directory.rmdir()

    def unpresent(self, image: ImageRef) -> list[str]:
        """Detach this home's loop devices of `image` and end its daemon; idempotent. Says what it detached."""
        with _lock(self.home):
            detached = []
            for known in self._presented(image):
                if known.device.startswith("/dev/loop"):
                    from snapport.providers import blockdev  # noqa: PLC0415

                    blockdev.refuse_if_mounted(known.device, f"unpresent RBD image {image}")
                    loop.detach(self.runner, known.device)
                    detached.append(known.device)
            self._stop_serving(image)
            return detached

    def _presented(self, image: ImageRef) -> list[Presented]:
        target = str(self.image_file(image))
        return [p for p in self.presented() if p.device and _backing(p.device) == target]

    def presented(self) -> list[Presented]:
        """Every loop device on this machine backed by an rbd-fuse file, with the home it was presented for."""
        found = []
        for device in loop.attached(self.runner):
            backing = Path(device.backing_file)
            ref, home = _parse_fuse_file(backing)
            if ref is not None:
                found.append(Presented(ref, device.device, device.read_only, home, Via.FUSE))
        return found

    def serving(self) -> list[tuple[ImageRef, Path]]:
        """This home's rbd-fuse mounts (a daemon serving an image here), with or without a loop device on them."""
        root = str(self.root.absolute()) + "/"
        found = []
        for m in mnt.mounts():
            if m.mount_point.startswith(root) and m.fs_type == FUSE_TYPE:
                ref, _ = _parse_fuse_file(Path(m.mount_point) / Path(m.mount_point).name)
                if ref is not None:
                    found.append((ref, Path(m.mount_point)))
        return found


def serving_daemons(point: Path) -> list[int]:
    """The pids of the rbd-fuse daemons serving at `point` (it is their last argument)."""
    found = []
    wanted = os.fsencode(point)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")[:-1]
        except OSError:
            continue
        if argv and argv[0].rsplit(b"/", 1)[-1] == b"rbd-fuse" and argv[-1] == wanted:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has closed everything


def _await_exit(pids: list[int], what: str) -> None:
    """Wait for `pids` to exit; SIGKILL those that outlive `DAEMON_EXIT_S` (their mount is gone: nothing is
    written through them any more), and fail if even that does not end them."""
    for bound, kill in ((DAEMON_EXIT_S, True), (KILLED_EXIT_S, False)):
        deadline = time.monotonic() + bound
        while (left := [p for p in pids if _running(p)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        if not left:
            return
        if kill:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    raise SystemCommandError(f"{what} (pids {', '.join(map(str, left))}) did not exit, even killed")


def _backing(device: str) -> str | None:
    found = loop.backing_file(device)
    return found.removesuffix(" (deleted)") if found is not None else None


def _parse_fuse_file(path: Path) -> tuple[ImageRef | None, Path | None]:
    """`HOME/rbd/POOL/NS|-/NAME/NAME` → (the image, HOME); (None, None) for any other path."""
    parts = path.parts
    if len(parts) < 6 or parts[-1] != parts[-2] or parts[-5] != PRESENT_DIR:
        return None, None
    namespace = "" if parts[-3] == "-" else parts[-3]
    return ImageRef(parts[-4], namespace, parts[-1]), Path(*parts[:-5])


class KernelPresenter:
    """The kernel client: `rbd device map`, `/dev/rbdN`. `sys_rbd` is the kernel's rbd bus (`/sys/bus/rbd`; a test
    gives a tree of its own)."""

    via = Via.KERNEL

    def __init__(self, home: Path, config: CephConfig, runner: Runner, sys_rbd: Path = SYS_RBD) -> None:
        self.home = home
        self.records = home / PRESENT_DIR / "kernel"
        self.config = config
        self.runner = runner
        self.sys_rbd = sys_rbd

    def _rbd(self, *args: str) -> str:
        argv = ["rbd", "-c", str(self.config.conf), "--id", self.config.client, "--keyring", str(self.config.keyring)]
        return self.runner.run([*argv, *args], timeout=120).stdout

    def present(self, image: ImageRef, *, read_only: bool, device: str | None = None) -> str:
        """Map `image` (the kernel chooses the device: `device` is not honoured) and record the mapping as this
        home's. Idempotent; an image mapped the other way is `BadState`; an answer that is not `/dev/rbdN` is
        refused and records nothing."""
        with _lock(self.home):
            for known in self.presented():
                if known.image == image and known.home == self.home:
                    if known.read_only != read_only:
                        mode = "read-only" if known.read_only else "read-write"
                        raise BadState(f"RBD image {image} is mapped {mode} at {known.device}; unmap it first")
                    return known.device
            args = ["device", "map", *(["--read-only"] if read_only else []), str(image)]
            mapped = self._rbd(*args).strip()
            match = _RBD_DEVICE.match(mapped)
            if match is None:
                raise SystemCommandError(f"rbd device map answered {mapped!r} for {image}, not a /dev/rbdN device")
            self.records.mkdir(parents=True, exist_ok=True)
            (self.records / match.group(1)).write_text(str(image))
            return mapped

    def unpresent(self, image: ImageRef) -> list[str]:
        """Unmap this home's mappings of `image` (refused while one is mounted) and drop their records; idempotent."""
        with _lock(self.home):
            done = []
            for known in self.presented():
                if known.image == image and known.home == self.home:
                    from snapport.providers import blockdev  # noqa: PLC0415

                    blockdev.refuse_if_mounted(known.device, f"unmap RBD image {image}")
                    self._rbd("device", "unmap", known.device)
                    (self.records / known.device.removeprefix("/dev/rbd")).unlink(missing_ok=True)
                    done.append(known.device)
            return done

    def presented(self) -> list[Presented]:
        """Every image the kernel has mapped on this machine; this home's are those its records name."""
        found = []
        devices = self.sys_rbd / "devices"
        for entry in sorted(devices.iterdir()) if devices.is_dir() else []:

            def read(name: str, entry: Path = entry) -> str:
                with contextlib.suppress(OSError):
                    return (entry / name).read_text().strip()
                return ""

            ref = ImageRef(read("pool"), read("pool_ns"), read("name"))
            record = self.records / entry.name
            home = self.home if record.exists() and record.read_text() == str(ref) else None
            read_only = read(f"block/rbd{entry.name}/ro") == "1" or read("current_snap") not in ("", "-")
            found.append(Presented(ref, f"/dev/rbd{entry.name}", read_only, home, Via.KERNEL))
        return found
