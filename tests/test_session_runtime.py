"""The conversation runtime end to end, on real parts: Postgres, Redis, Ray session actors, the
Embedder and the llama.cpp Generator (SmolLM2), the fixture site and billing PDF ingested."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from tests.chat_helpers import (
    ORIGIN,
    SseEvent,
    WidgetSession,
    answer_text,
    ask,
    kinds,
    new_session,
    widget_channel,
)
from tests.conftest import Services, TenantInfo, free_port, make_tenant, wait_http

pytestmark = pytest.mark.timeout(900)


async def _wait_job(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/kb/jobs/{job_id}", headers=headers)).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(1)
    raise AssertionError(f"job {job_id} did not finish")


@pytest.fixture(scope="module")
def site_server(fixtures_dir: Path) -> Any:
    """The fixture help site on a loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
         "--directory", str(fixtures_dir / "kb-site")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(5)


@pytest.fixture(scope="module")
async def kb_tenant(app_url: str, site_server: str, fixtures_dir: Path) -> dict[str, Any]:
    """A tenant whose knowledge base holds the fixture site and the billing PDF, with a widget
    channel and a lead-capture rule for pricing questions."""
    async with httpx.AsyncClient(base_url=app_url, timeout=600) as client:
        tenant = await make_tenant(client, "kb-runtime")
        h = tenant.headers
        pdf = (fixtures_dir / "kb-pdf" / "billing-guide.pdf").read_bytes()
        r = await client.post("/v1/kb/ingest", headers=h,
                              files={"pdf": ("billing-guide.pdf", pdf, "application/pdf")})
        assert r.status_code in (200, 201, 202), r.text
        job = await _wait_job(client, h, r.json()["id"])
        assert job["status"] == "completed", job
        r = await client.post("/v1/kb/ingest", headers=h, json={"url": f"{site_server}/index.html"})
        assert r.status_code in (200, 201, 202), r.text
        job = await _wait_job(client, h, r.json()["id"])
        assert job["status"] == "completed", job
        # Generative, so these tests see the model's tokens (the CPU default, auto, is extractive).
        r = await client.patch("/v1/bot-config", headers=h, json={
            "business_name": "Plausible", "answer_strategy": "generative",
            "lead_capture": [{"topics": ["pricing", "price", "prices"],
                              "ask_message": "Happy to help! What's your email address?"}],
        })
        assert r.status_code == 200, r.text
        channel = await widget_channel(client, h)
        return {"tenant": tenant, "channel": channel}


def _session_actor(tenant_id: str, session_id: str) -> Any:
    return ray.get_actor(f"session:{tenant_id}:{session_id}", namespace="chat")


async def _messages(client: httpx.AsyncClient, tenant: TenantInfo, session_id: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/sessions/{session_id}/messages", headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


async def test_kb_question_streams_tokens_and_cites_the_pdf(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any], db: Any
) -> None:
    s = await new_session(client, kb_tenant["channel"]["widget_token"])
    assert s.greeting
    events = await ask(client, s, "is there a free trial?")
    names = kinds(events)
    assert names[0] == "message"  # the customer's own message, persisted first
    assert "token" in names and names[-1] == "done", [(e.event, e.data) for e in events]
    assert names.index("token") < names.index("done")
    answer = next(e for e in events if e.event == "message" and e.data["sender"] == "ai")
    assert answer["text"] if isinstance(answer, dict) else answer.data["text"]
    assert answer.data["text"].strip() == answer_text(events).strip()
    pdf_sources = [src for src in answer.data["sources"] if src["page"] is not None]
    assert pdf_sources, answer.data["sources"]
    row = await db.fetchrow(
        "SELECT status, source_chunk_ids, latency_ms, completion_tokens FROM messages WHERE id = $1",
        answer.data["id"],
    )
    assert row["status"] == "sent" and row["latency_ms"] > 0 and row["completion_tokens"] > 0
    pages = await db.fetch("SELECT page FROM kb_chunks WHERE id = ANY($1::bigint[])",
                           row["source_chunk_ids"])
    assert any(p["page"] is not None for p in pages)


async def test_explicit_human_request_escalates_and_plain_question_does_not(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any]
) -> None:
    tenant: TenantInfo = kb_tenant["tenant"]
    human = await new_session(client, kb_tenant["channel"]["widget_token"])
    events = await ask(client, human, "I want to talk to a human")
    assert "handoff" in kinds(events) and "token" not in kinds(events)
    handoff = next(e for e in events if e.event == "handoff")
    assert handoff.data["signal"] == "human_request"

    plain = await new_session(client, kb_tenant["channel"]["widget_token"])
    events = await ask(client, plain, "How do I add a website to my dashboard?")
    assert "handoff" not in kinds(events)
    assert "token" in kinds(events)

    escalated = (await client.get("/v1/sessions?status=human_escalated", headers=tenant.headers)).json()
    ids = {s["id"] for s in escalated}
    assert human.session_id in ids and plain.session_id not in ids


async def test_lead_capture_asks_for_email_then_answers(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any], db: Any
) -> None:
    s = await new_session(client, kb_tenant["channel"]["widget_token"])
    events = await ask(client, s, "What are your pricing plans?")
    ask_msg = next(e for e in events if e.event == "message" and e.data["sender"] == "ai")
    assert ask_msg.data["text"] == "Happy to help! What's your email address?"
    assert "token" not in kinds(events)

    events = await ask(client, s, "sure, it's not-an-email")
    retry = next(e for e in events if e.event == "message" and e.data["sender"] == "ai")
    assert "email" in retry.data["text"].lower() and "token" not in kinds(events)

    events = await ask(client, s, "it's Jane.Doe@Example.com")
    assert "token" in kinds(events), kinds(events)
    lead = await db.fetchrow("SELECT email, question FROM leads WHERE session_id = $1",
                             uuid.UUID(s.session_id))
    assert lead["email"] == "jane.doe@example.com"
    assert lead["question"] == "What are your pricing plans?"
    contact_email = await db.fetchval(
        "SELECT c.email FROM contacts c JOIN sessions s ON s.contact_id = c.id WHERE s.id = $1",
        uuid.UUID(s.session_id),
    )
    assert contact_email == "jane.doe@example.com"


async def test_two_messages_at_once_are_answered_in_order(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any], db: Any
) -> None:
    s = await new_session(client, kb_tenant["channel"]["widget_token"])
    first, second = await asyncio.gather(
        ask(client, s, "How do I export my stats?", client_msg_id="m1"),
        ask(client, s, "How do I reset my password?", client_msg_id="m2"),
    )
    assert kinds(first)[-1] == "done" and kinds(second)[-1] == "done"
    rows = await db.fetch(
        "SELECT id, sender, reply_to, client_msg_id FROM messages WHERE session_id = $1 ORDER BY id",
        uuid.UUID(s.session_id),
    )
    customer = [r for r in rows if r["sender"] == "customer"]
    replies = [r for r in rows if r["sender"] != "customer"]
    assert len(customer) == 2 and len(replies) == 2
    # Each reply answers the message before it: c1 < a1 < c2's answer, never interleaved.
    by_turn = {r["reply_to"]: r["id"] for r in replies}
    c_first = min(customer, key=lambda r: r["id"])
    c_second = max(customer, key=lambda r: r["id"])
    assert by_turn[c_first["id"]] < by_turn[c_second["id"]]
    # All token events of the first answer were published before any of the second's.
    tokens_first = [e for e in (first if c_first["client_msg_id"] == "m1" else second)
                    if e.event == "token"]
    tokens_second = [e for e in (second if c_first["client_msg_id"] == "m1" else first)
                     if e.event == "token"]
    assert tokens_first and tokens_second
    assert int(tokens_first[-1].id.split(":")[0]) < int(tokens_second[0].id.split(":")[0])


async def test_twenty_sessions_in_parallel_all_complete(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any]
) -> None:
    sessions = await asyncio.gather(
        *[new_session(client, kb_tenant["channel"]["widget_token"]) for _ in range(20)]
    )
    questions = ["How do I add a website?", "Can I export my stats?", "What is a goal?",
                 "How do I invite team members?"]
    results = await asyncio.gather(
        *[ask(client, s, questions[i % len(questions)]) for i, s in enumerate(sessions)]
    )
    assert len(results) == 20
    for events in results:
        assert kinds(events)[-1] == "done", kinds(events)


async def test_takeover_mid_generation_aborts_and_routes_to_inbox(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any], db: Any, services: Services
) -> None:
    tenant: TenantInfo = kb_tenant["tenant"]
    import redis.asyncio as aioredis

    from runtime.events import stream_key

    redis = aioredis.from_url(services.redis_url, decode_responses=True)

    # The takeover is sent at the first token; on a loaded machine the (48-token) answer can
    # finish before it reaches the actor. Then the whole answer must precede agent_joined, and
    # the test tries again with a new session, until a takeover lands mid-generation (CI's full
    # run once missed it 3 times in a row while the test alone lands it at once: 6 tries).
    for _attempt in range(6):
        s = await new_session(client, kb_tenant["channel"]["widget_token"])
        took_over = asyncio.Event()
        tokens_published_at_takeover = 0

        async def published_tokens(session_id: str = s.session_id) -> int:
            entries = await redis.xrange(stream_key(session_id))
            return sum(1 for _, f in entries if f["k"] == "token")

        async def on_event(ev: SseEvent, session_id: str = s.session_id,
                           took_over: asyncio.Event = took_over) -> None:
            nonlocal tokens_published_at_takeover
            if ev.event == "token" and not took_over.is_set():
                r = await client.post(f"/v1/sessions/{session_id}/takeover", headers=tenant.headers)
                assert r.status_code == 200, r.text
                # What the stream held when the takeover returned: later tokens are "after" it.
                tokens_published_at_takeover = await published_tokens()
                took_over.set()

        events = await ask(client, s, "Explain in detail how funnels and goals work in the dashboard.",
                           on_event=on_event)
        assert took_over.is_set(), kinds(events)
        if kinds(events)[-1] == "aborted":
            break
        assert kinds(events)[-1] == "done", kinds(events)
        order = [f["k"] for _, f in await redis.xrange(stream_key(s.session_id))]
        assert "agent_joined" in order and "message" in order, order
        assert order.index("agent_joined") > len(order) - 1 - order[::-1].index("done"), order
    else:
        pytest.fail("in 6 attempts the takeover never reached the actor while it was generating")
    tokens_total = await published_tokens()
    await redis.close()
    assert tokens_published_at_takeover >= 1
    assert tokens_total - tokens_published_at_takeover <= 1
    aborted_id = events[-1].data["message_id"]
    sent = await db.fetchval("SELECT count(*) FROM messages WHERE id = $1 AND status = 'sent'",
                             aborted_id)
    assert sent == 0
    ai_rows = await db.fetchval(
        "SELECT count(*) FROM messages WHERE session_id = $1 AND sender = 'ai'", uuid.UUID(s.session_id)
    )
    assert ai_rows == 0

    # The next customer message reaches the inbox only: no tokens, no AI answer.
    events = await ask(client, s, "Hello? Are you still there?")
    assert "token" not in kinds(events) and kinds(events)[-1] == "done"
    msgs = await _messages(client, tenant, s.session_id)
    last_customer = [m for m in msgs if m["sender"] == "customer"][-1]
    assert last_customer["status"] == "inbox"
    assert not [m for m in msgs if m["sender"] == "ai"]
    status = (await client.get(f"/v1/sessions/{s.session_id}/messages", headers=tenant.headers)).json()
    assert status["status"] == "human_assigned"
    # The agent's reply reaches the customer, with the agent's name.
    r = await client.post(f"/v1/sessions/{s.session_id}/reply", headers=tenant.headers,
                          json={"text": "Hi, Owner here."})
    assert r.status_code == 200 and r.json()["agent_name"] == "Owner"


async def test_killed_actor_comes_back_and_answers_exactly_once(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any], db: Any
) -> None:
    s = await new_session(client, kb_tenant["channel"]["widget_token"])
    tenant: TenantInfo = kb_tenant["tenant"]
    killed = asyncio.Event()

    async def on_event(ev: SseEvent) -> None:
        if ev.event == "token" and not killed.is_set():
            killed.set()
            ray.kill(_session_actor(tenant.id, s.session_id), no_restart=False)

    try:
        await asyncio.wait_for(ask(client, s, "How do I change my email address?", on_event=on_event),
                               timeout=20)
    except (TimeoutError, httpx.HTTPError):
        pass  # the turn's stream may end without `done` when its actor dies
    assert killed.is_set()
    deadline = time.monotonic() + 120
    answered: list[Any] = []
    while time.monotonic() < deadline:
        answered = await db.fetch(
            """SELECT a.id FROM messages a JOIN messages c ON a.reply_to = c.id
               WHERE c.session_id = $1 AND c.sender = 'customer' AND a.status = 'sent'""",
            uuid.UUID(s.session_id),
        )
        if answered:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(2)  # a duplicate answer would land in this window
    answered = await db.fetch(
        """SELECT a.id FROM messages a JOIN messages c ON a.reply_to = c.id
           WHERE c.session_id = $1 AND c.sender = 'customer' AND a.status = 'sent'""",
        uuid.UUID(s.session_id),
    )
    assert len(answered) == 1
    status = await _session_actor(tenant.id, s.session_id).status.remote()
    assert status["status"] in ("ai_handled", "human_escalated")


async def test_repeated_client_msg_id_is_answered_once_and_private(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any], db: Any
) -> None:
    s = await new_session(client, kb_tenant["channel"]["widget_token"])
    first = await ask(client, s, "How do I add a website?", client_msg_id="dup-1")
    again = await ask(client, s, "How do I add a website?", client_msg_id="dup-1")
    a1 = next(e for e in first if e.event == "message" and e.data["sender"] != "customer")
    a2 = next(e for e in again if e.event == "message")
    assert a1.data["id"] == a2.data["id"] and "token" not in kinds(again)
    count = await db.fetchval(
        "SELECT count(*) FROM messages WHERE session_id = $1 AND sender <> 'customer'",
        uuid.UUID(s.session_id),
    )
    assert count == 1
    # Another session using the same client_msg_id gets its own turn, never the first answer.
    other = await new_session(client, kb_tenant["channel"]["widget_token"])
    theirs = await ask(client, other, "What is a goal?", client_msg_id="dup-1")
    their_answer = next(e for e in theirs if e.event == "message" and e.data["sender"] != "customer")
    assert their_answer.data["id"] != a1.data["id"]
    # And the first session's token cannot read the other session.
    r = await client.get(f"/v1/widget/sessions/{other.session_id}/messages", headers=s.headers)
    assert r.status_code == 404
    r = await client.get(f"/v1/widget/sessions/{other.session_id}/messages", headers=other.headers)
    assert r.status_code == 200


async def test_sla_fires_for_a_passivated_session(
    client: httpx.AsyncClient, app_url: str, db: Any
) -> None:
    tenant = await make_tenant(client, "sla")
    r = await client.patch("/v1/bot-config", headers=tenant.headers,
                           json={"sla_minutes": 0.15, "sla_fallback_message": "Sorry for the wait!"})
    assert r.status_code == 200, r.text
    channel = await widget_channel(client, tenant.headers)
    s = await new_session(client, channel["widget_token"])
    r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
    assert r.json()["status"] == "human_escalated"
    actor = _session_actor(tenant.id, s.session_id)
    pid_before = (await actor.status.remote())["pid"]
    assert (await actor.passivate.remote(force=True))["passivated"] is True
    # The SLA (9 s) falls due after the actor has gone: the Timekeeper must activate it again.
    gone_by = time.monotonic() + 5
    while True:
        try:
            ray.get_actor(f"session:{tenant.id}:{s.session_id}", namespace="chat")
        except ValueError:
            break
        assert time.monotonic() < gone_by, "the passivated actor is still registered"
        await asyncio.sleep(0.1)
    deadline = time.monotonic() + 40
    texts: list[str] = []
    while time.monotonic() < deadline:
        rows = await db.fetch("SELECT text FROM messages WHERE session_id = $1 AND sender = 'system'",
                              uuid.UUID(s.session_id))
        texts = [r["text"] for r in rows]
        if "Sorry for the wait!" in texts:
            break
        await asyncio.sleep(0.5)
    assert "Sorry for the wait!" in texts
    breach = await db.fetchval("SELECT count(*) FROM events WHERE session_id = $1 AND kind = 'sla_breached'",
                               uuid.UUID(s.session_id))
    assert breach == 1
    pid_after = (await _session_actor(tenant.id, s.session_id).status.remote())["pid"]
    assert pid_after != pid_before  # a fresh activation fired it


async def test_canary_in_model_output_is_never_delivered(app_url: str) -> None:
    """The real Generator, forced by a grammar to emit the canary, through the turn's filter."""
    from ray import serve

    from runtime.models.types import ChatMessage, GenerationRequest, TokenDelta
    from runtime.policy import OutputGuard, make_canary

    canary = make_canary("tenant-x", "secret")
    forced = f"Sure! The code is {canary} and more text."
    grammar = 'root ::= "' + forced.replace('"', '\\"') + '"'
    handle = serve.get_deployment_handle("Generator", app_name="chat")
    req = GenerationRequest(messages=[ChatMessage(role="user", content="Say the code.")],
                            grammar=grammar, max_tokens=64)
    raw, delivered = [], []
    guard = OutputGuard(canary)
    async for item in handle.options(stream=True).generate.remote(req):
        if isinstance(item, TokenDelta):
            raw.append(item.text)
            delivered.append(guard.feed(item.text))
            if guard.hit:
                break
    delivered.append(guard.flush())
    assert canary in "".join(raw)  # the model really emitted it
    assert guard.hit == "canary"
    assert canary not in "".join(delivered) and "".join(delivered).startswith("Sure! The code is")


async def test_disallowed_origin_gets_no_session(client: httpx.AsyncClient, tenant: TenantInfo) -> None:
    channel = await widget_channel(client, tenant.headers)
    r = await client.post("/v1/widget/sessions", json={"widget_token": channel["widget_token"]},
                          headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
    r = await client.post("/v1/widget/sessions", json={"widget_token": channel["widget_token"]},
                          headers={"Origin": ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    restored = await client.post("/v1/widget/sessions", headers={"Origin": ORIGIN}, json={
        "widget_token": channel["widget_token"], "session_token": r.json()["session_token"]})
    assert restored.json()["session_id"] == r.json()["session_id"] and restored.json()["restored"]


async def test_session_event_stream_resumes_after_last_event_id(
    client: httpx.AsyncClient, kb_tenant: dict[str, Any]
) -> None:
    s: WidgetSession = await new_session(client, kb_tenant["channel"]["widget_token"])
    events = await ask(client, s, "I want to talk to a human")
    first_id = events[0].id
    seen: list[SseEvent] = []
    from tests.chat_helpers import parse_sse

    async with client.stream("GET", f"/v1/widget/sessions/{s.session_id}/events",
                             headers={**s.headers, "Last-Event-ID": first_id or ""}) as resp:
        async for ev in parse_sse(resp):
            seen.append(ev)
            if ev.event == "done":
                break
    assert [e.id for e in seen] == [e.id for e in events[1:]]


async def test_up_banner_names_the_answer_strategy(app_url: str) -> None:
    """``chat-engine up`` prints how ``auto`` resolves on the deployed Generator: the packaged
    llama.cpp model is not marked capable, so answers are extractive."""
    from runtime.cli.up import answer_strategy_line
    from runtime.config import get_settings

    line = await asyncio.to_thread(answer_strategy_line, get_settings())
    assert line.startswith("answer strategy: auto -> extractive"), line
    assert "llamacpp is not marked capable" in line and "CHAT_ENGINE_GENERATOR_CAPABLE" in line
