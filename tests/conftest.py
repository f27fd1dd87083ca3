"""Shared fixtures. `scratch` makes real filesystems on loop devices and removes exactly what it made, by id;
the session fails if any loop device or mount backed by this run's temporary directory is left behind."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner

IS_ROOT = os.geteuid() == 0
MIN_SIZE_MB = {"xfs": 320, "btrfs": 128, "ext4": 16}
MKFS = {
    "xfs": ["mkfs.xfs", "-q", "-f", "-m", "reflink=1"],
    "ext4": ["mkfs.ext4", "-q", "-F"],
    "btrfs": ["mkfs.btrfs", "-q", "-f"],
}


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(not IS_ROOT, reason="needs root for loop devices and mounts")


def needs_tool(*tools: str) -> pytest.MarkDecorator:
    missing = [t for t in tools if shutil.which(t) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed (./scripts/setup installs it)")


@dataclass(frozen=True)
class Filesystem:
    image: Path
    device: str
    mount_point: Path
    fs_type: str


class Scratch:
    """Loop devices and mounts for one test; `cleanup` undoes them in reverse order, by exact path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runner = SubprocessRunner()
        self._undo: list[tuple[str, str]] = []  # ("mount", path) | ("loop", device) | ("call", key)
        self._calls: dict[str, Callable[[], object]] = {}

    def loop(self, image: Path, *, read_only: bool = False) -> str:
        device = loop.attach(self.runner, image, read_only=read_only)
        self._undo.append(("loop", device))
        return device

    def mount(self, source: str, target: Path, *, fs_type: str | None = None, options: tuple[str, ...] = ()) -> Path:
        target.mkdir(parents=True, exist_ok=True)
        mnt.mount(self.runner, source, target, fs_type=fs_type, options=options)
        self._undo.append(("mount", str(target)))
        return target

    def image(self, name: str, size_mb: int) -> Path:
        path = self.root / f"{name}.img"
        with path.open("wb") as f:
            f.truncate(size_mb * 1024 * 1024)
        return path

    def mkfs(self, fs_type: str, device_or_image: str | Path) -> None:
        self.runner.run([*MKFS[fs_type], str(device_or_image)], timeout=120)

    def filesystem(self, fs_type: str, *, size_mb: int | None = None, name: str | None = None) -> Filesystem:
        """A fresh filesystem of `fs_type` on its own loop device, mounted under the test's directory."""
        name = name or f"{fs_type}-{uuid.uuid4().hex[:8]}"
        image = self.image(name, max(size_mb or 0, MIN_SIZE_MB[fs_type]))
        self.mkfs(fs_type, image)
        device = self.loop(image)
        mount_point = self.mount(device, self.root / "mnt" / name, fs_type=fs_type)
        return Filesystem(image, device, mount_point, fs_type)

    def defer(self, undo: Callable[[], object], what: str) -> None:
        """Run `undo` at cleanup, in the same reverse order as the mounts and loops (for code under test that
        attached or mounted something itself); `undo` must be idempotent, as the test may have undone it."""
        key = f"{what}#{len(self._calls)}"
        self._calls[key] = undo
        self._undo.append(("call", key))

    def forget_mount(self, target: Path) -> None:
        """Drop a mount from the undo list (the code under test unmounted it itself)."""
        self._undo = [u for u in self._undo if u != ("mount", str(target))]

    def forget_loop(self, device: str) -> None:
        self._undo = [u for u in self._undo if u != ("loop", device)]

    def cleanup(self) -> None:
        errors = []
        for kind, what in reversed(self._undo):
            try:
                if kind == "mount":
                    if mnt.mount_at(what) is not None:
                        ioctl.thaw(Path(what))  # a failed test may have left it frozen
                        mnt.unmount(self.runner, Path(what))
                elif kind == "call":
                    self._calls.pop(what)()
                else:
                    loop.detach(self.runner, what)
            except Exception as exc:
                errors.append(f"{kind} {what}: {exc}")
        self._undo.clear()
        assert not errors, f"cleanup failed: {errors}"


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Scratch]:
    if not IS_ROOT:
        pytest.skip("needs root for loop devices and mounts")
    s = Scratch(tmp_path)
    try:
        yield s
    finally:
        s.cleanup()


def _leaks(base: Path) -> list[str]:
    """Loop devices and mounts backed by this run's temporary directory that are still there."""
    prefix = str(base.resolve())
    left = [f"mount {m.mount_point}" for m in mnt.mounts() if m.mount_point.startswith(prefix)]
    if IS_ROOT and shutil.which("losetup"):
        runner = SubprocessRunner()
        attached = loop.attached(runner)
        left += [f"loop {d.device} ({d.backing_file})" for d in attached if d.backing_file.startswith(prefix)]
    return left


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or getattr(session.config, "workerinput", None) is not None:
        return
    try:
        base = factory.getbasetemp()
    except Exception:
        return
    leaks = _leaks(base)
    if leaks:
        session.config.get_terminal_writer().line(f"LEAKED by this test run: {'; '.join(leaks)}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
