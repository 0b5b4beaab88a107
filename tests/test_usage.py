"""Usage and credits (issue 15, seed 002 AIUsage; seed 000: credits run out, the bot pauses and
conversations go to the human queue), on the real stack.

- The platform admin grants credits; every AI answer takes one; at 80% spent and at 100% the
  owner is alerted once per grant (an ``events`` row and a push on the tenant's inbox channel);
  at zero the customer gets the paused message once and nothing more from the bot, and a new
  grant brings the bot back.
- ``GET /v1/usage`` reports the day's answers, the balance and the grant; the usage rows' cost
  comes from the price table, and a self-run model costs 0.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from runtime.config import load_settings
from runtime.conversation.usage import DEFAULT_LLAMACPP_MODEL, cost_micros, model_name
from runtime.db import usage as usage_db
from runtime.events import inbox_channel
from tests.chat_helpers import ask, kinds, new_session, widget_channel
from tests.conftest import Services, TenantInfo, make_tenant

pytestmark = pytest.mark.timeout(600)

QUESTION = "When is the shop open on Saturdays?"
ANSWER = "On Saturdays the shop is open from 9 am to 4 pm."


def test_model_names_and_prices() -> None:
    """The model behind each backend, and its cost in micro-USD from the price table: a priced
    hosted model costs tokens x price; a self-run model, or an unpriced one, costs 0."""
    settings = load_settings(hosted_model="gpt-4o-mini", vllm_model="/models/Qwen2.5-7B-Instruct",
                             model_prices={"gpt-4o-mini": (0.15, 0.60)})
    assert model_name(settings, "llamacpp") == DEFAULT_LLAMACPP_MODEL
    assert model_name(settings, "vllm") == "Qwen2.5-7B-Instruct"
    assert model_name(settings, "hosted") == "gpt-4o-mini"
    assert model_name(settings, "other") is None
    # 1,000 prompt tokens at $0.15/M + 200 completion tokens at $0.60/M = $0.00027
    assert cost_micros(settings, "gpt-4o-mini", 1000, 200) == 270
    assert cost_micros(settings, DEFAULT_LLAMACPP_MODEL, 1000, 200) == 0
    assert cost_micros(settings, None, 1000, 200) == 0


async def _answers(db: Any, session_id: str) -> list[dict[str, Any]]:
    rows = await db.fetch("SELECT sender, intent, text AS body FROM messages WHERE session_id = $1 "
                          "AND sender <> 'customer' ORDER BY id", uuid.UUID(session_id))
    return [dict(r) for r in rows]


async def _balance(db: Any, tenant_id: str) -> Any:
    return await db.fetchrow("SELECT credit_balance, credit_granted, credit_alert_level FROM bot_configs "
                             "WHERE tenant_id = $1", uuid.UUID(tenant_id))


async def _alerts(db: Any, tenant_id: str) -> list[str]:
    rows = await db.fetch("SELECT kind FROM events WHERE tenant_id = $1 AND kind LIKE 'credits_%' "
                          "ORDER BY id", uuid.UUID(tenant_id))
    return [r["kind"] for r in rows]


async def test_credits_alert_once_pause_the_bot_at_zero_and_a_grant_brings_it_back(
    client: httpx.AsyncClient, admin_headers: dict[str, str], db: Any, services: Services,
) -> None:
    tenant = await make_tenant(client, "credits")
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={"question": QUESTION, "answer": ANSWER})
    assert r.status_code in (200, 201), r.text
    # Granting: bad values are refused naming the field; an unknown tenant is a 404.
    r = await client.put(f"/v1/tenants/{tenant.id}/credits", headers=admin_headers, json={"credits": -1})
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "credits", r.text
    r = await client.put(f"/v1/tenants/{uuid.uuid4()}/credits", headers=admin_headers, json={"credits": 5})
    assert r.status_code == 404, r.text
    r = await client.put(f"/v1/tenants/{tenant.id}/credits", headers=tenant.headers, json={"credits": 5})
    assert r.status_code == 401, r.text  # an owner cannot grant itself credits
    r = await client.put(f"/v1/tenants/{tenant.id}/credits", headers=admin_headers, json={"credits": 5})
    assert r.status_code == 200, r.text
    assert r.json() == {"tenant_id": tenant.id, "credit_balance": 5, "credit_granted": 5}

    rds = aioredis.from_url(services.redis_url, decode_responses=True)
    pubsub = rds.pubsub()
    await pubsub.subscribe(inbox_channel(tenant.id))
    try:
        channel = await widget_channel(client, tenant.headers)
        s = await new_session(client, channel["widget_token"])
        for _ in range(3):
            assert kinds(await ask(client, s, QUESTION))[-1] == "done"
        b = await _balance(db, tenant.id)
        assert (b["credit_balance"], b["credit_alert_level"]) == (2, 0)
        assert await _alerts(db, tenant.id) == []
        # The 4th answer leaves 1 of 5: 80% spent, alerted once.
        assert kinds(await ask(client, s, QUESTION))[-1] == "done"
        assert await _alerts(db, tenant.id) == ["credits_low"]
        # The 5th leaves 0: exhausted, alerted once.
        assert kinds(await ask(client, s, QUESTION))[-1] == "done"
        assert await _alerts(db, tenant.id) == ["credits_low", "credits_exhausted"]
        pushed = []
        while len(pushed) < 2:
            msg = await asyncio.wait_for(pubsub.get_message(ignore_subscribe_messages=True, timeout=5), 10)
            if msg is not None and json.loads(msg["data"])["kind"].startswith("credits_"):
                pushed.append(json.loads(msg["data"]))
        assert [p["kind"] for p in pushed] == ["credits_low", "credits_exhausted"]
        assert pushed[1]["credit_balance"] == 0 and pushed[1]["credit_granted"] == 5
        answered = await _answers(db, s.session_id)
        assert [a["intent"] for a in answered] == ["answer"] * 5
        assert all("9 am to 4 pm" in a["body"] for a in answered)

        # At zero: the paused message once, then silence from the bot; the balance stays at 0.
        await ask(client, s, QUESTION)
        await ask(client, s, "hello? anyone?")
        after = (await _answers(db, s.session_id))[5:]
        assert [(a["sender"], a["intent"]) for a in after] == [("system", "paused")], after
        assert after[0]["body"].strip()
        assert (await _balance(db, tenant.id))["credit_balance"] == 0
        assert await _alerts(db, tenant.id) == ["credits_low", "credits_exhausted"]  # not again
        waiting = await db.fetch("SELECT status FROM messages WHERE session_id = $1 AND sender = "
                                 "'customer' ORDER BY id", uuid.UUID(s.session_id))
        assert [w["status"] for w in waiting] == ["answered"] * 5 + ["inbox"] * 2  # for a human

        # The owner's usage: 5 answers today, the balance and the grant.
        u = await client.get("/v1/usage?days=7", headers=tenant.headers)
        assert u.status_code == 200, u.text
        body = u.json()
        today = datetime.now(UTC).date().isoformat()
        assert (body["credit_balance"], body["credit_granted"], body["answers"]) == (0, 5, 5)
        assert [d["day"] for d in body["days"]] == [today] and body["days"][0]["answers"] == 5
        assert (await client.get("/v1/usage?days=0", headers=tenant.headers)).status_code == 422

        # A new grant re-arms the alerts, and the bot answers again in a new conversation.
        r = await client.put(f"/v1/tenants/{tenant.id}/credits", headers=admin_headers, json={"credits": 10})
        assert r.json()["credit_balance"] == 10
        assert (await _balance(db, tenant.id))["credit_alert_level"] == 0
        s2 = await new_session(client, channel["widget_token"])
        assert kinds(await ask(client, s2, QUESTION))[-1] == "done"
        assert [a["intent"] for a in await _answers(db, s2.session_id)] == ["answer"]
        assert (await _balance(db, tenant.id))["credit_balance"] == 9
    finally:
        await pubsub.aclose()
        await rds.aclose()


async def test_unlimited_tenants_are_never_paused(client: httpx.AsyncClient, tenant: TenantInfo,
                                                  db: Any) -> None:
    """A tenant without a grant (the default, unlimited) is answered and no alert is raised."""
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={"question": QUESTION, "answer": ANSWER})
    assert r.status_code in (200, 201), r.text
    channel = await widget_channel(client, tenant.headers)
    s = await new_session(client, channel["widget_token"])
    assert kinds(await ask(client, s, QUESTION))[-1] == "done"
    assert [a["intent"] for a in await _answers(db, s.session_id)] == ["answer"]
    b = await _balance(db, tenant.id)
    assert (b["credit_balance"], b["credit_granted"]) == (None, None)
    assert await _alerts(db, tenant.id) == []
    body = (await client.get("/v1/usage", headers=tenant.headers)).json()
    assert body["credit_balance"] is None and body["answers"] == 1


async def test_usage_rows_roll_up_per_day_backend_and_model(db: Any, client: httpx.AsyncClient) -> None:
    """Usage rows (as the turn writes them) roll up per day, backend and model with their cost;
    another tenant's rows are not counted."""
    mine = await make_tenant(client, "usage-rollup")
    other = await make_tenant(client, "usage-other")
    today = datetime.now(UTC).date()
    async with db.acquire() as conn:
        for tenant, backend, model, p, c, cost in [
            (mine, "hosted", "gpt-4o-mini", 1000, 200, 270), (mine, "hosted", "gpt-4o-mini", 500, 100, 135),
            (mine, "llamacpp", DEFAULT_LLAMACPP_MODEL, 300, 40, 0), (other, "hosted", "gpt-4o-mini", 9, 9, 9),
        ]:
            # no session or message: the rows stand alone (both are SET NULL when deleted)
            await usage_db.record_usage(conn, uuid.UUID(tenant.id), None, None, backend, model, p, c, cost)
        rows = await usage_db.daily_usage(conn, uuid.UUID(mine.id), today, today)
    assert rows == [
        {"day": today, "backend": "hosted", "model": "gpt-4o-mini", "generations": 2,
         "prompt_tokens": 1500, "completion_tokens": 300, "cost_micros": 405},
        {"day": today, "backend": "llamacpp", "model": DEFAULT_LLAMACPP_MODEL, "generations": 1,
         "prompt_tokens": 300, "completion_tokens": 40, "cost_micros": 0},
    ]
    body = (await client.get("/v1/usage?days=1", headers=mine.headers)).json()
    assert body["prompt_tokens"] == 1800 and body["completion_tokens"] == 340
    assert body["cost_usd"] == pytest.approx(0.000405)
    assert [m["model"] for m in body["days"][0]["models"]] == ["gpt-4o-mini", DEFAULT_LLAMACPP_MODEL]
