"""The file-backed array on real XFS: concurrency, crash-safe manifest, refusals, and the provider's import rules."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from snapport.errors import BadState, ImportRefused, ObjectNotFound, ProviderError, VolumeNotSupported
from snapport.model import Attr, Locator, Volume
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.providers.base import ProviderHost, SnapshotRequest
from snapport.providers.reflink_array import PENDING, Array, ReflinkArrayProvider
from tests.conftest import Scratch, needs_tool

pytestmark = [pytest.mark.root, needs_tool("mkfs.xfs", "losetup")]

MIB = 1 << 20


def _unpresent_all(array: Array) -> None:
    for lun in array.luns():
        for host in lun.hosts:
            array.unpresent(lun.id, host)


def _detach_strays(scratch: Scratch, array: Array) -> None:
    """Detach loop devices of this array's images that the manifest lost track of (a broken build must not leak)."""
    for device in loop.attached(scratch.runner):
        if device.backing_file.startswith(f"{array.path}/"):
            loop.detach(scratch.runner, device.device)


def make_array(scratch: Scratch) -> Array:
    """An array on a fresh XFS; at cleanup every LUN is unpresented from every host before the XFS goes."""
    fs = scratch.filesystem("xfs", size_mb=1024)
    array = Array.init(fs.mount_point / "array", scratch.runner)
    scratch.defer(lambda: _detach_strays(scratch, array), "detach loop devices the manifest lost")
    scratch.defer(lambda: _unpresent_all(array), "unpresent every LUN")
    return array


def provider(scratch: Scratch, host: str, tmp: Path) -> ReflinkArrayProvider:
    return ReflinkArrayProvider(ProviderHost(host, tmp / f"home-{host}", scratch.runner))


def run_python(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


# -- init ---------------------------------------------------------------------------------------------------------


def test_init_refuses_a_filesystem_that_cannot_reflink(scratch: Scratch) -> None:
    ext4 = scratch.filesystem("ext4")
    target = ext4.mount_point / "array"
    with pytest.raises(VolumeNotSupported, match=r"its ext4 filesystem cannot clone files \(FICLONE\)"):
        Array.init(target, scratch.runner)
    assert not target.exists()  # made for the probe, removed with it
    assert sorted(p.name for p in ext4.mount_point.iterdir()) == ["lost+found"]


def test_init_refuses_an_existing_array(scratch: Scratch) -> None:
    array = make_array(scratch)
    with pytest.raises(BadState, match="already an array"):
        Array.init(array.path, scratch.runner)
    assert Array.open(array.path).array_id == array.array_id


def test_open_refuses_a_directory_without_a_manifest(tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound, match="not an array"):
        Array.open(tmp_path)


@pytest.mark.parametrize(
    "content",
    [
        b'{"array_id": "6f0c',  # torn
        b'{"array_id": "not-a-uuid", "version": 1, "luns": []}',
        b'{"array_id": "6f0cf2c4-0d55-4c57-9a43-8a3b41f2b9c1", "version": 1, "luns": [{"id": "../../etc"}]}',
    ],
)
def test_a_damaged_manifest_is_reported_not_trusted(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "manifest.json").write_bytes(content)
    with pytest.raises(ProviderError, match="is damaged"):
        Array.open(tmp_path)


# -- concurrency and crash safety ---------------------------------------------------------------------------------

CREATE_AND_PRESENT = """
import json, sys, time
from pathlib import Path
from snapport.providers.reflink_array import Array
directory, host, count, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
array = Array.open(directory)
while not go.exists():
    time.sleep(0.002)
for i in range(count):
    lun = array.create_lun(f"{host}-{i}", 1 << 20)
    print(json.dumps({"lun": lun.id, "serial": lun.serial, "device": array.present(lun.id, host)}), flush=True)
"""


def test_concurrent_processes_lose_no_lun_and_no_presentation(scratch: Scratch, tmp_path: Path) -> None:
    array = make_array(scratch)
    go = tmp_path / "go"
    workers = {
        f"host-{n}": run_python(CREATE_AND_PRESENT, str(array.path), f"host-{n}", "4", str(go)) for n in range(4)
    }
    go.touch()
    made: dict[str, list[dict[str, str]]] = {}
    for host, proc in workers.items():
        out, err = proc.communicate(timeout=90)
        assert proc.returncode == 0, err
        made[host] = [json.loads(line) for line in out.splitlines()]
    luns = {lun.id: lun for lun in array.luns()}
    assert len(luns) == 16
    assert len({lun.serial for lun in luns.values()}) == 16
    devices = [m["device"] for rows in made.values() for m in rows]
    assert len(set(devices)) == 16
    for host, rows in made.items():
        for row in rows:
            assert luns[row["lun"]].devices_on(host) == (row["device"],)
            assert luns[row["lun"]].serial == row["serial"]
            assert loop.backing_file(row["device"]) == str(array.image(row["lun"]))
    for host, rows in made.items():
        for row in rows:
            assert array.unpresent(row["lun"], host) == [row["device"]]
    assert not any(d.backing_file.startswith(str(array.path)) for d in loop.attached(scratch.runner))


CREATE_ONE = """
import sys
from pathlib import Path
from snapport.providers.reflink_array import Array
Array.open(Path(sys.argv[1])).create_lun("doomed", 1 << 20)
"""


def test_a_writer_killed_before_the_rename_leaves_the_old_manifest(scratch: Scratch) -> None:
    array = make_array(scratch)
    kept = array.create_lun("kept", MIB)
    before = array.manifest_path.read_bytes()
    proc = run_python(CREATE_ONE, str(array.path), env={"SNAPPORT_FAULT": "array.manifest:kill"})
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert array.manifest_path.read_bytes() == before
    assert len(list(array.path.glob(".manifest.json.tmp-*"))) == 1  # the new manifest, never renamed
    orphans = array.orphan_images()
    assert len(orphans) == 1  # its image was made, but no entry records it
    array.delete_lun(orphans[0].stem)  # an unrecorded image can be removed by id
    second = array.create_lun("second", MIB)  # the next writer sweeps the dead one's temp file
    assert list(array.path.glob(".manifest.json.tmp-*")) == []
    assert [lun.id for lun in array.luns()] == [kept.id, second.id]
    assert array.orphan_images() == []


CHURN = """
import sys
from pathlib import Path
from snapport.providers.reflink_array import Array
array = Array.open(Path(sys.argv[1]))
print("ready", flush=True)
while True:
    array.delete_lun(array.create_lun("churn", 1 << 20).id)
"""


def test_random_sigkills_never_leave_a_torn_manifest(scratch: Scratch) -> None:
    array = make_array(scratch)
    for n in range(40):  # a manifest of a few pages, so that a write takes a while
        array.create_lun(f"base-{n}", MIB)
    rng = random.Random(1234)
    base = {lun.id for lun in array.luns()}
    for round_ in range(12):
        proc = run_python(CHURN, str(array.path))
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.005, 0.15))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        raw = json.loads(array.manifest_path.read_bytes())  # never torn: parses, and is a whole manifest
        assert raw["array_id"] == array.array_id
        luns = Array.open(array.path).luns()
        assert base <= {lun.id for lun in luns}  # no committed LUN lost
        assert len(luns) <= len(base) + round_ + 1  # at most one churn LUN per kill
    assert not any(lun.hosts for lun in array.luns())


# -- presenting ---------------------------------------------------------------------------------------------------


def test_two_hosts_on_one_machine_are_two_records(scratch: Scratch) -> None:
    array = make_array(scratch)
    lun = array.create_lun("shared", MIB)
    on_a = array.present(lun.id, "host-a")
    on_b = array.present(lun.id, "host-b", read_only=True)
    assert on_a != on_b
    assert array.present(lun.id, "host-a") == on_a  # idempotent
    with pytest.raises(BadState, match="not read-only"):
        array.present(lun.id, "host-a", read_only=True)
    assert array.unpresent(lun.id, "host-a") == [on_a]
    assert array.unpresent(lun.id, "host-a") == []  # idempotent
    assert loop.backing_file(on_b) == str(array.image(lun.id))  # host-b's device is untouched
    assert array.get(lun.id).presented_to == (("host-b", (on_b,)),)


def test_unpresent_never_detaches_a_device_that_no_longer_presents_the_lun(scratch: Scratch, tmp_path: Path) -> None:
    array = make_array(scratch)
    lun = array.create_lun("mine", MIB)
    device = array.present(lun.id, "host-a")
    loop.detach(scratch.runner, device)  # behind the array's back; the number may now go to someone else
    stranger = scratch.loop(scratch.image("stranger", 1))
    manifest = json.loads(array.manifest_path.read_bytes())
    manifest["luns"][0]["presented_to"] = {"host-a": [stranger]}  # as if the number had been reused
    array.manifest_path.write_text(json.dumps(manifest))
    assert array.unpresent(lun.id, "host-a") == []
    assert loop.backing_file(stranger) is not None


def test_unpresent_and_delete_refuse_what_is_in_use(scratch: Scratch, tmp_path: Path) -> None:
    array = make_array(scratch)
    lun = array.create_lun("busy", 64 * MIB)
    device = array.present(lun.id, "host-a")
    scratch.mkfs("ext4", device)
    mount_point = scratch.mount(device, tmp_path / "busy", fs_type="ext4")
    with pytest.raises(BadState, match="is mounted at"):
        array.unpresent(lun.id, "host-a")
    with pytest.raises(BadState, match="still presented to host-a"):
        array.delete_lun(lun.id)
    with pytest.raises(BadState, match="is mounted at"):
        array.delete_lun(lun.id, unpresent_from="host-a")
    mnt.unmount(scratch.runner, mount_point)
    scratch.forget_mount(mount_point)
    assert array.delete_lun(lun.id, unpresent_from="host-a") is True
    assert loop.backing_file(device) != str(array.image(lun.id))  # (the number may serve another test now)
    assert not array.image(lun.id).exists()
    assert array.delete_lun(lun.id) is False


def test_a_pending_lun_cannot_be_presented(scratch: Scratch) -> None:
    array = make_array(scratch)
    source = array.create_lun("source", MIB)
    pending = array.reserve_clone(source.id, snapshot_id=str(uuid.uuid4()))
    assert pending.state == PENDING
    with pytest.raises(BadState, match="pending"):
        array.present(pending.id, "host-a")


# -- the provider on the array ------------------------------------------------------------------------------------


def snapshot_lun(scratch: Scratch, tmp_path: Path) -> tuple[Array, ReflinkArrayProvider, Locator]:
    """A LUN (no filesystem needed) presented to host-a and a ready snapshot of it, as the provider makes them."""
    array = make_array(scratch)
    source = array.create_lun("data", MIB)
    device = array.present(source.id, "host-a")
    volume = Volume("host-a", str(tmp_path / "unused"), "xfs", "", device)
    host_a = provider(scratch, "host-a", tmp_path)
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), volume, Attr.TRANSPORTABLE)
    scratch.defer(lambda: host_a.abort([request]), "abort")
    host_a.prepare([request])
    locators = host_a.commit([request])
    host_a.post_commit([request], locators)
    return array, host_a, locators[request.snapshot_id]


def _with_destination(locator: Locator, **changes: str) -> Locator:
    assert locator.destination is not None
    return dataclasses.replace(locator, destination=dataclasses.replace(locator.destination, **changes))


def test_import_refuses_a_lun_absent_from_the_array(scratch: Scratch, tmp_path: Path) -> None:
    array, _, locator = snapshot_lun(scratch, tmp_path)
    host_b = provider(scratch, "host-b", tmp_path)
    with pytest.raises(ImportRefused, match=f"LUN 0123456789ab .* is not in array {array.array_id}"):
        host_b.import_snapshot(_with_destination(locator, lun_id="0123456789ab"))
    with pytest.raises(ImportRefused, match="is not in array"):
        host_b.import_snapshot(_with_destination(locator, serial="SNP000000000000"))
    with pytest.raises(ImportRefused, match="not a LUN id"):
        host_b.import_snapshot(_with_destination(locator, lun_id="../../etc/x"))
    assert not any(lun.hosts != ("host-a",) for lun in array.luns() if lun.hosts)


def test_import_refuses_another_arrays_locator(scratch: Scratch, tmp_path: Path) -> None:
    array, _, locator = snapshot_lun(scratch, tmp_path)
    host_b = provider(scratch, "host-b", tmp_path)
    other_id = str(uuid.uuid4())
    with pytest.raises(ImportRefused, match=f"is {array.array_id}, not {other_id} as the locator says"):
        host_b.import_snapshot(_with_destination(locator, array_id=other_id))
    elsewhere = Locator(locator.provider, locator.source, locator.destination, (("array_path", str(tmp_path / "no")),))
    with pytest.raises(ImportRefused, match="no array at"):
        host_b.import_snapshot(elsewhere)
    assert [lun.hosts for lun in array.luns()] == [("host-a",), ()]


def test_import_presents_read_only_to_the_importing_host_and_unimport_undoes_it(
    scratch: Scratch, tmp_path: Path
) -> None:
    array, host_a, locator = snapshot_lun(scratch, tmp_path)
    host_b = provider(scratch, "host-b", tmp_path)
    assert locator.destination is not None
    assert host_a.sees_original(locator) and not host_b.sees_original(locator)
    device = host_b.import_snapshot(locator)
    scratch.defer(lambda: host_b.unimport(locator, device), "unimport")
    lun = array.get(locator.destination.lun_id)
    assert lun.devices_on("host-b") == (device,)
    assert [d.read_only for d in loop.attached(scratch.runner) if d.device == device] == [True]
    host_b.unimport(locator, device)
    assert loop.backing_file(device) != str(array.image(lun.id))
    assert array.get(lun.id).presented_to == ()


def test_an_attachment_outside_the_array_counts_as_seeing_the_original(scratch: Scratch, tmp_path: Path) -> None:
    array, _, locator = snapshot_lun(scratch, tmp_path)
    host_b = provider(scratch, "host-b", tmp_path)
    assert locator.source is not None
    assert not host_b.sees_original(locator)
    scratch.loop(array.image(locator.source.lun_id), read_only=True)  # raw losetup, recorded for no host
    assert host_b.sees_original(locator)


def test_abort_from_a_fresh_process_finds_the_pending_lun(scratch: Scratch, tmp_path: Path) -> None:
    array = make_array(scratch)
    source = array.create_lun("data", MIB)
    device = array.present(source.id, "host-a")
    volume = Volume("host-a", str(tmp_path / "unused"), "xfs", "", device)
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), volume, Attr.NONE)
    provider(scratch, "host-a", tmp_path).prepare([request])
    assert [lun.state for lun in array.luns()] == ["ready", PENDING]
    provider(scratch, "host-a", tmp_path).abort([request])  # as after a crash: nothing in memory
    assert [lun.id for lun in array.luns()] == [source.id]


def test_two_volumes_are_cut_at_one_instant(scratch: Scratch, tmp_path: Path) -> None:
    array = make_array(scratch)
    host_a = provider(scratch, "host-a", tmp_path)
    volumes, requests = [], []
    set_id = uuid.uuid4()
    for name in ("db", "logs"):
        lun = array.create_lun(name, 64 * MIB)
        device = array.present(lun.id, "host-a")
        scratch.mkfs("ext4", device)
        mount_point = scratch.mount(device, tmp_path / name, fs_type="ext4")
        (mount_point / "seq").write_text("1")
        volumes.append(Volume("host-a", str(mount_point), "ext4", "", device))
        requests.append(SnapshotRequest(set_id, uuid.uuid4(), volumes[-1], Attr.NONE))
    scratch.defer(lambda: host_a.abort(requests), "abort")
    host_a.prepare(requests)
    for volume in volumes:
        ioctl.freeze(Path(volume.mount_point))
    try:
        locators = host_a.commit(requests)
    finally:
        for volume in volumes:
            ioctl.thaw(Path(volume.mount_point))
    host_a.post_commit(requests, locators)
    for n, request in enumerate(requests):
        Path(volumes[n].mount_point, "seq").write_text("2")
        locator = locators[request.snapshot_id]
        device = host_a.import_snapshot(locator)
        scratch.defer(lambda locator=locator, device=device: host_a.unimport(locator, device), "unimport")
        at = tmp_path / f"exposed-{n}"
        scratch.defer(lambda locator=locator, at=at: host_a.unexpose(locator, at), "unexpose")
        host_a.expose(locator, device, "ext4", at)
        assert (at / "seq").read_text() == "1"
    assert {lun.snapshot_of_set for lun in array.luns() if lun.parent} == {str(set_id)}
