"""Faults on the real stack: Redis or Postgres cut under a session actor (through a killable
loopback proxy), the Timekeeper started with Postgres down, a takeover while a turn is searching,
an actor killed mid-stream. Each test says what breaks and what must still hold: no customer
message lost, none answered twice, memory and Postgres agreeing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from tests.chat_helpers import SseEvent, WidgetSession, ask, kinds, widget_channel
from tests.conftest import LoopbackProxy, Services, TenantInfo, make_tenant

pytestmark = pytest.mark.timeout(600)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
async def shop(app_url: str) -> dict[str, Any]:
    """A tenant with the demo bike shop's knowledge base and a widget channel."""
    async with httpx.AsyncClient(base_url=app_url, timeout=300) as client:
        tenant = await make_tenant(client, "faults")
        files = [("file", (p.name, p.read_bytes(), "text/markdown"))
                 for p in sorted((REPO / "widget" / "sample_kb").glob("*.md"))]
        r = await client.post("/v1/kb/ingest", headers=tenant.headers, files=files)
        assert r.status_code == 202, r.text
        for _ in range(600):
            job = (await client.get(f"/v1/kb/jobs/{r.json()['id']}", headers=tenant.headers)).json()
            if job["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.5)
        assert job["status"] == "completed", job
        channel = await widget_channel(client, tenant.headers)
    return {"tenant": tenant, "channel": channel}


async def _proxied_session(db: Any, shop: dict[str, Any], services: Services,
                           env: dict[str, str]) -> tuple[WidgetSession, Any]:
    """A widget session whose actor reaches Postgres/Redis through ``env``'s URLs. The session is
    created in the database (not through the API, which would start its actor with the normal
    URLs first) and its token is signed like the API signs it."""
    from actors.session import session_actor
    from runtime.config import get_settings
    from runtime.db import sessions as sess_db
    from runtime.security import issue_session_token

    tenant_id = uuid.UUID(shop["tenant"].id)
    channel_id = uuid.UUID(shop["channel"]["id"])
    async with db.acquire() as conn:
        contact = await sess_db.upsert_contact(conn, tenant_id, channel_id, f"v-{uuid.uuid4().hex}")
        row = await sess_db.create_session(conn, tenant_id, channel_id, contact, "https://shop.example")
    token, _ = issue_session_token(get_settings(), tenant_id, row["id"], channel_id, "https://shop.example")
    actor = session_actor(tenant_id, row["id"], {**services.env, **env})
    await actor.ping.remote()
    session = WidgetSession(str(row["id"]), token, shop["channel"]["widget_token"], "")
    return session, actor


async def _ai_answers(db: Any, session_id: str) -> list[Any]:
    return await db.fetch(
        """SELECT a.id, a.reply_to FROM messages a WHERE a.session_id = $1 AND a.sender = 'ai'
           AND a.status = 'sent' AND a.intent = 'answer'""", uuid.UUID(session_id))


async def test_redis_cut_during_submit_then_the_retry_is_answered_once(
    client: httpx.AsyncClient, shop: dict[str, Any], db: Any, services: Services
) -> None:
    """Broken: the actor's Redis is down when the customer's message arrives (its echo cannot be
    published, its turn cannot stream), and the customer's request gives up. Must hold: the message
    is kept and answered once Redis is back; the customer's retry with the same client_msg_id gets
    that one answer, and no second one is made."""
    proxy = LoopbackProxy.for_url(services.redis_url)
    await proxy.start()
    try:
        s, _actor = await _proxied_session(db, shop, services,
                                           {"CHAT_ENGINE_REDIS_URL": proxy.url(services.redis_url)})
        proxy.block()
        try:
            early = await asyncio.wait_for(
                ask(client, s, "How much is the full service?", client_msg_id="r-1"), timeout=4)
        except (TimeoutError, httpx.HTTPError):
            early = None  # the customer gave up, as meant
        assert early is None, f"a turn streamed with Redis down: {kinds(early)} (refused {proxy.refused})"
        assert proxy.refused > 0  # the actor did try Redis, and was refused
        status = await db.fetchval(
            "SELECT status FROM messages WHERE session_id = $1 AND client_msg_id = 'r-1'",
            uuid.UUID(s.session_id))
        assert status == "received"  # stored, not lost, not yet answered
        proxy.unblock()
        events = await asyncio.wait_for(
            ask(client, s, "How much is the full service?", client_msg_id="r-1"), timeout=120)
        answers = [e for e in events if e.event == "message" and e.data["sender"] == "ai"]
        assert len(answers) == 1 and "119" in answers[0].data["text"], kinds(events)
        assert kinds(events)[-1] == "done"
        await asyncio.sleep(1.0)  # a second answer would land here
        rows = await _ai_answers(db, s.session_id)
        assert [r["id"] for r in rows] == [answers[0].data["id"]]
    finally:
        await proxy.stop()


async def test_postgres_cut_during_an_escalation_keeps_memory_and_database_agreeing(
    client: httpx.AsyncClient, shop: dict[str, Any], db: Any, services: Services
) -> None:
    """Broken: Postgres is unreachable while the "Talk to a human" escalation commits. Must hold:
    a clear 503, the actor's status and the database's both still ``ai_handled``, no escalation
    row; with Postgres back, the next message is answered by the bot."""
    proxy = LoopbackProxy.for_url(services.database_url)
    await proxy.start()
    try:
        s, actor = await _proxied_session(db, shop, services, {
            "CHAT_ENGINE_DATABASE_URL": proxy.url(services.database_url),
            "CHAT_ENGINE_TURN_RETRY_WINDOW_S": "3"})
        proxy.block()
        r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "dependency_unavailable"
        assert (await actor.status.remote())["status"] == "ai_handled"
        assert await db.fetchval("SELECT status FROM sessions WHERE id = $1",
                                 uuid.UUID(s.session_id)) == "ai_handled"
        assert await db.fetchval("SELECT count(*) FROM escalations WHERE session_id = $1",
                                 uuid.UUID(s.session_id)) == 0
        proxy.unblock()
        events = await asyncio.wait_for(ask(client, s, "When are you open on Saturdays?"), timeout=120)
        assert any(e.event == "message" and e.data["sender"] == "ai" for e in events), kinds(events)
        # And the button works now.
        r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
        assert r.status_code == 200 and r.json()["status"] == "human_escalated"
    finally:
        await proxy.stop()


async def test_timekeeper_started_with_postgres_down_fires_the_sla_once_back(
    client: httpx.AsyncClient, db: Any, services: Services
) -> None:
    """Broken: Postgres is unreachable when the Timekeeper starts. Must hold: it keeps polling,
    and once Postgres is back it fires a passivated session's due SLA."""
    from actors.timekeeper import ensure_timekeeper
    from runtime.constants import NAMESPACE, TIMEKEEPER_NAME

    tenant = await make_tenant(client, "tk-down")
    await client.patch("/v1/bot-config", headers=tenant.headers,
                       json={"sla_minutes": 0.02, "sla_fallback_message": "Still there? Sorry!"})
    channel = await widget_channel(client, tenant.headers)
    proxy = LoopbackProxy.for_url(services.database_url)
    await proxy.start()
    ray.kill(ray.get_actor(TIMEKEEPER_NAME, namespace=NAMESPACE), no_restart=True)
    await asyncio.sleep(0.5)
    try:
        proxy.block()
        tk = ensure_timekeeper({**services.env,
                                "CHAT_ENGINE_DATABASE_URL": proxy.url(services.database_url)})
        await asyncio.sleep(2.0)
        stats = await tk.stats.remote()
        assert stats["connected"] is False or stats["errors"] > 0, stats
        r = await client.post("/v1/widget/sessions", json={"widget_token": channel["widget_token"]},
                              headers={"Origin": "https://shop.example"})
        sid = r.json()["session_id"]
        headers = {"Authorization": f"Bearer {r.json()['session_token']}"}
        r = await client.post(f"/v1/widget/sessions/{sid}/handoff", headers=headers)
        assert r.json()["status"] == "human_escalated"
        actor = ray.get_actor(f"session:{tenant.id}:{sid}", namespace=NAMESPACE)
        assert (await actor.passivate.remote(force=True))["passivated"] is True
        await asyncio.sleep(2.0)  # the SLA is due now; only the Timekeeper can fire it
        assert await db.fetchval("SELECT count(*) FROM messages WHERE session_id = $1 AND sender = 'system' "
                                 "AND text = 'Still there? Sorry!'", uuid.UUID(sid)) == 0
        proxy.unblock()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await db.fetchval("SELECT count(*) FROM messages WHERE session_id = $1 AND text = $2",
                                 uuid.UUID(sid), "Still there? Sorry!"):
                break
            await asyncio.sleep(0.3)
        assert await db.fetchval("SELECT count(*) FROM messages WHERE session_id = $1 AND text = $2",
                                 uuid.UUID(sid), "Still there? Sorry!") == 1
        assert (await tk.stats.remote())["fired"] >= 1
    finally:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(TIMEKEEPER_NAME, namespace=NAMESPACE), no_restart=True)
        await asyncio.sleep(0.5)
        ensure_timekeeper(services.env)
        await proxy.stop()


async def test_takeover_while_a_turn_searches_stops_it(
    client: httpx.AsyncClient, shop: dict[str, Any], db: Any
) -> None:
    """Broken: the agent takes over while the turn is inside its knowledge-base search (held
    there by a lock on the tenant's partition). Must hold: no bot message after ``agent_joined``,
    no escalation over the agent, status ``human_assigned``; the customer's message in the inbox."""
    from tests.chat_helpers import new_session

    tenant: TenantInfo = shop["tenant"]
    s = await new_session(client, shop["channel"]["widget_token"])
    partition = await db.fetchval(
        "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = 'kb_chunks'::regclass "
        "AND inhrelid::regclass::text LIKE $1", f"%{tenant.id.replace('-', '')}%")
    assert partition
    async with db.acquire() as locker:
        tx = locker.transaction()
        await tx.start()
        await locker.execute(f"LOCK TABLE {partition} IN ACCESS EXCLUSIVE MODE")
        turn = asyncio.create_task(ask(client, s, "How much is the full service?"))
        waiting = 0
        for _ in range(400):
            waiting = await db.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::regclass", partition)
            if waiting:
                break
            await asyncio.sleep(0.05)
        assert waiting, "the turn never reached its search"
        takeover = asyncio.create_task(
            client.post(f"/v1/sessions/{s.session_id}/takeover", headers=tenant.headers))
        await asyncio.sleep(0.5)
        await tx.rollback()
    r = await takeover
    assert r.status_code == 200 and r.json()["status"] == "human_assigned", r.text
    events: list[SseEvent] = await asyncio.wait_for(turn, timeout=60)
    assert kinds(events)[-1] in ("done", "aborted")
    assert not [e for e in events if e.event in ("token", "handoff")]
    assert not [e for e in events if e.event == "message" and e.data["sender"] != "customer"]
    msgs = (await client.get(f"/v1/sessions/{s.session_id}/messages", headers=tenant.headers)).json()
    assert msgs["status"] == "human_assigned"
    assert [m["status"] for m in msgs["messages"] if m["sender"] == "customer"] == ["inbox"]
    assert not [m for m in msgs["messages"] if m["sender"] in ("ai", "system")]


async def test_actor_killed_after_the_first_token_marks_it_aborted_and_answers_once(
    client: httpx.AsyncClient, shop: dict[str, Any], db: Any
) -> None:
    """Broken: the session actor dies right after streaming its first token. Must hold: the turn's
    stream carries ``aborted`` (superseded) for that first answer id, then exactly one complete
    answer under another id; one answer in the database."""
    from tests.chat_helpers import new_session

    tenant: TenantInfo = shop["tenant"]
    # Generative, so the first token comes while the answer is still being written.
    r = await client.patch("/v1/bot-config", headers=tenant.headers, json={"answer_strategy": "generative"})
    assert r.status_code == 200, r.text
    s = await new_session(client, shop["channel"]["widget_token"])
    killed: dict[str, Any] = {}

    async def on_event(ev: SseEvent) -> None:
        if ev.event == "token" and not killed:
            killed["answer_id"] = ev.data["message_id"]
            ray.kill(ray.get_actor(f"session:{tenant.id}:{s.session_id}", namespace="chat"),
                     no_restart=False)

    try:
        events = await asyncio.wait_for(ask(client, s, "What does the e-bike service include?",
                                            on_event=on_event), timeout=180)
    finally:
        await client.patch("/v1/bot-config", headers=tenant.headers, json={"answer_strategy": None})
    assert killed, kinds(events)
    aborted = [e for e in events if e.event == "aborted"]
    answers = [e for e in events if e.event == "message" and e.data["sender"] == "ai"]
    if not aborted:  # the kill landed after the answer was stored: it must not be answered again
        assert len(answers) == 1 and answers[0].data["id"] == killed["answer_id"], kinds(events)
    else:
        assert aborted[0].data == {"message_id": killed["answer_id"], "superseded": True}
        assert len(answers) == 1 and answers[0].data["id"] != killed["answer_id"], kinds(events)
    assert kinds(events)[-1] == "done"
    await asyncio.sleep(1.0)
    assert len(await _ai_answers(db, s.session_id)) == 1
