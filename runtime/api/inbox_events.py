"""The agents' live inbox: one SSE stream per logged-in agent (``GET /v1/inbox/events``) of new
escalations, new messages in their conversations, claims, hand-backs, closes, notes, labels,
CSAT answers and SLA breaches.

Session actors (any node) and the ingress write every inbox notification to the tenant's Redis
stream ``chat:inbox-ev:<tenant_id>`` (:meth:`runtime.events.SessionEvents.notify_inbox`); this
route follows it through the process's :class:`runtime.events.StreamHub`, so any ingress
replica serves any agent, and a reconnect with ``Last-Event-ID`` (the Redis stream id each event
carries) resumes after the last event seen (within the stream's cap,
:data:`runtime.events.INBOX_STREAM_MAXLEN`). An agent in teams gets the events of the
conversations they see only; tenant-wide notices (credit alerts, failed deliveries) go to owners,
admins, viewers and agents outside teams. Open streams hold a slot under the same caps as the
conversations' streams (per user, per tenant).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from sse_starlette.sse import EventSourceResponse
from starlette.background import BackgroundTask

from runtime.api.context import AppContext
from runtime.api.contract import AUTHED, error_responses
from runtime.api.deps import Ctx, User
from runtime.api.streams import KEEPALIVE_S, StreamSlot, acquire_stream_slot
from runtime.db import sessions as sess_db
from runtime.db.inbox_teams import Scope, scope_for
from runtime.db.tenants import Principal
from runtime.errors import NotFound
from runtime.events import hub_for, inbox_stream_key

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/inbox", tags=["inbox"], responses=error_responses(*AUTHED))

_STREAM_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")
SCOPE_REFRESH_S = 30.0


def stream_slot_name(user_id: Any) -> str:
    """The slot key of a user's inbox streams (counted like one conversation's streams)."""
    return f"inbox-{user_id}"


class _Visibility:
    """Whether an event's conversation is in the user's scope (teams re-read every
    :data:`SCOPE_REFRESH_S`)."""

    def __init__(self, ctx: AppContext, who: Principal) -> None:
        self.ctx, self.who = ctx, who
        self.scope: Scope | None = None
        self.read_at = 0.0

    async def allows(self, data: dict[str, Any]) -> bool:
        if self.scope is None or time.monotonic() - self.read_at > SCOPE_REFRESH_S:
            async with self.ctx.pool.acquire() as conn:
                self.scope = await scope_for(conn, self.who.tenant_id, self.who.user_id, self.who.role)
            self.read_at = time.monotonic()
        if self.scope.everything:
            return True
        sid = data.get("session_id")
        if not sid:
            return False
        try:
            async with self.ctx.pool.acquire() as conn:
                row = await sess_db.get_session(conn, self.who.tenant_id, UUID(str(sid)))
        except (NotFound, ValueError):
            return False
        return self.scope.sees(row)


async def agent_stream(ctx: AppContext, who: Principal, after: str,
                       is_disconnected: Callable[[], Awaitable[bool]], slot: StreamSlot | None,
                       keepalive_s: float = KEEPALIVE_S) -> AsyncIterator[dict[str, str]]:
    """SSE dicts of the tenant's inbox events after stream id ``after`` that ``who`` may see,
    forever (until the client goes); the slot is refreshed meanwhile and released at the end."""
    seen = _Visibility(ctx, who)
    # Through the process's multiplexed reader: an open agent stream is a queue, not a Redis
    # connection blocked for it. The slot is refreshed with the process's other slots.
    sub = hub_for(ctx.redis).subscribe(inbox_stream_key(who.tenant_id), after)
    try:
        while True:
            entry = await sub.next(keepalive_s)
            if await is_disconnected():
                return
            if entry is None:
                yield {"comment": "keep-alive"}
                continue
            sid, fields = entry
            try:
                data = json.loads(fields["d"])
            except (KeyError, ValueError):
                continue
            if await seen.allows(data):
                yield {"event": fields.get("k", "message"), "id": sid, "data": json.dumps(data)}
    finally:
        sub.close()
        if slot is not None:
            await slot.release()


@router.get("/events", responses={200: {
    "description": "server-sent events: escalation, message, assigned, status, note, labels, csat, "
                   "sla_breached... (``data`` is JSON with ``session_id``; ``id`` resumes)",
    "content": {"text/event-stream": {"schema": {"type": "string"}}}}})
async def inbox_events(
    request: Request, ctx: Ctx, who: User,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_q: Annotated[str | None, Query(alias="last_event_id", max_length=50)] = None,
) -> EventSourceResponse:
    """The caller's live inbox (login cookie or API key). Resumes after ``Last-Event-ID``
    (header, or ``?last_event_id=``); without one, only events from now on. Beyond the
    open-stream caps: 429 with ``Retry-After``."""
    resume = last_event_id or last_event_id_q
    if resume and _STREAM_ID.match(resume):
        after = resume
    else:
        newest = await ctx.redis.xrevrange(inbox_stream_key(who.tenant_id), count=1)
        after = str(newest[0][0]) if newest else "0-0"
    slot = await acquire_stream_slot(ctx.redis, ctx.settings, who.tenant_id, stream_slot_name(who.user_id))
    return EventSourceResponse(agent_stream(ctx, who, after, request.is_disconnected, slot),
                               ping=15, background=BackgroundTask(slot.release),
                               headers={"Cache-Control": "no-store"})
