"""The outbox and its dead-letter queue, for agents and owners: list, inspect, re-drive.

A row is ``dead`` after ``outbox_max_attempts`` transient failures, at once on a permanent 4xx
(the provider's error is kept in ``last_error``), or when it must not be sent (an SMS number that
sent STOP, a WhatsApp reply outside the 24-hour window). A re-drive puts dead rows back to
``pending`` now; pieces of a split answer already accepted are not sent again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from runtime.api.contract import AUTHED, RowId, error_responses
from runtime.api.deps import Ctx, User
from runtime.db import outbox as outbox_db
from runtime.errors import NotFound

router = APIRouter(prefix="/v1/outbox", tags=["outbox"], responses=error_responses(*AUTHED, 404, 409))

OutboxStatus = Literal["pending", "sending", "sent", "dead"]


class OutboxRow(BaseModel):
    """One message to send on a messaging channel (``channel_id``), or one ticket or lead for a
    help-desk destination (``helpdesk_id``; ``text`` then names the event), and how its delivery
    went.

    attempts: sends tried; next_attempt_at: when a pending row is due; last_error: the newest
    failure (the provider's error for a dead row); parts_sent: pieces of a split text accepted;
    delivery_status: the provider's latest report (sent, delivered, read, failed)."""

    id: int
    channel_id: UUID | None
    helpdesk_id: UUID | None = None
    session_id: UUID | None
    message_id: int | None
    recipient: str | None
    text: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    provider_message_id: str | None
    parts_sent: int
    delivery_status: str | None
    delivery_status_at: datetime | None
    delivery_error: str | None
    created_at: datetime
    sent_at: datetime | None


def _row(r: Any) -> OutboxRow:
    body = r["body"] or {}
    fields = {k: r[k] for k in OutboxRow.model_fields if k != "text"}
    text = body.get("text")
    if text is None and body.get("event"):  # a help-desk row: "ticket.created <id>: <subject>"
        item = body.get("ticket") or body.get("lead") or {}
        text = f"{body['event']} {item.get('id', '')}: {item.get('subject') or item.get('email') or ''}"
    return OutboxRow(**fields, text=str(text or ""))


@router.get("", response_model=list[OutboxRow])
async def list_outbox(
    ctx: Ctx, who: User, status: OutboxStatus | None = Query(default=None, description="dead: the DLQ"),
    channel_id: UUID | None = None, session_id: UUID | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
) -> list[OutboxRow]:
    """The tenant's outbox rows, oldest first (``?status=dead`` lists the dead letters)."""
    async with ctx.pool.acquire() as conn:
        rows = await outbox_db.list_rows(conn, who.tenant_id, status=status, channel_id=channel_id,
                                         session_id=session_id, limit=limit)
    return [_row(r) for r in rows]


@router.get("/{outbox_id:int}", response_model=OutboxRow)
async def get_outbox_row(outbox_id: RowId, ctx: Ctx, who: User) -> OutboxRow:
    """One row with its error (404 for another tenant's)."""
    async with ctx.pool.acquire() as conn:
        row = await outbox_db.get_row(conn, who.tenant_id, outbox_id)
    if row is None:
        raise NotFound(f"no outbox row {outbox_id} in this tenant")
    return _row(row)


class Redriven(BaseModel):
    """How many dead rows went back to pending."""

    redriven: int


@router.post("/{outbox_id:int}/redrive", response_model=Redriven)
async def redrive_row(outbox_id: RowId, ctx: Ctx, who: User) -> Redriven:
    """Send a dead row again now. 404 for an unknown row; 409 when it is not dead."""
    from runtime.errors import Conflict

    async with ctx.pool.acquire() as conn, conn.transaction():
        row = await outbox_db.get_row(conn, who.tenant_id, outbox_id)
        if row is None:
            raise NotFound(f"no outbox row {outbox_id} in this tenant")
        if row["status"] != "dead":
            raise Conflict(f"outbox row {outbox_id} is {row['status']}, not dead: only dead rows are "
                           "re-driven")
        n = await outbox_db.redrive(conn, who.tenant_id, outbox_id=outbox_id)
    return Redriven(redriven=n)


class RedriveAll(BaseModel):
    """POST /v1/outbox/redrive body: every dead row of one channel."""

    channel_id: UUID = Field(description="the channel whose dead letters go back to pending")


@router.post("/redrive", response_model=Redriven)
async def redrive_channel(body: RedriveAll, ctx: Ctx, who: User) -> Redriven:
    """Send every dead row of the channel again now."""
    async with ctx.pool.acquire() as conn, conn.transaction():
        n = await outbox_db.redrive(conn, who.tenant_id, channel_id=body.channel_id)
    return Redriven(redriven=n)
