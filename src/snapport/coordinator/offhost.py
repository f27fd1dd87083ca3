"""An off-host backup's domain steps (DESIGN §5, §6), synchronous and free of any transport.

systemOne's agent job calls `create_offhost_set`, hands the set over, and when the proxy is done (or its lease
ran out) `lifecycle.end_session`. The proxy's job calls `back_up_imported` (import with the cluster rule, expose,
back up through path mapping, verify, release) and, when it must give up, `release_imported`. Each side's
recovery after a crash finds its leftovers with `held_imports` and `unhanded_sets`. The agents
(`snapport.agent.offhost`) only carry these steps over HTTPS, with leases and heartbeats.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapport.catalog import Catalog
from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.coordinator.reconcile import Depth, reconcile
from snapport.coordinator.session import CreatedSet, SessionOptions, create_set
from snapport.engines import BackupResult, Engine, Progress, SetDocuments, VerifyReport, select_components
from snapport.errors import BadState, ObjectNotFound
from snapport.faults import inject
from snapport.model import FINAL_STATES, Attr, Context, SetOrigin, SetState

DATA_MINING_CONTEXT = Context.APP_ROLLBACK  # persistent: an auto-release set would go with the session that made it
assert not DATA_MINING_CONTEXT.auto_release and DATA_MINING_CONTEXT.writers_involved
_LIVE = frozenset({SetState.IMPORTING, SetState.CREATED, SetState.EXPOSED, SetState.DELETING})


# -- systemOne ---------------------------------------------------------------------------------------------------


def create_offhost_set(
    host: Host,
    volumes: Sequence[str],
    writer_specs: Sequence[str],
    *,
    data_mining: bool,
    freeze_timeout_s: float,
    event_timeout_s: float,
) -> CreatedSet:
    """The transportable set a proxy will back up: in context `backup`, or for data mining in the persistent
    `app-rollback` (the set must outlive the session that made it)."""
    if data_mining:
        context, modifiers = DATA_MINING_CONTEXT, Attr.TRANSPORTABLE | Attr.ROLLBACK_RECOVERY
        description, origin = "off-host data mining", SetOrigin.OFFHOST_DATA_MINING
    else:
        context, modifiers = Context.BACKUP, Attr.TRANSPORTABLE
        description, origin = "off-host backup", SetOrigin.OFFHOST_BACKUP
    options = SessionOptions(
        context=context,
        modifiers=modifiers,
        freeze_timeout_s=freeze_timeout_s,
        event_timeout_s=event_timeout_s,
        writer_specs=tuple(writer_specs),
        description=description,
        origin=origin,
    )
    return create_set(host, volumes, options)


def unhanded_sets(catalog: Catalog, leased: Collection[uuid.UUID]) -> list[uuid.UUID]:
    """The sets an off-host backup made on this host that no live lease (`leased`: their sets) hands to a proxy:
    at an agent's start, their job died before the handover (or after its end), and nobody else will end them."""
    return [
        s.id
        for s in catalog.sets_with_origin(tuple(SetOrigin), {SetState.CREATED, SetState.EXPOSED})
        if Attr.IMPORTED not in s.attrs and s.id not in leased
    ]


# -- the proxy ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProxyOutcome:
    """What the proxy did with a set: its backup, the verification of it, and how long the import took."""

    result: BackupResult
    verified: VerifyReport
    import_ms: float


def back_up_imported(
    host: Host,
    documents: SetDocuments,
    engine: Engine,
    *,
    check: Callable[[], None],
    on_phase: Callable[[str], None],
    on_progress: Callable[[Progress], None],
) -> ProxyOutcome:
    """Import the set the documents describe (the cluster rule on), expose it, back its selected components up
    with `engine` through path mapping, verify what was stored, and release the set (unexpose, delete). `check`
    raises to give up (it is called between the steps and from the engine's progress); whatever made the set
    fail, the caller releases it with `release_imported`."""
    set_id = documents.set_id
    on_phase("import")
    started = time.monotonic()
    lifecycle.import_snapshot_set(host, documents.bcd, cluster_check=True)
    import_ms = (time.monotonic() - started) * 1000
    check()
    on_phase("expose")
    lifecycle.expose(host, set_id)
    on_phase("backup")

    def progress(p: Progress) -> None:
        check()
        on_progress(p)

    def mapping(original: str) -> Path:
        return Path(lifecycle.map_path(host, set_id, original))

    result = engine.backup(documents, select_components(documents), mapping, progress)
    check()
    on_phase("verify")
    inject("proxy.verify")
    verified = engine.verify(set_id, lambda _p: check())
    if not verified.intact:
        raise BadState(f"the backup of set {set_id} does not verify: {[str(p) for p in verified.problems[:3]]}")
    on_phase("cleanup")
    release_imported(host, set_id)
    return ProxyOutcome(result, verified, import_ms)


def release_imported(host: Host, set_id: uuid.UUID) -> bool:
    """Unexpose and delete an imported set if this host still holds it; True if there was something to do."""
    try:
        known = host.catalog.get_set(set_id)
    except ObjectNotFound:
        return False
    if Attr.IMPORTED not in known.attrs or known.state in FINAL_STATES:
        return False
    if known.state is SetState.IMPORTING:  # its import died half-way: rolled back (if the import lock is free)
        return set_id in reconcile(host, repair=True, depth=Depth.QUICK).rolled_back
    lifecycle.unexpose(host, set_id)
    lifecycle.delete(host, set_id)
    return True


def held_imports(catalog: Catalog, set_ids: Collection[uuid.UUID]) -> list[uuid.UUID]:
    """Of `set_ids` (the sets of this proxy's jobs), those it imported and still holds: at an agent's start, no
    job runs, so their job failed without releasing them (its clean-up failed too)."""
    return [s.id for s in catalog.list_sets(_LIVE) if s.id in set_ids and Attr.IMPORTED in s.attrs]
