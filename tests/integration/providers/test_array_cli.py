"""`snapport array ...` as users and scripts run it: a subprocess, one JSON object with --json, one error line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from snapport.osal import loop
from snapport.providers.reflink_array import Array
from tests.conftest import Scratch, needs_tool

pytestmark = [pytest.mark.root, needs_tool("mkfs.xfs", "losetup")]

HOST = "cli-host"


def snapport(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SNAPPORT_HOME": str(home), "SNAPPORT_HOST": HOST, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def ok_json(home: Path, *args: str) -> Any:
    done = snapport(home, *args, "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def test_init_create_present_list_unpresent(scratch: Scratch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    fs = scratch.filesystem("xfs")
    directory = fs.mount_point / "array"
    made = ok_json(home, "array", "init", str(directory))
    array = Array.open(directory)
    assert made == {"array": array.array_id, "path": str(directory)}

    def unpresent_all() -> None:
        for lun in array.luns():
            for host in lun.hosts:
                array.unpresent(lun.id, host)

    def detach_strays() -> None:  # loop devices of this array the manifest lost track of
        for device in loop.attached(scratch.runner):
            if device.backing_file.startswith(f"{array.path}/"):
                loop.detach(scratch.runner, device.device)

    scratch.defer(detach_strays, "detach loop devices the manifest lost")
    scratch.defer(unpresent_all, "unpresent every LUN")

    lun = ok_json(home, "array", "lun", "create", str(directory), "--name", "data", "--size", "512M")
    assert set(lun) >= {"lun", "serial"} and lun["serial"].startswith("SNP")
    assert array.image(lun["lun"]).stat().st_size == 512 << 20
    assert array.image(lun["lun"]).stat().st_blocks == 0  # sparse

    presented = ok_json(home, "array", "present", str(directory), lun["lun"])
    device = presented["device"]
    assert loop.backing_file(device) == str(array.image(lun["lun"]))
    assert ok_json(home, "array", "present", str(directory), lun["lun"])["device"] == device  # idempotent

    listed = ok_json(home, "array", "list", str(directory))
    assert listed["array"] == array.array_id
    assert [(x["id"], x["serial"], x["presented_to"]) for x in listed["luns"]] == [
        (lun["lun"], lun["serial"], {HOST: [device]})
    ]
    human = snapport(home, "array", "list", str(directory))
    assert human.returncode == 0 and lun["lun"] in human.stdout and "512M" in human.stdout

    second = ok_json(home, "array", "lun", "create", str(directory), "--name", "ro", "--size", "1G")
    ro_device = ok_json(home, "array", "present", str(directory), second["lun"], "--read-only")["device"]
    assert [d.read_only for d in loop.attached(scratch.runner) if d.device == ro_device] == [True]

    for lun_id, dev in ((lun["lun"], device), (second["lun"], ro_device)):
        assert ok_json(home, "array", "unpresent", str(directory), lun_id)["detached"] == [dev]
        assert loop.backing_file(dev) != str(array.image(lun_id))
    assert ok_json(home, "array", "unpresent", str(directory), lun["lun"])["detached"] == []
    assert ok_json(home, "array", "lun", "delete", str(directory), second["lun"]) == {
        "deleted": True,
        "lun": second["lun"],
    }


def test_errors_are_one_line_with_a_documented_exit_code(scratch: Scratch, tmp_path: Path) -> None:
    home = tmp_path / "home"
    ext4 = scratch.filesystem("ext4")
    refused = snapport(home, "array", "init", str(ext4.mount_point / "array"))
    assert refused.returncode == 9  # VOLUME_NOT_SUPPORTED
    assert refused.stderr.count("\n") == 1 and "cannot clone files (FICLONE)" in refused.stderr
    assert refused.stdout == ""

    xfs = scratch.filesystem("xfs")
    ok_json(home, "array", "init", str(xfs.mount_point / "array"))
    missing = snapport(home, "array", "present", str(xfs.mount_point / "array"), "0123456789ab", "--json")
    assert missing.returncode == 3  # OBJECT_NOT_FOUND
    assert json.loads(missing.stderr)["error"] == "OBJECT_NOT_FOUND"
    bad_size = snapport(home, "array", "lun", "create", str(xfs.mount_point / "array"), "--name", "x", "--size", "12Q")
    assert bad_size.returncode == 2 and "is not a size" in bad_size.stderr
    not_an_array = snapport(home, "array", "list", str(tmp_path))
    assert not_an_array.returncode == 3 and "is not an array" in not_an_array.stderr
