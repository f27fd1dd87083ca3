"""A killed snapport client of the cluster is fenced by the next one of its home (fencing.py), on the real cluster:
its exclusive lock no longer stalls the writes of the image's other clients for the watch timeout (30 s)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.lab.ceph import CephSite
from snapport.providers.ceph_rbd.cluster import Cluster, load_config
from snapport.providers.ceph_rbd.fencing import CLIENTS_DIR
from tests.conftest import needs_tool
from tests.support.ceph import Admin, client_home

pytestmark = [pytest.mark.root, needs_tool("ceph-mon")]

WATCH_TIMEOUT_S = 30  # osd_client_watch_timeout: how long a dead owner's lock stands unfenced
WRITE_BOUND_S = 15.0  # well under it: a write that waited for the dead owner's watch to time out takes longer

_CONNECT = """
import sys
from pathlib import Path
from snapport.providers.ceph_rbd.cluster import Cluster, load_config
home = Path(sys.argv[1])
"""

# A client of the home that takes the image's exclusive lock, says so, and waits to be killed.
_LOCKER = (
    _CONNECT
    + """
import time
pool, name = sys.argv[2], sys.argv[3]
cluster = Cluster(load_config(home), home)
image = cluster.rbd.Image(cluster.ioctx(pool, ""), name)
image.lock_acquire(cluster.rbd.RBD_LOCK_MODE_EXCLUSIVE)
print("locked", flush=True)
time.sleep(600)
"""
)

# Another client (the admin, as rbd-fuse would be) writing to the image: it needs the lock.
_WRITER = """
import sys, rados, rbd
conf, keyring, pool, name = sys.argv[1:5]
handle = rados.Rados(conffile=conf, rados_id="admin", conf={"keyring": keyring})
handle.connect(timeout=10)
with rbd.Image(handle.open_ioctx(pool), name) as image:
    image.write(b"x" * 4096, 0)
print("written", flush=True)
"""


@pytest.fixture
def image(ceph_site: CephSite) -> Iterator[str]:
    admin = Admin(ceph_site)
    name = f"fence-{uuid.uuid4().hex[:8]}"
    admin.create(name, 64 << 20)
    try:
        yield name
    finally:
        admin.remove(name)
        admin.close()


def _client(home: Path) -> Cluster:
    config = load_config(home)
    assert config is not None
    cluster = Cluster(config, home)
    cluster.connect()
    return cluster


def _blocklist(site: CephSite) -> list[str]:
    admin = Admin(site)
    try:
        code, out, status = admin.handle.mon_command(json.dumps({"prefix": "osd blocklist ls", "format": "json"}), b"")
        assert code == 0, status
        listed, _ = json.JSONDecoder().raw_decode(out.decode())  # Ceph 16 may follow the list with more output
        return [entry["addr"] for entry in listed]
    finally:
        admin.close()


def _write_seconds(site: CephSite, name: str) -> float:
    started = time.monotonic()
    argv = [sys.executable, "-c", _WRITER, str(site.conf), str(site.keyring("admin")), site.pool, name]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=WATCH_TIMEOUT_S * 3, check=False)
    assert done.stdout.strip() == "written", done.stderr
    return time.monotonic() - started


def test_a_killed_client_is_fenced_by_the_next_and_its_lock_stalls_nothing(
    ceph_site: CephSite, image: str, tmp_path: Path
) -> None:
    home = client_home(tmp_path / "home", ceph_site)
    locker = subprocess.Popen(
        [sys.executable, "-c", _LOCKER, str(home), ceph_site.pool, image], stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        (record,) = (home / CLIENTS_DIR).glob("*.json")
        dead = json.loads(record.read_text())["addrs"]
        assert dead, record.read_text()
        # While the locker lives, a new client of the home fences nothing.
        alive = _client(home)
        assert record.exists() and not set(dead) & set(_blocklist(ceph_site))
        os.kill(locker.pid, signal.SIGKILL)
        locker.wait(timeout=10)
        # The next client of the home to connect fences the dead one (this test's own stays recorded) ...
        fencer = _client(home)
        assert not record.exists()
        assert set(dead) <= set(_blocklist(ceph_site))
        # ... so another client's write no longer waits for the dead owner's watch to time out.
        assert _write_seconds(ceph_site, image) < WRITE_BOUND_S
        for cluster in (alive, fencer):
            cluster.close()
        assert list((home / CLIENTS_DIR).iterdir()) == []
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()


def test_a_client_that_exits_leaves_no_record_to_fence(ceph_site: CephSite, tmp_path: Path) -> None:
    home = client_home(tmp_path / "home", ceph_site)
    script = _CONNECT + "Cluster(load_config(home), home).connect()\n"
    done = subprocess.run(
        [sys.executable, "-c", script, str(home)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert list((home / CLIENTS_DIR).glob("*")) == []
