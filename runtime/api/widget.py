"""Widget API (DESIGN.md, HTTP API): sessions from the host page, turns and events for the iframe.

The host page calls ``POST /v1/widget/sessions`` with its widget token; the browser's ``Origin``
must be one of the channel's allowed origins (CORS is answered for exactly that origin). The
iframe then uses the returned session token (``Authorization: Bearer`` or ``?token=`` for
EventSource), so the iframe's own origin does not matter.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, field_validator
from sse_starlette.sse import EventSourceResponse

from runtime.api.client_ip import client_ip
from runtime.api.contract import AUTHED, AfterId, NonBlankText, error_responses
from runtime.api.deps import Ctx, WidgetSession
from runtime.api.ratelimit import rate_limit
from runtime.api.session_calls import call_session, warm_session
from runtime.api.streams import replay_answer, session_event_stream, turn_events
from runtime.bot_config import BotConfig
from runtime.config import get_settings
from runtime.conversation.payloads import message_payload
from runtime.db import bot_configs, channels, inbox_hours
from runtime.db import messages as msg_db
from runtime.db import sessions as sess_db
from runtime.errors import ChatEngineError, Forbidden, InvalidInput, PayloadTooLarge, Unauthorized
from runtime.events import SessionEvents
from runtime.fields import describe_pattern, json_int
from runtime.security import (
    issue_session_token,
    issue_visitor_id,
    verify_session_token,
    verify_visitor_id,
)

router = APIRouter(prefix="/v1/widget", tags=["widget"], responses=error_responses(*AUTHED, 404, 409))

# The configured limit (CHAT_ENGINE_MAX_MESSAGE_CHARS), in the schema too.
MESSAGE_MAX_CHARS = get_settings().max_message_chars

CORS_HEADERS = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "content-type",
    "Access-Control-Max-Age": "600",
    "Vary": "Origin",
}


_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
_TOP_LABEL = r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"  # TLDs start with a letter
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_H = r"[0-9a-fA-F]{1,4}"
_IPV6 = "|".join([
    rf"(?:{_H}:){{7}}{_H}", rf"(?:{_H}:){{1,7}}:", rf"(?:{_H}:){{1,6}}:{_H}",
    *(rf"(?:{_H}:){{1,{n}}}(?::{_H}){{1,{6 - n}}}" for n in range(5, 0, -1)),
    rf":(?:(?::{_H}){{1,7}}|:)",
])
_PORT = r"(?:[1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
ORIGIN_PATTERN = (
    rf"^(?:[hH][tT][tT][pP][sS]?)://(?:(?:{_LABEL}\.)*{_TOP_LABEL}|{_OCTET}(?:\.{_OCTET}){{3}}"
    rf"|\[(?:{_IPV6})\])(?::{_PORT})?/?$"
)
"""A web origin as the API accepts it (JSON Schema ``pattern`` of ``allowed_origins`` items and
the server's own check): scheme://host[:port] with an optional trailing ``/``."""
describe_pattern(ORIGIN_PATTERN, "is not an origin: use scheme://host[:port] (http or https, no path, "
                 "query, user name, spaces, ';' or ','), e.g. https://shop.example")
ORIGIN_MAX_CHARS = 300
_ORIGIN_RE = re.compile(ORIGIN_PATTERN)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_origin(value: str) -> str | None:
    """``value`` as a canonical web origin, or None when it is not one.

    Accepted (:data:`ORIGIN_PATTERN`, at most 300 characters, no surrounding spaces):
    ``http``/``https`` ``://`` a hostname (ASCII labels, the last one starting with a letter; IDNs
    in punycode), an IPv4 literal or a bracketed IPv6 literal, an optional port 1-65535, and at
    most one trailing ``/``. Nothing else: no path, query, fragment, userinfo, spaces, ``;`` or
    commas (an allowed origin reaches the frame page's CSP). The result is lower-case, without the
    trailing ``/`` and without the scheme's default port (``https://shop.example:443`` ->
    ``https://shop.example``).
    """
    if len(value) > ORIGIN_MAX_CHARS or _ORIGIN_RE.fullmatch(value) is None:
        return None
    scheme, rest = value.lower().rstrip("/").split("://", 1)
    host, port = rest, None
    if rest.startswith("["):
        host, _, tail = rest.partition("]")
        host = f"[{ipaddress.IPv6Address(host[1:]).compressed}]"
        port = tail[1:] or None
    elif ":" in rest:
        host, port = rest.split(":", 1)
    if port is not None and int(port) != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


class SessionCreate(BaseModel):
    """POST /v1/widget/sessions body (from the host page)."""

    widget_token: str = Field(min_length=4, max_length=200)
    session_token: str | None = Field(default=None, description="restore this session if valid")
    visitor_id: str | None = Field(
        default=None, max_length=100,
        description="the visitor_id an earlier session returned (signed by the server); an id the "
        "server did not issue for this channel is ignored and a new one is returned")


class SessionOut(BaseModel):
    """The session, the iframe's session token and the bot's greeting."""

    session_id: UUID
    session_token: str
    expires_at: int
    status: str
    restored: bool
    bot_name: str
    greeting: str
    visitor_id: str | None = Field(description="keep it and send it with the next session: the "
                                   "same visitor, one contact (null on a restored session without one)")
    offline: bool = Field(default=False, description="the team is outside its business hours: a "
                          "request for a human gets the offline auto-reply")


@router.options("/sessions", include_in_schema=False)
async def sessions_preflight(request: Request) -> Response:
    """CORS preflight: reflect the (well-formed) origin; the POST itself enforces the allowed origins."""
    origin = normalize_origin(request.headers.get("origin", ""))
    headers = {**CORS_HEADERS, "Access-Control-Allow-Origin": origin} if origin else dict(CORS_HEADERS)
    return Response(status_code=204, headers=headers)


@router.post("/sessions", response_model=SessionOut)
async def create_session(body: SessionCreate, request: Request, ctx: Ctx) -> Any:
    """Create or restore a session for a visitor on an allowed origin.

    Raises 401 (unknown widget token), 403 (origin not allowed; no session is created), 429.
    Budgets: every request counts against its client IP; the widget token's budget only counts
    requests with a known token from an allowed origin, and failures (unknown token, forbidden
    origin) count against a smaller per-IP failure budget instead, so forged-origin requests
    cannot spend a real site's budget.
    """
    raw_origin = request.headers.get("origin") or ""
    origin = normalize_origin(raw_origin) or ""
    peer_ip = client_ip(request, ctx.settings.trusted_proxies)
    failures_per_min = ctx.settings.rate_limit_failures_per_min
    try:
        await rate_limit(ctx, f"ip:{peer_ip}", ctx.settings.rate_limit_ip_per_min)
        async with ctx.pool.acquire() as conn:
            channel = await channels.channel_by_widget_token(conn, body.widget_token)
            if channel is None:
                await rate_limit(ctx, f"fail:ip:{peer_ip}", failures_per_min)
                raise Unauthorized("unknown widget token: copy the snippet from the channel again")
            allowed = {normalize_origin(o) or o for o in channel["allowed_origins"]}
            if not origin or origin not in allowed:
                await rate_limit(ctx, f"fail:ip:{peer_ip}", failures_per_min)
                raise Forbidden(
                    f"origin {origin or repr(raw_origin[:100]) if raw_origin else '(none)'} is not "
                    "allowed for this widget: add it to the channel's allowed_origins"
                )
            await rate_limit(ctx, f"wt:{body.widget_token}",
                             ctx.settings.rate_limit_widget_token_per_min)
            tenant_id, channel_id = channel["tenant_id"], channel["id"]
            cfg = BotConfig.model_validate((await bot_configs.get_bot_config(conn, tenant_id))["config"])
            offline = not (await inbox_hours.get_inbox_settings(conn, tenant_id)).business_hours.is_open(
                inbox_hours.now_utc())
            session = None
            # Only an id this server signed for this channel names a contact: a client cannot
            # take over another visitor's contact (and their email) by naming its id.
            visitor = verify_visitor_id(ctx.settings, channel_id, body.visitor_id)
            if body.session_token:
                try:
                    claims = verify_session_token(ctx.settings, body.session_token)
                    if claims.channel_id == channel_id and claims.origin == origin:
                        session = await sess_db.get_session(conn, tenant_id, claims.session_id)
                except ChatEngineError:
                    session = None
            restored = session is not None
            if session is None:
                visitor = visitor or issue_visitor_id(ctx.settings, channel_id)
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
        restored=restored, bot_name=cfg.bot_name, greeting=cfg.greeting, visitor_id=visitor,
        offline=offline,
    )
    return JSONResponse(out.model_dump(mode="json"),
                        headers={**CORS_HEADERS, "Access-Control-Allow-Origin": origin})


class MessageIn(BaseModel):
    """POST /v1/widget/sessions/{id}/messages body."""

    text: NonBlankText = Field(max_length=MESSAGE_MAX_CHARS)
    client_msg_id: str = Field(min_length=1, max_length=100, pattern=r"^[\x21-\x7e]+$",
                               description="the client's id of this message (printable ASCII): a retry "
                               "with the same id is answered once")


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


# One server-sent event (Open API before 3.2: ``schema`` describes each event); ``data`` is JSON.
_SSE: dict[int | str, dict[str, Any]] = {
    200: {"description": "server-sent events (see the events of a turn in the README)",
              "content": {"text/event-stream": {"schema": {"type": "object", "properties": {
                  "event": {"type": "string"}, "id": {"type": "string"},
                  "data": {"type": "string", "contentMediaType": "application/json"},
                  "retry": {"type": "integer"}}}}}}}


@router.post("/sessions/{session_id}/messages", responses=_SSE)
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
    await rate_limit(ctx, f"sess:{session_id}", ctx.settings.rate_limit_ip_per_min)
    await rate_limit(ctx, f"ip:{client_ip(request, ctx.settings.trusted_proxies)}",
                     ctx.settings.rate_limit_ip_per_min)
    events = SessionEvents(ctx.redis)
    after = await events.last_stream_id(session_id)
    result = await call_session(claims.tenant_id, session_id, "submit", text,
                                client_msg_id=body.client_msg_id)
    return _client_msg_turn_stream(ctx, events, session_id, result, after)


@router.get("/sessions/{session_id}/events", responses=_SSE)
async def session_events(
    session_id: UUID, request: Request, ctx: Ctx, claims: WidgetSession,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id_q: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> EventSourceResponse:
    """SSE of all the session's events; resumes after ``Last-Event-ID`` (header or query).
    Beyond the open-stream caps (per session, per tenant): 429 with ``Retry-After``, no stream."""
    from starlette.background import BackgroundTask  # local: this route's own imports

    from runtime.api.streams import STREAM_PING_S, acquire_stream_slot

    events = SessionEvents(ctx.redis)
    slot = await acquire_stream_slot(ctx.redis, ctx.settings, claims.tenant_id, session_id)
    return EventSourceResponse(
        session_event_stream(events, session_id, last_event_id or last_event_id_q,
                             request.is_disconnected, slot=slot),
        ping=STREAM_PING_S, background=BackgroundTask(slot.release),  # also a HEAD, which never streams
    )


@router.get("/sessions/{session_id}/messages")
async def list_messages(session_id: UUID, ctx: Ctx, claims: WidgetSession,
                        after: AfterId = 0) -> dict[str, Any]:
    """Delivered messages with id > ``after``, oldest first (history and reconnection), with
    whether the team is offline (business hours) and the CSAT state (``asked``, ``score``)."""
    async with ctx.pool.acquire() as conn:
        session = await sess_db.get_session(conn, claims.tenant_id, session_id)
        rows = await msg_db.list_messages(conn, claims.tenant_id, session_id, after)
        hours = (await inbox_hours.get_inbox_settings(conn, claims.tenant_id)).business_hours
    return {"session_id": str(session_id), "status": session["status"],
            "messages": [message_payload(r) for r in rows],
            "offline": not hours.is_open(inbox_hours.now_utc()),
            "csat": {"asked": session["csat_asked_at"] is not None, "score": session["csat_score"]}}


class CsatIn(BaseModel):
    """POST /v1/widget/sessions/{id}/csat body."""

    score: int = Field(ge=1, le=5, strict=True, description="1 (poor) to 5 (great)")

    _ints = field_validator("score", mode="before")(json_int)


@router.post("/sessions/{session_id}/csat")
async def rate(session_id: UUID, body: CsatIn, claims: WidgetSession) -> dict[str, Any]:
    """The customer's answer to the CSAT question (the chat window's 1-5 buttons): recorded
    once. 409 when no question was asked."""
    return await call_session(claims.tenant_id, session_id, "rate", body.score)


@router.post("/sessions/{session_id}/handoff")
async def handoff(session_id: UUID, claims: WidgetSession) -> dict[str, Any]:
    """The "Talk to a human" button."""
    return await call_session(claims.tenant_id, session_id, "handoff", "The customer asked for a human.")
