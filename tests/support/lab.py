"""The lab as its users drive it: `snapport lab ...` in a subprocess, in a temporary directory, with namespace
names of its own (a random suffix), so a test lab never meets the machine's or another run's; and everything of a
lab that may outlive it, to check that nothing does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapport.lab import process
from snapport.lab.network import NETNS_DIR
from snapport.lab.state import ProcessRecord, load
from snapport.osal import loop
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner
from tests.conftest import IS_ROOT

SMALL = ("--array-size", "1G", "--data-size", "320M")
_SUFFIXES: list[str] = []  # every suffix a test used: none may be left as a namespace name


def needs_lab() -> list[pytest.MarkDecorator]:
    missing = [t for t in ("ip", "unshare", "nsenter", "losetup", "mkfs.xfs") if not _which(t)]
    return [
        pytest.mark.root,
        pytest.mark.skipif(not IS_ROOT, reason="needs root for namespaces, loop devices and mounts"),
        pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed"),
    ]


def _which(tool: str) -> bool:
    return shutil.which(tool) is not None


def new_suffix() -> str:
    """A fresh namespace suffix for a test's lab, remembered for `suffixes_used`."""
    suffix = uuid.uuid4().hex[:8]
    _SUFFIXES.append(suffix)
    return suffix


def suffixes_used() -> list[str]:
    """Every suffix `new_suffix` gave out in this process: none may be left in a namespace's name."""
    return list(_SUFFIXES)


def snapport(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        timeout=timeout,
        check=False,
    )


def ok_json(*args: str) -> Any:
    done = snapport(*args, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def recorded_processes(directory: Path) -> list[ProcessRecord]:
    try:
        return load(directory).processes()
    except Exception:
        return []


def netns_with(suffix: str) -> list[str]:
    return sorted(n for n in os.listdir(NETNS_DIR) if n.endswith(f"-{suffix}")) if NETNS_DIR.is_dir() else []


def leftovers(directory: Path, suffix: str, processes: list[ProcessRecord]) -> list[str]:
    """Everything of a lab that may outlive it: namespaces, mounts and loop devices on its files, processes."""
    prefix = str(directory.resolve())
    left = [f"netns {n}" for n in netns_with(suffix)]
    left += [f"mount {m.mount_point}" for m in mnt.mounts() if m.mount_point.startswith(prefix)]
    left += [
        f"loop {d.device} ({d.backing_file})"
        for d in loop.attached(SubprocessRunner())
        if d.backing_file.startswith(prefix + "/")
    ]
    left += [
        f"process {p.role} pid {p.pid}"
        for p in processes
        if p.pid is not None and p.start_ticks is not None and process.alive(p.pid, p.start_ticks)
    ]
    if directory.exists():
        left += [f"file {p}" for p in directory.rglob("*")]
    return left
