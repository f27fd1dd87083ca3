"""`holders` reads /proc/locks: who holds a flock, without taking it (which would race with its real users)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from snapport.osal.lock import FileLock, holders, pid_alive

HOLD = "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(60)"


def test_holders_names_the_holding_process_and_nobody_once_released(tmp_path: Path) -> None:
    path = tmp_path / "create.lock"
    assert holders(path) == []  # no such file
    with FileLock(path, timeout_s=1):
        assert holders(path) == [os.getpid()]
        assert holders(tmp_path / "other.lock") == []
    assert holders(path) == []


def test_a_lock_dies_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "import.lock"
    path.touch()
    child = subprocess.Popen([sys.executable, "-c", HOLD, str(path)])  # one process: it dies whole
    try:
        deadline = time.monotonic() + 10
        while holders(path) != [child.pid] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert holders(path) == [child.pid] and pid_alive(child.pid)
    finally:
        child.kill()
        child.wait(timeout=10)
    assert holders(path) == [] and not pid_alive(child.pid)
