"""Messaging channels end to end on the real stack: signed webhooks in, the outbox out.

The providers (Meta's Graph API, Telegram's Bot API, Twilio, Mailgun, Slack's Web API) cannot be
reached from here: ``tests/provider_standins.py`` is a local HTTP server speaking their
documented send APIs, and the senders are pointed at it by ``CHAT_ENGINE_*_API_BASE``. Everything
else is real: Postgres, Redis, Ray (the session actors and the outbox sender actors), Serve, the
embedder, and the answering pipeline over a knowledge-base Q&A.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.channel_helpers import (
    create_channel,
    deliveries_to,
    mailgun_form,
    new_phone,
    path_of,
    post_webhook,
    settle,
    slack_message,
    telegram_text,
    twilio_form,
    whatsapp_image,
    whatsapp_status,
    whatsapp_text,
)
from tests.conftest import Services, TenantInfo

COLOR_Q = "Does it come in another color?"
COLOR_A = "Yes: the Trailblazer bike also comes in forest green and midnight blue."


@pytest.fixture
async def kb(client: httpx.AsyncClient, tenant: TenantInfo) -> TenantInfo:
    """The test's tenant with a Q&A answering the fixtures' WhatsApp question."""
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={"question": COLOR_Q, "answer": COLOR_A})
    assert r.status_code in (200, 201), r.text
    return tenant


@pytest.fixture
def standins(services: Services) -> Any:
    """The provider stand-ins, with faults cleared after the test."""
    yield services.standins
    for provider in ("whatsapp", "telegram", "sms", "email", "slack"):
        services.standins.recover(provider)
        services.standins.delay(provider, 0)


async def _outbox(client: httpx.AsyncClient, tenant: TenantInfo, **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/v1/outbox", headers=tenant.headers, params=params)
    assert r.status_code == 200, r.text
    return list(r.json())


async def _wait_outbox(client: httpx.AsyncClient, tenant: TenantInfo, pred: Any, timeout_s: float = 30.0,
                       **params: Any) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while True:
        rows = await _outbox(client, tenant, **params)
        if pred(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"outbox never matched: {rows}")
        await asyncio.sleep(0.2)


async def _until(cond: Any, timeout_s: float, what: str) -> None:
    """Poll ``cond()`` (a plain function) every 20 ms until it is true; AssertionError naming
    ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"no {what} within {timeout_s} s"
        await asyncio.sleep(0.02)


async def _session_of(db: Any, channel_id: str, external_id: str) -> uuid.UUID:
    return await db.fetchval("SELECT session_id FROM messages WHERE channel_id = $1 AND external_id = $2",
                             uuid.UUID(channel_id), external_id)


# ------------------------------------------------------------------ setup and signatures
async def test_channel_setup_hides_secrets_and_gives_the_webhook_url(
    client: httpx.AsyncClient, tenant: TenantInfo, db: Any
) -> None:
    ch = await create_channel(client, tenant.headers, "whatsapp")
    assert ch["webhook_url"].endswith(f"/v1/webhooks/whatsapp/{ch['id']}")
    assert ch["credentials_set"] == ["access_token", "app_secret", "verify_token"]
    listed = (await client.get("/v1/channels", headers=tenant.headers)).text
    assert "wa-app-secret" not in listed and "EAAG-test-token" not in listed and ch["id"] in listed
    stored = await db.fetchval("SELECT secrets::text FROM channels WHERE id = $1", uuid.UUID(ch["id"]))
    assert "wa-app-secret" not in stored and '"enc"' in stored

    missing = await client.post("/v1/channels", headers=tenant.headers,
                                json={"type": "whatsapp", "config": {"phone_number_id": "123"},
                                      "secrets": {"access_token": "x"}})
    assert missing.status_code == 422 and "app_secret" in missing.text

    # Meta's verification handshake: the channel's verify token echoes the challenge.
    ok = await client.get(path_of(ch), params={"hub.mode": "subscribe", "hub.verify_token": "wa-verify-token",
                                               "hub.challenge": "1158201444"})
    assert ok.status_code == 200 and ok.text == "1158201444"
    bad = await client.get(path_of(ch), params={"hub.mode": "subscribe", "hub.verify_token": "guess",
                                                "hub.challenge": "1158201444"})
    assert bad.status_code == 401 and "1158201444" not in bad.text


@pytest.mark.parametrize("type_", ["whatsapp", "telegram", "sms", "email", "slack"])
async def test_bad_signature_is_refused_and_stores_nothing(
    client: httpx.AsyncClient, tenant: TenantInfo, db: Any, type_: str
) -> None:
    ch = await create_channel(client, tenant.headers, type_)
    body: Any = {
        "whatsapp": lambda: whatsapp_text(new_phone(), "hello"),
        "telegram": lambda: telegram_text(777000 + int(time.time()) % 1000, "hello"),
        "sms": lambda: twilio_form(new_phone(), "hello"),
        "email": lambda: mailgun_form(f"p{uuid.uuid4().hex[:8]}@example.com", "Hello", "hello"),
        "slack": lambda: slack_message("U" + uuid.uuid4().hex[:8].upper(), "hello"),
    }[type_]()
    count = "SELECT count(*) FROM messages WHERE channel_id = $1"
    bad = await post_webhook(client, ch, body, wrong=True)
    assert bad.status_code == 401, bad.text
    assert bad.json()["error"]["code"] == "invalid_signature"
    assert await db.fetchval(count, uuid.UUID(ch["id"])) == 0

    good = await post_webhook(client, ch, body)
    assert good.status_code == 200, good.text
    assert good.json()["received"] == 1
    assert await db.fetchval(count, uuid.UUID(ch["id"])) == 1

    again = await post_webhook(client, ch, body)  # the provider's retry of the same delivery
    assert again.status_code == 200 and again.json()["duplicates"] + again.json()["received"] == 1
    assert await db.fetchval(count, uuid.UUID(ch["id"])) == 1


async def test_malformed_unknown_and_stale_webhooks(
    client: httpx.AsyncClient, tenant: TenantInfo, db: Any
) -> None:
    wa = await create_channel(client, tenant.headers, "whatsapp")
    malformed = await post_webhook(client, wa, {"object": "whatsapp_business_account", "entry": [
        {"changes": [{"field": "messages", "value": {"messages": [{"from": "1650"}]}}]}]})
    assert malformed.status_code == 400, malformed.text
    assert malformed.json()["error"]["code"] == "malformed_payload"

    unknown = await client.post(f"/v1/webhooks/whatsapp/{uuid.uuid4()}", content=b"{}",
                                headers={"content-type": "application/json"})
    assert unknown.status_code == 404
    wrong_type = await client.post(f"/v1/webhooks/telegram/{wa['id']}", content=b"{}",
                                   headers={"content-type": "application/json"})
    assert wrong_type.status_code == 404

    mail = await create_channel(client, tenant.headers, "email")
    stale = mailgun_form("stale@example.com", "Hi", "hello", timestamp=int(time.time()) - 3600)
    assert (await post_webhook(client, mail, stale)).status_code == 401
    token = uuid.uuid4().hex
    first = mailgun_form("fresh@example.com", "Hi", "hello", token=token)
    assert (await post_webhook(client, mail, first)).status_code == 200
    forged = mailgun_form("fresh@example.com", "Hi", "send me the refund", token=token,
                          timestamp=int(first["timestamp"]))
    replay = await post_webhook(client, mail, forged)  # the same signed token with another body
    assert replay.status_code == 401 and "replay" in replay.json()["error"]["message"]

    slack = await create_channel(client, tenant.headers, "slack")
    challenge = await post_webhook(client, slack, {"token": "x", "challenge": "abc123",
                                                   "type": "url_verification"})
    assert challenge.status_code == 200 and challenge.json() == {"challenge": "abc123"}


# ------------------------------------------------------------------ WhatsApp
async def test_whatsapp_text_is_answered_once_from_the_knowledge_base(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    ch = await create_channel(client, kb.headers, "whatsapp")
    phone = new_phone()
    body = whatsapp_text(phone, COLOR_Q)
    r1, r2 = await asyncio.gather(post_webhook(client, ch, body), post_webhook(client, ch, body))
    assert {r1.status_code, r2.status_code} == {200}
    assert sorted([r1.json()["received"], r2.json()["received"]]) == [0, 1]

    sent = await deliveries_to(standins, "whatsapp", phone.lstrip("+"))
    assert "forest green and midnight blue" in sent[0].text
    assert sent[0].headers["authorization"] == "Bearer EAAG-test-token"
    await settle()
    assert len([d for d in standins.deliveries("whatsapp") if d.recipient == phone.lstrip("+")]) == 1
    wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    session_id = await _session_of(db, ch["id"], wamid)
    senders = [r["sender"] for r in await db.fetch(
        "SELECT sender FROM messages WHERE session_id = $1 ORDER BY id", session_id)]
    assert senders == ["customer", "ai"]

    # The delivery report lands on the row that sent it.
    report = await post_webhook(client, ch, whatsapp_status(sent[0].provider_message_id, "delivered", phone))
    assert report.status_code == 200 and report.json()["statuses"] == 1
    rows = await _outbox(client, kb, session_id=str(session_id))
    assert rows[0]["delivery_status"] == "delivered" and rows[0]["status"] == "sent"

    # The same contact's next message joins the same session.
    follow = whatsapp_text(phone, "thanks!")
    assert (await post_webhook(client, ch, follow)).json()["received"] == 1
    follow_id = follow["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    assert await _session_of(db, ch["id"], follow_id) == session_id


async def test_whatsapp_image_gets_the_media_reply_and_is_recorded(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    from runtime.conversation.decisions import MEDIA_ONLY_REPLY

    ch = await create_channel(client, kb.headers, "whatsapp")
    phone = new_phone()
    body = whatsapp_image(phone)
    assert (await post_webhook(client, ch, body)).status_code == 200
    sent = await deliveries_to(standins, "whatsapp", phone.lstrip("+"))
    assert sent[0].text == MEDIA_ONLY_REPLY
    wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
    row = await db.fetchrow("SELECT text, attachments, status FROM messages WHERE external_id = $1", wamid)
    assert row["attachments"][0]["type"] == "image" and row["attachments"][0]["id"] == "1003383421387256"
    assert row["text"] == "Taj Mahal" and row["status"] == "inbox"


async def test_agent_reply_long_text_split_and_window(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    ch = await create_channel(client, kb.headers, "whatsapp")
    phone = new_phone()
    body = whatsapp_text(phone, COLOR_Q)
    await post_webhook(client, ch, body)
    await deliveries_to(standins, "whatsapp", phone.lstrip("+"))
    session_id = await _session_of(db, ch["id"], body["entry"][0]["changes"][0]["value"]["messages"][0]["id"])

    long_text = " ".join(f"Step {i}: check the chain and the brakes." for i in range(200))  # ~8,400 chars
    r = await client.post(f"/v1/sessions/{session_id}/reply", headers=kb.headers, json={"text": long_text})
    assert r.status_code == 200, r.text
    parts = await deliveries_to(standins, "whatsapp", phone.lstrip("+"), count=4)
    agent_parts = parts[1:]
    assert all(len(p.text) <= 4096 for p in agent_parts) and len(agent_parts) == 3
    assert " ".join(p.text for p in agent_parts).split() == long_text.split()

    # Outside the 24-hour window nothing is sent; the row says why, for the inbox.
    await db.execute("UPDATE messages SET created_at = now() - interval '25 hours' "
                     "WHERE session_id = $1 AND sender = 'customer'", session_id)
    r = await client.post(f"/v1/sessions/{session_id}/reply", headers=kb.headers,
                          json={"text": "Still there?"})
    assert r.status_code == 200
    dead = await _wait_outbox(client, kb, lambda rows: any(x["status"] == "dead" for x in rows),
                              session_id=str(session_id))
    row = next(x for x in dead if x["status"] == "dead")
    assert row["text"] == "Still there?" and "whatsapp_window_closed" in row["last_error"]
    await settle(0.5)
    assert not any(d.text == "Still there?" for d in standins.deliveries("whatsapp"))


async def test_takeover_mid_generation_on_whatsapp_sends_nothing_of_the_answer(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    from runtime.api.session_calls import call_session

    r = await client.patch("/v1/bot-config", headers=kb.headers, json={"answer_strategy": "generative"})
    assert r.status_code == 200, r.text
    ch = await create_channel(client, kb.headers, "whatsapp")
    # The turn is caught while it runs (retrieval, prefill or decoding): a takeover then aborts it.
    # On a loaded machine the answer may finish first; then a new contact tries again.
    for _ in range(4):
        phone = new_phone()
        body = whatsapp_text(phone, COLOR_Q)
        await post_webhook(client, ch, body)
        wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        deadline = time.monotonic() + 20
        session_id = None
        while time.monotonic() < deadline:
            session_id = await _session_of(db, ch["id"], wamid)
            if session_id is not None:
                st = await call_session(uuid.UUID(kb.id), session_id, "status")
                if st["turn_running"]:
                    break
            await asyncio.sleep(0.02)
        assert session_id is not None
        take = await client.post(f"/v1/sessions/{session_id}/takeover", headers=kb.headers)
        assert take.status_code == 200, take.text
        ai = await db.fetchval("SELECT count(*) FROM messages WHERE session_id = $1 AND sender = 'ai'",
                               session_id)
        if ai == 0:
            break
    else:
        pytest.fail("in 4 attempts the takeover never landed while the answer was being made")
    await settle(2.0)
    assert [d for d in standins.deliveries("whatsapp") if d.recipient == phone.lstrip("+")] == []
    status = await db.fetchval("SELECT status FROM messages WHERE external_id = $1", wamid)
    assert status == "inbox"

    r = await client.post(f"/v1/sessions/{session_id}/reply", headers=kb.headers,
                          json={"text": "Hi, I'm Sam from the shop: yes, green and blue."})
    assert r.status_code == 200, r.text
    sent = await deliveries_to(standins, "whatsapp", phone.lstrip("+"))
    assert [d.text for d in sent] == ["Hi, I'm Sam from the shop: yes, green and blue."]


# ------------------------------------------------------------------ retries and dead letters
async def test_transient_failures_retry_then_deliver_exactly_once(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    ch = await create_channel(client, kb.headers, "telegram")
    chat = 500000 + int(time.time() * 1000) % 400000
    standins.fail_next("telegram", 3, status=503)
    assert (await post_webhook(client, ch, telegram_text(chat, COLOR_Q))).status_code == 200
    sent = await deliveries_to(standins, "telegram", str(chat))
    assert "forest green" in sent[0].text
    await settle()
    assert len([d for d in standins.deliveries("telegram") if d.recipient == str(chat)]) == 1
    rows = await _outbox(client, kb, channel_id=ch["id"])
    assert rows[0]["status"] == "sent" and rows[0]["attempts"] == 4


async def test_always_failing_goes_dead_and_a_redrive_delivers_after_recovery(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any
) -> None:
    ch = await create_channel(client, kb.headers, "sms")
    phone = new_phone()
    standins.fail_always("sms", status=500)
    assert (await post_webhook(client, ch, twilio_form(phone, COLOR_Q))).status_code == 200
    dead = await _wait_outbox(client, kb, lambda rows: bool(rows), status="dead", channel_id=ch["id"])
    assert dead[0]["attempts"] == 4 and "gave up after 4 attempts" in dead[0]["last_error"]
    assert [d for d in standins.deliveries("sms") if d.recipient == phone] == []

    standins.recover("sms")
    inspect = await client.get(f"/v1/outbox/{dead[0]['id']}", headers=kb.headers)
    assert inspect.status_code == 200 and inspect.json()["status"] == "dead"
    r = await client.post("/v1/outbox/redrive", headers=kb.headers, json={"channel_id": ch["id"]})
    assert r.status_code == 200 and r.json() == {"redriven": 1}
    sent = await deliveries_to(standins, "sms", phone)
    assert "forest green" in sent[0].text and len(sent) == 1
    again = await client.post(f"/v1/outbox/{dead[0]['id']}/redrive", headers=kb.headers)
    assert again.status_code == 409  # no longer dead


async def test_permanent_error_is_dead_at_once(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any
) -> None:
    ch = await create_channel(client, kb.headers, "slack")
    standins.fail_next("slack", 1, status=200, body={"ok": False, "error": "channel_not_found"})
    assert (await post_webhook(client, ch, slack_message("U" + uuid.uuid4().hex[:8].upper(), COLOR_Q))
            ).status_code == 200
    dead = await _wait_outbox(client, kb, lambda rows: bool(rows), status="dead", channel_id=ch["id"])
    assert dead[0]["attempts"] == 1 and "channel_not_found" in dead[0]["last_error"]


async def test_sender_killed_mid_batch_loses_and_duplicates_nothing(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    import ray

    from runtime.db import outbox as outbox_db

    ch = await create_channel(client, kb.headers, "whatsapp")
    phones = [new_phone() for _ in range(6)]
    sessions = []
    for phone in phones:  # a session per contact, each answered once
        body = whatsapp_text(phone, "thanks!")
        await post_webhook(client, ch, body)
        await deliveries_to(standins, "whatsapp", phone.lstrip("+"))
        wamid = body["entry"][0]["changes"][0]["value"]["messages"][0]["id"]
        sessions.append(await _session_of(db, ch["id"], wamid))
    # The stand-in holds every request until the sender is dead: the kill lands mid-exchange
    # however slow the machine (with a fixed delay, a late kill could land after the provider
    # answered, a lost reply rather than a lost request).
    standins.hold("whatsapp")
    async with db.acquire() as conn, conn.transaction():
        for phone, sid in zip(phones, sessions, strict=True):
            for n in (1, 2):
                await outbox_db.enqueue(conn, uuid.UUID(kb.id), uuid.UUID(ch["id"]), sid, None,
                                        phone.lstrip("+"),
                                        {"text": f"note {n} for {phone}", "sender": "agent"})
    await _until(lambda: standins.parked("whatsapp") >= 1, 30, "a note in flight at the stand-in")
    sender = ray.get_actor("outbox-sender:whatsapp", namespace="chat")
    ray.kill(sender, no_restart=False)
    await _until(lambda: standins.abandoned("whatsapp") >= 1, 30,
                 "the killed sender's request abandoned")
    standins.release("whatsapp")
    for phone in phones:
        got = await deliveries_to(standins, "whatsapp", phone.lstrip("+"), count=3, timeout_s=40)
        notes = [d.text for d in got if d.text.startswith("note")]
        assert notes == [f"note 1 for {phone}", f"note 2 for {phone}"]  # once each, in order
    await settle()
    for phone in phones:
        got = [d.text for d in standins.deliveries("whatsapp") if d.recipient == phone.lstrip("+")]
        assert len(got) == 3, got


# ------------------------------------------------------------------ SMS, email, Slack, contacts
async def test_sms_stop_stops_replies_and_start_resumes(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any
) -> None:
    ch = await create_channel(client, kb.headers, "sms")
    phone = new_phone()
    assert (await post_webhook(client, ch, twilio_form(phone, "STOP"))).json()["received"] == 1
    await post_webhook(client, ch, twilio_form(phone, COLOR_Q))
    dead = await _wait_outbox(client, kb, lambda rows: bool(rows), status="dead", channel_id=ch["id"])
    assert "opted_out" in dead[0]["last_error"]
    await settle(0.5)
    assert [d for d in standins.deliveries("sms") if d.recipient == phone] == []

    await post_webhook(client, ch, twilio_form(phone, "START"))
    await post_webhook(client, ch, twilio_form(phone, COLOR_Q))
    sent = await deliveries_to(standins, "sms", phone)
    assert "forest green" in sent[0].text and len(sent) == 1


async def test_email_is_answered_in_the_same_thread(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    ch = await create_channel(client, kb.headers, "email")
    sender = f"priya.{uuid.uuid4().hex[:6]}@example.com"
    first = mailgun_form(sender, "Colours", f"Hi,\n\n{COLOR_Q}\n\nThanks,\nPriya")
    assert (await post_webhook(client, ch, first)).status_code == 200
    sent = await deliveries_to(standins, "email", sender)
    mail = sent[0].payload
    assert mail["subject"] == "Re: Colours" and mail["h:In-Reply-To"] == first["Message-Id"]
    assert "forest green" in mail["text"] and "Acme Support" in mail["from"]
    session_id = await _session_of(db, ch["id"], first["Message-Id"])

    reply = mailgun_form(sender, "Re: Colours", "And is there a kids' size?\n\nOn Tue, Acme wrote:\n> Yes",
                         in_reply_to=sent[0].provider_message_id)
    assert (await post_webhook(client, ch, reply)).status_code == 200
    assert await _session_of(db, ch["id"], reply["Message-Id"]) == session_id
    stored = await db.fetchval("SELECT text FROM messages WHERE external_id = $1", reply["Message-Id"])
    assert "kids' size" in stored and "> Yes" not in stored

    other = mailgun_form(sender, "A different question", "Where are you located?")
    await post_webhook(client, ch, other)
    assert await _session_of(db, ch["id"], other["Message-Id"]) != session_id


async def test_slack_message_is_answered_in_its_thread_and_bot_messages_ignored(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    ch = await create_channel(client, kb.headers, "slack")
    user = "U" + uuid.uuid4().hex[:8].upper()
    ts = f"{time.time():.6f}"
    msg = slack_message(user, COLOR_Q, ts=ts)
    channel = msg["event"]["channel"]
    assert (await post_webhook(client, ch, msg)).status_code == 200
    got = await deliveries_to(standins, "slack", channel)
    mine = [d for d in got if d.payload.get("thread_ts") == ts]
    assert len(mine) == 1 and "forest green" in mine[0].text
    assert mine[0].headers["authorization"] == "Bearer xoxb-test-token"

    bot = slack_message(user, "I am the bot talking", bot=True)
    r = await post_webhook(client, ch, bot)
    assert r.status_code == 200 and r.json()["received"] == 0
    assert await db.fetchval("SELECT count(*) FROM messages WHERE external_id = $1", bot["event_id"]) == 0


async def test_one_contact_per_identity_across_channels_and_lead_email_links(
    client: httpx.AsyncClient, kb: TenantInfo, standins: Any, db: Any
) -> None:
    r = await client.patch("/v1/bot-config", headers=kb.headers, json={"lead_capture": [
        {"topics": ["pricing"], "ask_message": "Happy to help! What's your email address?"}]})
    assert r.status_code == 200, r.text
    wa = await create_channel(client, kb.headers, "whatsapp")
    sms = await create_channel(client, kb.headers, "sms")
    mail = await create_channel(client, kb.headers, "email")
    phone = new_phone()
    first = whatsapp_text(phone, "What is your pricing?")
    await post_webhook(client, wa, first)
    asked = await deliveries_to(standins, "whatsapp", phone.lstrip("+"))
    assert asked[0].text == "Happy to help! What's your email address?"
    email = f"sheena.{uuid.uuid4().hex[:6]}@example.com"
    await post_webhook(client, wa, whatsapp_text(phone, f"it's {email}"))
    await deliveries_to(standins, "whatsapp", phone.lstrip("+"), count=2)

    wa_contact = await db.fetchval(
        "SELECT contact_id FROM sessions WHERE id = $1",
        await _session_of(db, wa["id"], first["entry"][0]["changes"][0]["value"]["messages"][0]["id"]))
    text_msg = twilio_form(phone, COLOR_Q)
    await post_webhook(client, sms, text_msg)
    by_mail = mailgun_form(email, "Pricing", COLOR_Q)
    await post_webhook(client, mail, by_mail)
    for channel, external in ((sms, text_msg["MessageSid"]), (mail, by_mail["Message-Id"])):
        sid = await _session_of(db, channel["id"], external)
        assert await db.fetchval("SELECT contact_id FROM sessions WHERE id = $1", sid) == wa_contact
    stranger = mailgun_form(f"someone.{uuid.uuid4().hex[:6]}@example.com", "Hi", COLOR_Q)
    await post_webhook(client, mail, stranger)
    sid = await _session_of(db, mail["id"], stranger["Message-Id"])
    assert await db.fetchval("SELECT contact_id FROM sessions WHERE id = $1", sid) != wa_contact
