"""Bookable services, their opening slots and bookings (all tenant-scoped).

A slot takes ``capacity`` confirmed bookings. :func:`book_slot` locks the slot row
(``SELECT ... FOR UPDATE``), counts its confirmed bookings and inserts in one transaction, so two
customers racing for the last place get exactly one booking between them; the other gets
:class:`runtime.errors.SlotUnavailable`.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import Conflict, NotFound, SlotUnavailable

# Booking references: 8 characters without look-alikes (0/O, 1/I/L), 32^8 ~ 10^12 per tenant.
REFERENCE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
REFERENCE_PREFIX = "BK-"
SERVICE_COLUMNS = "id, name, description, duration_minutes, timezone, active, created_at"
BOOKING_COLUMNS = """b.id, b.reference, b.service_id, b.slot_id, b.contact_id, b.session_id,
    b.customer_name, b.email, b.phone, b.status, b.created_at, b.cancelled_at,
    s.starts_at, s.ends_at, v.name AS service_name, v.timezone"""
_BOOKING_FROM = """bookings b JOIN booking_slots s ON s.id = b.slot_id
    JOIN booking_services v ON v.id = b.service_id"""


def new_reference() -> str:
    """A fresh booking reference, e.g. ``BK-7KQ2M9XD``."""
    return REFERENCE_PREFIX + "".join(secrets.choice(REFERENCE_ALPHABET) for _ in range(8))


# ------------------------------------------------------------------ services and slots
async def create_service(conn: Conn, tenant_id: UUID, name: str, description: str,
                         duration_minutes: int, timezone: str) -> asyncpg.Record:
    """A new bookable service. Raises Conflict when an active one has the same name (any case)."""
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO booking_services (tenant_id, name, description, duration_minutes, timezone)
                VALUES ($1, $2, $3, $4, $5) RETURNING {SERVICE_COLUMNS}""",
            tenant_id, name, description, duration_minutes, timezone,
        )
    except asyncpg.UniqueViolationError:
        raise Conflict(f"a service named {name!r} exists already: use it, or remove it first",
                       field="name") from None
    assert row is not None
    return row


async def list_services(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """The tenant's active services, by name."""
    return list(await conn.fetch(
        f"SELECT {SERVICE_COLUMNS} FROM booking_services WHERE tenant_id = $1 AND active ORDER BY name",
        tenant_id))


async def get_service(conn: Conn, tenant_id: UUID, service_id: UUID) -> asyncpg.Record:
    """An active service. Raises NotFound (another tenant's is not found either)."""
    row = await conn.fetchrow(
        f"SELECT {SERVICE_COLUMNS} FROM booking_services WHERE tenant_id = $1 AND id = $2 AND active",
        tenant_id, service_id)
    if row is None:
        raise NotFound(f"no bookable service {service_id} in this tenant")
    return row


async def deactivate_service(conn: Conn, tenant_id: UUID, service_id: UUID) -> None:
    """Stop offering a service (its bookings stay). Raises NotFound."""
    done = await conn.execute(
        "UPDATE booking_services SET active = false WHERE tenant_id = $1 AND id = $2 AND active",
        tenant_id, service_id)
    if not done.endswith(" 1"):
        raise NotFound(f"no bookable service {service_id} in this tenant")


async def add_slots(conn: Conn, tenant_id: UUID, service_id: UUID, starts: list[datetime],
                    duration_minutes: int, capacity: int) -> int:
    """Open slots of ``duration_minutes`` at ``starts`` (aware datetimes); a start the service
    has already is left as it is. Returns how many were added."""
    if not starts:
        return 0
    rows = await conn.fetch(
        """INSERT INTO booking_slots (tenant_id, service_id, starts_at, ends_at, capacity)
           SELECT $1, $2, t, t + make_interval(mins => $4), $5 FROM unnest($3::timestamptz[]) AS t
           ON CONFLICT (service_id, starts_at) DO NOTHING RETURNING id""",
        tenant_id, service_id, starts, duration_minutes, capacity,
    )
    return len(rows)


async def free_slots(conn: Conn, tenant_id: UUID, service_id: UUID, start: datetime, end: datetime,
                     limit: int) -> list[asyncpg.Record]:
    """Slots of the service starting in [start, end) with a free place, earliest first:
    ``id, starts_at, ends_at, capacity, free``."""
    return list(await conn.fetch(
        """SELECT s.id, s.starts_at, s.ends_at, s.capacity, s.capacity - count(b.id) AS free
           FROM booking_slots s
           LEFT JOIN bookings b ON b.slot_id = s.id AND b.status = 'confirmed'
           WHERE s.tenant_id = $1 AND s.service_id = $2 AND s.starts_at >= $3 AND s.starts_at < $4
           GROUP BY s.id HAVING s.capacity - count(b.id) > 0
           ORDER BY s.starts_at LIMIT $5""",
        tenant_id, service_id, start, end, limit,
    ))


# ------------------------------------------------------------------ bookings
async def book_slot(
    conn: Conn, tenant_id: UUID, slot_id: UUID, *, contact_id: UUID | None = None,
    session_id: UUID | None = None, customer_name: str = "", email: str | None = None,
    phone: str | None = None,
) -> asyncpg.Record:
    """Book one place of slot ``slot_id`` (one transaction: the slot row locked, its confirmed
    bookings counted, the booking inserted). Returns the booking (:data:`BOOKING_COLUMNS`).
    Raises NotFound (no such slot of an active service in this tenant) and SlotUnavailable (full,
    or already started). A conversation (``session_id``) that booked this slot already gets its
    booking back (a retried turn books once)."""
    async with conn.transaction():
        slot = await conn.fetchrow(
            """SELECT s.id, s.service_id, s.starts_at, s.capacity FROM booking_slots s
               JOIN booking_services v ON v.id = s.service_id AND v.active
               WHERE s.tenant_id = $1 AND s.id = $2 FOR UPDATE OF s""",
            tenant_id, slot_id)
        if slot is None:
            raise NotFound(f"no slot {slot_id} of an active service in this tenant")
        if session_id is not None:
            # A retried turn books once: the conversation's own booking of this slot is returned.
            mine = await conn.fetchrow(
                f"""SELECT {BOOKING_COLUMNS} FROM {_BOOKING_FROM}
                    WHERE b.tenant_id = $1 AND b.slot_id = $2 AND b.session_id = $3
                      AND b.status = 'confirmed'""",
                tenant_id, slot_id, session_id)
            if mine is not None:
                return mine
        taken = await conn.fetchval(
            "SELECT count(*) FROM bookings WHERE slot_id = $1 AND status = 'confirmed'", slot_id)
        now = await conn.fetchval("SELECT now()")
        if slot["starts_at"] <= now:
            raise SlotUnavailable("that slot has already started: pick a later free time",
                                  slot_id=str(slot_id))
        if taken >= slot["capacity"]:
            raise SlotUnavailable("that slot was just taken: pick another free time",
                                  slot_id=str(slot_id))
        while True:
            reference = new_reference()
            try:
                async with conn.transaction():  # a savepoint: a reference collision retries
                    booking_id = await conn.fetchval(
                        """INSERT INTO bookings (tenant_id, service_id, slot_id, reference, contact_id,
                                                 session_id, customer_name, email, phone)
                           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id""",
                        tenant_id, slot["service_id"], slot_id, reference, contact_id, session_id,
                        customer_name, email, phone)
                break
            except asyncpg.UniqueViolationError:
                continue
        row = await conn.fetchrow(
            f"SELECT {BOOKING_COLUMNS} FROM {_BOOKING_FROM} WHERE b.tenant_id = $1 AND b.id = $2",
            tenant_id, booking_id)
    assert row is not None
    return row


async def get_booking(conn: Conn, tenant_id: UUID, booking_id: UUID) -> asyncpg.Record:
    """A booking. Raises NotFound."""
    row = await conn.fetchrow(
        f"SELECT {BOOKING_COLUMNS} FROM {_BOOKING_FROM} WHERE b.tenant_id = $1 AND b.id = $2",
        tenant_id, booking_id)
    if row is None:
        raise NotFound(f"no booking {booking_id} in this tenant")
    return row


async def list_bookings(conn: Conn, tenant_id: UUID, *, status: str | None, upcoming: bool,
                        limit: int) -> list[asyncpg.Record]:
    """The tenant's bookings by slot time (upcoming: only slots not started yet)."""
    return list(await conn.fetch(
        f"""SELECT {BOOKING_COLUMNS} FROM {_BOOKING_FROM}
            WHERE b.tenant_id = $1 AND ($2::text IS NULL OR b.status = $2)
              AND (NOT $3 OR s.starts_at > now())
            ORDER BY s.starts_at, b.created_at LIMIT $4""",
        tenant_id, status, upcoming, limit))


async def customer_bookings(conn: Conn, tenant_id: UUID, *, contact_id: UUID | None,
                            phone: str | None, email: str | None) -> list[asyncpg.Record]:
    """A customer's confirmed bookings of slots not started yet, soonest first: those made by
    the contact, or (when given) under the phone number or email address it is verified for."""
    if contact_id is None and not phone and not email:
        return []
    return list(await conn.fetch(
        f"""SELECT {BOOKING_COLUMNS} FROM {_BOOKING_FROM}
            WHERE b.tenant_id = $1 AND b.status = 'confirmed' AND s.starts_at > now()
              AND (b.contact_id = $2 OR b.phone = $3 OR lower(b.email) = lower($4))
            ORDER BY s.starts_at LIMIT 20""",
        tenant_id, contact_id, phone, email))


async def cancel_booking(conn: Conn, tenant_id: UUID, booking_id: UUID) -> asyncpg.Record:
    """Cancel a confirmed booking (its place is free again). Returns the booking. Raises
    NotFound, and Conflict when it is cancelled already."""
    async with conn.transaction():
        done = await conn.fetchval(
            """UPDATE bookings SET status = 'cancelled', cancelled_at = now()
               WHERE tenant_id = $1 AND id = $2 AND status = 'confirmed' RETURNING id""",
            tenant_id, booking_id)
        row = await get_booking(conn, tenant_id, booking_id)
        if done is None:
            raise Conflict(f"booking {row['reference']} is cancelled already")
    return row


def booking_dict(row: Any) -> dict[str, Any]:
    """A booking row as plain data (UUIDs as str)."""
    out = dict(row)
    for key in ("id", "service_id", "slot_id", "contact_id", "session_id"):
        if out.get(key) is not None:
            out[key] = str(out[key])
    return out
