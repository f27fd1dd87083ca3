"""What one reconciliation run found and did: its findings, repairs and report, and the pass that records them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.errors import SetInProgress, SnapportError
from snapport.model import EventKind


@dataclass(frozen=True, slots=True)
class Finding:
    """One difference between the catalog and the machine."""

    # set | frozen | exposure | mount | lock | lease | job, and each provider's leftover kinds (snapshot-lun,
    # image, presentation, loop-device, snapshot-subvolume, snapshot-owner, ...)
    kind: str
    object: str
    detail: str


@dataclass(frozen=True, slots=True)
class Repair:
    """What `--repair` did about a finding."""

    kind: str
    object: str
    action: str


@dataclass
class Report:
    found: list[Finding] = field(default_factory=list)
    repaired: list[Repair] = field(default_factory=list)
    left: list[Finding] = field(default_factory=list)  # found and still wrong (not repairing, or the repair failed)
    # found while a live process held the set's lock (an expose, unexpose or delete under way): not judged, not
    # waited for; in `found` too, never in `left`
    busy: list[Finding] = field(default_factory=list)
    # the sets this run rolled back and aborted (their creating or importing process had died); not in the JSON
    rolled_back: list[uuid.UUID] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.left

    def to_json(self) -> dict[str, list[dict[str, str]]]:
        return {
            "found": [{"kind": f.kind, "object": f.object, "detail": f.detail} for f in self.found],
            "repaired": [{"kind": r.kind, "object": r.object, "action": r.action} for r in self.repaired],
            "left": [{"kind": f.kind, "object": f.object, "detail": f.detail} for f in self.left],
            "busy": [{"kind": f.kind, "object": f.object, "detail": f.detail} for f in self.busy],
        }


class Pass:
    """One reconciliation run: records each finding and, when repairing, runs its fix (a failed fix is left)."""

    def __init__(self, host: Host, repair: bool) -> None:
        self.host = host
        self.repair = repair
        self.report = Report()

    def found(
        self,
        kind: str,
        obj: str,
        detail: str,
        fix: Callable[[], str] | None = None,
        *,
        set_id: uuid.UUID | None = None,
        still: Callable[[], bool] | None = None,
        busy: bool = False,
    ) -> None:
        """Record a finding and (repairing) run its fix. With `set_id`: under that set's lock, taken without
        waiting; while another process holds it (or with `busy`) the finding is reported busy and left alone, and
        once held, `still` says whether the finding survived what that process did meanwhile."""
        if busy:
            self._busy(kind, obj, detail, "a set's lock is held (an expose, unexpose or delete is under way)")
            return
        if set_id is None:
            self._record(kind, obj, detail, fix)
            return
        try:
            with lifecycle.set_lock(self.host, set_id, timeout_s=0):
                if still is None or _survives(still):
                    self._record(kind, obj, detail, fix)
        except SetInProgress:
            self._busy(kind, obj, detail, f"set {set_id} is busy (its lock is held by a live process)")

    def _busy(self, kind: str, obj: str, detail: str, why: str) -> None:
        finding = Finding(kind, obj, f"{detail}; {why}: left alone, run doctor again when it ends")
        self.report.found.append(finding)
        self.report.busy.append(finding)

    def _record(self, kind: str, obj: str, detail: str, fix: Callable[[], str] | None) -> None:
        finding = Finding(kind, obj, detail)
        self.report.found.append(finding)
        if not (self.repair and fix is not None):
            self.report.left.append(finding)
            return
        try:
            action = fix()
        except (SnapportError, OSError) as exc:
            why = exc.message if isinstance(exc, SnapportError) else str(exc)
            self.report.left.append(Finding(kind, obj, f"{detail}; repair failed: {why}"))
            self.host.catalog.record_event(None, EventKind.RECONCILE_FAILED, f"{kind} {obj}: {why}")
            return
        self.report.repaired.append(Repair(kind, obj, action))
        self.host.catalog.record_event(None, EventKind.RECONCILED, f"{kind} {obj}: {action}")


def _survives(still: Callable[[], bool]) -> bool:
    """`still()`, or True when it cannot tell (the fix then runs, and reports its own failure)."""
    try:
        return still()
    except (SnapportError, OSError):
        return True
