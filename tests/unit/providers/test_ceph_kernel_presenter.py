"""The ceph-rbd kernel presenter (`rbd device map`) without root or the rbd module: the `rbd` commands it runs are
recorded and answered by a fake kernel that keeps a sysfs tree of its own, as `/sys/bus/rbd` would be. The real
mapping is `tests/integration/providers/test_ceph_kernel.py` (skipped where the kernel has no rbd module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapport.errors import BadState, SystemCommandError
from snapport.osal.runner import RecordingRunner
from snapport.providers.ceph_rbd.cluster import CephConfig, ImageRef
from snapport.providers.ceph_rbd.presentation import (
    FusePresenter,
    KernelPresenter,
    Presented,
    Via,
    presenter,
)

CONFIG = CephConfig(
    conf=Path("/etc/ceph/ceph.conf"),
    client="snapport-production",
    keyring=Path("/etc/ceph/ceph.client.snapport-production.keyring"),
    present="kernel",
)
RBD = ("rbd", "-c", "/etc/ceph/ceph.conf", "--id", "snapport-production", "--keyring", str(CONFIG.keyring))
DB = ImageRef("rbd", "", "db")


class FakeKernel:
    """`rbd device map|unmap` as the kernel does them, in a sysfs tree under `root`: a map takes the lowest free
    device id and writes `devices/N/{pool,pool_ns,name,current_snap}` and `devices/N/block/rbdN/ro`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.devices = root / "devices"
        self.devices.mkdir(parents=True)
        self.answer: str | None = None  # what `device map` prints instead of the device, if set

    def map(self, spec: str, *, read_only: bool, snap: str = "-") -> str:
        parts = spec.split("/")
        pool, namespace, name = (parts[0], "", parts[1]) if len(parts) == 2 else parts
        dev_id = next(n for n in range(64) if not (self.devices / str(n)).exists())
        entry = self.devices / str(dev_id)
        (entry / "block" / f"rbd{dev_id}").mkdir(parents=True)
        for attribute, value in (("pool", pool), ("pool_ns", namespace), ("name", name), ("current_snap", snap)):
            (entry / attribute).write_text(f"{value}\n")
        (entry / "block" / f"rbd{dev_id}" / "ro").write_text("1\n" if read_only else "0\n")
        return f"/dev/rbd{dev_id}"

    def __call__(self, argv: tuple[str, ...]) -> tuple[int, str, str] | None:
        if argv[: len(RBD)] != RBD:
            return None
        verb = argv[len(RBD) :]
        if verb[:2] == ("device", "map"):
            device = self.map(verb[-1], read_only="--read-only" in verb)
            return 0, f"{self.answer if self.answer is not None else device}\n", ""
        if verb[:2] == ("device", "unmap"):
            entry = self.devices / verb[2].removeprefix("/dev/rbd")
            for path in sorted(entry.rglob("*"), reverse=True):
                path.unlink() if path.is_file() else path.rmdir()
            entry.rmdir()
            return 0, "", ""
        return None


@pytest.fixture
def kernel(tmp_path: Path) -> FakeKernel:
    return FakeKernel(tmp_path / "sys" / "bus" / "rbd")


@pytest.fixture
def runner(kernel: FakeKernel) -> RecordingRunner:
    return RecordingRunner([kernel])


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def _presenter(home: Path, runner: RecordingRunner, kernel: FakeKernel) -> KernelPresenter:
    return KernelPresenter(home, CONFIG, runner, kernel.root)


def test_map_runs_rbd_as_this_hosts_client_and_records_the_mapping(
    home: Path, runner: RecordingRunner, kernel: FakeKernel
) -> None:
    p = _presenter(home, runner, kernel)
    assert p.present(DB, read_only=False) == "/dev/rbd0"
    assert runner.calls == [(*RBD, "device", "map", "rbd/db")]
    assert (home / "rbd" / "kernel" / "0").read_text() == "rbd/db"
    assert p.presented() == [Presented(DB, "/dev/rbd0", False, home, Via.KERNEL)]


def test_a_read_only_map_says_so_and_is_seen_read_only(home: Path, runner: RecordingRunner, kernel: FakeKernel) -> None:
    p = _presenter(home, runner, kernel)
    inside = ImageRef("rbd", "tenant", "db")
    assert p.present(inside, read_only=True) == "/dev/rbd0"
    assert runner.calls == [(*RBD, "device", "map", "--read-only", "rbd/tenant/db")]
    assert p.presented() == [Presented(inside, "/dev/rbd0", True, home, Via.KERNEL)]


def test_present_is_idempotent_and_refuses_the_other_way(
    home: Path, runner: RecordingRunner, kernel: FakeKernel
) -> None:
    p = _presenter(home, runner, kernel)
    device = p.present(DB, read_only=False)
    assert p.present(DB, read_only=False) == device
    with pytest.raises(BadState, match=r"is mapped read-write at /dev/rbd0; unmap it first"):
        p.present(DB, read_only=True)
    assert len(runner.calls) == 1  # neither asked the kernel again


@pytest.mark.parametrize("answer", ["/dev/nbd0", "rbd: sysfs write failed", "", "/dev/rbd0p1"])
def test_an_answer_that_is_not_an_rbd_device_is_refused_and_records_nothing(
    home: Path, runner: RecordingRunner, kernel: FakeKernel, answer: str
) -> None:
    kernel.answer = answer
    with pytest.raises(SystemCommandError, match="not a /dev/rbdN device"):
        _presenter(home, runner, kernel).present(DB, read_only=False)
    assert not (home / "rbd" / "kernel").exists() or not any((home / "rbd" / "kernel").iterdir())


def test_a_failed_map_is_a_system_error_with_rbds_words(home: Path, kernel: FakeKernel) -> None:
    failing = RecordingRunner([lambda argv: (1, "", "rbd: map failed: (2) No such file or directory\n")])
    with pytest.raises(SystemCommandError, match=r"exited 1: rbd: map failed"):
        _presenter(home, failing, kernel).present(DB, read_only=False)
    assert not (home / "rbd" / "kernel").exists()


def test_unmap_runs_rbd_and_drops_the_record_idempotently(
    home: Path, runner: RecordingRunner, kernel: FakeKernel
) -> None:
    p = _presenter(home, runner, kernel)
    p.present(DB, read_only=False)
    runner.calls.clear()
    assert p.unpresent(DB) == ["/dev/rbd0"]
    assert runner.calls == [(*RBD, "device", "unmap", "/dev/rbd0")]
    assert not (home / "rbd" / "kernel" / "0").exists()
    assert p.presented() == []
    assert p.unpresent(DB) == []
    assert len(runner.calls) == 1


def test_presented_reads_the_kernels_tree_and_tells_this_homes_mappings(
    home: Path, tmp_path: Path, runner: RecordingRunner, kernel: FakeKernel
) -> None:
    mine = _presenter(home, runner, kernel)
    other_home = tmp_path / "other-home"
    other = _presenter(other_home, runner, kernel)
    assert mine.present(DB, read_only=False) == "/dev/rbd0"
    assert other.present(ImageRef("rbd", "", "logs"), read_only=True) == "/dev/rbd1"
    kernel.map("rbd/db", read_only=True, snap="nightly")  # a raw `rbd device map rbd/db@nightly`: no home's
    (home / "rbd" / "kernel" / "3").write_text("rbd/db")  # a stale record: device 3 is not mapped
    (other_home / "rbd" / "kernel" / "2").write_text("rbd/logs")  # a record naming another image than device 2's
    (kernel.devices / "0" / "pool_ns").unlink()  # a kernel before 4.19 has no namespaces
    assert mine.presented() == [
        Presented(DB, "/dev/rbd0", False, home, Via.KERNEL),
        Presented(ImageRef("rbd", "", "logs"), "/dev/rbd1", True, None, Via.KERNEL),
        Presented(DB, "/dev/rbd2", True, None, Via.KERNEL),  # a snapshot mapping is read-only
    ]
    assert [p.home for p in other.presented()] == [None, other_home, None]
    runner.calls.clear()
    assert mine.unpresent(ImageRef("rbd", "", "logs")) == []  # another home's: left alone
    assert runner.calls == []


def test_no_rbd_bus_means_nothing_is_mapped(home: Path, tmp_path: Path) -> None:
    assert KernelPresenter(home, CONFIG, RecordingRunner(), tmp_path / "absent").presented() == []


def test_the_presenter_is_the_one_the_config_asks_for(home: Path, tmp_path: Path, kernel: FakeKernel) -> None:
    runner = RecordingRunner()
    auto, fuse = CONFIG.model_copy(update={"present": "auto"}), CONFIG.model_copy(update={"present": "fuse"})
    assert isinstance(presenter(home, CONFIG, runner, tmp_path / "absent"), KernelPresenter)
    assert isinstance(presenter(home, fuse, runner, kernel.root), FusePresenter)
    assert isinstance(presenter(home, auto, runner, kernel.root), FusePresenter)  # no `add`: no rbd module
    (kernel.root / "add").write_text("")
    chosen = presenter(home, auto, runner, kernel.root)
    assert isinstance(chosen, KernelPresenter) and chosen.sys_rbd == kernel.root and chosen.via is Via.KERNEL
