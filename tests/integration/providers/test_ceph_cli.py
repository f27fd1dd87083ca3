"""`snapport rbd ...` and the bad input a user of the ceph-rbd provider meets, as users and scripts meet them:
`python -m snapport --home H ...` processes against a real cluster (one per session), one JSON object with --json,
one error line with its stable name. After every refusal the machine and the cluster are as they were before it:
no rbd-fuse mount, loop device, snapshot, record, clone or catalog set left behind."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from snapport.errors import BadState, ConfigError, ImportRefused, ObjectNotFound, ProviderError, SnapportError
from snapport.lab.ceph import CephSite
from snapport.osal import loop
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner
from snapport.providers.base import ProviderHost
from snapport.providers.ceph_rbd import CephRbdProvider
from snapport.providers.ceph_rbd.cluster import CONFIG_FILE
from snapport.providers.ceph_rbd.presentation import serving_daemons
from tests.conftest import Scratch, needs_tool
from tests.support.ceph import PRODUCTION, PROXY, Admin, client_home

pytestmark = [pytest.mark.root, needs_tool("rbd-fuse", "losetup", "mkfs.xfs")]

IMAGE_SIZE = 320 << 20
CONNECT_BOUND_S = 15.0  # the provider's connect timeout (10 s) and a process start


@dataclass
class Home:
    """One SNAPPORT_HOME on this machine, a host of its own name, a client of the cluster."""

    path: Path
    name: str
    run_dir: Path

    def run(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SNAPPORT_HOST": self.name, "SNAPPORT_RUN_DIR": str(self.run_dir), "COLUMNS": "200"}
        env.pop("SNAPPORT_HOME", None)
        argv = [sys.executable, "-m", "snapport", "--home", str(self.path), *args]
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout, check=False)

    def ok(self, *args: str) -> Any:
        done = self.run(*args, "--json")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == 1, done.stdout
        return json.loads(lines[0])

    def fails(self, error: type[SnapportError], *args: str) -> str:
        """Run, expecting exactly `error`: its exit code, one JSON line on stderr naming it, nothing on stdout."""
        done = self.run(*args, "--json")
        assert done.stdout == "", done.stdout
        lines = done.stderr.splitlines()
        assert len(lines) == 1, done.stderr
        answer = json.loads(lines[0])
        assert (answer["error"], done.returncode) == (error.code, error.exit_code), done.stderr
        return str(answer["message"])

    def configure(self, **changes: str) -> None:
        """Change keys of this home's ceph.toml (conf, client, keyring, present)."""
        path = self.path / CONFIG_FILE
        text = path.read_text()
        for key, value in changes.items():
            text = re.sub(rf"^{key} = .*$", f'{key} = "{value}"', text, flags=re.MULTILINE)
        path.write_text(text)

    def sets(self) -> list[Any]:
        return list(self.ok("list")["sets"])


@dataclass
class World:
    """The cluster, the homes of one test and the images it made; `state()` is what a refusal must not change."""

    site: CephSite
    scratch: Scratch
    tmp: Path
    admin: Admin
    homes: list[Home] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def home(self, key: str, client: str = PRODUCTION) -> Home:
        home = Home(client_home(self.tmp / key / "home", self.site, client), f"{key}-host", self.tmp / key / "run")
        self.homes.append(home)
        return home

    def image(self, size: int = IMAGE_SIZE) -> str:
        name = f"cli-{uuid.uuid4().hex[:8]}"
        self.admin.create(name, size)
        self.names.append(name)
        return name

    def ours(self) -> list[str]:
        return [n for n in self.admin.images() if any(n == m or n.startswith(f"{m}.") for m in self.names)]

    def volume(self, home: Home, name: str) -> Path:
        """`name` presented read-write to `home` with `snapport rbd present`, XFS on it, mounted, a file written."""
        device = home.ok("rbd", "present", f"{self.site.pool}/{name}")["device"]
        self.scratch.mkfs("xfs", device)
        mount_point = self.scratch.mount(device, self.tmp / "volumes" / name, fs_type="xfs")
        (mount_point / "data.txt").write_text(f"the contents of {name}\n")
        return mount_point

    def state(self) -> set[str]:
        """Every mount and loop device under the test's directory, and every image, snapshot and snapport
        record of the test's images."""
        prefix = str(self.tmp.resolve())
        found = {f"mount {m.mount_point}" for m in mnt.mounts() if m.mount_point.startswith(prefix)}
        found |= {
            f"loop {d.device} on {d.backing_file}"
            for d in loop.attached(self.scratch.runner)
            if d.backing_file.startswith(prefix)
        }
        for name in self.ours():
            found.add(f"image {name}")
            found |= {f"snapshot {name}@{s}" for s in self.admin.snapshots(name)}
            found |= {f"record {name}#{k}" for k in self.admin.metadata(name) if k.startswith("snapport.")}
        return found

    def cleanup(self) -> None:
        prefix = str(self.tmp.resolve())
        for m in reversed(mnt.mounts()):  # what snapport mounted under the homes' run directories (expose)
            if m.mount_point.startswith(prefix) and m.fs_type != "fuse.rbd-fuse" and "/run/" in m.mount_point:
                mnt.unmount(self.scratch.runner, Path(m.mount_point))
        for home in self.homes:
            provider = CephRbdProvider(ProviderHost(home.name, home.path, self.scratch.runner))
            for presented in provider.mine():
                provider.presenter.unpresent(presented.image)
        for name in sorted(self.ours(), key=lambda n: n in self.names):  # clones before their parents
            self.admin.remove(name)
        self.admin.close()


@pytest.fixture
def world(ceph_site: CephSite, scratch: Scratch, tmp_path: Path) -> Iterator[World]:
    made = World(ceph_site, scratch, tmp_path, Admin(ceph_site))
    scratch.defer(made.cleanup, "unpresent and remove what the test made in the cluster")  # last: after the mounts
    yield made


def _documents(created: Any) -> str:
    return str(Path(created["documents"]) / "backup-components.xml")


# -- snapport rbd present | unpresent | list ---------------------------------------------------------------------


def test_present_list_unpresent(world: World) -> None:
    home = world.home("one")
    rw, ro = world.image(), world.image()
    pool = world.site.pool

    presented = home.ok("rbd", "present", f"{pool}/{rw}")
    device = presented["device"]
    assert presented == {
        "device": device,
        "host": home.name,
        "image": f"{pool}/{rw}",
        "read_only": False,
        "via": "fuse",
    }
    assert loop.backing_file(device) == str(home.path / "rbd" / pool / "-" / rw / rw)
    assert home.ok("rbd", "present", f"{pool}/{rw}") == presented  # idempotent

    ro_device = home.ok("rbd", "present", f"{pool}/{ro}", "--read-only")["device"]
    assert [d.read_only for d in loop.attached(world.scratch.runner) if d.device == ro_device] == [True]

    listed = home.ok("rbd", "list")
    assert set(listed) == {"host", "presentations"} and listed["host"] == home.name
    assert sorted(listed["presentations"], key=lambda p: p["image"]) == sorted(
        [
            {"image": f"{pool}/{rw}", "device": device, "read_only": False, "via": "fuse"},
            {"image": f"{pool}/{ro}", "device": ro_device, "read_only": True, "via": "fuse"},
        ],
        key=lambda p: p["image"],
    )
    human = home.run("rbd", "list")
    assert human.returncode == 0 and f"{pool}/{rw}" in human.stdout and "read-only" in human.stdout

    world.scratch.mkfs("xfs", device)
    mount_point = world.scratch.mount(device, world.tmp / "mounted", fs_type="xfs")
    assert "is mounted at" in home.fails(BadState, "rbd", "unpresent", f"{pool}/{rw}")
    assert loop.backing_file(device) is not None
    mnt.unmount(world.scratch.runner, mount_point)
    world.scratch.forget_mount(mount_point)

    daemon = serving_daemons(home.path / "rbd" / pool / "-" / rw)
    assert len(daemon) == 1
    assert home.ok("rbd", "unpresent", f"{pool}/{rw}") == {
        "image": f"{pool}/{rw}",
        "host": home.name,
        "detached": [device],
    }
    assert not Path(f"/proc/{daemon[0]}").exists() or "Z" in Path(f"/proc/{daemon[0]}/stat").read_text()  # it exited
    assert home.ok("rbd", "unpresent", f"{pool}/{rw}")["detached"] == []  # idempotent
    assert home.ok("rbd", "unpresent", f"{pool}/{ro}")["detached"] == [ro_device]
    assert home.ok("rbd", "list") == {"host": home.name, "presentations": []}
    assert world.state() == {f"image {rw}", f"image {ro}"}  # no rbd-fuse mount, no loop device


def test_a_host_without_ceph_toml_is_told_how_to_make_one(tmp_path: Path) -> None:
    home = Home(tmp_path / "home", "bare-host", tmp_path / "run")
    for verb in (("present", "rbd/x"), ("unpresent", "rbd/x"), ("list",)):
        message = home.fails(ConfigError, "rbd", *verb)
        assert f"write {home.path}/ceph.toml" in message and "docs/ceph.md" in message
    human = home.run("rbd", "list")
    assert human.returncode == ConfigError.exit_code and human.stderr.count("\n") == 1


# -- bad input ---------------------------------------------------------------------------------------------------


def _key() -> str:
    return SubprocessRunner().run(["ceph-authtool", "--gen-print-key"]).stdout.strip()


def test_a_wrong_keyring_is_refused_before_anything_is_made(world: World) -> None:
    one, two = world.home("one"), world.home("two", PROXY)
    name, other = world.image(), world.image()
    volume = world.volume(one, name)
    created = one.ok("create", str(volume), "--transportable")
    pool, good = world.site.pool, world.site.keyring(PRODUCTION)
    before = world.state()

    ghost = world.tmp / "ghost.keyring"  # a well-formed key of a client the cluster does not have
    ghost.write_text(f"[client.snapport-ghost]\n\tkey = {_key()}\n")
    stranger = world.tmp / "stranger.keyring"  # the production client, with a key that is not its own
    stranger.write_text(f"[client.{PRODUCTION}]\n\tkey = {_key()}\n")
    garbled = world.tmp / "garbled.keyring"
    garbled.write_text("[client.snapport-production]\n\tkey = this is not base64!\n")
    wrong_client = world.tmp / "other.keyring"
    wrong_client.write_text(world.site.keyring(PROXY).read_text())
    cases = [
        ({"client": "snapport-ghost", "keyring": str(ghost)}, "cephx refused client.snapport-ghost"),
        ({"keyring": str(stranger)}, f"cephx refused client.{PRODUCTION}"),
        ({"keyring": str(garbled)}, "is not a cephx key"),
        ({"keyring": str(wrong_client)}, f"holds no key for client.{PRODUCTION}"),
    ]
    for changes, said in cases:
        one.configure(**changes)
        assert said in one.fails(ConfigError, "rbd", "present", f"{pool}/{other}"), changes
        assert said in one.fails(ConfigError, "create", str(volume), "--transportable"), changes
        one.configure(client=PRODUCTION, keyring=str(good))
        assert world.state() == before, changes
    assert [s["id"] for s in one.sets()] == [created["set_id"]]

    two.configure(client="snapport-ghost", keyring=str(ghost))
    assert "cephx refused" in two.fails(ConfigError, "import", _documents(created))
    assert two.sets() == [] and world.state() == before
    assert one.ok("delete", created["set_id"])["state"] == "deleted"


@pytest.mark.slow
def test_an_unreachable_monitor_fails_within_the_connect_timeout(world: World) -> None:
    one, two = world.home("one"), world.home("two", PROXY)
    name, other = world.image(), world.image()
    volume = world.volume(one, name)
    created = one.ok("create", str(volume), "--transportable")
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind((world.site.address, 0))
        port = probe.getsockname()[1]
    closed = world.tmp / "closed.conf"
    closed.write_text(re.sub(r"^mon host = .*$", f"mon host = [v2:{world.site.address}:{port}]",
                             world.site.conf.read_text(), flags=re.MULTILINE))  # fmt: skip
    before = world.state()

    one.configure(conf=str(closed))
    two.configure(conf=str(closed))
    for home, args in (
        (one, ("rbd", "present", f"{world.site.pool}/{other}")),
        (one, ("create", str(volume), "--transportable")),
        (two, ("import", _documents(created))),
    ):
        started = time.monotonic()
        message = home.fails(ProviderError, *args)
        assert time.monotonic() - started < CONNECT_BOUND_S, args
        assert f"no monitor of {closed} answered" in message
        assert world.state() == before, args
    one.configure(conf=str(world.site.conf))
    two.configure(conf=str(world.site.conf))
    assert [s["id"] for s in one.sets()] == [created["set_id"]] and two.sets() == []
    assert one.ok("delete", created["set_id"])["state"] == "deleted"


def test_a_pool_or_image_that_does_not_exist(world: World) -> None:
    one, two = world.home("one"), world.home("two", PROXY)
    pool = world.site.pool
    before = world.state()
    assert one.fails(ObjectNotFound, "rbd", "present", f"{pool}/no-such-image") == (
        f"RBD image {pool}/no-such-image does not exist"
    )
    assert "pool 'no-such-pool' does not exist" in one.fails(ObjectNotFound, "rbd", "present", "no-such-pool/x")
    assert "does not exist" in one.fails(ObjectNotFound, "rbd", "present", f"{pool}/no-such-ns/x")
    assert "is not an RBD image" in one.fails(ObjectNotFound, "rbd", "present", "a/b/c/d")
    assert world.state() == before

    # the image removed behind snapport's back, after its snapshot was taken: the import is refused
    name = world.image()
    volume = world.volume(one, name)
    created = one.ok("create", str(volume), "--transportable")
    mnt.unmount(world.scratch.runner, volume)
    world.scratch.forget_mount(volume)
    one.ok("rbd", "unpresent", f"{pool}/{name}")
    world.admin.remove(name)
    before = world.state()
    message = two.fails(ImportRefused, "import", _documents(created))
    assert message == f"RBD image {pool}/{name} does not exist in cluster {world.site.fsid}"
    assert two.sets() == [] and world.state() == before
    assert one.ok("delete", created["set_id"])["state"] == "deleted"


@pytest.mark.slow
def test_an_import_from_a_pool_removed_since_is_refused(world: World) -> None:
    """A pool other than the clients' (only client.admin may use it): made, snapshotted, then removed."""
    admin = ["-c", str(world.site.conf), "-n", "client.admin", "-k", str(world.site.keyring("admin"))]
    runner, pool = world.scratch.runner, f"gone-{uuid.uuid4().hex[:6]}"

    def remove_pool() -> None:
        runner.run(["ceph", *admin, "osd", "pool", "rm", pool, pool, "--yes-i-really-really-mean-it"], timeout=120)

    runner.run(["ceph", *admin, "osd", "pool", "create", pool, "8", "8"], timeout=120)
    world.scratch.defer(remove_pool, f"remove pool {pool}")
    runner.run(["rbd", *admin, "pool", "init", pool], timeout=120)
    runner.run(["rbd", *admin, "create", "--size", str(IMAGE_SIZE >> 20), f"{pool}/data"], timeout=120)
    one, two = world.home("one", "admin"), world.home("two", "admin")
    device = one.ok("rbd", "present", f"{pool}/data")["device"]
    world.scratch.mkfs("xfs", device)
    volume = world.scratch.mount(device, world.tmp / "volume", fs_type="xfs")
    created = one.ok("create", str(volume), "--transportable")
    mnt.unmount(world.scratch.runner, volume)
    world.scratch.forget_mount(volume)
    one.ok("rbd", "unpresent", f"{pool}/data")
    remove_pool()
    before = world.state()
    message = two.fails(ImportRefused, "import", _documents(created))
    assert message == f"RBD image {pool}/data does not exist in cluster {world.site.fsid}"
    assert two.sets() == [] and world.state() == before
    assert one.ok("delete", created["set_id"])["state"] == "deleted"  # the pool took the snapshot with it
    assert one.ok("doctor")["found"] == []  # reconciliation skips the pool that is gone


def test_a_snapshot_deleted_behind_snapports_back_is_not_imported(world: World) -> None:
    one, two = world.home("one"), world.home("two", PROXY)
    name = world.image()
    volume = world.volume(one, name)
    created = one.ok("create", str(volume), "--transportable")
    snapshot = f"snapport-{created['snapshots'][0]['snapshot_id']}"
    with world.admin.rbd.Image(world.admin.io, name) as image:
        image.remove_snap(snapshot)
    before = world.state()
    message = two.fails(ImportRefused, "import", _documents(created))
    assert f"has no snapshot {snapshot}" in message
    assert two.sets() == [] and world.state() == before  # no clone, no presentation, no catalog set
    assert two.ok("rbd", "list")["presentations"] == []
    assert one.ok("delete", created["set_id"])["state"] == "deleted"
    assert not any(k.startswith("snapport.") for k in world.admin.metadata(name))  # the record went too


def test_an_image_presented_elsewhere_or_the_other_way_is_refused(world: World) -> None:
    one, two = world.home("one"), world.home("two")
    pool = world.site.pool
    written, read, watched = world.image(), world.image(), world.image()
    device = one.ok("rbd", "present", f"{pool}/{written}")["device"]
    before = world.state()

    assert "not read-only" in one.fails(BadState, "rbd", "present", f"{pool}/{written}", "--read-only")
    for mode in ((), ("--read-only",)):
        message = two.fails(BadState, "rbd", "present", f"{pool}/{written}", *mode)
        assert f"already presented read-write at {device} on this machine (for home {one.path})" in message
    assert world.state() == before

    # two readers may share an image; a writer may not join them
    read_device = one.ok("rbd", "present", f"{pool}/{read}", "--read-only")["device"]
    message = two.fails(BadState, "rbd", "present", f"{pool}/{read}")
    assert f"already presented read-only at {read_device} on this machine" in message
    second_reader = two.ok("rbd", "present", f"{pool}/{read}", "--read-only")["device"]
    assert second_reader != read_device
    assert "not read-write" in two.fails(BadState, "rbd", "present", f"{pool}/{read}")
    assert two.ok("rbd", "unpresent", f"{pool}/{read}")["detached"] == [second_reader]
    before = world.state()

    # a client of the cluster elsewhere (another machine, a VM) has the image open for writing: its watch shows it
    with world.admin.rbd.Image(world.admin.io, watched):
        message = two.fails(BadState, "rbd", "present", f"{pool}/{watched}")
        assert "is open by another client of the cluster (client." in message
        assert world.state() == before
    assert two.ok("rbd", "present", f"{pool}/{watched}")["read_only"] is False


# -- docs/ceph.md, followed ---------------------------------------------------------------------------------------


def test_the_deployment_guide_on_two_homes(world: World) -> None:
    """docs/ceph.md's walk-through: the production host presents its image and snapshots it, the proxy (with the
    proxy's client) imports, exposes and maps the copy, then both delete; nothing of the set is left."""
    production, proxy = world.home("production"), world.home("proxy", PROXY)
    name, pool = world.image(), world.site.pool
    volume = world.volume(production, name)
    created = production.ok("create", str(volume), "--transportable")
    set_id = created["set_id"]
    (volume / "data.txt").write_text("written after the snapshot\n")

    imported = proxy.ok("import", _documents(created))
    clone = f"{pool}/{name}.set-{set_id}"
    assert proxy.ok("rbd", "list")["presentations"] == [
        {"image": clone, "device": imported["snapshots"][0]["device"], "read_only": True, "via": "fuse"}
    ]
    exposed = proxy.ok("expose", set_id)["exposed"]
    assert list(exposed) == [str(volume)]
    mapped = proxy.ok("map", set_id, str(volume / "data.txt"))
    assert Path(mapped["path"]).read_text() == f"the contents of {name}\n"
    assert proxy.ok("unexpose", set_id)["state"] == "created"
    assert proxy.ok("delete", set_id)["state"] == "deleted"
    assert proxy.ok("rbd", "list")["presentations"] == []
    assert production.ok("delete", set_id)["state"] == "deleted"
    assert world.state() == {
        f"image {name}",
        f"mount {volume}",
        *(f"mount {m.mount_point}" for m in mnt.mounts() if m.mount_point.startswith(str(production.path))),
        *(
            f"loop {d.device} on {d.backing_file}"
            for d in loop.attached(world.scratch.runner)
            if d.backing_file.startswith(str(production.path))
        ),
    }
