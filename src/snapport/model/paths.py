"""Validators for paths that arrive from outside: volume mount points and paths relative to a volume."""

from __future__ import annotations

import posixpath

from snapport.errors import PathEscape

MAX_PATH_BYTES = 4096


def _common_checks(path: str, what: str) -> None:
    if "\x00" in path:
        raise PathEscape(f"{what} contains a NUL byte")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise PathEscape(f"{what} is longer than {MAX_PATH_BYTES} bytes")


def volume_path(path: str) -> str:
    """An absolute, normalised mount point such as `/srv/data` (no `..`, no `.`, no trailing slash)."""
    _common_checks(path, "volume path")
    if not path.startswith("/"):
        raise PathEscape(f"volume path {path!r} is not absolute")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise PathEscape(f"volume path {path!r} contains '.' or '..'")
    return "/" + "/".join(parts)


def relative_path(path: str) -> str:
    """A path inside a volume, relative to its root: no leading `/`, no `..`; `""` is the volume root."""
    _common_checks(path, "path")
    if path.startswith("/"):
        raise PathEscape(f"path {path!r} is absolute; it must be relative to its volume")
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        raise PathEscape(f"path {path!r} climbs out of its volume with '..'")
    return "/".join(parts)


def file_pattern(pattern: str) -> str:
    """A file-name pattern (`*.db`): a single name component, never a path."""
    _common_checks(pattern, "file pattern")
    if not pattern or "/" in pattern or pattern in (".", ".."):
        raise PathEscape(f"file pattern {pattern!r} must be one name component (no '/')")
    return pattern


def relative_to_volume(volume: str, original: str) -> str:
    """The part of absolute `original` below mount point `volume`; `PathEscape` when it is not below it."""
    volume = volume_path(volume)
    _common_checks(original, "original path")
    if not original.startswith("/"):
        raise PathEscape(f"original path {original!r} is not absolute")
    normal = posixpath.normpath(original)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    if volume == "/":
        return relative_path(normal.lstrip("/"))
    if normal == volume:
        return ""
    if not normal.startswith(volume + "/"):
        raise PathEscape(f"{original!r} is not on volume {volume!r}")
    return relative_path(normal[len(volume) + 1 :])
