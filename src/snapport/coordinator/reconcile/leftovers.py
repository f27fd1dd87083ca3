"""The providers' part: every provider in the registry is asked, with what this host's catalog records, for what it
presents and what a crash left of its own (docs/providers.md has the contract); no provider is known by name."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from snapport.coordinator.host import Host
from snapport.coordinator.reconcile.report import Pass
from snapport.errors import SnapportError
from snapport.providers.base import CatalogView, Leftover, Presentations, Provider
from snapport.providers.registry import PROVIDERS


def catalog_view(host: Host) -> CatalogView:
    """What the catalog records now, every set in every state."""
    return CatalogView(tuple(host.catalog.list_sets()))


def _providers(host: Host) -> list[Provider]:
    return [host.provider(name) for name in PROVIDERS]


def presentations(host: Host, known: CatalogView) -> Presentations:
    """The devices every provider presents, to this host and to others."""
    here: set[str] = set()
    elsewhere: set[str] = set()
    for provider in _providers(host):
        presented = provider.presentations(known)
        here |= presented.here
        elsewhere |= presented.elsewhere
    return Presentations(here=frozenset(here), elsewhere=frozenset(elsewhere))


def lock_files(host: Host, known: CatalogView) -> list[Path]:
    return [path for provider in _providers(host) for path in provider.lock_files(known)]


def leftovers(run: Pass, known: CatalogView) -> None:
    """Each provider's leftovers, in its order; a repair asks the provider to remove exactly that one, against the
    catalog read again (so a set recorded since the listing is never taken for absent)."""
    host = run.host
    for provider in _providers(host):
        try:
            found = provider.leftovers(known)
        except (SnapportError, OSError) as exc:  # reported, and the other providers still asked
            why = exc.message if isinstance(exc, SnapportError) else str(exc)
            run.found("provider", provider.name, f"could not list its leftovers: {why}")
            continue
        for leftover in found:
            run.found(leftover.kind, leftover.object, leftover.detail, partial(_remove, host, provider, leftover))


def _remove(host: Host, provider: Provider, leftover: Leftover) -> str:
    return provider.remove_leftover(leftover, catalog_view(host))
