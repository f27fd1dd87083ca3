"""systemOne's routes of the protocol, for the proxy named for a set only: its documents, its lease, its report."""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path

from snapport.agent.dispatch import PROXY_ONLY, Call, Route
from snapport.agent.offhost.models import CompletionAck, CompletionReport, DocumentsBody, LeaseView
from snapport.documents import bcd_to_xml, load_documents, wmd_to_xml
from snapport.errors import BadState, LeaseExpired, ObjectNotFound
from snapport.faults import inject


async def set_owners(call: Call) -> Collection[str]:
    """The proxy named for the set: the holder of its lease (404 if the set was handed to none)."""
    set_id = call.ids["set_id"]
    leases = await call.agent.db.call(lambda c: c.leases(set_id))
    if not leases:
        raise ObjectNotFound(f"set {set_id} was not handed to a proxy by this host")
    return {lease.holder for lease in leases}


async def get_documents(call: Call) -> DocumentsBody:
    set_id = call.ids["set_id"]
    session = await call.agent.db.call(lambda c: c.get_session(set_id))
    if not session.documents_dir:
        raise ObjectNotFound(f"set {set_id} has no documents")
    bcd, wmds = await asyncio.to_thread(load_documents, Path(session.documents_dir))
    return DocumentsBody(bcd=bcd_to_xml(bcd).decode(), writers=[wmd_to_xml(w).decode() for w in wmds])


async def renew(call: Call) -> LeaseView:
    set_id = call.ids["set_id"]
    inject("lease.renew")
    handover = call.agent.handovers.get(set_id)
    if handover is None or not handover.open:
        raise LeaseExpired(f"no backup session of this host waits for set {set_id} any more")
    try:
        lease = await call.agent.db.call(lambda c: c.renew_lease(handover.lease_id))
    except BadState as exc:  # released: the session ended
        raise LeaseExpired(exc.message) from None
    return LeaseView(lease_id=lease.id, holder=lease.holder, duration_s=lease.duration_s)


async def report_completion(call: Call) -> CompletionAck:
    set_id = call.ids["set_id"]
    report = call.body_as(CompletionReport)
    inject("offhost.report-received")
    handover = call.agent.handovers.get(set_id)
    if handover is None or not handover.open:
        return CompletionAck(accepted=False)
    handover.report.set_result(report)
    return CompletionAck(accepted=True)


OFFHOST_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/sets/{set_id}/documents",
        get_documents,
        "A set's BCD and WMDs (XML), for the proxy named for it",
        roles=PROXY_ONLY,
        owners=set_owners,
        response=DocumentsBody,
        tag="offhost",
    ),
    Route(
        "POST",
        "/v1/sets/{set_id}/lease",
        renew,
        "Renew the proxy's lease on a set (its heartbeat); 410 LEASE_EXPIRED once systemOne gave up",
        roles=PROXY_ONLY,
        owners=set_owners,
        response=LeaseView,
        tag="offhost",
    ),
    Route(
        "POST",
        "/v1/sets/{set_id}/completion",
        report_completion,
        "The proxy's per-component results; BackupComplete follows a successful one",
        roles=PROXY_ONLY,
        owners=set_owners,
        body=CompletionReport,
        response=CompletionAck,
        tag="offhost",
    ),
)
