"""The multiplexed event-stream reader (runtime/events.py, StreamHub) on the real Redis: many open
streams share a few Redis connections, each reader gets every event after its position once and in
order, a reader joining late or falling behind catches up from the stream, and Redis going away
and coming back (through the killable proxy) loses nothing."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from runtime.events import (
    HUB_SHARD_KEYS,
    SUBSCRIBER_QUEUE_MAX,
    SessionEvents,
    StreamHub,
    hub_for,
    redis_client,
    stream_key,
)
from tests.conftest import LoopbackProxy, Services

pytestmark = pytest.mark.timeout(120)


async def _take(it: object, n: int, timeout_s: float = 10.0) -> list[str]:
    """The SSE ids of the next ``n`` events of a ``SessionEvents.read`` iterator."""
    out: list[str] = []

    async def run() -> None:
        async for ev in it:  # type: ignore[attr-defined]
            if ev is not None:
                out.append(ev.id)
                if len(out) == n:
                    return

    await asyncio.wait_for(run(), timeout_s)
    return out


async def test_many_streams_share_a_few_connections_and_each_gets_its_own_events(
    services: Services,
) -> None:
    """Broken: nothing; the point is the shape. Must hold: 600 readers of 600 streams hold
    ceil(600 / HUB_SHARD_KEYS) blocking reads (not 600 connections), and each reader gets exactly
    its stream's events, in order."""
    import redis.asyncio as aioredis

    # Named, so that its connections can be told from the rest of the suite's in CLIENT LIST.
    client = aioredis.Redis.from_url(services.redis_url, decode_responses=True, socket_timeout=30,
                                     client_name="hub-test", max_connections=1000)
    events = SessionEvents(client)
    sessions = [uuid.uuid4() for _ in range(600)]
    try:
        readers = [events.read(s, after="0-0", block_ms=2000) for s in sessions]
        firsts = [asyncio.ensure_future(_take(r, 2)) for r in readers]
        hub = hub_for(client)
        for _ in range(200):  # every reader subscribed (a busy machine takes longer than 0.5 s)
            if hub.stats()["keys"] == 600:
                break
            await asyncio.sleep(0.05)
        assert hub.stats()["keys"] == 600
        assert hub.stats()["shards"] == -(-600 // HUB_SHARD_KEYS)
        mine = [c for c in await client.client_list() if c.get("name") == "hub-test"]
        assert 0 < len(mine) < 10, mine  # the hub's reads, a wake or two, this test's own
        for i, s in enumerate(sessions):
            await events.publish(s, "token", f"{i}:0", {"n": i})
            await events.publish(s, "done", f"{i}:1", {"n": i})
        got = await asyncio.gather(*firsts)
        assert got == [[f"{i}:0", f"{i}:1"] for i in range(600)]
        for r in readers:
            await r.aclose()
        assert hub.stats()["keys"] == 0 and hub.stats()["subscribers"] == 0
    finally:
        await client.aclose()


async def test_a_late_reader_resumes_from_its_position_and_a_slow_one_catches_up(
    services: Services,
) -> None:
    """Broken: a second reader joins a stream the hub already follows, from an older position
    (a reconnect with Last-Event-ID); another stops reading while many events arrive. Must hold:
    the late reader gets everything after its position once, in order; the slow one too, read
    from the stream instead of an unbounded queue."""
    client = redis_client(services.redis_url)
    events = SessionEvents(client)
    s = uuid.uuid4()
    try:
        ids = [await events.publish(s, "token", f"1:{i}", {"i": i}) for i in range(5)]
        live = events.read(s, after=ids[-1], block_ms=1000)
        live_first = asyncio.ensure_future(_take(live, 1))
        await asyncio.sleep(0.2)
        await events.publish(s, "token", "1:5", {"i": 5})
        assert await live_first == ["1:5"]
        late = events.read(s, after=ids[1], block_ms=1000)  # resumes after the 2nd event
        assert await _take(late, 4) == ["1:2", "1:3", "1:4", "1:5"]
        slow = hub_for(client).subscribe(stream_key(s), ids[-1])
        n = SUBSCRIBER_QUEUE_MAX + 50
        for i in range(n):
            await events.publish(s, "token", f"2:{i}", {"i": i})
        got = []
        while len(got) < n + 1:
            entry = await slow.next(5.0)
            assert entry is not None, f"stalled after {len(got)}"
            got.append(entry[1]["i"])
        assert got == ["1:5"] + [f"2:{i}" for i in range(n)]
        slow.close()
        await live.aclose()
        await late.aclose()
    finally:
        await client.aclose()


async def test_redis_away_and_back_loses_no_event(services: Services) -> None:
    """Broken: the hub's Redis connection is cut and refused for a while (the killable proxy)
    while events are published. Must hold: the reader gets keep-alives meanwhile, then every
    event published during the outage, in order, once Redis is reachable again."""
    proxy = LoopbackProxy.for_url(services.redis_url)
    await proxy.start()
    direct = redis_client(services.redis_url)
    via_proxy = redis_client(proxy.url(services.redis_url))
    hub = StreamHub(via_proxy, block_ms=500)
    s = uuid.uuid4()
    try:
        publisher = SessionEvents(direct)
        start = await publisher.last_stream_id(s)
        sub = hub.subscribe(stream_key(s), start)
        await publisher.publish(s, "token", "1:0", {})
        first = await sub.next(5.0)
        assert first is not None and first[1]["i"] == "1:0"
        proxy.block()
        for i in range(1, 4):
            await publisher.publish(s, "token", f"1:{i}", {})
        assert await sub.next(1.0) is None  # a keep-alive: nothing can be read
        assert proxy.refused > 0
        proxy.unblock()
        got = []
        for _ in range(3):
            entry = await sub.next(10.0)
            assert entry is not None
            got.append(entry[1]["i"])
        assert got == ["1:1", "1:2", "1:3"]
        assert hub.errors > 0
        sub.close()
    finally:
        await proxy.stop()
        await direct.aclose()
        await via_proxy.aclose()
