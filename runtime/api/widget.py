"""Widget API (DESIGN.md, HTTP API): sessions from the host page, turns and events for the iframe.

The host page calls ``POST /v1/widget/sessions`` with its widget token; the browser's ``Origin``
must be one of the channel's allowed origins (CORS is answered for exactly that origin). The
iframe then uses the returned session token (``Authorization: Bearer`` or ``?token=`` for
EventSource), so the iframe's own origin does not matter.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID, uuid4

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from sse_starlette.sse import EventSourceResponse

from runtime.api.deps import Ctx, WidgetSession
from runtime.api.ratelimit import rate_limit
from runtime.api.session_calls import call_session, warm_session
from runtime.api.streams import replay_answer, session_event_stream, turn_events
from runtime.bot_config import BotConfig
from runtime.conversation.payloads import message_payload
from runtime.db import bot_configs, channels
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.errors import ChatEngineError, Forbidden, InvalidInput, PayloadTooLarge, Unauthorized
from runtime.events import SessionEvents
from runtime.security import issue_session_token, verify_session_token

router = APIRouter(prefix="/v1/widget", tags=["widget"])

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "content-type",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin",
}


def _client_ip(request: Request) -> str:
    fwd = request.headers.get("x-forwarded-for")
    if fwd:
        return fwd.split(",")[0].strip()
    return request.client.host if request.client else "unknown"


class SessionCreate(BaseModel):
    """POST /v1/widget/sessions body (from the host page)."""

    widget_token: str = Field(min_length=4, max_length=200)
    session_token: str | None = Field(default=None, description="restore this session if valid")
    visitor_id: str | None = Field(default=None, max_length=100)


class SessionOut(BaseModel):
    """The session, the iframe's session token and the bot's greeting."""

    session_id: UUID
    session_token: str
    expires_at: int
    status: str
    restored: bool
    bot_name: str
    greeting: str


@router.options("/sessions", include_in_schema=False)
async def sessions_preflight(request: Request) -> Response:
    """CORS preflight: reflect the origin; the POST itself enforces the allowed origins."""
    origin = request.headers.get("origin", "")
    return Response(status_code=204, headers={**CORS_HEADERS, "Access-Control-Allow-Origin": origin})


@router.post("/sessions", response_model=SessionOut)
async def create_session(body: SessionCreate, request: Request, ctx: Ctx) -> Any:
    """Create or restore a session for a visitor on an allowed origin.

    Raises 401 (unknown widget token), 403 (origin not allowed; no session is created), 429.
    """
    origin = (request.headers.get("origin") or "").rstrip("/").lower()
    try:
        await rate_limit(ctx.redis, f"ip:{_client_ip(request)}", ctx.settings.rate_limit_ip_per_min)
        await rate_limit(ctx.redis, f"wt:{body.widget_token}",
                         ctx.settings.rate_limit_widget_token_per_min)
        async with ctx.pool.acquire() as conn:
            channel = await channels.channel_by_widget_token(conn, body.widget_token)
            if channel is None:
                raise Unauthorized("unknown widget token: copy the snippet from the channel again")
            if not origin or origin not in channel["allowed_origins"]:
                raise Forbidden(
                    f"origin {origin or '(none)'} is not allowed for this widget: add it to the "
                    "channel's allowed_origins"
                )
            tenant_id, channel_id = channel["tenant_id"], channel["id"]
            cfg = BotConfig.model_validate((await bot_configs.get_bot_config(conn, tenant_id))["config"])
            session = None
            if body.session_token:
                try:
                    claims = verify_session_token(ctx.settings, body.session_token)
                    if claims.channel_id == channel_id and claims.origin == origin:
                        session = await sess_db.get_session(conn, tenant_id, claims.session_id)
                except ChatEngineError:
                    session = None
            restored = session is not None
            if session is None:
                visitor = body.visitor_id or f"visitor-{uuid4().hex}"
                contact_id = await sess_db.upsert_contact(conn, tenant_id, channel_id, visitor)
                session = await sess_db.create_session(conn, tenant_id, channel_id, contact_id, origin)
    except ChatEngineError as exc:
        headers = {**CORS_HEADERS, "Access-Control-Allow-Origin": origin} if origin else {}
        if exc.status_code == 429:
            headers["Retry-After"] = str(exc.fields.get("retry_after_s", 60))
        if exc.status_code == 403:
            headers.pop("Access-Control-Allow-Origin", None)  # the browser hides the body too
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)
    token, exp = issue_session_token(ctx.settings, tenant_id, session["id"], channel_id, origin)
    if session["status"] != "closed":
        warm_session(tenant_id, session["id"])  # the actor starts while the visitor reads the greeting
    out = SessionOut(
        session_id=session["id"], session_token=token, expires_at=exp, status=session["status"],
        restored=restored, bot_name=cfg.bot_name, greeting=cfg.greeting,
    )
    return JSONResponse(out.model_dump(mode="json"),
                        headers={**CORS_HEADERS, "Access-Control-Allow-Origin": origin})


class MessageIn(BaseModel):
    """POST /v1/widget/sessions/{id}/messages body."""

    text: str = Field(max_length=100_000)
    client_msg_id: str = Field(min_length=1, max_length=100)


def _client_msg_turn_stream(ctx: Any, events: SessionEvents, session_id: UUID, result: dict[str, Any],
                            after: str) -> EventSourceResponse:
    turn = int(result["message_id"])
    timeout = ctx.settings.turn_stream_timeout_s
    if result["duplicate"]:
        if result["status"] == "received":  # still being answered: follow it from the start
            return EventSourceResponse(turn_events(events, session_id, turn, "0-0", timeout_s=timeout),
                                       ping=15)
        return EventSourceResponse(replay_answer(result["answer"], turn))
    return EventSourceResponse(turn_events(events, session_id, turn, after, timeout_s=timeout), ping=15)


@router.post("/sessions/{session_id}/messages")
async def post_message(session_id: UUID, body: MessageIn, request: Request, ctx: Ctx,
                       claims: WidgetSession) -> EventSourceResponse:
    """Send a customer message; the response is SSE of this turn's events, ending with
    ``done`` (or ``aborted``/``error``). A repeated ``client_msg_id`` replays the original answer,
    or follows it if it is still being answered.
    """
    text = body.text.strip()
    if not text:
        raise InvalidInput("text: must not be empty", field="text")
    if len(text) > ctx.settings.max_message_chars:
        raise PayloadTooLarge(
            f"text: {len(text)} characters is over the limit of {ctx.settings.max_message_chars}; "
            "split it into shorter messages", field="text",
        )
    await rate_limit(ctx.redis, f"sess:{session_id}", ctx.settings.rate_limit_ip_per_min)
    await rate_limit(ctx.redis, f"ip:{_client_ip(request)}", ctx.settings.rate_limit_ip_per_min)
    events = SessionEvents(ctx.redis)
    after = await events.last_stream_id(session_id)
    result = await call_session(claims.tenant_id, session_id, "submit", text,
                                client_msg_id=body.client_msg_id)
    return _client_msg_turn_stream(ctx, events, session_id, result, after)


@router.get("/sessions/{session_id}/events")
async def session_events(
    session_id: UUID, request: Request, ctx: Ctx, claims: WidgetSession,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_q: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> EventSourceResponse:
    """SSE of all the session's events; resumes after ``Last-Event-ID`` (header or query)."""
    events = SessionEvents(ctx.redis)
    return EventSourceResponse(
        session_event_stream(events, session_id, last_event_id or last_event_id_q,
                             request.is_disconnected),
        ping=15,
    )


@router.get("/sessions/{session_id}/messages")
async def list_messages(session_id: UUID, ctx: Ctx, claims: WidgetSession, after: int = 0) -> dict[str, Any]:
    """Delivered messages with id > ``after``, oldest first (history and reconnection)."""
    async with ctx.pool.acquire() as conn:
        session = await sess_db.get_session(conn, claims.tenant_id, session_id)
        rows = await msg_db.list_messages(conn, claims.tenant_id, session_id, after)
    return {"session_id": str(session_id), "status": session["status"],
            "messages": [message_payload(r) for r in rows]}


@router.post("/sessions/{session_id}/handoff")
async def handoff(session_id: UUID, claims: WidgetSession) -> dict[str, Any]:
    """The "Talk to a human" button."""
    return await call_session(claims.tenant_id, session_id, "handoff", "The customer asked for a human.")
