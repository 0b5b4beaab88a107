"""Server-sent events of a session: one turn's events, or all of them, read from Redis.

HTTP handlers only read the session's stream (the actor writes it), so a dropped connection never
aborts an answer, and any ingress replica can serve any stream.

Caps on open event streams (``GET .../events``), per session (``max_streams_per_session``) and per
tenant (``max_streams_per_tenant``): each open stream holds a slot, a member of two Redis sorted
sets (``chat:streams:s:<session_id>``, ``chat:streams:t:<tenant_id>``) scored by its lease's
expiry. :func:`acquire_stream_slot` takes one before the response starts (beyond a cap: 429
TooManyStreams with ``Retry-After``, and no stream); the process refreshes all its open slots
together every :data:`SLOT_REFRESH_S` (one pipeline, not a round trip per stream) and a stream
releases its slot when it ends, the client disconnects or the response is cancelled. A replica
killed with streams open leaks nothing: expired slots are pruned before every count, within
:data:`STREAM_LEASE_S`.

Many open streams: events are read through the process's multiplexed reader
(:class:`runtime.events.StreamHub`), so an idle stream costs a queue, a few asyncio tasks and its
HTTP connection, and wakes only every :data:`IDLE_WAKE_S` to see whether its client is still
there (sse-starlette's own ping keeps proxies from closing it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import UUID

import anyio
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from runtime.config import Settings
from runtime.errors import DependencyUnavailable, TooManyStreams
from runtime.events import TERMINAL_KINDS, SessionEvent, SessionEvents
from runtime.leases import FIRST_FULL, SECOND_FULL, take_lease

log = logging.getLogger(__name__)

KEEPALIVE_S = 10.0
IDLE_WAKE_S = 20.0  # an idle session stream checks its client this often
SLOT_REFRESH_S = 10.0
SLOT_TICK_S = 1.0  # how often the refresher looks for slots due
SLOT_RETRY_S = 5.0
SLOT_REFRESH_BATCH = 250
STREAM_PING_S = 25
"""sse-starlette's keep-alive comment on an idle session stream: under the 60 s idle timeout of
common proxies and load balancers, and 40 % fewer sends than its default of 15 s (each one a
message through Serve's proxy: 10,000 open streams at 15 s were ~670 a second)."""
STREAM_LEASE_S = 3 * SLOT_REFRESH_S  # a slot not refreshed for this long is free again
STREAM_RETRY_AFTER_S = 10
_SLOT_KEY_TTL_S = 3600

def session_streams_key(session_id: Any) -> str:
    """Redis sorted set of the session's open event streams."""
    return f"chat:streams:s:{session_id}"


def tenant_streams_key(tenant_id: Any) -> str:
    """Redis sorted set of the tenant's open event streams."""
    return f"chat:streams:t:{tenant_id}"


class StreamSlot:
    """One open event stream's place under the caps (``slot_id`` in both sets; ``redis`` None:
    an unaccounted slot, Redis being unreachable when it was taken). While open it is refreshed
    with the process's other slots (:class:`_SlotRefresher`); :meth:`release` is idempotent."""

    def __init__(self, redis: aioredis.Redis | None, tenant_id: Any, session_id: Any) -> None:
        self.redis = redis
        self.keys = (session_streams_key(session_id), tenant_streams_key(tenant_id))
        self.slot_id = uuid.uuid4().hex
        self.refreshed_at = time.monotonic()
        self.released = False

    async def refresh(self, every_s: float = KEEPALIVE_S) -> None:
        """Extend the lease to :data:`STREAM_LEASE_S` from now, at most once per ``every_s``
        seconds. A Redis error is logged (the next refresh tries again). Open slots are refreshed
        by their process anyway; this is for a caller that wants it now."""
        if self.redis is None or self.released or time.monotonic() - self.refreshed_at < every_s:
            return
        self.refreshed_at = time.monotonic()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key in self.keys:
                    pipe.zadd(key, {self.slot_id: time.time() + STREAM_LEASE_S})
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("event stream slot not refreshed (%s)", type(exc).__name__)

    async def release(self) -> None:
        """Give the slot back, even from a cancelled task (shielded). Errors are logged: the
        lease then expires on its own."""
        if self.redis is None or self.released:
            return
        self.released = True
        _refresher(self.redis).slots.discard(self)
        with anyio.CancelScope(shield=True):
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for key in self.keys:
                        pipe.zrem(key, self.slot_id)
                    await pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("event stream slot not released (%s); it expires in %.0f s",
                            type(exc).__name__, STREAM_LEASE_S)


class _SlotRefresher:
    """Refreshes every open slot of this process (on one Redis client) about every
    :data:`SLOT_REFRESH_S`: each :data:`SLOT_TICK_S` it refreshes the slots that are due, in
    pipelines of :data:`SLOT_REFRESH_BATCH`. Streams open at different moments, so the work is
    spread over the period instead of arriving as one burst (10,000 slots at once held this
    replica's other requests for the burst's length)."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self.slots: set[StreamSlot] = set()
        self.loop = asyncio.get_running_loop()
        self.task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SLOT_TICK_S)
            due_before = time.monotonic() - SLOT_REFRESH_S
            slots = [s for s in self.slots if not s.released and s.refreshed_at <= due_before]
            expiry = time.time() + STREAM_LEASE_S
            # In batches, yielding between them: 10,000 slots in one pipeline would hold the
            # event loop (and every request of this replica) while their replies are parsed.
            for i in range(0, len(slots), SLOT_REFRESH_BATCH):
                batch = slots[i:i + SLOT_REFRESH_BATCH]
                try:
                    async with self.redis.pipeline(transaction=False) as pipe:
                        for slot in batch:
                            for key in slot.keys:
                                pipe.zadd(key, {slot.slot_id: expiry}, xx=True)
                        await pipe.execute()
                    now = time.monotonic()
                    for slot in batch:
                        slot.refreshed_at = now
                except (RedisError, OSError) as exc:
                    # Redis away: the rest waits too, and the next try is in SLOT_RETRY_S, not
                    # at every tick (the leases outlast a few tries: STREAM_LEASE_S).
                    log.warning("%d event stream slots not refreshed (%s); next try in %.0f s",
                                len(slots) - i, type(exc).__name__, SLOT_RETRY_S)
                    await asyncio.sleep(SLOT_RETRY_S)
                    break
                await asyncio.sleep(0)


_REFRESHERS: dict[int, _SlotRefresher] = {}


def _refresher(redis: aioredis.Redis) -> _SlotRefresher:
    ref = _REFRESHERS.get(id(redis))
    if ref is None or ref.redis is not redis or ref.loop is not asyncio.get_running_loop():
        ref = _REFRESHERS[id(redis)] = _SlotRefresher(redis)
    return ref


async def acquire_stream_slot(redis: aioredis.Redis, settings: Settings, tenant_id: Any,
                              session_id: Any) -> StreamSlot:
    """A slot for one more open event stream of ``session_id`` (of ``tenant_id``).

    Raises TooManyStreams (429, ``retry_after_s`` = :data:`STREAM_RETRY_AFTER_S`) when the
    session has ``max_streams_per_session`` open streams or the tenant ``max_streams_per_tenant``;
    with Redis unreachable, an unaccounted slot (``rate_limit_fail_open``, the default) or
    DependencyUnavailable (503).
    """
    slot = StreamSlot(redis, tenant_id, session_id)
    now = time.time()
    try:
        res = await take_lease(
            redis, slot.keys, slot.slot_id, now=now, lease_s=STREAM_LEASE_S, key_ttl_s=_SLOT_KEY_TTL_S,
            caps=(settings.max_streams_per_session, settings.max_streams_per_tenant))
    except (RedisError, OSError) as exc:
        if settings.rate_limit_fail_open:
            log.warning("event stream caps not checked: Redis unreachable (%s)", type(exc).__name__)
            return StreamSlot(None, tenant_id, session_id)
        raise DependencyUnavailable(
            "Redis is unreachable, so the conversation's events cannot be streamed; try again "
            "shortly") from exc
    if res == FIRST_FULL:
        raise TooManyStreams(
            f"too many open event streams for this conversation (at most "
            f"{settings.max_streams_per_session}): close another tab or window showing it, or "
            "reuse its stream", retry_after_s=STREAM_RETRY_AFTER_S)
    if res == SECOND_FULL:
        raise TooManyStreams(
            f"too many open event streams for this workspace (at most "
            f"{settings.max_streams_per_tenant}, CHAT_ENGINE_MAX_STREAMS_PER_TENANT): try again "
            f"in {STREAM_RETRY_AFTER_S} s", retry_after_s=STREAM_RETRY_AFTER_S)
    _refresher(redis).slots.add(slot)
    return slot


def is_turn_end(ev: SessionEvent) -> bool:
    """``done``, ``error`` or ``aborted`` end a turn's stream; an ``aborted`` that only marks a
    superseded attempt (a restarted or retried turn answers again) does not, nor one that
    withdraws the half answer of a failed turn (its ``error`` follows: the customer is told)."""
    return ev.kind in TERMINAL_KINDS and not (
        ev.kind == "aborted" and (ev.data.get("superseded") or ev.data.get("failed")))


async def turn_events(
    events: SessionEvents, session_id: UUID, turn: int, after: str, *, timeout_s: float,
    keepalive_s: float = KEEPALIVE_S,
) -> AsyncIterator[dict[str, str]]:
    """SSE dicts of one turn's events (from stream position ``after``) up to the turn's end.

    After ``timeout_s`` seconds without it the stream ends with an ``error`` event
    (``turn_timeout``), telling the client to fetch the messages instead: it never hangs.
    """
    deadline = time.monotonic() + timeout_s
    block_ms = int(keepalive_s * 1000)
    async for ev in events.read(session_id, after=after, block_ms=block_ms):
        if time.monotonic() > deadline:
            yield {"event": "error", "id": f"{turn}:t", "data": json.dumps({
                "code": "turn_timeout",
                "message": "The answer is taking too long; fetch the conversation's messages to see it."})}
            return
        if ev is None:
            yield {"comment": "keep-alive"}
            continue
        if ev.turn != turn:
            continue
        yield ev.sse()
        if is_turn_end(ev):
            return


async def session_event_stream(
    events: SessionEvents, session_id: UUID, last_event_id: str | None,
    is_disconnected: Callable[[], Awaitable[bool]], keepalive_s: float = IDLE_WAKE_S,
    slot: StreamSlot | None = None,
) -> AsyncIterator[dict[str, str]]:
    """All of the session's events after ``Last-Event-ID`` (or only new ones), forever (until
    the client goes). Every ``keepalive_s`` without events it checks the client and yields
    nothing (the response's ping keeps the connection alive). ``slot``
    (:func:`acquire_stream_slot`): held while the stream is open, released when it ends for any
    reason."""
    try:
        if last_event_id:
            after = await events.stream_id_after_event(session_id, last_event_id)
        else:
            after = await events.last_stream_id(session_id)
        async for ev in events.read(session_id, after=after, block_ms=int(keepalive_s * 1000)):
            if await is_disconnected():
                return
            if ev is None:
                continue
            yield ev.sse()
    finally:
        if slot is not None:
            await slot.release()


async def replay_answer(answer: dict[str, Any] | None, turn: int) -> AsyncIterator[dict[str, str]]:
    """SSE for a repeated client_msg_id: the original answer (if any), then ``done``."""
    if answer is not None:
        yield {"event": "message", "id": f"{answer['id']}:r", "data": json.dumps(answer)}
        yield {"event": "done", "id": f"{answer['id']}:rd",
               "data": json.dumps({"message_id": answer["id"], "duplicate": True})}
    else:
        yield {"event": "done", "id": f"{turn}:rd",
               "data": json.dumps({"message_id": turn, "duplicate": True})}
    await asyncio.sleep(0)
