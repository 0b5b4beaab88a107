"""Session event fan-out through Redis Streams, so any ingress replica can serve any stream.

One stream per session (``chat:ev:<session_id>``), capped and expiring. Each entry holds the SSE
event name, its id (``<message_id>:<seq>``, DESIGN.md), the JSON data and the turn it belongs to
(the customer message id). Readers resume after a ``Last-Event-ID`` by position in the stream,
and tail it with ``XREAD BLOCK``. Tenant-wide inbox notifications go to pub/sub
``chat:inbox:<tenant_id>`` and to the tenant's inbox stream ``chat:inbox-ev:<tenant_id>``
(capped), which the agents' live view reads and resumes by stream id.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

STREAM_MAXLEN = 5000
# Blocking stream reads wait this long; the client's socket timeout must exceed it (redis-py
# defaults to 5 s, which would cut every idle SSE stream).
BLOCK_MS = 10_000
SOCKET_TIMEOUT_S = 30.0
STREAM_TTL_S = 7 * 24 * 3600
TERMINAL_KINDS = frozenset({"done", "aborted", "error"})


def stream_key(session_id: Any) -> str:
    """Redis key of a session's event stream."""
    return f"chat:ev:{session_id}"


def inbox_channel(tenant_id: Any) -> str:
    """Redis pub/sub channel of a tenant's inbox notifications."""
    return f"chat:inbox:{tenant_id}"


def inbox_stream_key(tenant_id: Any) -> str:
    """Redis stream of a tenant's inbox notifications (the agents' SSE, resumable)."""
    return f"chat:inbox-ev:{tenant_id}"


INBOX_STREAM_MAXLEN = 10_000


@dataclass(frozen=True)
class SessionEvent:
    """One event: SSE ``event`` name, ``id`` (``<message_id>:<seq>``), JSON-able ``data``,
    the customer message id of the ``turn`` it belongs to (0: none), and its Redis stream id."""

    kind: str
    id: str
    data: dict[str, Any]
    turn: int = 0
    stream_id: str = "0-0"

    def sse(self) -> dict[str, str]:
        """The sse-starlette dict: ``{"event", "id", "data"}``."""
        return {"event": self.kind, "id": self.id, "data": json.dumps(self.data)}


def redis_client(url: str) -> aioredis.Redis:
    """A decode_responses client whose socket timeout outlasts blocking stream reads."""
    return aioredis.from_url(
        url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=5.0,
        health_check_interval=30,
    )


class SessionEvents:
    """Publish to and read from session event streams. ``redis``: a decode_responses client."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis

    async def publish(
        self, session_id: Any, kind: str, event_id: str, data: dict[str, Any], turn: int = 0
    ) -> str:
        """Append an event; returns its Redis stream id."""
        key = stream_key(session_id)
        fields = {"k": kind, "i": event_id, "d": json.dumps(data, default=str), "t": str(turn)}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(key, fields, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.expire(key, STREAM_TTL_S)
            res = await pipe.execute()
        return str(res[0])

    async def notify_inbox(self, tenant_id: Any, kind: str, data: dict[str, Any]) -> None:
        """Tell live inbox views of the tenant about an escalation, message or SLA breach
        (pub/sub, and the tenant's inbox stream for the agents' resumable SSE)."""
        body = json.dumps({"kind": kind, **data}, default=str)
        key = inbox_stream_key(tenant_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.publish(inbox_channel(tenant_id), body)
            pipe.xadd(key, {"k": kind, "d": body}, maxlen=INBOX_STREAM_MAXLEN, approximate=True)
            pipe.expire(key, STREAM_TTL_S)
            await pipe.execute()

    async def last_stream_id(self, session_id: Any) -> str:
        """The stream id of the newest event ("0-0" for an empty stream)."""
        entries = await self.redis.xrevrange(stream_key(session_id), count=1)
        return str(entries[0][0]) if entries else "0-0"

    async def stream_id_after_event(self, session_id: Any, event_id: str) -> str:
        """The stream id of the event whose SSE id is ``event_id`` ("0-0" if unknown/expired)."""
        key = stream_key(session_id)
        # Recent events are the usual case: scan backwards in pages.
        end = "+"
        while True:
            page = await self.redis.xrevrange(key, max=end, count=500)
            if not page:
                return "0-0"
            for sid, fields in page:
                if fields.get("i") == event_id:
                    return str(sid)
            last = str(page[-1][0])
            ms, seq = (int(x) for x in last.split("-"))
            if seq > 0:
                end = f"{ms}-{seq - 1}"
            elif ms > 0:
                end = f"{ms - 1}-18446744073709551615"
            else:
                return "0-0"

    async def read(
        self, session_id: Any, after: str = "0-0", block_ms: int = BLOCK_MS
    ) -> AsyncIterator[SessionEvent | None]:
        """Events after stream id ``after``, then live ones, forever.

        Yields None after each ``block_ms`` without events (a chance to send a keep-alive or
        check the client).
        """
        key = stream_key(session_id)
        cursor = after
        while True:
            res = await self.redis.xread({key: cursor}, count=200, block=block_ms)
            if not res:
                yield None
                continue
            for _key, entries in res:
                for sid, fields in entries:
                    cursor = str(sid)
                    yield SessionEvent(
                        kind=fields["k"], id=fields["i"], data=json.loads(fields["d"]),
                        turn=int(fields.get("t", 0)), stream_id=cursor,
                    )

    async def history(self, session_id: Any, after: str = "0-0") -> list[SessionEvent]:
        """Events already in the stream after ``after`` (no waiting)."""
        start = "(" + after if after != "0-0" else "-"
        entries = await self.redis.xrange(stream_key(session_id), min=start)
        return [
            SessionEvent(fields["k"], fields["i"], json.loads(fields["d"]),
                         int(fields.get("t", 0)), str(sid))
            for sid, fields in entries
        ]
