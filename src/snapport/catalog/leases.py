"""Leases: how long this host (the keeper) waits for the holder (the backup host) of a set.

No two hosts' clocks are ever compared: the keeper stamps grants and renewals with its own boot-time clock, stores
the duration, and alone judges expiry. A renewal that arrives from the holder is recorded by the keeper, on receipt.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, RowMapping, insert, select, update

from snapport.catalog import schema as t
from snapport.catalog.clock import boot_seconds, utc_now
from snapport.catalog.core import RACE_RETRIES, CatalogCore, one_row
from snapport.catalog.events import insert_event
from snapport.catalog.records import Lease
from snapport.catalog.sets import require_set
from snapport.errors import BadState, CatalogError, LeaseExpired
from snapport.model import EventKind


class LeaseStore(CatalogCore):
    """Granting, renewing, releasing and judging the leases this host keeps."""

    def grant_lease(
        self, set_id: uuid.UUID, holder: str, duration_s: float, *, now_monotonic: float | None = None
    ) -> Lease:
        """Grant `holder` a lease on the set for `duration_s` seconds, kept (and judged) by this host."""
        if not duration_s > 0:
            raise ValueError(f"a lease lasts a positive number of seconds, not {duration_s}")
        lease_id = uuid.uuid4()
        now = utc_now()
        mono = boot_seconds() if now_monotonic is None else now_monotonic
        with self._write() as conn:
            require_set(conn, set_id)
            conn.execute(
                insert(t.leases).values(
                    id=str(lease_id),
                    set_id=str(set_id),
                    holder=holder,
                    duration_s=float(duration_s),
                    keeper_host=self._host,
                    boot_id=self._boot_id,
                    granted_at=now,
                    renewed_at=now,
                    renewed_monotonic=mono,
                )
            )
            insert_event(conn, EventKind.LEASE_GRANTED, f"lease {lease_id} to {holder} for {duration_s:g} s", set_id)
        return Lease(lease_id, set_id, holder, float(duration_s), self._host, self._boot_id, now, now, mono)

    def renew_lease(
        self, lease_id: uuid.UUID, *, duration_s: float | None = None, now_monotonic: float | None = None
    ) -> Lease:
        """Extend a live lease from now, by `duration_s` (default: its own duration). `LeaseExpired` if it ran
        out first (a renewal cannot revive it); `BadState` if released, or kept by another host."""
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"a lease lasts a positive number of seconds, not {duration_s}")
        mono = boot_seconds() if now_monotonic is None else now_monotonic
        for _attempt in range(RACE_RETRIES):
            with self._write() as conn:
                lease = _load_lease(conn, lease_id)
                if lease.released_at is not None:
                    raise BadState(f"lease {lease_id} was released; grant a new one")
                if lease.keeper_host != self._host:
                    raise BadState(f"lease {lease_id} is kept by host {lease.keeper_host}; renew it there")
                if lease.expired(boot_id=self._boot_id, now_monotonic=mono):
                    raise LeaseExpired(f"lease {lease_id} of {lease.holder} ran out before it was renewed")
                now = utc_now()
                values = {
                    "renewed_at": now,
                    "renewed_monotonic": mono,
                    "duration_s": lease.duration_s if duration_s is None else float(duration_s),
                }
                done = conn.execute(
                    update(t.leases)
                    .where(
                        t.leases.c.id == str(lease_id),
                        t.leases.c.released_at.is_(None),
                        t.leases.c.renewed_monotonic == lease.renewed_monotonic,
                    )
                    .values(values)
                )
                if done.rowcount == 1:
                    return _load_lease(conn, lease_id)
        raise CatalogError(f"lease {lease_id} kept changing while renewing it; retry")

    def release_lease(self, lease_id: uuid.UUID) -> Lease:
        """End a lease (the holder is done, or the keeper gave up); idempotent."""
        with self._write() as conn:
            lease = _load_lease(conn, lease_id)
            if lease.released_at is not None:
                return lease
            conn.execute(
                update(t.leases)
                .where(t.leases.c.id == str(lease_id), t.leases.c.released_at.is_(None))
                .values(released_at=utc_now())
            )
            insert_event(conn, EventKind.LEASE_RELEASED, f"lease {lease_id} of {lease.holder} released", lease.set_id)
            return _load_lease(conn, lease_id)

    def get_lease(self, lease_id: uuid.UUID) -> Lease:
        with self._read() as conn:
            return _load_lease(conn, lease_id)

    def leases(self, set_id: uuid.UUID | None = None) -> list[Lease]:
        query = select(t.leases).order_by(t.leases.c.granted_at, t.leases.c.id)
        if set_id is not None:
            query = query.where(t.leases.c.set_id == str(set_id))
        with self._read() as conn:
            return [_lease_record(row) for row in conn.execute(query).mappings()]

    def expired_leases(self, now_monotonic: float | None = None) -> list[Lease]:
        """The unreleased leases this host keeps that have run out by its own clock, or were granted in an
        earlier boot (a reboot ends every session). Leases kept by other hosts are theirs to judge."""
        mono = boot_seconds() if now_monotonic is None else now_monotonic
        query = (
            select(t.leases)
            .where(t.leases.c.keeper_host == self._host, t.leases.c.released_at.is_(None))
            .order_by(t.leases.c.granted_at, t.leases.c.id)
        )
        with self._read() as conn:
            found = [_lease_record(row) for row in conn.execute(query).mappings()]
        return [lease for lease in found if lease.expired(boot_id=self._boot_id, now_monotonic=mono)]


def _load_lease(conn: Connection, lease_id: uuid.UUID) -> Lease:
    query = select(t.leases).where(t.leases.c.id == str(lease_id))
    return _lease_record(one_row(conn, query, f"no lease {lease_id} in the catalog"))


def _lease_record(row: RowMapping) -> Lease:
    return Lease(
        id=uuid.UUID(row["id"]),
        set_id=uuid.UUID(row["set_id"]),
        holder=row["holder"],
        duration_s=row["duration_s"],
        keeper_host=row["keeper_host"],
        boot_id=row["boot_id"],
        granted_at=row["granted_at"],
        renewed_at=row["renewed_at"],
        renewed_monotonic=row["renewed_monotonic"],
        released_at=row["released_at"],
    )
