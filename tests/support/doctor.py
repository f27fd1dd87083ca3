"""`snapport doctor` as the reconciliation tests run it, and its report read back."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from tests.support.array_world import HOST_ONE, ArrayWorld


def doctor(world: ArrayWorld, *args: str) -> tuple[int, dict[str, Any], str]:
    """`snapport doctor ARGS --json` as host `one`: its exit code, its report and its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "snapport", "doctor", *args, "--json"],
        capture_output=True,
        text=True,
        env=world.env(HOST_ONE),
        timeout=120,
        check=False,
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def by_kind_and_object(entries: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    """A doctor report's entries (`found`, `repaired`, ...) by (kind, object)."""
    return {(e["kind"], e["object"]): e for e in entries}
