"""The kernel client for real: `snapport rbd present` with `present = "kernel"` maps an image of the test cluster
(`rbd device map`), data written to /dev/rbdN is in the image, and unpresent unmaps it. Where the kernel has no rbd
module (no /sys/bus/rbd) this is skipped; the presenter's logic is `tests/unit/providers/test_ceph_kernel_presenter.py`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapport.lab.ceph import CephSite
from snapport.providers.ceph_rbd.presentation import SYS_RBD
from tests.conftest import needs_tool
from tests.support.ceph import Admin, client_home

pytestmark = [
    pytest.mark.root,
    needs_tool("rbd"),
    pytest.mark.skipif(not (SYS_RBD / "add").exists(), reason=f"rbd kernel module absent (no {SYS_RBD}/add)"),
]


def _ok(home: Path, *args: str) -> Any:
    env = {**os.environ, "SNAPPORT_HOST": "kernel-host"}
    argv = [sys.executable, "-m", "snapport", "--home", str(home), *args, "--json"]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_kernel_client_maps_writes_and_unmaps(ceph_site: CephSite, tmp_path: Path) -> None:
    admin = Admin(ceph_site)
    home = client_home(tmp_path / "home", ceph_site, present="kernel")
    name, read_only = f"krbd-{uuid.uuid4().hex[:8]}", f"krbd-{uuid.uuid4().hex[:8]}"
    pool = ceph_site.pool
    admin.create(name, 64 << 20)
    admin.create(read_only, 64 << 20)
    try:
        presented = _ok(home, "rbd", "present", f"{pool}/{name}")
        device = presented["device"]
        assert presented["via"] == "kernel" and device.startswith("/dev/rbd") and presented["read_only"] is False
        pattern = uuid.uuid4().bytes * 256  # 4 KiB
        with open(device, "r+b", buffering=0) as block:
            block.write(pattern)
            os.fsync(block.fileno())
        with admin.rbd.Image(admin.io, name, read_only=True) as image:
            assert image.read(0, len(pattern)) == pattern
        ro_device = _ok(home, "rbd", "present", f"{pool}/{read_only}", "--read-only")["device"]
        assert Path(f"/sys/block/{Path(ro_device).name}/ro").read_text().strip() == "1"
        listed = {p["image"]: p for p in _ok(home, "rbd", "list")["presentations"]}
        assert listed[f"{pool}/{name}"] == {"image": f"{pool}/{name}", "device": device, "read_only": False,
                                            "via": "kernel"}  # fmt: skip
        assert listed[f"{pool}/{read_only}"]["read_only"] is True
    finally:
        for image in (name, read_only):
            _ok(home, "rbd", "unpresent", f"{pool}/{image}")
        assert _ok(home, "rbd", "list")["presentations"] == []
        for image in (name, read_only):
            admin.remove(image)
        admin.close()
