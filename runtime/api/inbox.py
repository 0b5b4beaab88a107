"""The agent inbox's conversations: the queue, one conversation with its sources, notes and
handoff context, and what an agent does with it (claim, reply, notes, labels, hand back, close).

Who (``runtime.api.deps``): everyone of the tenant reads (viewers too); agents, admins and owners
write. An agent in teams sees their teams' conversations only (another conversation is 404, as
is another tenant's). Claim is the takeover (a running answer is aborted, nothing partial is
delivered) and respects the agent's limit of open conversations. Replies go to the
conversation's own channel; notes go nowhere but this API.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Body, Header, Path, Query, Request
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from runtime.api.contract import AUTHED, WHITESPACE, NonBlankText, error_responses
from runtime.api.deps import Agent, Ctx, OwnedSession, User, UserScope
from runtime.api.inbox_context import handoff_context
from runtime.api.session_calls import call_session
from runtime.api.streams import acquire_stream_slot, session_event_stream
from runtime.conversation.payloads import message_payload
from runtime.db import inbox as inbox_db
from runtime.db import inbox_teams as teams_db
from runtime.db import messages as msg_db
from runtime.errors import Conflict
from runtime.events import SessionEvents

router = APIRouter(prefix="/v1/inbox", tags=["inbox"], responses=error_responses(*AUTHED, 404, 409))

SessionStatus = Literal["ai_handled", "human_escalated", "human_assigned", "closed"]
Resolution = Literal["resolved_by_ai", "resolved_by_human", "abandoned"]
# Labels: 1-50 characters with something besides whitespace, no control characters or "/"
# (character classes that ECMA-262 and Python read alike, so the schema and the server agree).
_LABEL_BAD = "\\u0000-\\u001F\\u007F/\\uFFFE\\uFFFF"
_WS_CLASS = "".join(f"\\u{ord(c):04X}" for c in WHITESPACE)
LABEL_PATTERN = f"^[^{_LABEL_BAD}]*[^{_LABEL_BAD}{_WS_CLASS}][^{_LABEL_BAD}]*$"
ASSIGNEE_PATTERN = r"^(me|none|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
# An escalation is in "warning" once less than this share of its SLA window is left.
SLA_WARNING_SHARE = 1 / 3


class ChannelRef(BaseModel):
    """The conversation's channel."""

    id: UUID
    type: str
    name: str


class ContactRef(BaseModel):
    """Who the customer is, as far as known."""

    id: UUID | None
    name: str | None
    email: str | None
    phone: str | None


class PersonRef(BaseModel):
    """A user (the assignee)."""

    id: UUID
    name: str | None


class LastMessage(BaseModel):
    """The newest message, its text cut at 200 characters."""

    id: int
    sender: str
    text: str
    created_at: datetime


class Sla(BaseModel):
    """The escalation's SLA: ``none`` (not waiting for a first claim), ``ok``, ``warning`` (under
    a third of the window left) or ``breached``; due_at: when it breaches."""

    state: Literal["none", "ok", "warning", "breached"]
    due_at: datetime | None


class QueueItem(BaseModel):
    """A conversation in the inbox. waiting_s: how long the customer has waited for a human
    (since the escalation until claimed; then since their oldest unanswered message)."""

    id: UUID
    status: str
    channel: ChannelRef
    contact: ContactRef | None
    assignee: PersonRef | None
    team_id: UUID | None
    labels: list[str]
    last_message: LastMessage | None
    waiting_since: datetime | None
    waiting_s: float | None
    sla: Sla
    priority: str | None
    escalation_reason: str | None
    escalation_question: str | None
    escalated_at: datetime | None
    created_at: datetime
    last_activity_at: datetime
    resolution: str | None
    csat_score: int | None


def _sla(r: Any, at: datetime) -> Sla:
    if r["status"] != "human_escalated":
        return Sla(state="none", due_at=None)
    due = r["sla_due_at"]
    if r["sla_breached_at"] is not None or (due is not None and due <= at):
        return Sla(state="breached", due_at=due)
    if due is None:
        return Sla(state="ok", due_at=None)
    start = r["escalated_at"] or at
    window = max((due - start).total_seconds(), 1.0)
    left = (due - at).total_seconds()
    return Sla(state="warning" if left < window * SLA_WARNING_SHARE else "ok", due_at=due)


def queue_item(r: Any, at: datetime | None = None) -> QueueItem:
    """A queue row (:data:`runtime.db.inbox.QUEUE_SQL`) as the API shows it."""
    at = at or datetime.now(UTC)
    contact = None
    if r["contact_id"] is not None:
        contact = ContactRef(id=r["contact_id"], name=r["contact_name"], email=r["contact_email"],
                             phone=r["contact_phone"])
    last = None
    if r["last_id"] is not None:
        text = r["last_text"] or ""
        last = LastMessage(id=r["last_id"], sender=r["last_sender"],
                           text=text if len(text) <= 200 else text[:199] + "…", created_at=r["last_at"])
    waiting = r["waiting_since"]
    return QueueItem(
        id=r["id"], status=r["status"],
        channel=ChannelRef(id=r["channel_id"], type=r["channel_type"], name=r["channel_name"]),
        contact=contact,
        assignee=PersonRef(id=r["assignee_id"], name=r["assignee_name"]) if r["assignee_id"] else None,
        team_id=r["team_id"], labels=list(r["labels"]), last_message=last, waiting_since=waiting,
        waiting_s=round((at - waiting).total_seconds(), 1) if waiting else None, sla=_sla(r, at),
        priority=r["priority"], escalation_reason=r["escalation_reason"],
        escalation_question=r["escalation_question"], escalated_at=r["escalated_at"],
        created_at=r["created_at"], last_activity_at=r["last_activity_at"], resolution=r["resolution"],
        csat_score=r["csat_score"],
    )


@router.get("/sessions", response_model=list[QueueItem])
async def queue(
    ctx: Ctx, who: User, scope: UserScope,
    status: Annotated[list[SessionStatus] | None,
                      Query(description="repeat for several; default: all open")] = None,
    channel_id: UUID | None = None,
    channel_type: Annotated[str | None, Query(max_length=20, pattern=r"^[a-z]+$")] = None,
    assignee: Annotated[str | None,
                        Query(description="me, none, or a user id", pattern=ASSIGNEE_PATTERN)] = None,
    label: Annotated[str | None, Query(max_length=50, pattern=LABEL_PATTERN)] = None,
    team_id: UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[QueueItem]:
    """The inbox: conversations waiting for a human first (longest waiting first), then the rest
    by latest activity; filters by status, channel, assignee (``me``, ``none``, a user id),
    label and team. An agent in teams sees their teams' conversations only."""
    async with ctx.pool.acquire() as conn:
        rows = await inbox_db.queue(conn, who.tenant_id, scope, statuses=list(status) if status else None,
                                    channel_id=channel_id, channel_type=channel_type, assignee=assignee,
                                    me=who.user_id, label=label, team_id=team_id, limit=limit)
    at = datetime.now(UTC)
    return [queue_item(r, at) for r in rows]


class NoteOut(BaseModel):
    """A private note (never sent to the customer)."""

    id: int
    author_id: UUID | None
    author_name: str | None
    text: str
    created_at: datetime


def _note(r: Any) -> NoteOut:
    return NoteOut(id=r["id"], author_id=r["author_id"], author_name=r["author_name"], text=r["text"],
                   created_at=r["created_at"])


class ConversationOut(BaseModel):
    """One conversation: its queue row, its messages (AI answers with their sources; customer
    messages with their status), private notes, the handoff context, and the CSAT answer."""

    session: QueueItem
    messages: list[dict[str, Any]]
    notes: list[NoteOut]
    handoff: dict[str, Any]
    csat: dict[str, Any]


@router.get("/sessions/{session_id}", response_model=ConversationOut)
async def conversation(s: OwnedSession, ctx: Ctx) -> ConversationOut:
    """The conversation with everything an agent needs before answering."""
    tid, sid = s.tenant_id, s.session_id
    async with ctx.pool.acquire() as conn:
        row = await inbox_db.queue_row(conn, tid, sid)
        rows = await msg_db.list_messages(conn, tid, sid, 0, limit=1000, include_unsent=True)
        cited = [c for r in rows for c in (r["source_chunk_ids"] or [])]
        sources = await inbox_db.sources_for(conn, tid, cited)
        notes = await inbox_db.list_notes(conn, tid, sid)
        facts = await inbox_db.handoff_facts(conn, tid, sid)
    messages = []
    for r in rows:
        m = {**message_payload(r), "status": r["status"]}
        m["sources"] = [sources[c] for c in (r["source_chunk_ids"] or []) if c in sources]
        if r["sender"] == "agent":
            m["agent_id"] = str(r["agent_id"]) if r["agent_id"] else None
        messages.append(m)
    return ConversationOut(
        session=queue_item(row), messages=messages, notes=[_note(n) for n in notes],
        handoff=handoff_context(messages, facts),
        csat={"asked_at": s.row["csat_asked_at"], "score": s.row["csat_score"], "at": s.row["csat_at"]},
    )


@router.get("/sessions/{session_id}/events", responses={200: {
    "description": "server-sent events of the conversation (the widget's events, see the README)",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def conversation_events(
    s: OwnedSession, ctx: Ctx, request: Request,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
) -> EventSourceResponse:
    """SSE of the conversation's own events (the AI's tokens as it types, messages, handoffs,
    aborts), resumable with ``Last-Event-ID``; under the same open-stream caps as the widget's."""
    slot = await acquire_stream_slot(ctx.redis, ctx.settings, s.tenant_id, s.session_id)
    return EventSourceResponse(
        session_event_stream(SessionEvents(ctx.redis), s.session_id, last_event_id,
                             request.is_disconnected, slot=slot),
        ping=15, background=BackgroundTask(slot.release))


# ---------------------------------------------------------------- actions
class Claimed(BaseModel):
    """The conversation after a claim."""

    status: str
    assignee_id: UUID


@router.post("/sessions/{session_id}/claim", response_model=Claimed)
async def claim(s: OwnedSession, ctx: Ctx, who: Agent) -> Claimed:
    """Take the conversation (the takeover): the bot stops at once, a running answer is aborted
    and nothing of it reaches the customer. 409 when the session is closed or the agent already
    holds their limit of open conversations."""
    if s.row["assignee_id"] != who.user_id or s.row["status"] != "human_assigned":
        async with ctx.pool.acquire() as conn:
            limit = await teams_db.limit_of(conn, who.tenant_id, who.user_id)
            held = await teams_db.open_sessions_of(conn, who.tenant_id, who.user_id)
        if limit is not None and held >= limit and s.row["assignee_id"] != who.user_id:
            raise Conflict(f"you hold {held} open conversations, your limit is {limit}: close or hand "
                           "back one first", limit=limit, open=held)
    out = await call_session(s.tenant_id, s.session_id, "takeover", str(who.user_id), who.name)
    return Claimed(status=out["status"], assignee_id=who.user_id)


class ReplyIn(BaseModel):
    """POST .../reply body."""

    text: NonBlankText = Field(max_length=10_000)


@router.post("/sessions/{session_id}/reply")
async def reply(body: ReplyIn, s: OwnedSession, who: Agent) -> dict[str, Any]:
    """Send an agent message on the conversation's channel (claims it first if nobody has).
    Returns the message."""
    return await call_session(s.tenant_id, s.session_id, "agent_reply", str(who.user_id), who.name,
                              body.text.strip())


class NoteIn(BaseModel):
    """POST .../notes body."""

    text: NonBlankText = Field(max_length=10_000)


@router.post("/sessions/{session_id}/notes", response_model=NoteOut, status_code=201)
async def add_note(body: NoteIn, s: OwnedSession, ctx: Ctx, who: Agent) -> NoteOut:
    """A private note for the team: stored apart from the messages, never sent to the customer
    on any channel; other agents see it live (an inbox ``note`` event)."""
    async with ctx.pool.acquire() as conn:
        row = await inbox_db.add_note(conn, s.tenant_id, s.session_id, who.user_id, body.text.strip())
    await SessionEvents(ctx.redis).notify_inbox(s.tenant_id, "note", {
        "session_id": s.session_id, "note_id": row["id"], "author_name": row["author_name"]})
    return _note(row)


@router.get("/sessions/{session_id}/notes", response_model=list[NoteOut])
async def notes(s: OwnedSession, ctx: Ctx) -> list[NoteOut]:
    """The conversation's private notes, oldest first."""
    async with ctx.pool.acquire() as conn:
        return [_note(r) for r in await inbox_db.list_notes(conn, s.tenant_id, s.session_id)]


class LabelIn(BaseModel):
    """POST .../labels body."""

    label: str = Field(min_length=1, max_length=50, pattern=LABEL_PATTERN,
                       description="1-50 characters, no control characters or /")


class Labels(BaseModel):
    """A conversation's labels."""

    labels: list[str]


@router.post("/sessions/{session_id}/labels", response_model=Labels)
async def add_label(body: LabelIn, s: OwnedSession, ctx: Ctx, who: Agent) -> Labels:
    """Label the conversation (idempotent)."""
    async with ctx.pool.acquire() as conn:
        labels = await inbox_db.add_label(conn, s.tenant_id, s.session_id, body.label.strip(), who.user_id)
    await SessionEvents(ctx.redis).notify_inbox(s.tenant_id, "labels", {"session_id": s.session_id,
                                                                      "labels": labels})
    return Labels(labels=labels)


@router.delete("/sessions/{session_id}/labels/{label}", response_model=Labels)
async def remove_label(label: Annotated[str, Path(max_length=50, pattern=LABEL_PATTERN)],
                       s: OwnedSession, ctx: Ctx, who: Agent) -> Labels:
    """Remove a label (absent: nothing changes)."""
    del who
    async with ctx.pool.acquire() as conn:
        labels = await inbox_db.remove_label(conn, s.tenant_id, s.session_id, label.strip())
    await SessionEvents(ctx.redis).notify_inbox(s.tenant_id, "labels", {"session_id": s.session_id,
                                                                      "labels": labels})
    return Labels(labels=labels)


class LabelCount(BaseModel):
    """A label in use and on how many conversations."""

    label: str
    sessions: int


@router.get("/labels", response_model=list[LabelCount])
async def labels(ctx: Ctx, who: User) -> list[LabelCount]:
    """The tenant's labels in use."""
    async with ctx.pool.acquire() as conn:
        return [LabelCount(label=r["label"], sessions=r["sessions"])
                for r in await inbox_db.tenant_labels(conn, who.tenant_id)]


@router.post("/sessions/{session_id}/hand-back")
async def hand_back(s: OwnedSession, who: Agent) -> dict[str, Any]:
    """Give the conversation back to the bot: the next customer message is answered by the AI."""
    return await call_session(s.tenant_id, s.session_id, "hand_back", str(who.user_id))


class CloseIn(BaseModel):
    """POST .../close body (optional)."""

    resolution: Resolution | None = Field(
        default=None, description="default: resolved_by_human when an agent wrote, abandoned when the "
        "customer's last message went unanswered, resolved_by_ai otherwise")
    send_csat: bool = Field(default=True, strict=True,
                            description="ask the customer to rate the conversation (1-5)")


@router.post("/sessions/{session_id}/close")
async def close(s: OwnedSession, who: Agent,
                body: Annotated[CloseIn | None, Body()] = None) -> dict[str, Any]:
    """Close the conversation with a resolution; the customer gets the CSAT question (1-5) on
    their channel unless it was abandoned or ``send_csat`` is false."""
    del who
    body = body or CloseIn()
    return await call_session(s.tenant_id, s.session_id, "close", body.resolution, body.send_csat)

