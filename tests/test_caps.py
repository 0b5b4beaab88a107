"""Caps (issue 16, hardening): beyond them a 429 or 503 with ``Retry-After`` and a clear message,
and the service stays healthy.

- Open event streams per session (CHAT_ENGINE_MAX_STREAMS_PER_SESSION, 3 in these tests) and per
  tenant (the default, 20000: the tenant's set is filled with live stand-in slots).
- Live session actors per tenant and per node (the defaults, 2000 and 10000: the sets are filled
  with live stand-in leases). A session whose actor is live is always served; a channel message
  that arrives at the cap stays stored and is answered once there is room.
- Actors started ahead of a first message (the widget warms one per new session) stay within the
  warm budgets (the defaults, 12 per tenant and 24 per node: the node's set is filled with
  stand-ins): beyond them a session gets no actor until its first message, which is answered.
- Customer messages waiting behind the running turn (CHAT_ENGINE_MAX_TURN_QUEUE, 4 in these
  tests): the widget's message beyond them is refused and not stored; a channel's never is.
- Escalated sessions passivate like any other: the SLA still fires, an agent's reply still
  lands.

Everything runs on the real stack (Postgres, Redis, Ray, Serve); the running turn is held by
locking the tenant's knowledge-base partition, where its search waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import ray
import redis

from runtime.config import get_settings, load_settings
from runtime.conversation.capacity import (
    ADMITTED,
    ALREADY_LIVE,
    CAPACITY_RETRY_AFTER_S,
    admit_actor,
    admit_warm,
    hold_lease,
    live_actors,
    node_key,
    release_lease,
    release_warm,
    tenant_key,
    warm_node_key,
    warm_tenant_key,
)
from runtime.errors import CapacityExceeded, TooManyStreams
from tests.channel_helpers import create_channel, post_webhook, telegram_text
from tests.chat_helpers import ask, kinds, new_session, parse_sse, widget_channel
from tests.conftest import Services, TenantInfo, make_tenant

pytestmark = pytest.mark.timeout(600)

QUESTION = "When is the shop open on Saturdays?"
ANSWER = "On Saturdays the shop is open from 9 am to 4 pm."


@pytest.fixture
def rds(services: Services) -> Iterator[redis.Redis]:
    """A redis-py client on the test Redis (the caps' sets live there)."""
    client = redis.Redis.from_url(services.redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
async def ards(services: Services) -> AsyncIterator[Any]:
    """The runtime's own asyncio Redis client on the test Redis."""
    from runtime.events import redis_client

    client = redis_client(services.redis_url)
    yield client
    await client.aclose()


@contextlib.contextmanager
def filled(rds: redis.Redis, key: str, cap: int) -> Iterator[dict[str, float]]:
    """``key`` (a caps sorted set) topped up to ``cap`` live members with stand-ins (leases ten
    minutes ahead) for the block; the stand-ins are removed after it."""
    now = time.time()
    live = rds.zcount(key, now, "+inf")
    fakes = {f"stand-in-{uuid.uuid4().hex}": now + 600 for _ in range(max(0, cap - live))}
    if fakes:
        rds.zadd(key, fakes)
    try:
        yield fakes
    finally:
        if fakes:
            rds.zrem(key, *fakes)


def _actor(tenant_id: str, session_id: str) -> Any:
    return ray.get_actor(f"session:{tenant_id}:{session_id}", namespace="chat")


def _actor_gone(tenant_id: str, session_id: str) -> bool:
    try:
        _actor(tenant_id, session_id)
    except ValueError:
        return True
    return False


async def _wait(pred: Any, timeout_s: float, what: str, every_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = await pred()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(every_s)


async def _qa_tenant(client: httpx.AsyncClient, name: str) -> TenantInfo:
    tenant = await make_tenant(client, name)
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={"question": QUESTION, "answer": ANSWER})
    assert r.status_code in (200, 201), r.text
    return tenant


@contextlib.asynccontextmanager
async def held_search(db: Any, tenant_id: str) -> AsyncIterator[Any]:
    """Hold every turn of the tenant in its search: its knowledge-base partition locked for the
    block. Yields an ``async () -> bool``: whether a turn waits on the lock."""
    partition = await db.fetchval("SELECT kb_chunks_partition($1::uuid)", tenant_id)
    async with db.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(f"LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE")

        async def waiting() -> bool:
            return bool(await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass", partition))

        try:
            yield waiting
        finally:
            await tx.rollback()


# ------------------------------------------------------------------ caps' logic on real Redis
async def test_actor_leases_count_live_actors_only(ards: Any) -> None:
    """Tenant cap 2, node cap 3: a third session of the tenant is refused with a 503 and a clear
    message, AND a session already holding a lease passes, AND an expired lease (a crashed actor)
    frees its place, AND a released one does."""
    settings = load_settings(max_active_sessions_per_tenant=2, max_active_sessions_per_node=3)
    t1, t2, node = uuid.uuid4(), uuid.uuid4(), f"node-{uuid.uuid4().hex}"
    s = [uuid.uuid4() for _ in range(6)]
    try:
        assert await admit_actor(ards, settings, t1, s[0], node) == ADMITTED
        assert await admit_actor(ards, settings, t1, s[0], node) == ALREADY_LIVE
        assert await admit_actor(ards, settings, t1, s[1], node) == ADMITTED
        with pytest.raises(CapacityExceeded) as refused:
            await admit_actor(ards, settings, t1, s[2], node)
        assert refused.value.status_code == 503 and refused.value.retry_after_s == CAPACITY_RETRY_AFTER_S
        assert "already has 2 active conversations" in refused.value.message
        assert await live_actors(ards, tenant_key(t1)) == 2
        # s[1]'s actor crashed: its lease in the tenant's set lapsed, and no longer counts.
        await ards.zadd(tenant_key(t1), {str(s[1]): time.time() - 1})
        assert await admit_actor(ards, settings, t1, s[2], node) == ADMITTED
        # The node's set still holds s[0], s[1] and s[2]: full for another tenant's session.
        with pytest.raises(CapacityExceeded) as node_full:
            await admit_actor(ards, settings, t2, s[3], node)
        assert "this server already holds 3 active conversations" in node_full.value.message
        await release_lease(ards, t1, s[1], node)
        assert await admit_actor(ards, settings, t2, s[3], node) == ADMITTED
        # A live actor's own refresh keeps it counted (and lets it through at once).
        await hold_lease(ards, t2, s[3], node)
        assert await admit_actor(ards, settings, t2, s[3], node) == ALREADY_LIVE
    finally:
        await ards.delete(tenant_key(t1), tenant_key(t2), node_key(node))


async def test_warm_budget_bounds_actors_started_ahead_of_a_message(ards: Any) -> None:
    """Warm budget 2 per tenant, 3 per node: a third warm of a tenant is declined, AND a session
    already holding a place keeps it, AND the node's budget counts all tenants, AND a released
    place (the first real call came) is free again; a budget of 0 never warms."""
    settings = load_settings(warm_sessions_per_tenant=2, warm_sessions_per_node=3, warm_idle_s=60)
    t1, t2, node = uuid.uuid4(), uuid.uuid4(), f"node-{uuid.uuid4().hex}"
    s = [uuid.uuid4() for _ in range(5)]
    try:
        assert await admit_warm(ards, settings, t1, s[0], node) is True
        assert await admit_warm(ards, settings, t1, s[0], node) is True  # already holds one
        assert await admit_warm(ards, settings, t1, s[1], node) is True
        assert await admit_warm(ards, settings, t1, s[2], node) is False  # the tenant's budget
        assert await admit_warm(ards, settings, t2, s[3], node) is True
        assert await admit_warm(ards, settings, t2, s[4], node) is False  # the node's budget
        assert await ards.zcount(warm_node_key(node), time.time(), "+inf") == 3
        lease_end = await ards.zscore(warm_tenant_key(t1), str(s[0]))
        assert 55 < lease_end - time.time() <= 60  # a place lasts warm_idle_s
        await release_warm(ards, t1, s[0], node)
        assert await ards.zscore(warm_tenant_key(t1), str(s[0])) is None
        assert await admit_warm(ards, settings, t2, s[4], node) is True
        never = load_settings(warm_sessions_per_tenant=0)
        assert await admit_warm(ards, never, uuid.uuid4(), uuid.uuid4(), node) is False
    finally:
        await ards.delete(warm_tenant_key(t1), warm_tenant_key(t2), warm_node_key(node))


async def test_sessions_beyond_the_warm_budget_start_no_actor_until_their_first_message(
    client: httpx.AsyncClient, tenant: TenantInfo, rds: redis.Redis
) -> None:
    """With room in the warm budget a new session's actor starts before any message and gives
    its warm place back on the first one; with the node's budget spent, a new session starts no
    process, AND its first message is answered all the same."""
    channel = await widget_channel(client, tenant.headers)
    node = ray.get_runtime_context().get_node_id()
    warmed = await new_session(client, channel["widget_token"])

    async def started() -> bool:
        return not _actor_gone(tenant.id, warmed.session_id)

    await _wait(started, 60, "the warmed session's actor")
    assert rds.zscore(warm_tenant_key(tenant.id), warmed.session_id) is not None
    assert kinds(await ask(client, warmed, "hello"))[-1] == "done"

    async def given_back() -> bool:
        return rds.zscore(warm_tenant_key(tenant.id), warmed.session_id) is None

    await _wait(given_back, 30, "the warm place given back after the first message")
    with filled(rds, warm_node_key(node), get_settings().warm_sessions_per_node):
        cold = await new_session(client, channel["widget_token"])
        await asyncio.sleep(3)  # a warm would have created the named actor by now (see above)
        assert _actor_gone(tenant.id, cold.session_id)
        assert rds.zscore(warm_tenant_key(tenant.id), cold.session_id) is None
        assert kinds(await ask(client, cold, "hello"))[-1] == "done"
        assert not _actor_gone(tenant.id, cold.session_id)


async def test_stream_slots_are_capped_released_and_expire(ards: Any) -> None:
    """Session cap 2, tenant cap 3: a third stream of a session is refused (429, a clear message),
    AND a released slot is taken again at once, AND an expired one (a killed replica) is pruned;
    the tenant's cap counts all its sessions."""
    from runtime.api.streams import acquire_stream_slot, session_streams_key, tenant_streams_key

    settings = load_settings(max_streams_per_session=2, max_streams_per_tenant=3)
    tenant, a, b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    try:
        first = await acquire_stream_slot(ards, settings, tenant, a)
        second = await acquire_stream_slot(ards, settings, tenant, a)
        with pytest.raises(TooManyStreams) as refused:
            await acquire_stream_slot(ards, settings, tenant, a)
        assert refused.value.status_code == 429 and refused.value.retry_after_s > 0
        assert "too many open event streams for this conversation (at most 2)" in refused.value.message
        assert "close another tab" in refused.value.message
        await first.release()
        await first.release()  # idempotent
        third = await acquire_stream_slot(ards, settings, tenant, a)
        await acquire_stream_slot(ards, settings, tenant, b)
        with pytest.raises(TooManyStreams) as tenant_full:
            await acquire_stream_slot(ards, settings, tenant, b)
        assert "for this workspace (at most 3" in tenant_full.value.message
        # `second`'s replica was killed: its lease lapses and its place is free again.
        for key in (session_streams_key(a), tenant_streams_key(tenant)):
            await ards.zadd(key, {second.slot_id: time.time() - 1})
        await acquire_stream_slot(ards, settings, tenant, b)
        # Of a's, only `third` is live (the lapsed one is pruned when a's set is next counted).
        assert await ards.zrangebyscore(session_streams_key(a), time.time(), "+inf") == [third.slot_id]
    finally:
        await ards.delete(session_streams_key(a), session_streams_key(b), tenant_streams_key(tenant))


# ------------------------------------------------------------------ open event streams
async def test_event_streams_beyond_the_session_cap_get_429_and_a_closed_one_frees_its_slot(
    client: httpx.AsyncClient, app_url: str, tenant: TenantInfo, rds: redis.Redis
) -> None:
    from runtime.api.streams import STREAM_LEASE_S, session_streams_key, tenant_streams_key

    cap = get_settings().max_streams_per_session
    assert cap == 3, "tests/conftest.py sets CHAT_ENGINE_MAX_STREAMS_PER_SESSION=3"
    channel = await widget_channel(client, tenant.headers)
    s = await new_session(client, channel["widget_token"])
    path = f"/v1/widget/sessions/{s.session_id}/events"
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(base_url=app_url, timeout=60))
                   for _ in range(cap)]
        streams = [await stack.enter_async_context(c.stream("GET", path, headers=s.headers))
                   for c in clients]
        assert [r.status_code for r in streams] == [200] * cap
        assert rds.zcard(session_streams_key(s.session_id)) == cap
        over = await client.get(path, headers=s.headers)
        assert over.status_code == 429, over.text
        assert int(over.headers["retry-after"]) > 0
        err = over.json()["error"]
        assert err["code"] == "too_many_streams"
        assert err["message"].startswith(f"too many open event streams for this conversation (at most {cap})")
        assert "close another tab" in err["message"]
        # The streams within the cap work: one of them carries the next turn's events.
        turn = asyncio.create_task(ask(client, s, "hello"))
        seen: list[str] = []

        async def follow() -> None:
            async for ev in parse_sse(streams[0]):
                seen.append(ev.event)
                if ev.event == "done":
                    return

        await asyncio.wait_for(follow(), 60)
        assert kinds(await turn)[-1] == "done"
        assert seen[0] == "message" and seen[-1] == "done", seen
        # One stream closed (its client gone): its slot is free well before its lease would
        # have lapsed, and a new stream is accepted.
        closed_at = time.monotonic()
        await streams[0].aclose()
        await clients[0].aclose()

        async def reopened() -> httpx.Response | None:
            resp = await stack.enter_async_context(client.stream("GET", path, headers=s.headers))
            if resp.status_code == 200:
                return resp
            await resp.aclose()
            return None

        again = await _wait(reopened, STREAM_LEASE_S / 2, "a stream after one was closed", 0.3)
        assert again.status_code == 200 and time.monotonic() - closed_at < STREAM_LEASE_S / 2
        assert rds.zcard(session_streams_key(s.session_id)) == cap
    # Every stream closed: every slot given back (none left to expire), the tenant's too.
    async def all_released() -> bool:
        return rds.zcard(session_streams_key(s.session_id)) == 0

    await _wait(all_released, STREAM_LEASE_S / 2, "the closed streams' slots")
    assert rds.zcard(tenant_streams_key(tenant.id)) == 0
    assert (await client.get("/healthz")).status_code == 200


async def test_event_streams_beyond_the_tenant_cap_get_429(
    client: httpx.AsyncClient, tenant: TenantInfo, rds: redis.Redis
) -> None:
    from runtime.api.streams import tenant_streams_key

    cap = get_settings().max_streams_per_tenant
    channel = await widget_channel(client, tenant.headers)
    s = await new_session(client, channel["widget_token"])
    path = f"/v1/widget/sessions/{s.session_id}/events"
    with filled(rds, tenant_streams_key(tenant.id), cap):
        over = await client.get(path, headers=s.headers)
        assert over.status_code == 429 and int(over.headers["retry-after"]) > 0, over.text
        assert f"for this workspace (at most {cap}" in over.json()["error"]["message"]
        assert (await client.get("/healthz")).status_code == 200
    async with client.stream("GET", path, headers=s.headers) as resp:
        assert resp.status_code == 200


# ------------------------------------------------------------------ live session actors
async def test_tenant_actor_cap_refuses_new_sessions_and_serves_live_ones(
    client: httpx.AsyncClient, tenant: TenantInfo, rds: redis.Redis, ards: Any, db: Any
) -> None:
    from actors.session import admit_session

    settings = get_settings()
    cap = settings.max_active_sessions_per_tenant
    channel = await widget_channel(client, tenant.headers)
    live = await new_session(client, channel["widget_token"])
    assert kinds(await ask(client, live, "hello"))[-1] == "done"
    key = tenant_key(tenant.id)
    assert rds.zscore(key, live.session_id) is not None  # the live actor holds its lease
    with filled(rds, key, cap) as fakes:
        new = await new_session(client, channel["widget_token"])  # the row; no actor is started
        r = await client.post(f"/v1/widget/sessions/{new.session_id}/messages", headers=new.headers,
                              json={"text": "hello", "client_msg_id": "refused-1"})
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) == CAPACITY_RETRY_AFTER_S
        err = r.json()["error"]
        assert err["code"] == "capacity_exceeded"
        assert f"already has {cap} active conversations" in err["message"] and "try again" in err["message"]
        stored = await db.fetchval("SELECT count(*) FROM messages WHERE session_id = $1",
                                   uuid.UUID(new.session_id))
        assert stored == 0
        assert _actor_gone(tenant.id, new.session_id)
        # The session whose actor is live is served as before, and the service is healthy.
        assert kinds(await ask(client, live, "thanks!"))[-1] == "done"
        assert (await client.get("/healthz")).status_code == 200
        # Even with its lease lost (Redis flushed, say), an existing actor is never refused.
        rds.zrem(key, live.session_id)
        extra = {f"stand-in-{uuid.uuid4().hex}": time.time() + 600}
        fakes.update(extra)  # removed with the others
        rds.zadd(key, extra)
        await admit_session(ards, settings, tenant.id, live.session_id)
        with pytest.raises(CapacityExceeded):
            await admit_session(ards, settings, tenant.id, new.session_id)
    # Room again: the refused session is answered.
    assert kinds(await ask(client, new, "hello"))[-1] == "done"
    assert rds.zscore(key, new.session_id) is not None


async def test_node_actor_cap_refuses_new_sessions_of_any_tenant(
    client: httpx.AsyncClient, tenant: TenantInfo, rds: redis.Redis
) -> None:
    cap = get_settings().max_active_sessions_per_node
    node = ray.get_runtime_context().get_node_id()
    channel = await widget_channel(client, tenant.headers)
    with filled(rds, node_key(node), cap):
        s = await new_session(client, channel["widget_token"])
        r = await client.post(f"/v1/widget/sessions/{s.session_id}/messages", headers=s.headers,
                              json={"text": "hello", "client_msg_id": "node-1"})
        assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, r.text
        assert f"this server already holds {cap} active conversations" in r.json()["error"]["message"]
        assert (await client.get("/healthz")).status_code == 200
    assert kinds(await ask(client, s, "hello"))[-1] == "done"


async def test_channel_message_at_the_actor_cap_is_kept_and_answered_later(
    client: httpx.AsyncClient, rds: redis.Redis, db: Any
) -> None:
    """A webhook at the cap is acknowledged and its message stored; no actor starts (the
    Timekeeper defers the hand-over); once there is room the stale-message sweep answers it."""
    tenant = await _qa_tenant(client, "caps-channel")
    ch = await create_channel(client, tenant.headers, "telegram")
    timekeeper = ray.get_actor("timekeeper", namespace="chat")
    deferred_before = (await timekeeper.stats.remote())["deferred"]
    chat_id = 880000 + int(time.time()) % 10000
    with filled(rds, tenant_key(tenant.id), get_settings().max_active_sessions_per_tenant):
        r = await post_webhook(client, ch, telegram_text(chat_id, QUESTION))
        assert r.status_code == 200, r.text

        async def stored() -> Any:
            return await db.fetchrow(
                "SELECT id, session_id, status FROM messages WHERE channel_id = $1 AND sender = 'customer'",
                uuid.UUID(ch["id"]))

        msg = await _wait(stored, 10, "the channel message stored")

        async def deferred() -> bool:
            return (await timekeeper.stats.remote())["deferred"] > deferred_before

        await _wait(deferred, 10, "the Timekeeper deferring the hand-over")
        await asyncio.sleep(1)
        assert await db.fetchval("SELECT status FROM messages WHERE id = $1", msg["id"]) == "received"
        assert _actor_gone(tenant.id, str(msg["session_id"]))
    # Room again: the sweep (messages `received` for CHAT_ENGINE_STALE_MESSAGE_S) hands it over.
    stale_s = get_settings().stale_message_s

    async def answered() -> bool:
        return bool(await db.fetchval(
            "SELECT count(*) FROM messages WHERE reply_to = $1 AND sender = 'ai'", msg["id"]))

    await _wait(answered, stale_s + 60, "the kept message answered", 0.5)
    assert await db.fetchval("SELECT status FROM messages WHERE id = $1", msg["id"]) != "received"


# ------------------------------------------------------------------ the turn queue
async def test_widget_message_beyond_the_turn_queue_is_refused_unstored_and_the_queued_are_answered(
    client: httpx.AsyncClient, db: Any
) -> None:
    cap = get_settings().max_turn_queue
    assert cap == 4, "tests/conftest.py sets CHAT_ENGINE_MAX_TURN_QUEUE=4"
    tenant = await _qa_tenant(client, "caps-queue")
    channel = await widget_channel(client, tenant.headers)
    s = await new_session(client, channel["widget_token"])
    sid = uuid.UUID(s.session_id)

    async def customer_count() -> int:
        return int(await db.fetchval(
            "SELECT count(*) FROM messages WHERE session_id = $1 AND sender = 'customer'", sid))

    async with held_search(db, tenant.id) as waiting:
        running = asyncio.create_task(ask(client, s, QUESTION, client_msg_id="q0"))
        await _wait(waiting, 60, "the first turn held in its search", 0.05)
        queued = [asyncio.create_task(ask(client, s, QUESTION, client_msg_id=f"q{i}"))
                  for i in range(1, cap + 1)]
        await _wait(lambda: _is(customer_count, cap + 1), 60, "the queued messages stored")
        over = await client.post(f"/v1/widget/sessions/{s.session_id}/messages", headers=s.headers,
                                 json={"text": QUESTION, "client_msg_id": "q-over"})
        assert over.status_code == 429, over.text
        assert int(over.headers["retry-after"]) > 0
        err = over.json()["error"]
        assert err["code"] == "turn_queue_full"
        assert f"{cap} messages are already waiting" in err["message"] and "send it again" in err["message"]
        assert await customer_count() == cap + 1  # the refused message was not stored
        assert await db.fetchval("SELECT count(*) FROM messages WHERE client_msg_id = 'q-over'") == 0
        # A repeat of a queued message is no new message: it follows its turn.
        repeat = asyncio.create_task(ask(client, s, QUESTION, client_msg_id="q2"))
        await asyncio.sleep(0.5)
        assert not repeat.done()
    results = await asyncio.wait_for(asyncio.gather(running, *queued, repeat), 180)
    assert [kinds(r)[-1] for r in results] == ["done"] * (cap + 2), [kinds(r) for r in results]
    rows = await db.fetch(
        """SELECT c.client_msg_id, c.status, a.text FROM messages c
           LEFT JOIN messages a ON a.reply_to = c.id AND a.sender = 'ai'
           WHERE c.session_id = $1 AND c.sender = 'customer' ORDER BY c.id""", sid)
    assert sorted(r["client_msg_id"] for r in rows) == [f"q{i}" for i in range(cap + 1)]
    assert all(r["status"] != "received" and r["text"] and "9 am" in r["text"] for r in rows), rows
    # Sent again once the queue has drained, it is answered.
    assert kinds(await ask(client, s, QUESTION, client_msg_id="q-over"))[-1] == "done"


async def _is(count: Any, n: int) -> bool:
    return bool(await count() >= n)


async def test_channel_messages_beyond_the_turn_queue_are_all_answered(
    client: httpx.AsyncClient, db: Any
) -> None:
    """Stored by the webhook (acknowledged to the provider) before the session sees them: the
    queue cap never refuses them."""
    cap = get_settings().max_turn_queue
    tenant = await _qa_tenant(client, "caps-channel-queue")
    ch = await create_channel(client, tenant.headers, "telegram")
    chat_id = 890000 + int(time.time()) % 10000
    total = cap + 3

    async def customer_rows() -> list[Any]:
        return list(await db.fetch(
            "SELECT id, status FROM messages WHERE channel_id = $1 AND sender = 'customer' ORDER BY id",
            uuid.UUID(ch["id"])))

    async with held_search(db, tenant.id) as waiting:
        assert (await post_webhook(client, ch, telegram_text(chat_id, QUESTION))).status_code == 200
        await _wait(waiting, 60, "the first turn held in its search", 0.05)
        for _ in range(total - 1):
            assert (await post_webhook(client, ch, telegram_text(chat_id, QUESTION))).status_code == 200

        async def all_stored() -> bool:
            return len(await customer_rows()) == total

        await _wait(all_stored, 30, "every channel message stored")
    rows = await customer_rows()

    async def all_answered() -> bool:
        return bool(await db.fetchval(
            "SELECT count(DISTINCT reply_to) FROM messages "
            "WHERE reply_to = ANY($1::bigint[]) AND sender = 'ai'",
            [r["id"] for r in rows]) == total)

    await _wait(all_answered, 180, f"all {total} channel messages answered", 0.5)
    assert all(r["status"] != "received" for r in await customer_rows())


# ------------------------------------------------------------------ escalated sessions passivate
async def _passivated(tenant_id: str, session_id: str) -> None:
    """Passivate the session's actor without ``force`` (retried while a call is still in flight)
    and wait until it is gone."""
    async def passivate() -> bool:
        res = await _actor(tenant_id, session_id).passivate.remote()
        assert res["status"] == "human_escalated", res
        return bool(res["passivated"])

    await _wait(passivate, 10, "the escalated session passivated", 0.2)
    await _wait(lambda: asyncio.to_thread(_actor_gone, tenant_id, session_id), 10, "the actor gone")


async def test_escalated_session_passivates_and_its_sla_and_agent_reply_still_work(
    client: httpx.AsyncClient, rds: redis.Redis, db: Any
) -> None:
    tenant = await make_tenant(client, "caps-escalated")
    r = await client.patch("/v1/bot-config", headers=tenant.headers,
                           json={"sla_minutes": 0.15, "sla_fallback_message": "Sorry for the wait!"})
    assert r.status_code == 200, r.text
    channel = await widget_channel(client, tenant.headers)
    s = await new_session(client, channel["widget_token"])
    r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
    assert r.json()["status"] == "human_escalated"
    key = tenant_key(tenant.id)
    assert rds.zscore(key, s.session_id) is not None
    # No `force`: a session waiting for an agent passivates like any other.
    await _passivated(tenant.id, s.session_id)
    assert rds.zscore(key, s.session_id) is None  # its place under the cap given back
    assert await db.fetchval("SELECT count(*) FROM timers WHERE session_id = $1",
                             uuid.UUID(s.session_id)) == 1  # the SLA is a stored row

    async def sla_fired() -> bool:
        return bool(await db.fetchval(
            "SELECT count(*) FROM messages WHERE session_id = $1 AND sender = 'system' AND text = $2",
            uuid.UUID(s.session_id), "Sorry for the wait!"))

    await _wait(sla_fired, 60, "the SLA fallback", 0.5)
    assert rds.zscore(key, s.session_id) is not None  # the Timekeeper's activation holds a lease
    await _passivated(tenant.id, s.session_id)
    # The agent's reply activates it again and reaches the customer.
    r = await client.post(f"/v1/sessions/{s.session_id}/reply", headers=tenant.headers,
                          json={"text": "Hi, Owner here."})
    assert r.status_code == 200 and r.json()["agent_name"] == "Owner", r.text
    msgs = (await client.get(f"/v1/widget/sessions/{s.session_id}/messages", headers=s.headers)).json()
    assert msgs["status"] == "human_assigned"
    assert [m["text"] for m in msgs["messages"] if m["sender"] == "agent"] == ["Hi, Owner here."]
    assert not _actor_gone(tenant.id, s.session_id)
