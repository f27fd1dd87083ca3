"""Content digests for every engine: BLAKE3 when the `blake3` module is there (it is a dependency), else SHA-256.

A repository records which algorithm each set used, so a set verifies anywhere either is available.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol

from snapport.errors import UsageError

if TYPE_CHECKING:
    from typing_extensions import Buffer

try:
    from blake3 import blake3 as _blake3
except ImportError:  # pragma: no cover - blake3 is a dependency; SHA-256 keeps a broken install working
    _blake3 = None  # type: ignore[assignment,misc]


class Hasher(Protocol):
    def update(self, data: Buffer, /) -> object: ...

    def hexdigest(self) -> str: ...


def default_digest_algorithm() -> str:
    """BLAKE3 when the `blake3` module is there (it is a dependency), else SHA-256."""
    return "blake3" if _blake3 is not None else "sha256"


def new_hasher(algorithm: str) -> Hasher:
    if algorithm == "blake3" and _blake3 is not None:
        return _blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise UsageError(f"digest algorithm {algorithm!r} is not available here (blake3 needs the blake3 module)")


def digest_bytes(algorithm: str, data: bytes) -> str:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()


_ZEROS = bytes(1 << 20)


def digest_zeros(hasher: Hasher, count: int) -> None:
    """Feed `count` zero bytes to `hasher`: a sparse file's holes are digested as the zeros they read as."""
    while count > 0:
        hasher.update(_ZEROS[: min(count, len(_ZEROS))])
        count -= len(_ZEROS)
