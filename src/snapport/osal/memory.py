"""The C allocator's thresholds while a backup streams gigabytes through short-lived buffers.

By default glibc serves each block over 128 KiB (rising as such blocks are freed) with a fresh mmap, and gives free
memory at the top of a heap back to the kernel at once: every 4 MiB frame and every file read whole then costs a page
fault per 4 KiB page (one per page of content, measured: a third of a backup's system time). While `streaming()`
holds, blocks up to `MMAP_THRESHOLD` come from the heap and up to `TRIM_THRESHOLD` of free memory stays there for the
next buffer; on leaving, glibc's defaults are set back and the heap is trimmed. A no-op off glibc.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import threading
from collections.abc import Iterator

MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
_DEFAULT_MMAP_THRESHOLD = 128 << 10
_DEFAULT_TRIM_THRESHOLD = 128 << 10
_M_TRIM_THRESHOLD = -1  # malloc.h
_M_MMAP_THRESHOLD = -3

_lock = threading.Lock()
_holders = [0]  # how many `streaming()` are open


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _libc()


def _set(mmap_threshold: int, trim_threshold: int) -> None:
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, trim_threshold)


@contextlib.contextmanager
def streaming() -> Iterator[None]:
    """Keep freed buffers in the heap for reuse while this holds (nested and concurrent holders share it)."""
    with _lock:
        _holders[0] += 1
        if _holders[0] == 1:
            _set(MMAP_THRESHOLD, TRIM_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _holders[0] -= 1
            if _holders[0] == 0:
                _set(_DEFAULT_MMAP_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                if _LIBC is not None:
                    _LIBC.malloc_trim(0)
