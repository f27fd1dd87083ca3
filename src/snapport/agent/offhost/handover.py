"""The sets an agent handed to a proxy and waits on: what the set's routes answer for, owned by the `Agent`."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

from snapport.agent.offhost.models import CompletionReport


@dataclass
class Handover:
    """A set handed to `proxy` under lease `lease_id`; `report` settles with the proxy's report (cancelled once
    the set's outcome is decided without it)."""

    set_id: uuid.UUID
    proxy: str
    lease_id: uuid.UUID
    report: asyncio.Future[CompletionReport]

    @property
    def open(self) -> bool:
        return not self.report.done()


class Handovers:
    """This agent's handovers by set; a set's lease routes answer only while its handover is open."""

    def __init__(self) -> None:
        self._by_set: dict[uuid.UUID, Handover] = {}

    def open(self, set_id: uuid.UUID, proxy: str, lease_id: uuid.UUID) -> Handover:
        handover = Handover(set_id, proxy, lease_id, asyncio.get_running_loop().create_future())
        self._by_set[set_id] = handover
        return handover

    def get(self, set_id: uuid.UUID) -> Handover | None:
        return self._by_set.get(set_id)

    def close(self, set_id: uuid.UUID) -> None:
        """Decide the set's outcome without (more of) the proxy: later heartbeats are refused, reports not taken."""
        handover = self._by_set.pop(set_id, None)
        if handover is not None:
            handover.report.cancel()
