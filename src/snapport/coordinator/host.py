"""The host a coordinator runs on: its name, home, catalog, command runner, mount table, providers and locks."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from snapport.catalog import Catalog
from snapport.errors import UsageError
from snapport.model import Volume
from snapport.model.paths import volume_path
from snapport.osal.lock import FileLock
from snapport.osal.mount import MountTable, ProcMountTable
from snapport.osal.runner import Runner, SubprocessRunner
from snapport.providers.base import Provider, ProviderHost
from snapport.providers.registry import get_provider

RUN_DIR = Path("/run/snapport")

ProviderFactory = Callable[[str, ProviderHost], Provider]
"""The provider called by a name, bound to a host (`providers.registry.get_provider`)."""


def run_dir() -> Path:
    """Where sets are exposed by default: `$SNAPPORT_RUN_DIR`, else /run/snapport."""
    return Path(os.environ.get("SNAPPORT_RUN_DIR") or RUN_DIR)


@dataclass
class Host:
    """This host. `mounts` and `provider_factory` are the real mount table and provider registry unless a test
    gives its own."""

    name: str
    home: Path
    catalog: Catalog
    runner: Runner = field(default_factory=SubprocessRunner)
    run_dir: Path = RUN_DIR
    mounts: MountTable = field(default_factory=ProcMountTable)
    provider_factory: ProviderFactory = get_provider
    _providers: dict[str, Provider] = field(default_factory=dict)

    @property
    def provider_host(self) -> ProviderHost:
        return ProviderHost(name=self.name, home=self.home, runner=self.runner)

    def provider(self, name: str) -> Provider:
        if name not in self._providers:
            self._providers[name] = self.provider_factory(name, self.provider_host)
        return self._providers[name]

    def documents_dir(self, set_id: object) -> Path:
        return self.home / "sets" / str(set_id)

    def lock(self, name: str, *, timeout_s: float, what: str) -> FileLock:
        return FileLock(self.home / "locks" / f"{name}.lock", timeout_s=timeout_s, what=what)

    def volume(self, path: str) -> Volume:
        """The mounted volume at `path`, which must be a mount point (not a directory inside one)."""
        mount_point = volume_path(os.path.realpath(path))
        info = self.mounts.mount_at(mount_point)
        if info is None:
            holder = self.mounts.containing_mount(mount_point).mount_point
            raise UsageError(f"{path} is not a mount point (it lies on {holder}); name the volume's mount point")
        from_device = info.source.startswith("/dev/")
        fs_type, fs_uuid = self.mounts.fs_identity(self.runner, info.source) if from_device else ("", "")
        return Volume(
            host=self.name,
            mount_point=mount_point,
            fs_type=fs_type or info.fs_type,
            fs_uuid=fs_uuid,
            device=info.source,
        )
