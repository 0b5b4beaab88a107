"""Shared plumbing of the widget and agent APIs: session actors, SSE turns, rate limits, tokens."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import jwt
import ray
import redis.asyncio as aioredis

from actors.session import session_actor
from actors.timekeeper import ensure_timekeeper
from runtime.config import Settings
from runtime.errors import RateLimited, SessionNotFound, Unauthorized
from runtime.events import TERMINAL_KINDS, SessionEvents

_HANDLES: OrderedDict[tuple[str, str], Any] = OrderedDict()
_HANDLE_CACHE_MAX = 10_000
_timekeeper_started = False


def _worker_env(settings: Settings) -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items()
            if k.startswith(("CHAT_ENGINE_", "HF_", "TRANSFORMERS_", "TOKENIZERS_"))}


def _handle(settings: Settings, tenant_id: UUID, session_id: UUID, fresh: bool = False) -> Any:
    global _timekeeper_started
    if not _timekeeper_started:
        ensure_timekeeper()
        _timekeeper_started = True
    key = (str(tenant_id), str(session_id))
    if not fresh and key in _HANDLES:
        _HANDLES.move_to_end(key)
        return _HANDLES[key]
    handle = session_actor(tenant_id, session_id, _worker_env(settings))
    _HANDLES[key] = handle
    if len(_HANDLES) > _HANDLE_CACHE_MAX:
        _HANDLES.popitem(last=False)
    return handle


async def call_session(
    settings: Settings, tenant_id: UUID, session_id: UUID, method: str, *args: Any, **kwargs: Any
) -> Any:
    """Call ``method`` on the session's actor, activating it if it was passivated.

    Raises what the actor raises (ChatEngineError subclasses are unwrapped from Ray's wrapper).
    """
    for attempt in range(2):
        handle = _handle(settings, tenant_id, session_id, fresh=attempt > 0)
        try:
            return await getattr(handle, method).remote(*args, **kwargs)
        except ray.exceptions.RayActorError:
            if attempt:  # passivated or died for good: a new actor takes over
                raise
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            inner = getattr(exc, "cause", None)
            raise (inner if isinstance(inner, Exception) else cause) from None
    raise AssertionError("unreachable")


# ------------------------------------------------------------------ session tokens
def issue_session_token(
    settings: Settings, tenant_id: UUID, session_id: UUID, channel_id: UUID, origin: str
) -> tuple[str, int]:
    """A signed token bound to the session and the host page's origin.

    Returns (token, expires_at as a Unix timestamp). HS256 under CHAT_ENGINE_SESSION_TOKEN_SECRET.
    """
    assert settings.session_token_secret is not None
    exp = int(time.time()) + settings.session_token_ttl_s
    claims = {"sid": str(session_id), "tid": str(tenant_id), "cid": str(channel_id),
              "org": origin, "exp": exp}
    token = jwt.encode(claims, settings.session_token_secret.get_secret_value(), algorithm="HS256")
    return token, exp


def verify_session_token(settings: Settings, token: str | None, session_id: UUID | None) -> dict[str, Any]:
    """The token's claims. Raises Unauthorized (missing, bad signature, expired, other session)."""
    if not token:
        raise Unauthorized("missing session token: send `Authorization: Bearer <session_token>`")
    assert settings.session_token_secret is not None
    try:
        claims = jwt.decode(token, settings.session_token_secret.get_secret_value(),
                            algorithms=["HS256"], options={"require": ["exp", "sid", "tid"]})
    except jwt.ExpiredSignatureError:
        raise Unauthorized("the session token expired: create the session again") from None
    except jwt.PyJWTError:
        raise Unauthorized("invalid session token") from None
    if session_id is not None and claims["sid"] != str(session_id):
        raise SessionNotFound(f"no session {session_id} for this token")
    return claims


# ------------------------------------------------------------------ rate limits
async def rate_limit(redis: aioredis.Redis, key: str, limit_per_min: int) -> None:
    """Fixed one-minute window counter. Raises RateLimited with the seconds left in the window."""
    window = int(time.time() // 60)
    rkey = f"chat:rl:{key}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(rkey)
        pipe.expire(rkey, 70)
        count, _ = await pipe.execute()
    if int(count) > limit_per_min:
        retry = 60 - int(time.time() % 60) or 1
        raise RateLimited(
            f"too many requests: at most {limit_per_min} a minute here; try again in {retry} s",
            retry_after_s=retry,
        )


# ------------------------------------------------------------------ SSE
async def turn_events(
    events: SessionEvents, session_id: UUID, turn: int, after: str, keepalive_s: float = 10.0,
) -> AsyncIterator[dict[str, str]]:
    """SSE dicts of one turn's events (from stream position ``after``) up to its terminal event
    (``done``, ``aborted`` or ``error``)."""
    async for ev in events.read(session_id, after=after, block_ms=int(keepalive_s * 1000)):
        if ev is None:
            yield {"comment": "keep-alive"}
            continue
        if ev.turn != turn:
            continue
        yield ev.sse()
        # Every turn ends with exactly one terminal event (`done`, `aborted` or `error`).
        if ev.kind in TERMINAL_KINDS:
            return


async def session_event_stream(
    events: SessionEvents, session_id: UUID, last_event_id: str | None,
    is_disconnected: Any, keepalive_s: float = 10.0,
) -> AsyncIterator[dict[str, str]]:
    """All of the session's events after ``Last-Event-ID`` (or only new ones), forever."""
    if last_event_id:
        after = await events.stream_id_after_event(session_id, last_event_id)
    else:
        after = await events.last_stream_id(session_id)
    async for ev in events.read(session_id, after=after, block_ms=int(keepalive_s * 1000)):
        if await is_disconnected():
            return
        if ev is None:
            yield {"comment": "keep-alive"}
            continue
        yield ev.sse()


async def replay_answer(answer: dict[str, Any] | None, turn: int) -> AsyncIterator[dict[str, str]]:
    """SSE for a repeated client_msg_id: the original answer (if any), then ``done``."""
    import json

    if answer is not None:
        yield {"event": "message", "id": f"{answer['id']}:r", "data": json.dumps(answer)}
        yield {"event": "done", "id": f"{answer['id']}:rd",
               "data": json.dumps({"message_id": answer["id"], "duplicate": True})}
    else:
        yield {"event": "done", "id": f"{turn}:rd",
               "data": json.dumps({"message_id": turn, "duplicate": True})}
    await asyncio.sleep(0)
