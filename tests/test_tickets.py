"""Tickets and leads on escalation, sent to the tenant's help desks through the outbox; the
owner's credit alerts by email (issue 15, seeds 001 and 003).

Zendesk, Slack, Mailgun and Telegram cannot be reached from here: their stand-ins in
``tests/provider_standins.py`` are local HTTP servers speaking the documented send APIs (Zendesk's
Tickets API with ``Idempotency-Key``, Slack's chat.postMessage, Mailgun's messages API); the
generic webhook goes to a local receiver there that records headers and raw bodies. Everything
else is the real stack: Postgres, Redis, Ray with the session actors and the outbox sender
actors, the Serve ingress and the models. The webhook signature is verified here, independently
of the code that made it (hmac over ``<timestamp>.<raw body>``).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import pytest

from runtime.channels.base import Permanent, Retry, Sent
from runtime.config import load_settings
from runtime.helpdesk.destinations import WebhookDestination, ZendeskDestination, signature
from runtime.helpdesk.tickets import (
    buying_signal,
    key_messages,
    phone_in,
    ticket_category,
    ticket_priority,
    ticket_subject,
)
from tests.channel_helpers import create_channel, deliveries_to, post_webhook, settle, telegram_text
from tests.chat_helpers import ask, kinds, new_session, widget_channel
from tests.conftest import ADMIN_TOKEN, Services, TenantInfo, make_tenant

pytestmark = pytest.mark.timeout(600)

ZENDESK_AGENT = "agent@acme-support.com"
ZENDESK_TOKEN = "zd-api-token-123"
SLACK_TOKEN = "xoxb-helpdesk-test-token"


# ------------------------------------------------------------------ helpers
def verify_signature(delivery: Any, secret: str, max_age_s: float = 300) -> dict[str, Any]:
    """What a receiver does: recompute the HMAC over ``<timestamp>.<raw body>``, compare in
    constant time, refuse an old timestamp. Returns the parsed body."""
    headers = delivery.headers
    stamp = headers["x-chatengine-timestamp"]
    mac = hmac.new(secret.encode(), stamp.encode() + b"." + delivery.raw, hashlib.sha256)
    expected = "v1=" + mac.hexdigest()
    assert hmac.compare_digest(headers["x-chatengine-signature"], expected), headers
    assert abs(time.time() - int(stamp)) < max_age_s
    body = json.loads(delivery.raw)
    assert headers["x-chatengine-event-id"] == body["id"] and headers["x-chatengine-event"] == body["type"]
    return dict(body)


async def add_destinations(client: httpx.AsyncClient, tenant: TenantInfo, services: Services,
                           tag: str) -> dict[str, Any]:
    """A webhook (generated secret), a Zendesk and a Slack destination, named after ``tag`` so
    this test's requests can be told apart on the shared stand-ins."""
    out: dict[str, Any] = {"hook": f"hook-{tag}", "subdomain": f"acme-{tag}", "slack": f"C{tag.upper()}0001"}
    r = await client.post("/v1/helpdesks", headers=tenant.headers, json={
        "kind": "webhook", "config": {"url": services.standins.webhook_url(out["hook"])}})
    assert r.status_code == 201, r.text
    out["webhook"] = r.json()
    assert out["webhook"]["signing_secret"].startswith("whsec_")
    r = await client.post("/v1/helpdesks", headers=tenant.headers, json={
        "kind": "zendesk",
        "config": {"subdomain": out["subdomain"], "email": ZENDESK_AGENT, "tags": ["web_chat"]},
        "secrets": {"api_token": ZENDESK_TOKEN}})
    assert r.status_code == 201, r.text
    out["zendesk"] = r.json()
    r = await client.post("/v1/helpdesks", headers=tenant.headers, json={
        "kind": "slack", "config": {"channel": out["slack"]}, "secrets": {"bot_token": SLACK_TOKEN}})
    assert r.status_code == 201, r.text
    out["slack_row"] = r.json()
    return out


def hook_requests(services: Services, name: str) -> list[Any]:
    return [d for d in services.standins.deliveries("webhook") if d.recipient == name]


async def wait_hooks(services: Services, name: str, count: int, timeout_s: float = 30.0) -> list[Any]:
    return await deliveries_to(services.standins, "webhook", name, count, timeout_s)


async def tickets_of(client: httpx.AsyncClient, tenant: TenantInfo, session_id: str) -> list[dict[str, Any]]:
    r = await client.get("/v1/tickets", headers=tenant.headers, params={"session_id": session_id})
    assert r.status_code == 200, r.text
    return list(r.json())


# ------------------------------------------------------------------ units (no stack)
def test_priority_category_summary_signals_and_requests() -> None:
    """The ticket's priority follows the trigger (refund high, legal critical, a plain request
    for a human normal); the summary keeps the customer's key messages; buying signals and
    phone numbers are found; the webhook and Zendesk requests carry what their receivers check."""
    assert ticket_priority("high", "refund") == "high"
    assert ticket_priority("normal", "refund") == "high"  # the signal's floor, whatever path raised it
    assert ticket_priority("critical", "legal_threat") == "critical"
    assert ticket_priority("normal", "human_request") == "normal"
    assert ticket_priority("high", "turn_failed") == "high"
    assert ticket_priority("nonsense", None) == "normal"
    assert [ticket_category(s) for s in ("refund", "billing_dispute", "legal_threat", None, "x_error")] == [
        "refund", "billing", "legal", "human_request", "other"]
    subject = ticket_subject("refund", "I want a refund\nfor order 1234", "r")
    assert subject == "Refund request: I want a refund for order 1234"
    msgs = ["hi", "My kettle arrived broken.", "thanks", "My kettle arrived broken.", "It leaks water.",
            "a", "b", "c", "Can I talk to a human?"]
    kept = key_messages(msgs, limit=4)
    assert kept[0] == "My kettle arrived broken." and kept[-1] == "Can I talk to a human?"
    assert "hi" not in kept and "thanks" not in kept and len(kept) == 4
    assert buying_signal(["How much is the enterprise plan for 40 seats?"]) == "pricing"
    assert buying_signal(["Could we book a demo next week?"]) == "demo"
    assert buying_signal(["Where is my order 10234?", "I want a refund"]) is None
    assert buying_signal(["Tell me about catering"], ["catering"]) == "topic:catering"
    assert phone_in("call me on +44 20 7946 0958 please") == "+442079460958"
    assert phone_in("my order is 10234567") is None

    # Zendesk's real base: a stack test earlier in the session points the environment's at the stand-in.
    settings = load_settings().model_copy(update={"zendesk_api_base": "https://{subdomain}.zendesk.com"})
    ticket = {"id": str(uuid.uuid4()), "subject": "Legal threat: I will sue", "summary": "Escalated: x",
              "transcript_url": "http://h/v1/sessions/s/log", "inbox_url": "http://h/inbox?session=s",
              "priority": "critical", "category": "legal", "signal": "legal_threat", "channel_type": "widget",
              "contact": {"name": "Ann", "email": "ann@shop.example", "phone": None}}
    event = {"event": "ticket.created", "event_id": "evt_1", "created_at": "2026-12-06T00:00:00+00:00",
             "ticket": ticket, "lead": None}
    req = WebhookDestination().build(event, {"url": "https://crm.example/hook"}, {"signing_secret": "s" * 20},
                                     settings, tenant_id=uuid.uuid4(), now=1_800_000_000)
    mac = hmac.new(b"s" * 20, b"1800000000." + req.content, hashlib.sha256).hexdigest()
    assert req.headers["X-ChatEngine-Signature"] == f"v1={mac}"
    assert signature("s" * 20, 1_800_000_000, req.content) == f"v1={mac}"
    assert json.loads(req.content)["data"]["ticket"]["id"] == ticket["id"]
    zd = ZendeskDestination()
    req = zd.build(event, {"subdomain": "acme", "email": ZENDESK_AGENT}, {"api_token": "t"}, settings,
                   tenant_id=uuid.uuid4(), now=0)
    sent = json.loads(req.content)["ticket"]
    assert req.url == "https://acme.zendesk.com/api/v2/tickets.json"
    assert req.auth == (f"{ZENDESK_AGENT}/token", "t")
    assert sent["priority"] == "urgent" and sent["external_id"] == f"chat-engine-ticket-{ticket['id']}"
    assert sent["requester"] == {"name": "Ann", "email": "ann@shop.example"}
    assert req.headers["Idempotency-Key"] == "evt_1"
    assert zd.read_response(201, {}, b'{"ticket": {"id": 35436}}') == Sent("35436")
    assert isinstance(zd.read_response(503, {"retry-after": "7"}, b"{}"), Retry)
    bad = zd.read_response(422, {}, b'{"error": "RecordInvalid", "description": "Record validation errors"}')
    assert isinstance(bad, Permanent) and "RecordInvalid" in bad.error


# ------------------------------------------------------------------ the real stack
async def test_escalation_opens_a_ticket_delivered_once_to_each_help_desk(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Services,
) -> None:
    dest = await add_destinations(client, tenant, services, "one")
    secret = dest["webhook"]["signing_secret"]
    # Destinations never show their credentials again.
    r = await client.get("/v1/helpdesks", headers=tenant.headers)
    assert r.status_code == 200 and len(r.json()) == 3
    assert secret not in r.text and ZENDESK_TOKEN not in r.text and SLACK_TOKEN not in r.text
    assert {h["kind"]: h["credentials_set"] for h in r.json()} == {
        "webhook": ["signing_secret"], "zendesk": ["api_token"], "slack": ["bot_token"]}

    channel = await widget_channel(client, tenant.headers)
    refund = await new_session(client, channel["widget_token"])
    text = "I want a refund for order 1234, the kettle arrived broken. Write to sam@shop.example"
    assert kinds(await ask(client, refund, text))[-1] == "done"
    human = await new_session(client, channel["widget_token"])
    assert kinds(await ask(client, human, "Can I talk to a human please?"))[-1] == "done"

    [t_refund] = await tickets_of(client, tenant, refund.session_id)
    [t_human] = await tickets_of(client, tenant, human.session_id)
    assert (t_refund["priority"], t_refund["category"], t_refund["signal"]) == ("high", "refund", "refund")
    assert (t_human["priority"], t_human["category"]) == ("normal", "human_request")
    assert t_refund["subject"].startswith("Refund request: I want a refund for order 1234")
    assert "kettle arrived broken" in t_refund["summary"]
    assert t_refund["transcript_url"].endswith(f"/v1/sessions/{refund.session_id}/log")
    assert t_refund["lead_id"] is None  # an email but no buying signal: no lead ...
    r = await client.get("/v1/leads", headers=tenant.headers)
    assert r.status_code == 200 and r.json() == []  # ... (the lead test has the positive twin)

    # Each destination gets exactly one request per ticket, authenticated as it expects.
    hooks = await wait_hooks(services, dest["hook"], 2)
    zendesk = await deliveries_to(services.standins, "zendesk", dest["subdomain"], 2)
    slack = await deliveries_to(services.standins, "slack", dest["slack"], 2)
    await settle()
    assert len(hook_requests(services, dest["hook"])) == 2
    assert len([d for d in services.standins.deliveries("zendesk") if d.recipient == dest["subdomain"]]) == 2
    assert len([d for d in services.standins.deliveries("slack") if d.recipient == dest["slack"]]) == 2
    bodies = {b["data"]["ticket"]["id"]: b for b in (verify_signature(h, secret) for h in hooks)}
    assert set(bodies) == {t_refund["id"], t_human["id"]}
    assert {b["type"] for b in bodies.values()} == {"ticket.created"}
    assert bodies[t_refund["id"]]["data"]["ticket"]["priority"] == "high"
    assert bodies[t_refund["id"]]["tenant_id"] == tenant.id
    forged = dataclasses.replace(hooks[0], raw=hooks[0].raw.replace(b'"ticket.created"', b'"ticket.closed"'))
    with pytest.raises(AssertionError):
        verify_signature(forged, secret)  # a changed body fails the check

    by_external = {z.payload["ticket"]["external_id"]: z for z in zendesk}
    z_refund = by_external[f"chat-engine-ticket-{t_refund['id']}"]
    user, _, password = base64.b64decode(z_refund.headers["authorization"].split()[1]).decode().partition(":")
    assert (user, password) == (f"{ZENDESK_AGENT}/token", ZENDESK_TOKEN)
    zt = z_refund.payload["ticket"]
    assert zt["priority"] == "high" and zt["subject"] == t_refund["subject"]
    assert {"chat_engine", "category_refund", "web_chat"} <= set(zt["tags"])
    assert zt["requester"]["email"] == "sam@shop.example"
    assert z_refund.headers["idempotency-key"] == bodies[t_refund["id"]]["id"]
    assert by_external[f"chat-engine-ticket-{t_human['id']}"].payload["ticket"]["priority"] == "normal"
    assert all(s.headers["authorization"] == f"Bearer {SLACK_TOKEN}" for s in slack)
    assert any(f"inbox?session={refund.session_id}|Open in the inbox" in s.text for s in slack)

    r = await client.get(f"/v1/tickets/{t_refund['id']}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    deliveries = {d["helpdesk_id"]: d for d in r.json()["deliveries"]}
    assert {d["status"] for d in deliveries.values()} == {"sent"} and len(deliveries) == 3
    assert deliveries[dest["zendesk"]["id"]]["provider_id"] == z_refund.provider_message_id

    # Another tenant sees none of it.
    other = await make_tenant(client, "tickets-other")
    for path in (f"/v1/tickets/{t_refund['id']}", f"/v1/helpdesks/{dest['zendesk']['id']}"):
        r = await client.get(path, headers=other.headers)
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", r.text
    r = await client.get("/v1/tickets", headers=other.headers)
    assert r.status_code == 200 and r.json() == []


async def test_retries_send_one_ticket_and_a_dead_destination_is_redriven(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Services,
) -> None:
    """Two failed answers (the first after Zendesk and the receiver had acted) then success:
    still one Zendesk ticket (Idempotency-Key) and one webhook event id. A destination failing
    always ends in the dead-letter queue, does not hold up the customer's messages on their
    channel, and is sent once when re-driven."""
    standins = services.standins
    dest = await add_destinations(client, tenant, services, "two")
    secret = dest["webhook"]["signing_secret"]
    channel = await widget_channel(client, tenant.headers)
    try:
        standins.fail_next("zendesk", 2, status=503, after_commit=True)
        standins.fail_next("webhook", 2, status=502, after_commit=True)
        s = await new_session(client, channel["widget_token"])
        assert kinds(await ask(client, s, "I'll have my lawyer sue you over this."))[-1] == "done"
        [ticket] = await tickets_of(client, tenant, s.session_id)
        assert (ticket["priority"], ticket["category"]) == ("critical", "legal")

        hooks = await wait_hooks(services, dest["hook"], 3)
        await deliveries_to(standins, "zendesk", dest["subdomain"], 1)
        for _ in range(100):  # until the row is marked sent
            r = await client.get(f"/v1/tickets/{ticket['id']}", headers=tenant.headers)
            if {d["status"] for d in r.json()["deliveries"]} == {"sent"}:
                break
            await asyncio.sleep(0.2)
        deliveries = {d["helpdesk_id"]: d for d in r.json()["deliveries"]}
        assert {d["status"] for d in deliveries.values()} == {"sent"}, deliveries
        assert deliveries[dest["zendesk"]["id"]]["attempts"] == 3
        await settle()
        zendesk = [d for d in standins.deliveries("zendesk") if d.recipient == dest["subdomain"]]
        assert len(zendesk) == 1  # three requests, one ticket
        assert deliveries[dest["zendesk"]["id"]]["provider_id"] == zendesk[0].provider_message_id
        assert zendesk[0].payload["ticket"]["priority"] == "urgent"
        ids = {verify_signature(h, secret)["id"] for h in hook_requests(services, dest["hook"])}
        assert len(hooks) == 3 and len(ids) == 1  # at least once, with one stable event id

        # Failing always: dead after the attempts, while the customer's Telegram reply still goes out.
        standins.fail_always("webhook", status=503)
        telegram = await create_channel(client, tenant.headers, "telegram")
        chat_id = 880000 + int(time.time()) % 100000
        r = await post_webhook(client, telegram, telegram_text(chat_id, "I want to talk to a human"))
        assert r.status_code == 200, r.text
        [handoff] = await deliveries_to(standins, "telegram", str(chat_id), 1)
        assert handoff.text.strip()
        dead: list[dict[str, Any]] = []
        for _ in range(150):
            r = await client.get("/v1/outbox", headers=tenant.headers, params={"status": "dead"})
            dead = [row for row in r.json() if row["helpdesk_id"] == dest["webhook"]["id"]]
            if dead:
                break
            await asyncio.sleep(0.2)
        assert len(dead) == 1, r.text
        assert dead[0]["channel_id"] is None and dead[0]["text"].startswith("ticket.created ")
        assert "gave up after 4 attempts" in dead[0]["last_error"] and "503" in dead[0]["last_error"]
        assert not [h for h in hook_requests(services, dest["hook"]) if h not in hooks]
        await deliveries_to(standins, "zendesk", dest["subdomain"], 2)  # the others went on

        standins.recover("webhook")
        r = await client.post(f"/v1/outbox/{dead[0]['id']}/redrive", headers=tenant.headers)
        assert r.status_code == 200 and r.json() == {"redriven": 1}, r.text
        new = [h for h in await wait_hooks(services, dest["hook"], 4) if h not in hooks]
        await settle()
        assert len([h for h in hook_requests(services, dest["hook"]) if h not in hooks]) == 1
        body = verify_signature(new[0], secret)
        assert body["data"]["ticket"]["channel_type"] == "telegram"
        r = await client.post(f"/v1/helpdesks/{dest['webhook']['id']}/redrive", headers=tenant.headers)
        assert r.status_code == 200 and r.json() == {"redriven": 0}  # nothing left dead
    finally:
        standins.recover("webhook")
        standins.recover("zendesk")


async def test_a_buying_signal_with_contact_details_makes_a_lead_for_the_help_desks(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Services,
) -> None:
    dest = await add_destinations(client, tenant, services, "lead")
    secret = dest["webhook"]["signing_secret"]
    channel = await widget_channel(client, tenant.headers)
    s = await new_session(client, channel["widget_token"])
    text = "How much is the enterprise plan for 40 seats? Reach me at lena@shop.example or +44 20 7946 0958"
    assert kinds(await ask(client, s, text))[-1] == "done"  # nothing in the KB: to a human
    [ticket] = await tickets_of(client, tenant, s.session_id)
    r = await client.get("/v1/leads", headers=tenant.headers)
    assert r.status_code == 200, r.text
    [lead] = r.json()
    assert (lead["email"], lead["phone"], lead["buying_signal"], lead["source"]) == (
        "lena@shop.example", "+442079460958", "pricing", "escalation")
    assert lead["ticket_id"] == ticket["id"] == ticket["id"] and ticket["lead_id"] == lead["id"]
    assert lead["forwarded_at"] is not None

    hooks = await wait_hooks(services, dest["hook"], 2)
    events = {b["type"]: b for b in (verify_signature(h, secret) for h in hooks)}
    assert set(events) == {"ticket.created", "lead.created"}
    assert events["lead.created"]["data"]["lead"]["email"] == "lena@shop.example"
    assert events["ticket.created"]["data"]["lead"]["id"] == lead["id"]
    [z] = await deliveries_to(services.standins, "zendesk", dest["subdomain"], 1)
    assert "lead" in z.payload["ticket"]["tags"]
    assert z.payload["ticket"]["requester"]["email"] == "lena@shop.example"
    [msg] = await deliveries_to(services.standins, "slack", dest["slack"], 1)
    assert "Lead (pricing): lena@shop.example, +442079460958" in msg.text


async def test_credit_alerts_email_the_owner_through_mailgun(
    client: httpx.AsyncClient, services: Services,
) -> None:
    owner_email = f"owner-{uuid.uuid4().hex[:8]}@example.com"
    r = await client.post("/v1/tenants", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                          json={"name": "Credit Shop", "owner_email": owner_email})
    assert r.status_code == 201, r.text
    headers = {"Authorization": f"Bearer {r.json()['owner_api_key']}"}
    tenant_id = r.json()["tenant_id"]
    await create_channel(client, headers, "email")
    r = await client.post("/v1/kb/qa", headers=headers, json={
        "question": "When is the shop open on Saturdays?", "answer": "On Saturdays we open 9 am to 4 pm."})
    assert r.status_code in (200, 201), r.text
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = await client.put(f"/v1/tenants/{tenant_id}/credits", headers=admin, json={"credits": 5})
    assert r.status_code == 200, r.text
    # Extractive answers (no generation) keep five answers quick; each takes a credit all the same.
    r = await client.patch("/v1/bot-config", headers=headers, json={"answer_strategy": "extractive"})
    assert r.status_code == 200, r.text
    channel = await widget_channel(client, headers)
    s = await new_session(client, channel["widget_token"])
    for _ in range(3):
        assert kinds(await ask(client, s, "When is the shop open on Saturdays?"))[-1] == "done"
    await settle()
    assert await deliveries_to(services.standins, "email", owner_email, 0) == []  # 2 of 5 left: no alert yet
    assert kinds(await ask(client, s, "When is the shop open on Saturdays?"))[-1] == "done"  # 1 of 5 left
    [low] = await deliveries_to(services.standins, "email", owner_email, 1)
    assert low.payload["subject"] == "Credit Shop: your assistant has used 80% of its credits"
    assert "1 of 5 credits left" in low.text
    assert kinds(await ask(client, s, "When is the shop open on Saturdays?"))[-1] == "done"  # 0 left
    mails = await deliveries_to(services.standins, "email", owner_email, 2)
    assert mails[1].payload["subject"] == "Credit Shop: your assistant is out of credits and paused"
    assert mails[1].payload["from"] == "Acme Support <support@acme-support.com>"
    assert not any(m.payload["subject"].lower().startswith("re:") for m in mails)
    await ask(client, s, "Hello?")  # paused now: no answer, no credit, no third email
    await settle()
    assert len(await deliveries_to(services.standins, "email", owner_email, 2)) == 2  # once per level
