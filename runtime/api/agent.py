"""Minimal agent endpoints (the inbox issue extends them): list, takeover, reply, hand back,
close, and the owner's "add to knowledge base" for an unanswered question."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Query
from pydantic import BaseModel, Field

from runtime.api.contract import AUTHED, AfterId, NonBlankText, error_responses
from runtime.api.deps import Agent, Ctx, Models, OwnedSession, Owner, User, UserScope
from runtime.api.session_calls import call_session
from runtime.conversation.payloads import message_payload
from runtime.db import escalations as esc_db
from runtime.db import messages as msg_db
from runtime.db import session_log as log_db
from runtime.db import sessions as sess_db
from runtime.errors import NotFound

router = APIRouter(prefix="/v1", tags=["agent"], responses=error_responses(*AUTHED, 404, 409))

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
async def list_sessions(ctx: Ctx, who: User, scope: UserScope, status: SessionStatus | None = None,
                        limit: int = Query(default=50, ge=1, le=500)) -> list[SessionSummary]:
    """The tenant's sessions, most recently active first (``?status=human_escalated``); an
    agent in teams sees their teams' only."""
    async with ctx.pool.acquire() as conn:
        rows = await sess_db.list_sessions(conn, who.tenant_id, status, min(max(limit, 1), 500), scope)
    return [SessionSummary(**{k: r[k] for k in SessionSummary.model_fields}) for r in rows]


@router.get("/sessions/{session_id}/messages")
async def session_messages(s: OwnedSession, ctx: Ctx, after: AfterId = 0) -> dict[str, Any]:
    """The conversation, including the inbox-only customer messages."""
    async with ctx.pool.acquire() as conn:
        rows = await msg_db.list_messages(conn, s.tenant_id, s.session_id, after, include_unsent=True)
    return {"session_id": str(s.session_id), "status": s.row["status"],
            "messages": [{**message_payload(r), "status": r["status"]} for r in rows]}


@router.get("/sessions/{session_id}/log")
async def session_log(s: OwnedSession, ctx: Ctx) -> dict[str, Any]:
    """The conversation's log for export, in seed 004's conversation-log shape: each message a
    turn (the customer's with the detected intent and confidence of the bot's reply, the bot's
    with the feature used and whether it escalated), the resolution (resolved, escalated,
    abandoned) and the session's metadata (bot version, model, turns, duration). See
    :func:`runtime.db.session_log.session_log`."""
    async with ctx.pool.acquire() as conn:
        return await log_db.session_log(conn, s.tenant_id, s.session_id)


@router.post("/sessions/{session_id}/takeover")
async def takeover(s: OwnedSession, _: Agent) -> dict[str, Any]:
    """Take the conversation: the bot stops at once (running answer aborted)."""
    return await call_session(s.tenant_id, s.session_id, "takeover", str(s.who.user_id), s.who.name)


class ReplyIn(BaseModel):
    """POST /v1/sessions/{id}/reply body."""

    text: NonBlankText = Field(max_length=10_000)


@router.post("/sessions/{session_id}/reply")
async def reply(body: ReplyIn, s: OwnedSession, _: Agent) -> dict[str, Any]:
    """Send an agent message to the customer (takes the session over if needed)."""
    return await call_session(s.tenant_id, s.session_id, "agent_reply", str(s.who.user_id), s.who.name,
                              body.text)


@router.post("/sessions/{session_id}/hand-back")
async def hand_back(s: OwnedSession, _: Agent) -> dict[str, Any]:
    """Give the conversation back to the bot."""
    return await call_session(s.tenant_id, s.session_id, "hand_back", str(s.who.user_id))


class CloseIn(BaseModel):
    """POST /v1/sessions/{id}/close body (optional)."""

    resolution: Literal["resolved_by_ai", "resolved_by_human", "abandoned"] | None = None
    send_csat: bool = Field(default=True, strict=True)


@router.post("/sessions/{session_id}/close")
async def close(s: OwnedSession, _: Agent, body: Annotated[CloseIn | None, Body()] = None) -> dict[str, Any]:
    """Close the conversation with a resolution (default: from its messages) and ask the
    customer's CSAT (1-5), as ``POST /v1/inbox/sessions/{id}/close`` does."""
    body = body or CloseIn()
    return await call_session(s.tenant_id, s.session_id, "close", body.resolution, body.send_csat)


class EscalationOut(BaseModel):
    """An escalation (unanswered question, explicit request, policy trigger)."""

    id: UUID
    session_id: UUID
    reason: str
    signal: str | None
    question: str | None
    priority: str
    created_at: datetime
    claimed_at: datetime | None
    sla_breached_at: datetime | None
    resolved_kb_entry: bool


@router.get("/escalations", response_model=list[EscalationOut])
async def list_escalations(ctx: Ctx, who: User, signal: str | None = None,
                           limit: int = Query(default=50, ge=1, le=500)) -> list[EscalationOut]:
    """Recent escalations (``?signal=low_coverage`` lists the questions the bot could not answer)."""
    async with ctx.pool.acquire() as conn:
        rows = await esc_db.list_escalations(conn, who.tenant_id, signal, min(max(limit, 1), 500))
    return [EscalationOut(**dict(r)) for r in rows]


class KbAnswerIn(BaseModel):
    """POST /v1/escalations/{id}/add-to-kb body."""

    answer: NonBlankText = Field(max_length=20_000)
    question: NonBlankText | None = Field(default=None, max_length=1000,
                                          description="defaults to the customer's question")


@router.post("/escalations/{escalation_id}/add-to-kb")
async def add_to_kb(escalation_id: UUID, body: KbAnswerIn, ctx: Ctx, who: Owner,
                    models: Models) -> dict[str, Any]:
    """Owner: turn an unanswered question into a knowledge-base Q&A entry, searchable at once."""
    from ingestion.qa import add_qa

    async with ctx.pool.acquire() as conn:
        esc = await esc_db.escalation_question(conn, who.tenant_id, escalation_id)
    if esc is None:
        raise NotFound(f"no escalation {escalation_id} in this tenant")
    question = body.question or esc["question"]
    if not question:
        raise NotFound("this escalation has no question; pass `question` explicitly")
    entry = await add_qa(ctx.pool, models["embedder"], who.tenant_id, question, body.answer,
                         source="agent")
    async with ctx.pool.acquire() as conn:
        await esc_db.mark_resolved_by_kb_entry(conn, who.tenant_id, escalation_id)
    return entry
