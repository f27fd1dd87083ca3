"""The init of restic's private mount namespace: the exposed copies at their ORIGINAL paths, then exec restic.

Run as `unshare --mount --propagation private python -m snapport.engines.restic.view SPEC_JSON` (see
docs/engines.md, "restic engine"). It opens every source first (O_PATH), mounts a tmpfs on the host's /tmp (in
this namespace only), builds a root there — each exposed volume bind-mounted read-only at its original mount
point, /usr (restic and its libraries), /dev/null, /etc/passwd and /etc/group, and what the caller adds (the
repository at `REPO_IN_VIEW`, the set's documents at `DOCUMENTS_IN_VIEW`, a restore's target) — pivots into it,
detaches the old root (so no other mount of the host is held) and execs restic. Everything it mounted goes with
the namespace when restic exits, even on SIGKILL.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

REPO_IN_VIEW = "/.snapport-restic/repo"
DOCUMENTS_IN_VIEW = "/.snapport"
RESTORE_IN_VIEW = "/.snapport-restic/target"
TMP_IN_VIEW = "/.snapport-restic/tmp"  # restic's temporary pack files, in the view's tmpfs
RESERVED = (
    "/usr",
    "/bin",
    "/lib",
    "/lib64",
    "/sbin",
    "/dev",
    "/etc",
    "/proc",
    "/.snapport-restic",
    "/.snapport",
)
"""Original paths at or below these would collide with what restic needs in its root: refused."""

_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_BIND, _MS_REC = 1, 2, 4, 32, 4096, 16384
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}


@dataclass(frozen=True, slots=True)
class ViewSpec:
    """What the view holds besides restic's needs: `binds` (source → path in the view, read-only?), mounted
    shallowest first, and restic's command line (paths as in the view)."""

    binds: tuple[tuple[str, str, bool], ...]
    argv: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({"binds": self.binds, "argv": self.argv})

    @classmethod
    def from_json(cls, text: str) -> ViewSpec:
        raw = json.loads(text)
        return cls(tuple((str(s), str(t), bool(r)) for s, t, r in raw["binds"]), tuple(str(a) for a in raw["argv"]))


def collides(original: str) -> bool:
    """True if an original path would sit on something restic needs inside its root (or is the root itself)."""
    path = PurePosixPath(original)
    return str(path) == "/" or any(path == PurePosixPath(r) or PurePosixPath(r) in path.parents for r in RESERVED)


_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            os.fsencode(target),
            fstype.encode() if fstype else None,
            flags,
            data.encode() if data else None,
        ),
        f"mount {source} on {target}",
    )


def _bind(fd: int, target: str, *, read_only: bool) -> None:
    _mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
    if read_only:
        _mount("none", target, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


def _make(root: str, path: str, *, directory: bool) -> str:
    target = Path(root + path)
    (target if directory else target.parent).mkdir(mode=0o755, parents=True, exist_ok=True)
    if not directory and not target.exists():
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT, 0o600))
    return str(target)


def build_and_exec(spec: ViewSpec) -> None:
    """Build the view and exec restic (never returns)."""
    opened: list[tuple[int, str, bool, bool]] = []  # fd, path in the view, is a directory, read-only

    def keep(source: str, target: str, *, read_only: bool = True) -> None:
        fd = os.open(source, os.O_PATH | os.O_CLOEXEC)
        opened.append((fd, target, Path(f"/proc/self/fd/{fd}").is_dir(), read_only))

    for path in ("/usr", "/dev/null", "/etc/passwd", "/etc/group"):
        keep(path, path)
    for source, target, read_only in sorted(spec.binds, key=lambda b: len(PurePosixPath(b[1]).parts)):
        keep(source, target, read_only=read_only)
    root = "/tmp"  # noqa: S108  (a tmpfs mounted over it in this namespace only)
    _mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=25%")
    for link, to in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("sbin", "usr/sbin")):
        Path(root, link).symlink_to(to)
    Path(root, TMP_IN_VIEW.lstrip("/")).mkdir(mode=0o700, parents=True)
    for fd, target, directory, read_only in opened:
        _bind(fd, _make(root, target, directory=directory), read_only=read_only)
        os.close(fd)
    os.chdir(root)
    _check(_libc.syscall(_SYS_PIVOT_ROOT[platform.machine()], b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", _MNT_DETACH), "detach the old root")  # the host's mounts are no longer held
    os.chdir("/")
    env = {k: v for k, v in os.environ.items() if k.startswith("RESTIC_") or k in ("LANG", "LC_ALL")}
    env.update(HOME=TMP_IN_VIEW, TMPDIR=TMP_IN_VIEW, PATH="/usr/bin")
    os.execve(spec.argv[0], list(spec.argv), env)  # noqa: S606


def main() -> None:
    try:
        build_and_exec(ViewSpec.from_json(sys.argv[1]))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"restic view: {exc}", file=sys.stderr)
        sys.exit(125)


if __name__ == "__main__":
    main()
