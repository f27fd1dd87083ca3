"""Fencing this host's dead Ceph clients, as the kernel client and ceph-csi do for theirs.

A snapport process that opens an image for writing (prepare keeps it open through the commit) holds a watch on
its header and, once it snapshots or writes metadata, the image's exclusive lock. Killed there, it leaves both to
the cluster for `osd_client_watch_timeout` (30 s): every other client's write to that image (rbd-fuse serving the
application's filesystem) waits for the dead owner's lock, so the next freeze cannot flush and outlasts its bound.

So every process of this home that connects records its librados address in `$SNAPPORT_HOME/ceph-clients/`, in
a file it holds a `flock` on while it lives (the kernel drops the lock when it dies, however it dies). The next
process to connect takes the lock of each file whose owner is gone and blocklists that address (`osd blocklist
add`, which `mon 'profile rbd'` allows): the OSDs drop its watches and the live clients break its lock at once.
The address carries the dead client's nonce, so nothing else of the host is fenced.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import uuid
from pathlib import Path
from typing import Any

CLIENTS_DIR = "ceph-clients"
BLOCKLIST_EXPIRE_S = 3600  # far beyond any watch timeout; the entry of a dead nonce can never match a live client
_ADDR = re.compile(r"^(?:v[12]:|any:)?([0-9A-Fa-f.:\[\]]+:\d+/\d+)$")

log = logging.getLogger(__name__)


def addresses(text: str) -> list[str]:
    """The entity addresses of `Rados.get_addrs()` ("[v2:IP:0/NONCE,v1:IP:0/NONCE]" or "IP:0/NONCE"), as
    `osd blocklist add` takes them; an address of another shape is not one to fence, and is dropped."""
    found = []
    for part in text.strip().strip("[]").split(","):
        match = _ADDR.match(part.strip())
        if match and match.group(1) not in found:
            found.append(match.group(1))
    return found


class ClientRecord:
    """This process's record in `ceph-clients/`, locked until `release` (or until the process dies)."""

    def __init__(self, home: Path, addrs: list[str]) -> None:
        directory = home / CLIENTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        name = uuid.uuid4().hex
        staging = directory / f".{name}"
        fd = os.open(staging, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({"pid": os.getpid(), "addrs": addrs}).encode())
        self.path = directory / f"{name}.json"
        staging.rename(self.path)  # visible only once written, and already locked
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            os.close(self._fd)
            self._fd = None


def fence_dead(home: Path, rados: Any) -> list[str]:
    """Blocklist the address of every recorded client of this home whose process is gone; their records go once
    fenced. Returns the addresses fenced. A failure to blocklist is logged and keeps the record for the next try."""
    fenced: list[str] = []
    for path in sorted((home / CLIENTS_DIR).glob("*.json")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue  # released meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process lives
            if not path.exists():
                continue  # released between our open and our lock
            try:
                addrs = addresses(" ".join(json.loads(os.read(fd, 65536) or b"{}").get("addrs", [])))
            except (ValueError, AttributeError, TypeError):
                addrs = []
            if all(_blocklist(rados, addr) for addr in addrs):
                fenced += addrs
                path.unlink()
        finally:
            os.close(fd)
    return fenced


def _blocklist(rados: Any, addr: str) -> bool:
    command = {"prefix": "osd blocklist", "blocklistop": "add", "addr": addr, "expire": float(BLOCKLIST_EXPIRE_S)}
    try:
        code, _, status = rados.mon_command(json.dumps(command), b"", timeout=10)
    except Exception as exc:
        log.warning("could not blocklist the dead Ceph client %s: %s", addr, exc)
        return False
    if code != 0:
        log.warning("could not blocklist the dead Ceph client %s: %s (%d)", addr, status, code)
        return False
    log.info("blocklisted the dead Ceph client %s of this host", addr)
    return True
