"""What every verb is given: the host's home and, opened on first use, its catalog and coordinator host."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from snapport.errors import ObjectNotFound, UsageError
from snapport.model import SnapshotSet

if TYPE_CHECKING:
    from snapport.catalog import Catalog
    from snapport.coordinator.host import Host

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")


class Env:
    """What every verb gets injected: the host's home and, opened on first use, its catalog and coordinator host.

    The catalog and the plugins are imported only when a verb asks for them (a verb that reads one XML file
    should start in a fraction of a second).
    """

    def __init__(self, home: Path | None, catalog_url_override: str | None) -> None:
        self._home = home
        self._url = catalog_url_override
        self._catalog: Catalog | None = None
        self._host: Host | None = None

    @property
    def home(self) -> Path:
        from snapport.catalog import default_home  # noqa: PLC0415  (see the class docstring)

        return self._home or default_home()

    @property
    def catalog(self) -> Catalog:
        from snapport.catalog import Catalog, catalog_url  # noqa: PLC0415

        if self._catalog is None:
            self._catalog = Catalog.open(self._url or catalog_url(self.home))
        return self._catalog

    @property
    def host(self) -> Host:
        """This host as the coordinator sees it (name from `$SNAPPORT_HOST`, else the system's), for a verb that
        changes state: the cheap part of reconciliation runs first (sets whose creating or importing process died
        are rolled back; docs/doctor.md)."""
        from snapport.coordinator.reconcile import Depth, reconcile  # noqa: PLC0415

        if self._host is None:
            reconcile(self.host_as_is, repair=True, depth=Depth.QUICK)
        return self.host_as_is

    @property
    def host_as_is(self) -> Host:
        """This host, without reconciling anything first (`snapport doctor` must change nothing unless asked)."""
        from snapport.coordinator.host import Host, run_dir  # noqa: PLC0415
        from snapport.osal.host import this_host_name  # noqa: PLC0415

        if self._host is None:
            self._host = Host(name=this_host_name(), home=self.home, catalog=self.catalog, run_dir=run_dir())
        return self._host

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()


pass_env = click.make_pass_decorator(Env)


def find_set(env: Env, set_id: str) -> SnapshotSet:
    """A set of the catalog by full id or by a unique prefix of at least 4 hex digits (as git and docker accept)."""
    catalog = env.catalog
    found = resolve_set_id(set_id, lambda: (s.id for s in catalog.list_sets()), noun="snapshot set")
    return catalog.get_set(found)


def resolve_set_id(
    text: str, candidates: Callable[[], Iterable[uuid.UUID]], *, noun: str, where: str = ""
) -> uuid.UUID:
    """The id `text` names: a full UUID (returned as it is: the caller looks it up), or the one of `candidates`
    (asked for only then) that starts with `text`, a prefix of at least 4 hex digits. `UsageError` for anything
    else or a prefix several share; `ObjectNotFound` ("no NOUN with id 'TEXT' WHERE") when none does."""
    try:
        return uuid.UUID(text)
    except ValueError:
        pass
    prefix = text.lower()
    if len(prefix) < 4 or any(c not in "0123456789abcdef-" for c in prefix):
        raise UsageError(f"{text!r} is not a set id (a UUID, or a unique prefix of at least 4 hex digits)")
    matches = [c for c in candidates() if str(c).startswith(prefix)]
    if len(matches) > 1:
        raise UsageError(f"{text!r} matches {len(matches)} sets; give more of the id")
    if not matches:
        raise ObjectNotFound(f"no {noun} with id {text!r}" + (f" {where}" if where else ""))
    return matches[0]
