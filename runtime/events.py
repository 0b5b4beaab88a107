"""Session event fan-out through Redis Streams, so any ingress replica can serve any stream.

One stream per session (``chat:ev:<session_id>``), capped and expiring. Each entry holds the SSE
event name, its id (``<message_id>:<seq>``, DESIGN.md), the JSON data and the turn it belongs to
(the customer message id). Readers resume after a ``Last-Event-ID`` by position in the stream.
Tenant-wide inbox notifications go to pub/sub ``chat:inbox:<tenant_id>`` and to the tenant's inbox
stream ``chat:inbox-ev:<tenant_id>`` (capped), which the agents' live view reads and resumes by
stream id.

Reading is multiplexed: a process's :class:`StreamHub` tails every stream its readers follow
with a few ``XREAD BLOCK`` calls over many keys at once (one per :data:`HUB_SHARD_KEYS` keys, each
on its own Redis connection) and fans the entries out to in-process subscribers, so an open event
stream is a queue in memory, not a Redis connection blocked for it (Redis accepts 10,000 clients by
default; an ingress replica holding 10,000 streams needs ~40 connections). Any stream key can be
followed (:meth:`StreamHub.subscribe`); :meth:`SessionEvents.read` is the session events' view.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

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


REDIS_MAX_CONNECTIONS = 256
"""Connections a process's client opens at most; a command beyond them waits for a free one
(up to :data:`REDIS_POOL_WAIT_S`) instead of failing (redis-py's default pool refuses the 101st)."""
REDIS_POOL_WAIT_S = 10.0


def redis_client(url: str) -> aioredis.Redis:
    """A decode_responses client whose socket timeout outlasts blocking stream reads, on a
    blocking pool of at most :data:`REDIS_MAX_CONNECTIONS` connections."""
    pool: Any = aioredis.BlockingConnectionPool.from_url(
        url, decode_responses=True, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=5.0,
        health_check_interval=30, max_connections=REDIS_MAX_CONNECTIONS, timeout=REDIS_POOL_WAIT_S,
    )
    client: aioredis.Redis = aioredis.Redis.from_pool(pool)  # type: ignore[attr-defined]
    return client  # it owns its pool and closes it


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
        """Events after stream id ``after``, then live ones, forever, through this process's
        :class:`StreamHub` for the client (no Redis connection of its own).

        Yields None after each ``block_ms`` without events (a chance to send a keep-alive or
        check the client). Redis being unreachable meanwhile only delays events: the hub resumes
        where it was once Redis is back.
        """
        sub = hub_for(self.redis).subscribe(stream_key(session_id), after)
        try:
            while True:
                entry = await sub.next(block_ms / 1000)
                yield None if entry is None else parse_event(*entry)
        finally:
            sub.close()

    async def history(self, session_id: Any, after: str = "0-0") -> list[SessionEvent]:
        """Events already in the stream after ``after`` (no waiting)."""
        start = "(" + after if after != "0-0" else "-"
        entries = await self.redis.xrange(stream_key(session_id), min=start)
        return [
            SessionEvent(fields["k"], fields["i"], json.loads(fields["d"]),
                         int(fields.get("t", 0)), str(sid))
            for sid, fields in entries
        ]


def parse_event(stream_id: str, fields: dict[str, str]) -> SessionEvent:
    """A session stream entry as a :class:`SessionEvent`."""
    return SessionEvent(kind=fields["k"], id=fields["i"], data=json.loads(fields["d"]),
                        turn=int(fields.get("t", 0)), stream_id=stream_id)


# ------------------------------------------------------------------------------ multiplexed reads
HUB_SHARD_KEYS = 256
"""Stream keys per ``XREAD`` call (and Redis connection) of a :class:`StreamHub`."""
HUB_BLOCK_MS = 5_000
HUB_READ_COUNT = 200
SUBSCRIBER_QUEUE_MAX = 1_000
"""Entries waiting for one subscriber; beyond it, it catches up from Redis instead (nothing lost)."""
_RETRY_MAX_S = 2.0

Entry = tuple[str, dict[str, str]]


def _sid(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One reader of one stream key: entries (``(stream_id, fields)``) after its cursor, in
    order, each once. Get them with :meth:`next`; :meth:`close` when done."""

    def __init__(self, hub: StreamHub, key: str, after: str, catch_up: bool) -> None:
        self.hub = hub
        self.key = key
        self.cursor = after
        self._queue: asyncio.Queue[Entry] = asyncio.Queue()
        self._pending: deque[Entry] = deque()  # read from Redis by a catch-up, before the queue
        self._catch_up = catch_up  # entries before the hub's position are read from Redis first
        self.closed = False

    def _put(self, entry: Entry) -> None:
        if self._catch_up:
            return  # the catch-up read from Redis covers it
        if self._queue.qsize() >= SUBSCRIBER_QUEUE_MAX:
            while not self._queue.empty():  # a slow reader: drop the backlog, read it from Redis
                self._queue.get_nowait()
            self._catch_up = True
            return
        self._queue.put_nowait(entry)

    def _take(self, entry: Entry) -> Entry | None:
        if _sid(entry[0]) <= _sid(self.cursor):
            return None  # had it already (a catch-up and the live feed overlap)
        self.cursor = entry[0]
        return entry

    async def next(self, timeout_s: float) -> Entry | None:
        """The next entry, or None after ``timeout_s`` seconds without one. Raises what redis-py
        raises while catching up (the caller's stream ends; a client resumes with Last-Event-ID)."""
        while True:
            while self._pending:
                if (entry := self._take(self._pending.popleft())) is not None:
                    return entry
            if self._catch_up:
                # Entries after the cursor, up to now, are served before the queue: live ones
                # that queue meanwhile are newer, and the overlap is skipped by the cursor.
                self._catch_up = False
                start = "(" + self.cursor if self.cursor != "0-0" else "-"
                page = await self.hub.redis.xrange(self.key, min=start, count=HUB_READ_COUNT)
                self._catch_up = len(page) == HUB_READ_COUNT
                self._pending.extend((str(sid), fields) for sid, fields in page)
                continue
            try:
                entry = await asyncio.wait_for(self._queue.get(), timeout_s)
            except TimeoutError:
                return None
            if (taken := self._take(entry)) is not None:
                return taken

    def close(self) -> None:
        """Stop receiving (idempotent)."""
        if not self.closed:
            self.closed = True
            self.hub._unsubscribe(self)


class _Shard:
    """Up to :data:`HUB_SHARD_KEYS` keys tailed by one ``XREAD BLOCK`` loop on one connection."""

    def __init__(self, hub: StreamHub, index: int) -> None:
        self.hub = hub
        self.cursors: dict[str, str] = {}
        self.control = f"chat:hub:{hub.hub_id}:{index}"
        self.control_cursor = "0-0"
        self.blocked = False
        self.woken = False
        self.has_keys = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._run())

    def add(self, key: str, after: str) -> None:
        self.cursors[key] = after
        self.has_keys.set()
        if self.blocked and not self.woken:
            self.woken = True  # one wake per XREAD, however many keys came meanwhile
            task = asyncio.get_running_loop().create_task(self._wake())
            self.hub._background.add(task)
            task.add_done_callback(self.hub._background.discard)

    async def _wake(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # the read then ends at its block time
            async with self.hub.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self.control, {"w": "1"}, maxlen=16, approximate=True)
                pipe.expire(self.control, 3600)
                await pipe.execute()

    async def _run(self) -> None:
        retry_s = 0.1
        while True:
            if not self.cursors:
                self.has_keys.clear()
                await self.has_keys.wait()
            streams = {self.control: self.control_cursor, **self.cursors}
            self.blocked, self.woken = True, False
            try:
                res = await self.hub.redis.xread(streams, count=HUB_READ_COUNT, block=self.hub.block_ms)
            except (RedisError, OSError) as exc:
                self.hub.errors += 1
                log.warning("event streams not read (%s); retrying in %.1f s", type(exc).__name__, retry_s)
                await asyncio.sleep(retry_s)
                retry_s = min(_RETRY_MAX_S, retry_s * 2)
                continue
            finally:
                self.blocked = False
            retry_s = 0.1
            for key, entries in res or []:
                key = str(key)
                if key == self.control:
                    self.control_cursor = str(entries[-1][0])
                    continue
                if key not in self.cursors:
                    continue  # its last reader left while the read was under way
                subs = self.hub._subs.get(key, ())
                for sid, fields in entries:
                    entry = (str(sid), fields)
                    for sub in subs:
                        sub._put(entry)
                self.cursors[key] = str(entries[-1][0])


class StreamHub:
    """Tails many Redis streams for the subscribers of one process (see the module doc).

    redis: a ``decode_responses`` client whose socket timeout outlasts ``block_ms`` (its pool
    lends each shard a connection for its blocking read). Create it in the event loop that reads
    (:func:`hub_for` does); it lives as long as that loop.
    """

    def __init__(self, redis: aioredis.Redis, block_ms: int = HUB_BLOCK_MS) -> None:
        self.redis = redis
        self.loop = asyncio.get_running_loop()
        self.block_ms = block_ms
        self.hub_id = uuid.uuid4().hex[:12]
        self._shards: list[_Shard] = []
        self._shard_of: dict[str, _Shard] = {}
        self._subs: dict[str, set[Subscription]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self.errors = 0

    def subscribe(self, key: str, after: str = "0-0") -> Subscription:
        """Follow stream ``key`` from after stream id ``after`` ("0-0": from its start)."""
        shard = self._shard_of.get(key)
        sub = Subscription(self, key, after, catch_up=shard is not None)
        self._subs.setdefault(key, set()).add(sub)
        if shard is None:
            # The key's first reader: the hub reads from its position, history included.
            shard = next((s for s in self._shards if len(s.cursors) < HUB_SHARD_KEYS), None)
            if shard is None:
                shard = _Shard(self, len(self._shards))
                self._shards.append(shard)
            self._shard_of[key] = shard
            shard.add(key, after)
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.key]
            shard = self._shard_of.pop(sub.key, None)
            if shard is not None:
                shard.cursors.pop(sub.key, None)

    def stats(self) -> dict[str, int]:
        """keys followed, subscribers, shards (Redis connections held by reads), read errors."""
        return {"keys": len(self._shard_of), "subscribers": sum(len(s) for s in self._subs.values()),
                "shards": len(self._shards), "errors": self.errors}


_HUBS: weakref.WeakKeyDictionary[Any, dict[int, StreamHub]] = weakref.WeakKeyDictionary()


def hub_for(redis: aioredis.Redis) -> StreamHub:
    """The :class:`StreamHub` of ``redis`` (the client) in the running event loop."""
    loop = asyncio.get_running_loop()
    per_loop = _HUBS.setdefault(redis, {})
    hub = per_loop.get(id(loop))
    if hub is None or hub.loop is not loop:
        hub = per_loop[id(loop)] = StreamHub(redis)
    return hub
