"""Minimal agent endpoints (the inbox issue extends them): list, takeover, reply, hand back,
close, and the owner's "add to knowledge base" for an unanswered question."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel, Field

from runtime.api.auth import Ctx, Owner, User
from runtime.api.sessions import call_session
from runtime.db import conversations as conv
from runtime.db.tenants import Principal
from runtime.errors import NotFound

router = APIRouter(prefix="/v1", tags=["agent"])

SessionStatus = Literal["ai_handled", "human_escalated", "human_assigned", "closed"]


class SessionSummary(BaseModel):
    """A row of the inbox."""

    id: UUID
    channel_id: UUID
    contact_id: UUID | None
    status: str
    assignee_id: UUID | None
    escalation_reason: str | None
    escalation_question: str | None
    created_at: datetime
    last_activity_at: datetime


@router.get("/sessions", response_model=list[SessionSummary])
async def list_sessions(ctx: Ctx, who: User, status: SessionStatus | None = None,
                        limit: int = 50) -> list[SessionSummary]:
    """The tenant's sessions, most recently active first (``?status=human_escalated``)."""
    async with ctx.pool.acquire() as conn:
        rows = await conv.list_sessions(conn, who.tenant_id, status, min(max(limit, 1), 500))
    return [SessionSummary(**{k: r[k] for k in SessionSummary.model_fields}) for r in rows]


async def _own_session(ctx: Any, who: Principal, session_id: UUID) -> None:
    async with ctx.pool.acquire() as conn:
        await conv.get_session(conn, who.tenant_id, session_id)  # 404 for another tenant's


@router.get("/sessions/{session_id}/messages")
async def session_messages(session_id: UUID, ctx: Ctx, who: User, after: int = 0) -> dict[str, Any]:
    """The conversation, including the inbox-only customer messages."""
    from actors.session import message_payload

    async with ctx.pool.acquire() as conn:
        session = await conv.get_session(conn, who.tenant_id, session_id)
        rows = await conv.list_messages(conn, who.tenant_id, session_id, after, include_unsent=True)
    return {"session_id": str(session_id), "status": session["status"],
            "messages": [{**message_payload(r), "status": r["status"]} for r in rows]}


@router.post("/sessions/{session_id}/takeover")
async def takeover(session_id: UUID, ctx: Ctx, who: User) -> dict[str, Any]:
    """Take the conversation: the bot stops at once (running answer aborted)."""
    await _own_session(ctx, who, session_id)
    return await call_session(ctx.settings, who.tenant_id, session_id, "takeover",
                              str(who.user_id), who.name)


class ReplyIn(BaseModel):
    """POST /v1/sessions/{id}/reply body."""

    text: str = Field(min_length=1, max_length=10_000)


@router.post("/sessions/{session_id}/reply")
async def reply(session_id: UUID, body: ReplyIn, ctx: Ctx, who: User) -> dict[str, Any]:
    """Send an agent message to the customer (takes the session over if needed)."""
    await _own_session(ctx, who, session_id)
    return await call_session(ctx.settings, who.tenant_id, session_id, "agent_reply",
                              str(who.user_id), who.name, body.text)


@router.post("/sessions/{session_id}/hand-back")
async def hand_back(session_id: UUID, ctx: Ctx, who: User) -> dict[str, Any]:
    """Give the conversation back to the bot."""
    await _own_session(ctx, who, session_id)
    return await call_session(ctx.settings, who.tenant_id, session_id, "hand_back", str(who.user_id))


@router.post("/sessions/{session_id}/close")
async def close(session_id: UUID, ctx: Ctx, who: User) -> dict[str, Any]:
    """Close the conversation."""
    await _own_session(ctx, who, session_id)
    return await call_session(ctx.settings, who.tenant_id, session_id, "close")


class EscalationOut(BaseModel):
    """An escalation (unanswered question, explicit request, policy trigger)."""

    id: UUID
    session_id: UUID
    reason: str
    signal: str | None
    question: str | None
    created_at: datetime
    claimed_at: datetime | None
    sla_breached_at: datetime | None
    resolved_kb_entry: bool


@router.get("/escalations", response_model=list[EscalationOut])
async def list_escalations(ctx: Ctx, who: User, signal: str | None = None,
                           limit: int = 50) -> list[EscalationOut]:
    """Recent escalations (``?signal=low_coverage`` lists the questions the bot could not answer)."""
    async with ctx.pool.acquire() as conn:
        rows = await conn.fetch(
            """SELECT id, session_id, reason, signal, question, created_at, claimed_at,
                      sla_breached_at, resolved_kb_entry
               FROM escalations WHERE tenant_id = $1 AND ($2::text IS NULL OR signal = $2)
               ORDER BY created_at DESC LIMIT $3""",
            who.tenant_id, signal, min(max(limit, 1), 500),
        )
    return [EscalationOut(**dict(r)) for r in rows]


class KbAnswerIn(BaseModel):
    """POST /v1/escalations/{id}/add-to-kb body."""

    answer: str = Field(min_length=1, max_length=20_000)
    question: str | None = Field(default=None, description="defaults to the customer's question")


@router.post("/escalations/{escalation_id}/add-to-kb")
async def add_to_kb(escalation_id: UUID, body: KbAnswerIn, ctx: Ctx, who: Owner) -> dict[str, Any]:
    """Owner: turn an unanswered question into a knowledge-base Q&A entry, searchable at once."""
    from ingestion.qa import add_qa
    from runtime.api.context import MODEL_HANDLES

    async with ctx.pool.acquire() as conn:
        esc = await conn.fetchrow(
            "SELECT question FROM escalations WHERE tenant_id = $1 AND id = $2",
            who.tenant_id, escalation_id,
        )
    if esc is None:
        raise NotFound(f"no escalation {escalation_id} in this tenant")
    question = body.question or esc["question"]
    if not question:
        raise NotFound("this escalation has no question; pass `question` explicitly")
    entry = await add_qa(ctx.pool, MODEL_HANDLES["embedder"], who.tenant_id, question, body.answer,
                         source="agent")
    async with ctx.pool.acquire() as conn:
        await conn.execute(
            "UPDATE escalations SET resolved_kb_entry = true WHERE tenant_id = $1 AND id = $2",
            who.tenant_id, escalation_id,
        )
    return entry
