"""`Host` without root: volumes described from a given mount table (blkid answered by a RecordingRunner), and
providers from a given factory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.catalog import Catalog, catalog_url
from snapport.coordinator.host import Host
from snapport.errors import UsageError
from snapport.model import Volume
from snapport.osal.mount import MountInfo
from snapport.osal.runner import RecordingRunner
from snapport.providers.base import Provider, ProviderHost
from tests.support.fakes import FakeMountTable, FakeProvider, Journal, blkid_answers, device_mount


@pytest.fixture
def volumes(tmp_path: Path) -> Path:
    return tmp_path.resolve() / "volumes"


@pytest.fixture
def host(tmp_path: Path, volumes: Path) -> Iterator[Host]:
    table = FakeMountTable(
        [
            device_mount(volumes, "/dev/fake-root", "ext4"),
            device_mount(volumes / "data", "/dev/fake-data", "ext4"),  # blkid says xfs: the device is what counts
            MountInfo(str(volumes / "scratch"), "tmpfs", "tmpfs", ("rw",), "0:52"),
        ]
    )
    runner = RecordingRunner([blkid_answers({"/dev/fake-data": ("xfs", "0b5e3c1d-data")})])
    catalog = Catalog.open(catalog_url(tmp_path / "home"), host="one")
    yield Host(name="one", home=tmp_path / "home", catalog=catalog, runner=runner, mounts=table)
    catalog.close()


def test_a_volume_is_described_by_its_mount_and_by_the_filesystem_on_its_device(host: Host, volumes: Path) -> None:
    volume = host.volume(str(volumes / "data") + "/")
    assert volume == Volume("one", str(volumes / "data"), "xfs", "0b5e3c1d-data", "/dev/fake-data")
    assert isinstance(host.runner, RecordingRunner)
    assert host.runner.calls == [("blkid", "-p", "-o", "export", "/dev/fake-data")]


def test_a_volume_not_on_a_device_takes_its_type_from_the_mount_table_and_runs_nothing(
    host: Host, volumes: Path
) -> None:
    assert host.volume(str(volumes / "scratch")) == Volume("one", str(volumes / "scratch"), "tmpfs", "", "tmpfs")
    assert isinstance(host.runner, RecordingRunner)
    assert host.runner.calls == []


def test_a_directory_inside_a_volume_is_refused_naming_the_volume(host: Host, volumes: Path) -> None:
    with pytest.raises(UsageError, match=rf"is not a mount point \(it lies on {volumes / 'data'}\)"):
        host.volume(str(volumes / "data" / "inside"))


def test_providers_come_from_the_factory_once_per_name_bound_to_the_host(tmp_path: Path) -> None:
    made: list[tuple[str, ProviderHost]] = []
    fake = FakeProvider(Journal())

    def factory(name: str, provider_host: ProviderHost) -> Provider:
        made.append((name, provider_host))
        return fake

    with Catalog.open(catalog_url(tmp_path), host="one") as catalog:
        host = Host(name="one", home=tmp_path, catalog=catalog, provider_factory=factory)
        assert host.provider("fake") is fake
        assert host.provider("fake") is fake
    assert made == [("fake", host.provider_host)]
