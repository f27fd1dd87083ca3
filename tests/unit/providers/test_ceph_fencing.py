"""The bookkeeping of fencing.py: which records belong to dead clients, what is sent for them, what is kept.
The fencing itself, on a real cluster, is tests/integration/providers/test_ceph_fencing.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from snapport.providers.ceph_rbd.fencing import CLIENTS_DIR, ClientRecord, addresses, fence_dead


class Monitor:
    """Records the mon commands sent, answering each with `code`."""

    def __init__(self, code: int = 0) -> None:
        self.code = code
        self.sent: list[dict[str, Any]] = []

    def mon_command(self, cmd: str, inbuf: bytes, timeout: int = 0) -> tuple[int, bytes, str]:
        self.sent.append(json.loads(cmd))
        return self.code, b"", "" if self.code == 0 else "EACCES: access denied"


def test_addresses_of_get_addrs() -> None:
    both = "[v2:198.18.0.1:0/3525046318,v1:198.18.0.1:0/3525046318]"
    assert addresses(both) == ["198.18.0.1:0/3525046318"]
    assert addresses("127.0.0.1:0/42") == ["127.0.0.1:0/42"]
    assert addresses("[any:[::1]:0/7]") == ["[::1]:0/7"]
    assert addresses("") == [] and addresses("not an address; rm -rf /") == []


def _dead_record(home: Path, addrs: list[str]) -> Path:
    """A record whose process has exited without releasing it (as a killed one leaves it)."""
    script = (
        "import os, sys; from pathlib import Path; from snapport.providers.ceph_rbd.fencing import ClientRecord; "
        "ClientRecord(Path(sys.argv[1]), sys.argv[2:]); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", script, str(home), *addrs], check=True, timeout=30)
    (path,) = (home / CLIENTS_DIR).glob("*.json")
    return path


def test_a_dead_clients_record_is_fenced_and_removed_a_live_one_is_left(tmp_path: Path) -> None:
    dead = _dead_record(tmp_path, ["198.18.0.1:0/11"])
    live = ClientRecord(tmp_path, ["198.18.0.1:0/22"])
    monitor = Monitor()
    assert fence_dead(tmp_path, monitor) == ["198.18.0.1:0/11"]
    assert [c["addr"] for c in monitor.sent] == ["198.18.0.1:0/11"]
    assert monitor.sent[0]["prefix"] == "osd blocklist" and monitor.sent[0]["blocklistop"] == "add"
    assert not dead.exists() and live.path.exists()
    live.release()
    assert list((tmp_path / CLIENTS_DIR).iterdir()) == []
    assert fence_dead(tmp_path, monitor) == []


def test_a_refused_blocklist_keeps_the_record_for_the_next_client(tmp_path: Path) -> None:
    dead = _dead_record(tmp_path, ["198.18.0.1:0/33"])
    assert fence_dead(tmp_path, Monitor(code=-13)) == []
    assert dead.exists()
    assert fence_dead(tmp_path, Monitor()) == ["198.18.0.1:0/33"]
    assert not dead.exists()
