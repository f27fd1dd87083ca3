"""Commands the benchmarks run: `snapport` itself, and a bounded run that never kills a child mid-freeze."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CHILD_GRACE_S = 30.0  # how long an interrupted `snapport` process gets to roll itself back before SIGKILL
COMMAND_TIMEOUT_S = 300.0


def snapport() -> list[str]:
    """The argv that runs this environment's `snapport`."""
    script = Path(sys.executable).parent / "snapport"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "snapport"]


def run_bounded(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run a command: its exit code, stdout and stderr. If we are interrupted meanwhile, a terminal's Ctrl-C reached
    the child too and it rolls its set back; otherwise it finishes (a create takes well under a second). Either way
    wait for it (bounded) rather than kill it mid-freeze, then SIGKILL it by its pid."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=COMMAND_TIMEOUT_S)
    except BaseException:
        try:
            proc.communicate(timeout=CHILD_GRACE_S)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.communicate()
        raise
    return proc.returncode, out, err
