"""Actions the bot takes in the tenant's own systems (issue 15): the order source behind live order
status, and bookings (services, opening slots, availability, bookings).

- ``PUT/GET/DELETE /v1/actions/order-status`` (owner): the orders source, a Postgres DSN and a
  query, or an HTTPS endpoint (:mod:`runtime.actions.order_config`). The DSN and the
  Authorization value are sealed with ``CHAT_ENGINE_SECRETS_KEY`` and never returned: GET names
  which credentials are set.
- ``/v1/bookings/services`` (owner to change, any user to read), ``.../{id}/slots`` (weekly
  opening slots in the service's time zone), ``/v1/bookings/availability``, ``/v1/bookings``
  (a booking made for a customer by an agent; 409 when the slot is full), ``.../{id}/cancel``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID
from zoneinfo import ZoneInfo, available_timezones

from fastapi import APIRouter, Query, Response
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from runtime.actions.order_config import (
    SECRET_FIELDS,
    OrderFields,
    OrderIdFormat,
    OrderSourceSetup,
    split_secrets,
)
from runtime.api.contract import AUTHED, NonBlankText, Text, error_responses
from runtime.api.deps import Ctx, Owner, User
from runtime.db import actions as action_db
from runtime.db import bookings as book_db
from runtime.errors import NotFound
from runtime.security import decrypt_secrets, encrypt_secrets

router = APIRouter(prefix="/v1", tags=["actions"], responses=error_responses(*AUTHED, 404, 409))

TIMEZONES = sorted(available_timezones())
_TIMEZONE_SET = frozenset(TIMEZONES)


def _zone(value: str) -> str:
    if value not in _TIMEZONE_SET:
        raise ValueError("not an IANA time zone name (e.g. Europe/London)")
    return value


TimeZoneName = Annotated[str, Field(json_schema_extra={"enum": TIMEZONES}), AfterValidator(_zone)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------ order status
class OrderStatusOut(BaseModel):
    """The tenant's order source as stored (credentials never returned; ``credentials_set``
    names those that are)."""

    source: Literal["postgres", "https"]
    query: str | None = None
    url: str | None = None
    order_id: OrderIdFormat
    fields: OrderFields
    phone_region: str
    timeout_s: float
    result_template: str
    max_failed_lookups: int
    credentials_set: list[str]
    updated_at: datetime


def _order_out(row: Any, credentials: list[str]) -> OrderStatusOut:
    config = dict(row["config"])
    return OrderStatusOut(**{k: v for k, v in config.items() if k in OrderStatusOut.model_fields},
                          credentials_set=credentials, updated_at=row["updated_at"])


@router.put("/actions/order-status", response_model=OrderStatusOut)
async def put_order_status(body: OrderSourceSetup, ctx: Ctx, who: Owner) -> OrderStatusOut:
    """Set (or replace) the tenant's orders source (owner). The bot then answers "where is my
    order?" from it, after verifying the customer; nothing is fetched now (a source that fails
    later gets the customer a fallback reply and the offer of a human, and is logged)."""
    config, secrets = split_secrets(body)
    sealed = encrypt_secrets(ctx.settings, secrets) if secrets else None
    async with ctx.pool.acquire() as conn:
        row = await action_db.put_action_config(conn, who.tenant_id, "order_status", config, sealed)
    return _order_out(row, sorted(secrets))


@router.get("/actions/order-status", response_model=OrderStatusOut)
async def get_order_status(ctx: Ctx, who: Owner) -> OrderStatusOut:
    """The tenant's orders source without its credentials (404 when none is set)."""
    async with ctx.pool.acquire() as conn:
        row = await action_db.get_action_config(conn, who.tenant_id, "order_status", with_secrets=True)
    if row is None:
        raise NotFound("no order source is set: PUT /v1/actions/order-status sets one")
    names = sorted(k for k in decrypt_secrets(ctx.settings, row["secrets"]) if k in SECRET_FIELDS)
    return _order_out(row, names)


@router.delete("/actions/order-status", status_code=204)
async def delete_order_status(ctx: Ctx, who: Owner) -> Response:
    """Remove the orders source: the bot stops looking orders up (404 when none is set)."""
    async with ctx.pool.acquire() as conn:
        if not await action_db.delete_action_config(conn, who.tenant_id, "order_status"):
            raise NotFound("no order source is set")
    return Response(status_code=204)


# ------------------------------------------------------------------ services and slots
class ServiceCreate(_Strict):
    """POST /v1/bookings/services body."""

    name: NonBlankText = Field(max_length=120, description="what customers ask for, e.g. 'Haircut'")
    description: Text = Field(default="", max_length=1000)
    duration_minutes: int = Field(ge=5, le=1440)
    timezone: TimeZoneName = Field(default="UTC", description="the zone slot times are given and shown in")


class ServiceOut(BaseModel):
    """A bookable service."""

    id: UUID
    name: str
    description: str
    duration_minutes: int
    timezone: str
    created_at: datetime


@router.post("/bookings/services", response_model=ServiceOut, status_code=201)
async def create_service(body: ServiceCreate, ctx: Ctx, who: Owner) -> ServiceOut:
    """Offer a service for booking (owner); 409 when an active one has the name."""
    async with ctx.pool.acquire() as conn:
        row = await book_db.create_service(conn, who.tenant_id, body.name, body.description,
                                           body.duration_minutes, body.timezone)
    return ServiceOut(**{k: row[k] for k in ServiceOut.model_fields})


@router.get("/bookings/services", response_model=list[ServiceOut])
async def list_services(ctx: Ctx, who: User) -> list[ServiceOut]:
    """The tenant's active services, by name."""
    async with ctx.pool.acquire() as conn:
        rows = await book_db.list_services(conn, who.tenant_id)
    return [ServiceOut(**{k: r[k] for k in ServiceOut.model_fields}) for r in rows]


@router.delete("/bookings/services/{service_id}", status_code=204)
async def delete_service(service_id: UUID, ctx: Ctx, who: Owner) -> Response:
    """Stop offering a service (owner); its bookings stay. 404 for an unknown one."""
    async with ctx.pool.acquire() as conn:
        await book_db.deactivate_service(conn, who.tenant_id, service_id)
    return Response(status_code=204)


class WeeklySlots(_Strict):
    """Opening slots: on each ``weekdays`` day of ``days`` days from ``from_date``, one slot at each
    of ``times`` (the service's time zone), each taking ``capacity`` bookings."""

    from_date: date
    days: int = Field(ge=1, le=366)
    weekdays: list[Annotated[int, Field(ge=1, le=7)]] = Field(
        default=[1, 2, 3, 4, 5], min_length=1, max_length=7, description="ISO weekdays, 1 = Monday")
    times: list[Annotated[str, Field(pattern=r"^(?:[01][0-9]|2[0-3]):[0-5][0-9]$")]] = Field(
        min_length=1, max_length=48, description="local start times, HH:MM")
    capacity: int = Field(default=1, ge=1, le=1000)


class SlotsAdded(BaseModel):
    """How many slots were opened (a start the service had already is kept as it was)."""

    service_id: UUID
    added: int


def _starts(body: WeeklySlots, tz: ZoneInfo) -> list[datetime]:
    starts: list[datetime] = []
    for offset in range(body.days):
        try:
            day = body.from_date + timedelta(days=offset)
        except OverflowError:
            break
        if day.isoweekday() not in body.weekdays:
            continue
        for hhmm in sorted(set(body.times)):
            local = datetime.combine(day, time(int(hhmm[:2]), int(hhmm[3:])), tz)
            try:
                starts.append(local.astimezone(UTC))
            except OverflowError:  # at the ends of the calendar
                continue
    return starts


@router.post("/bookings/services/{service_id}/slots", response_model=SlotsAdded, status_code=201)
async def add_slots(service_id: UUID, body: WeeklySlots, ctx: Ctx, who: Owner) -> SlotsAdded:
    """Open weekly slots for a service (owner). 404 for an unknown service."""
    async with ctx.pool.acquire() as conn:
        svc = await book_db.get_service(conn, who.tenant_id, service_id)
        starts = _starts(body, ZoneInfo(svc["timezone"]))
        try:
            added = await book_db.add_slots(conn, who.tenant_id, service_id, starts,
                                            svc["duration_minutes"], body.capacity)
        except OverflowError:  # a slot's end beyond what Postgres stores
            added = 0
    return SlotsAdded(service_id=service_id, added=added)


class SlotOut(BaseModel):
    """A slot with a free place."""

    id: UUID
    starts_at: datetime
    ends_at: datetime
    capacity: int
    free: int


@router.get("/bookings/availability", response_model=list[SlotOut])
async def availability(
    ctx: Ctx, who: User, service_id: UUID,
    day: Annotated[date | None, Query(description="a day in the service's time zone; default: the "
                                                  "next 14 days")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> list[SlotOut]:
    """Free slots of a service, earliest first (404 for an unknown service)."""
    async with ctx.pool.acquire() as conn:
        svc = await book_db.get_service(conn, who.tenant_id, service_id)
        now = datetime.now(UTC)
        try:
            if day is None:
                start, end = now, now + timedelta(days=14)
            else:
                first = datetime.combine(day, time(0, 0), ZoneInfo(svc["timezone"]))
                # In UTC here, so a day at the ends of the calendar fails now, not in the query.
                start = max(first, now).astimezone(UTC)
                end = (first + timedelta(days=1)).astimezone(UTC)
        except OverflowError:
            return []
        rows = await book_db.free_slots(conn, who.tenant_id, service_id, start, end, limit)
    return [SlotOut(**{k: r[k] for k in SlotOut.model_fields}) for r in rows]


# ------------------------------------------------------------------ bookings
class BookingCreate(_Strict):
    """POST /v1/bookings body: a booking made for a customer (e.g. by an agent on the phone)."""

    slot_id: UUID
    customer_name: Text = Field(default="", max_length=120)
    email: str | None = Field(default=None, max_length=254, pattern=r"^[^@\s]+@[^@\s]+$")
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")


class BookingOut(BaseModel):
    """A booking."""

    id: UUID
    reference: str
    service_id: UUID
    service_name: str
    slot_id: UUID
    starts_at: datetime
    ends_at: datetime
    status: Literal["confirmed", "cancelled"]
    customer_name: str
    email: str | None
    phone: str | None
    contact_id: UUID | None
    session_id: UUID | None
    created_at: datetime
    cancelled_at: datetime | None


def _booking(row: Any) -> BookingOut:
    return BookingOut(**{k: row[k] for k in BookingOut.model_fields})


@router.post("/bookings", response_model=BookingOut, status_code=201)
async def create_booking(body: BookingCreate, ctx: Ctx, who: User) -> BookingOut:
    """Book one place of a slot. 409 ``slot_unavailable`` when it is full or has started (the
    capacity is checked and the booking made in one transaction: two callers racing for the
    last place get one booking between them); 404 for an unknown slot."""
    async with ctx.pool.acquire() as conn:
        row = await book_db.book_slot(conn, who.tenant_id, body.slot_id, customer_name=body.customer_name,
                                      email=body.email, phone=body.phone)
    return _booking(row)


@router.get("/bookings", response_model=list[BookingOut])
async def list_bookings(
    ctx: Ctx, who: User,
    status: Annotated[Literal["confirmed", "cancelled"] | None, Query()] = None,
    upcoming: Annotated[bool, Query(description="only slots that have not started")] = False,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[BookingOut]:
    """The tenant's bookings by slot time."""
    async with ctx.pool.acquire() as conn:
        rows = await book_db.list_bookings(conn, who.tenant_id, status=status, upcoming=upcoming, limit=limit)
    return [_booking(r) for r in rows]


@router.post("/bookings/{booking_id}/cancel", response_model=BookingOut)
async def cancel_booking(booking_id: UUID, ctx: Ctx, who: User) -> BookingOut:
    """Cancel a booking (its place is free again). 409 when it is cancelled already."""
    async with ctx.pool.acquire() as conn:
        row = await book_db.cancel_booking(conn, who.tenant_id, booking_id)
    return _booking(row)
