"""Inbound webhooks of the messaging channels: ``/v1/webhooks/{type}/{channel_id}``.

Every call is verified over the raw body (a bad signature is 401 and nothing is stored), parsed
(a malformed body is 400 naming what was wrong), stored keyed by the provider's id (unique per
channel: a duplicate delivery is 200 and nothing more) with a Postgres NOTIFY in the same
transaction, and acknowledged. The ingress never calls a session actor here: the Timekeeper
listens for the notification and hands the message to the session's actor (a Ray actor call costs
the caller's event loop several milliseconds of CPU, which a burst of deliveries would queue in
front of every acknowledgement), and its sweep of stale messages covers a lost notification.
An unknown or disabled channel is 404. Nothing but a channel lookup, a signature check and a few
inserts happens before the 2xx, so providers' timeouts (Meta, Slack: a few seconds) are never
approached.

Routes: WhatsApp's GET verification handshake; POST for whatsapp, telegram, sms (Twilio), email
(Mailgun route forward, form or multipart) and slack (Events API; ``url_verification`` answered
with its challenge).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal
from urllib.parse import urlencode
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse

from runtime.api.contract import COMMON, error_responses
from runtime.api.deps import Ctx
from runtime.channels import whatsapp
from runtime.channels.base import ChannelMessage, SignatureInvalid, WebhookRequest
from runtime.channels.email import normalize_subject
from runtime.channels.registry import adapter_for
from runtime.conversation.payloads import message_payload
from runtime.db import channels as ch_db
from runtime.db import contacts as contact_db
from runtime.db import messages as msg_db
from runtime.db import outbox as outbox_db
from runtime.db import sessions as sess_db
from runtime.errors import NotFound, PayloadTooLarge
from runtime.events import SessionEvents
from runtime.security import decrypt_secrets

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"], responses=error_responses(*COMMON, 401, 404))

WebhookType = Literal["whatsapp", "telegram", "sms", "email", "slack"]
# Submissions run after the response; kept here so they are not garbage-collected mid-flight.
_BACKGROUND: set[asyncio.Task[None]] = set()


@dataclass
class _Stored:
    tenant_id: UUID
    session_id: UUID
    row: Any
    message: ChannelMessage


@dataclass
class _Outcome:
    stored: list[_Stored] = field(default_factory=list)
    duplicates: int = 0
    ignored: int = 0
    settled: int = 0
    statuses: int = 0


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"webhook body of {declared} bytes is over the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"webhook body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _public_url(request: Request, ctx: Any) -> str:
    """The URL as the provider called it (Twilio signs it): the public base, path and query."""
    if ctx.settings.public_base_url is None:
        return str(request.url)
    base = str(ctx.settings.public_base_url).rstrip("/")
    query = request.url.query
    return f"{base}{request.url.path}" + (f"?{query}" if query else "")


async def _webhook_request(request: Request, ctx: Any) -> tuple[WebhookRequest, list[dict[str, Any]]]:
    raw = await _body(request, ctx.settings.webhook_max_body_bytes)
    ctype = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    files: list[dict[str, Any]] = []
    if ctype == "multipart/form-data":
        # Mailgun forwards with attachments as multipart: the signed fields are plain form
        # fields; the files themselves are recorded by name and type, not stored.
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartParser

        async def replay() -> Any:
            yield raw

        form = await MultiPartParser(request.headers, replay()).parse()
        fields: list[tuple[str, str]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append({"type": "document", "filename": value.filename,
                              "mime_type": value.content_type, "field": key})
            else:
                fields.append((key, str(value)))
        raw = urlencode(fields).encode()
        ctype = "application/x-www-form-urlencoded"
    headers = {k.lower(): v for k, v in request.headers.items()}
    req = WebhookRequest(body=raw, headers=headers, url=_public_url(request, ctx),
                         query=dict(request.query_params), content_type=ctype)
    return req, files


async def _channel(ctx: Any, channel_type: str, channel_id: UUID) -> tuple[Any, dict[str, str]]:
    async with ctx.pool.acquire() as conn:
        row = await ch_db.channel_for_webhook(conn, channel_id, channel_type)
    if row is None:
        raise NotFound(f"no active {channel_type} channel {channel_id}: check the webhook URL the "
                       "channel's setup returned")
    return row, decrypt_secrets(ctx.settings, ch_db.sealed(row))


@router.get("/{channel_type}/{channel_id}", response_class=Response,
            responses={200: {"description": "the challenge, echoed",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def whatsapp_handshake(
    channel_type: WebhookType, channel_id: UUID, ctx: Ctx,
    mode: Annotated[Literal["subscribe"], Query(alias="hub.mode")],
    verify_token: Annotated[str, Query(alias="hub.verify_token", min_length=1, max_length=4096)],
    challenge: Annotated[str, Query(alias="hub.challenge", min_length=1, max_length=4096)],
) -> PlainTextResponse:
    """Meta's verification: ``?hub.mode=subscribe&hub.verify_token=...&hub.challenge=...``
    answered with the challenge when the verify token is the channel's. Raises 401 (wrong
    token), 404 (no such WhatsApp channel; other types have no GET handshake), 422 (a parameter
    missing)."""
    if channel_type != "whatsapp":
        raise NotFound(f"{channel_type} webhooks have no GET handshake: the provider POSTs to this URL")
    _, secrets = await _channel(ctx, "whatsapp", channel_id)
    query = {"hub.mode": mode, "hub.verify_token": verify_token, "hub.challenge": challenge}
    return PlainTextResponse(whatsapp.verify_handshake(query, secrets))


@router.post("/{channel_type}/{channel_id}")
async def receive(channel_type: WebhookType, channel_id: UUID, request: Request, ctx: Ctx) -> Any:
    """A provider's webhook. 200 ``{"ok": true, "received", "duplicates", "ignored",
    "statuses"}`` once stored (or the provider's handshake reply); 401 bad signature, 400
    malformed, 404 unknown channel, 413 too large."""
    started = time.perf_counter()
    channel, secrets = await _channel(ctx, channel_type, channel_id)
    adapter = adapter_for(channel_type)
    req, files = await _webhook_request(request, ctx)
    config = dict(channel["config"] or {})
    replay_key = adapter.verify(req, config, secrets, now=time.time())
    if replay_key is not None:
        await _check_replay(ctx, channel_id, replay_key, req.body)
    parsed = adapter.parse(req, config)
    if parsed.reply is not None:
        return JSONResponse(parsed.reply)
    if files:
        parsed.messages = [_with_files(m, files) for m in parsed.messages]
    outcome = await _store(ctx, channel, parsed.messages, parsed.statuses)
    if outcome.stored:
        task = asyncio.get_running_loop().create_task(_echo_all(ctx, outcome.stored))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)
    body = {"ok": True, "received": len(outcome.stored) + outcome.settled,
            "duplicates": outcome.duplicates, "ignored": outcome.ignored, "statuses": outcome.statuses}
    # The handler's own time (verify, parse, store), apart from queueing in front of it.
    elapsed_ms = (time.perf_counter() - started) * 1000
    return JSONResponse(body, headers={"Server-Timing": f"app;dur={elapsed_ms:.1f}"})


def _with_files(m: ChannelMessage, files: list[dict[str, Any]]) -> ChannelMessage:
    from dataclasses import replace

    known = {a.get("filename") for a in m.attachments}
    return replace(m, attachments=[*m.attachments, *(f for f in files if f["filename"] not in known)])


async def _check_replay(ctx: Any, channel_id: UUID, key: str, body: bytes) -> None:
    """A signed one-time token (Mailgun's) seen with another body is a replay: refused. The same
    body again is the provider's retry: it goes on, and storage dedupes it."""
    digest = hashlib.sha256(body).hexdigest()
    rkey = f"webhook:replay:{channel_id}:{key}"
    ttl = 2 * ctx.settings.webhook_signature_max_age_s
    if await ctx.redis.set(rkey, digest, nx=True, ex=ttl):
        return
    seen = await ctx.redis.get(rkey)
    if seen != digest:
        raise SignatureInvalid("this webhook's signed token was already used with another body: refused "
                               "as a replay")


async def _store(ctx: Any, channel: Any, messages: list[ChannelMessage], statuses: list[Any]) -> _Outcome:
    out = _Outcome()
    tenant_id = channel["tenant_id"]
    idle_h = ctx.settings.channel_session_idle_hours
    async with ctx.pool.acquire() as conn:
        for m in messages:
            target = channel
            if channel["type"] == "whatsapp" and m.route and m.route != (channel["config"] or {}).get(
                    "phone_number_id"):
                target = await ch_db.whatsapp_channel_for_number(conn, tenant_id, m.route)
                if target is None:
                    log.warning("whatsapp webhook for unknown phone_number_id %s ignored", m.route)
                    out.ignored += 1
                    continue
            async with conn.transaction():
                stored = await _store_one(conn, target, m, idle_h)
            if stored is None:
                out.duplicates += 1
            elif stored.message.kind == "message" or stored.message.kind == "greeting":
                out.stored.append(stored)
            else:
                out.settled += 1
        for st in statuses:
            target_id = channel["id"]
            if st.route and st.route != (channel["config"] or {}).get("phone_number_id"):
                other = await ch_db.whatsapp_channel_for_number(conn, tenant_id, st.route)
                target_id = other["id"] if other is not None else target_id
            out.statuses += await outbox_db.record_delivery_status(
                conn, target_id, st.provider_message_id, st.status, st.error, st.at)
    return out


async def _store_one(conn: Any, channel: Any, m: ChannelMessage, idle_h: float) -> _Stored | None:
    """Contact, session and message in the caller's transaction; None for a duplicate."""
    tenant_id, channel_id = channel["tenant_id"], channel["id"]
    if await msg_db.external_message_exists(conn, channel_id, m.external_id):
        return None
    kind, value = m.identity
    contact_id = await contact_db.resolve_contact(conn, tenant_id, channel_id, kind, value, m.contact_name)
    thread = dict(m.thread)
    matched: UUID | None = None
    if channel["type"] == "email":
        refs = [r for r in [thread.get("in_reply_to"), *(thread.get("references") or [])] if r]
        matched = await sess_db.session_for_email_thread(conn, tenant_id, channel_id, refs)
        thread["subject_key"] = normalize_subject(str(thread.get("subject") or ""))
        if matched is None and thread["subject_key"]:
            matched = await sess_db.session_for_email_subject(conn, tenant_id, channel_id, contact_id,
                                                              thread["subject_key"])
    session, _ = await sess_db.open_channel_session(
        conn, tenant_id, channel_id, contact_id, m.address, thread, idle_h, session_id=matched,
        new=channel["type"] == "email" and matched is None,
        csat_reply=m.kind == "message" and sess_db.parse_csat_score(m.text) is not None)
    row, created = await msg_db.insert_customer_message(
        conn, tenant_id, session["id"], channel_id, m.text, m.attachments, None, m.external_id)
    if not created:
        return None
    if m.kind in ("message", "greeting"):
        await msg_db.notify_inbound(conn, tenant_id, session["id"])
    if m.kind in ("opt_out", "opt_in"):
        # Twilio answers STOP/START itself (Advanced Opt-Out); the bot says nothing, and after
        # STOP nothing more is sent to the number.
        await contact_db.set_opt_out(conn, tenant_id, channel_id, m.address, m.kind == "opt_out")
        await msg_db.settle_customer_message(conn, tenant_id, int(row["id"]), "answered", m.kind)
    return _Stored(tenant_id, session["id"], row, m)


async def _echo_all(ctx: Any, stored: list[_Stored]) -> None:
    """The customer's messages on their sessions' event streams, for the inbox."""
    events = SessionEvents(ctx.redis)
    for s in stored:
        mid = int(s.row["id"])
        try:
            await events.publish(s.session_id, "message", f"{mid}:0", message_payload(s.row), turn=mid)
        except Exception:  # noqa: BLE001 - cosmetic: the message is stored and will be answered
            log.warning("webhook message %s not published to session %s", mid, s.session_id)
