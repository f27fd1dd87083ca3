"""Every provider by short name, and the choice of a provider for a volume ("hardware" before "software", as VSS)."""

from __future__ import annotations

from typing import Protocol

from snapport.errors import SnapportError, UsageError, VolumeNotSupported
from snapport.model import Attr, Volume
from snapport.providers.base import Capabilities, Provider, ProviderHost
from snapport.providers.btrfs import BtrfsProvider
from snapport.providers.ceph_rbd import CephRbdProvider
from snapport.providers.reflink_array import ReflinkArrayProvider


class ProviderClass(Protocol):
    """A provider class: its name and capabilities without an instance, and a constructor taking the host."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def __call__(self, host: ProviderHost) -> Provider: ...


# In order of preference: the storage's own snapshots first (an array LUN or an RBD image is snapshotted by its
# storage even when it holds a btrfs filesystem), as VSS prefers hardware providers.
PROVIDERS: dict[str, ProviderClass] = {
    ReflinkArrayProvider.name: ReflinkArrayProvider,
    CephRbdProvider.name: CephRbdProvider,
    BtrfsProvider.name: BtrfsProvider,
}


def get_provider(name: str, host: ProviderHost) -> Provider:
    """The provider called `name`, bound to `host`."""
    try:
        factory = PROVIDERS[name]
    except KeyError:
        raise UsageError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})") from None
    return factory(host)


def provider_for(volume: Volume, host: ProviderHost, attrs: Attr, preferred: str | None = None) -> Provider:
    """The first provider that supports `volume` and accepts `attrs` (or `preferred`, which must).

    When providers support the volume but all refuse the attributes, the first refusal is raised (e.g. btrfs
    refusing TRANSPORTABLE), so the user learns why rather than only that nothing fits.
    """
    names = [preferred] if preferred else list(PROVIDERS)
    refusal: SnapportError | None = None
    for name in names:
        provider = get_provider(name, host)
        if not provider.is_supported(volume):
            continue
        try:
            provider.check_request(volume, attrs)
        except SnapportError as exc:
            refusal = refusal or exc
            continue
        return provider
    if refusal is not None:
        raise refusal
    which = f"provider {preferred}" if preferred else f"any provider ({', '.join(PROVIDERS)})"
    raise VolumeNotSupported(
        f"volume {volume.mount_point} ({volume.fs_type or 'unknown filesystem'} on {volume.device or 'no device'}) "
        f"is not supported by {which}"
    )
