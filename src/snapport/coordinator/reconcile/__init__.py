"""Reconciliation: compare the catalog with the machine and bring each difference to a safe end (docs/doctor.md).

`reconcile` is the one entry point: `snapport doctor` (the full depth, repairing with `--repair`), an agent's
start (full, repairing), and every state-changing verb and job (the quick depth: sets whose creating or importing
process died are rolled back). What a crash can leave, by module:

- `sets`: sets stuck mid-way (preparing, snapshotting, importing, deleting) with no live process; volumes
  snapport knows left frozen;
- `mounts`: exposures whose mount is gone, exposures of ended sets still mounted, mounts under this host's run
  directory that no exposure records;
- `leftovers`: what each provider in the registry reports of its own (snapshot LUNs, images, presentations, loop
  devices, snapshot subvolumes, ...), judged by the provider against the catalog;
- `locks`, `leases`: locks held past their bounds, leases past their expiry, jobs marked running with no agent.

Everything is matched by exact id, path or device, and only what is snapport's is touched: a loop device or mount
outside what the catalog names, another host's objects, or an admin's own fsfreeze on a volume snapport does not
know are left alone. Without `repair` nothing changes; with it each finding is resolved and the report says how; a
second run finds nothing left that it could resolve. A finding that belongs to a set is judged under that set's
lock (`lifecycle.set_lock`), taken without waiting: while an expose, unexpose or delete holds it, the finding is
reported busy and left alone.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from snapport.coordinator.host import Host
from snapport.coordinator.reconcile import leases, leftovers, locks, mounts, sets
from snapport.coordinator.reconcile.report import Pass, Report
from snapport.errors import SnapportError
from snapport.model import SetState

HUNG_AFTER_S = 600.0  # a lock held longer than this by a live process is reported (never broken)
STUCK_AFTER_S = 60.0  # a set deleting, unchanged this long and its set lock free, has lost its process


class Depth(enum.Enum):
    """How much a reconciliation looks at."""

    QUICK = "quick"  # sets whose creating or importing process died: one catalog query when there are none
    FULL = "full"  # everything the catalog and the machine can disagree on


def reconcile(
    host: Host,
    *,
    repair: bool,
    depth: Depth = Depth.FULL,
    agent_running: bool | None = None,
    hung_after_s: float = HUNG_AFTER_S,
    stuck_after_s: float = STUCK_AFTER_S,
    recover_agent_state: Callable[[], None] | None = None,
) -> Report:
    """Find (and with `repair` resolve) the differences between this host's catalog and the machine.

    `Depth.QUICK`, for the start of every state-changing verb and job: roll back (with `repair`) the sets whose
    creating or importing process died, each under its lock, never waiting for it; one catalog query when there
    are none; never raises (a failure leaves the sets to the next pass). `Depth.FULL` (doctor, an agent's start):
    everything. `agent_running`: whether this home's agent is alive (default: its lock says); an agent
    reconciling at its own start passes True once it has recovered its jobs and leases. `recover_agent_state`: the
    agent's start-up recovery of jobs and leases, which repairs them when no agent runs (else the catalog is set
    right here).
    """
    run = Pass(host, repair)
    if depth is Depth.QUICK:
        try:
            stuck = host.catalog.list_sets({SetState.PREPARING, SetState.SNAPSHOTTING, SetState.IMPORTING})
            if stuck:
                sets.creations(run, stuck)
                sets.imports(run, stuck)
        except SnapportError:
            pass
        return run.report
    alive = locks.agent_alive(host) if agent_running is None else agent_running
    known = leftovers.catalog_view(host)
    sets.creations(run, list(known.sets), leftovers.presentations(host, known).here)
    sets.imports(run, list(known.sets))
    sets.deletions(run, list(known.sets), stuck_after_s)
    known = leftovers.catalog_view(host)
    mounts.exposures(run, list(known.sets))
    mounts.run_dir_mounts(run, list(known.sets), leftovers.presentations(host, known).elsewhere)
    known = leftovers.catalog_view(host)
    leftovers.leftovers(run, known)
    locks.locks(run, leftovers.lock_files(host, known), hung_after_s)
    recovery = leases.AgentRecovery(recover_agent_state) if recover_agent_state is not None else None
    leases.leases(run, alive, recovery)
    leases.jobs(run, alive, recovery)
    return run.report
