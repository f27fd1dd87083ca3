"""Reading an archive as a stream: `tarfile` over a zstd stream that can only go forward, and the compressed file
digested as it is read (verify checks it against set.json in the same pass)."""

from __future__ import annotations

import io
import os
from typing import IO, TYPE_CHECKING, Protocol

from snapport.engines.digest import Hasher

if TYPE_CHECKING:
    from typing_extensions import Buffer

CHUNK = 1 << 20  # the size of one read or write of file content


class HashingReader:
    """A read-only file object that digests and counts what is read through it."""

    def __init__(self, raw: IO[bytes], hasher: Hasher) -> None:
        self._raw = raw
        self._hasher = hasher
        self.size = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, /) -> int:
        raise io.UnsupportedOperation("the archive is read as a stream")

    def close(self) -> None:
        """The underlying file is closed by its owner."""

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class ForwardReader:
    """A decompressed stream that `tarfile` may seek forward in (by reading on), never back: a sequential walk
    needs nothing more, and the zstd stream cannot seek back without starting over."""

    def __init__(self, stream: _Readable) -> None:
        self._stream = stream
        self._position = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = self._stream.read(-1 if size is None else size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        if whence != os.SEEK_SET or offset < self._position:
            raise io.UnsupportedOperation("the archive is read forward only")
        while self._position < offset and self.read(min(CHUNK, offset - self._position)):
            pass
        return self._position

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("the archive is read only")

    def close(self) -> None:
        """The stream is closed by its owner."""
