"""The owner's numbers (issue 14; seeds 000 journey G "the weekly review", 001 analytics summary
and FAQ clusters), on the real stack.

- A week of conversations over two channels is written straight into Postgres (what the runtime
  and the inbox would have stored: sessions with their resolutions and CSAT, messages with reply
  links, escalations, leads, contacts), with rows just outside the range and another tenant's
  rows around it. ``GET /v1/analytics`` must give the figures this file computes from the seed
  itself in Python (not by running the same SQL).
- Unanswered questions: paraphrases of one question fall in one cluster and different questions
  do not (real MiniLM embeddings through the Embedder deployment); "add to knowledge base" writes a
  Q&A entry, takes the cluster off the list, and the next customer asking the question gets it
  answered with the entry as its source, where the same question escalated before.
- The weekly report goes once per week to the owner's email through the outbox (the Mailgun
  stand-in receives it), however often the Timekeeper checks.
- ``widget/dashboard.js`` renders the dashboard (chart canvases, funnel, clusters) in Chromium
  under a strict Content-Security-Policy without console errors.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import numpy as np
import pytest

from runtime.db import tenants as tenants_db
from runtime.security import new_api_key
from tests.chat_helpers import ask, new_session, widget_channel
from tests.conftest import Services, TenantInfo, make_tenant

pytestmark = pytest.mark.timeout(600)

START = date(2026, 11, 2)  # a Monday
END = date(2026, 11, 8)
DAYS = [START + timedelta(days=i) for i in range(7)]
KINDS = ("visit", "ai", "ai", "ai", "escalated_human", "escalated_open", "escalated_abandoned",
         "abandoned", "button", "takeover", "handed_back")


def at(day: date, seconds: float) -> datetime:
    """``seconds`` after midnight UTC of ``day``."""
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(seconds=seconds)


@dataclass
class Seeded:
    """One seeded session and everything the expected figures need."""

    channel: str
    created_at: datetime
    kind: str
    customer: list[datetime] = field(default_factory=list)  # customer message times
    ai_replies: dict[int, list[datetime]] = field(default_factory=dict)  # by customer index
    agent: list[datetime] = field(default_factory=list)
    escalated_at: datetime | None = None
    assigned_at: datetime | None = None
    first_human_reply_at: datetime | None = None
    resolution: str | None = None
    csat: int | None = None
    contact_email: str | None = None
    leads: list[datetime] = field(default_factory=list)


def shift_plan(plan: list[Seeded], shift: timedelta) -> None:
    """Move every time of the seeded sessions by ``shift`` (in place)."""
    for s in plan:
        s.created_at += shift
        s.customer = [t + shift for t in s.customer]
        s.ai_replies = {i: [t + shift for t in r] for i, r in s.ai_replies.items()}
        s.agent = [t + shift for t in s.agent]
        s.escalated_at = s.escalated_at and s.escalated_at + shift
        s.assigned_at = s.assigned_at and s.assigned_at + shift
        s.first_human_reply_at = s.first_human_reply_at and s.first_human_reply_at + shift
        s.leads = [t + shift for t in s.leads]


def plan_week(rng: random.Random) -> list[Seeded]:
    """~70 sessions over the 7 days and 2 channels, every kind on both channels, plus boundary
    sessions just before and after the range."""
    out: list[Seeded] = []
    for day in DAYS:
        for channel in ("widget", "whatsapp"):
            for _ in range(rng.randint(3, 7)):
                kind = rng.choice(KINDS)
                s = Seeded(channel, at(day, rng.uniform(60, 86_000)), kind)
                t = s.created_at
                if kind not in ("visit", "button"):
                    for i in range(rng.randint(1, 3)):
                        t += timedelta(seconds=rng.uniform(5, 200))
                        s.customer.append(t)
                        if kind != "abandoned":
                            # the AI's reply, sometimes a retried second one (the first counts)
                            first = t + timedelta(seconds=round(rng.uniform(0.3, 9.0), 3))
                            again = [first + timedelta(seconds=3)] if rng.random() < 0.2 else []
                            s.ai_replies[i] = [first, *again]
                if kind in ("escalated_human", "escalated_open", "escalated_abandoned", "button",
                            "handed_back"):
                    s.escalated_at = t + timedelta(seconds=rng.uniform(1, 30))
                if kind in ("escalated_human", "handed_back", "takeover"):
                    base = s.escalated_at or t
                    s.assigned_at = base + timedelta(seconds=rng.uniform(5, 60))
                    s.first_human_reply_at = s.assigned_at + timedelta(seconds=round(rng.uniform(5, 900), 3))
                    s.agent.append(s.first_human_reply_at)
                s.resolution = {"ai": rng.choice([None, "resolved_by_ai"]),
                                "escalated_human": "resolved_by_human",
                                "escalated_abandoned": "abandoned", "abandoned": "abandoned",
                                "handed_back": "resolved_by_ai",
                                "takeover": rng.choice([None, "resolved_by_human"])}.get(kind)
                if s.resolution and rng.random() < 0.7:
                    s.csat = rng.randint(1, 5)
                if rng.random() < 0.35:
                    s.contact_email = f"c{rng.randrange(10**9)}@example.com"
                if s.customer and rng.random() < 0.3:
                    s.leads.append(s.customer[-1] + timedelta(seconds=20))
                out.append(s)
    # Boundaries: a second before the range, the first second after it (both left out); a
    # session before the range whose lead comes inside it (the lead counts, the session not).
    out.append(Seeded("widget", at(START, -1), "ai", customer=[at(START, -0.5)],
                      ai_replies={0: [at(START, 0.5)]}))
    after = END + timedelta(days=1)
    out.append(Seeded("whatsapp", at(after, 0), "ai", customer=[at(after, 1)],
                      ai_replies={0: [at(after, 2)]}))
    out.append(Seeded("widget", at(START, -3600), "ai", customer=[at(START, -3500)],
                      ai_replies={0: [at(START, -3499)]}, leads=[at(START, 7200)]))
    return out


async def seed(db: Any, tenant_id: uuid.UUID, plan: list[Seeded]) -> dict[str, uuid.UUID]:
    """Write ``plan`` for ``tenant_id`` (its channels created here); returns the channel ids."""
    async with db.acquire() as conn, conn.transaction():
        channels = {
            "widget": await conn.fetchval(
                "INSERT INTO channels (tenant_id, type, name, widget_token) "
                "VALUES ($1, 'widget', 'site', $2) RETURNING id", tenant_id, "wt_" + uuid.uuid4().hex),
            "whatsapp": await conn.fetchval(
                "INSERT INTO channels (tenant_id, type, name) VALUES ($1, 'whatsapp', 'wa') RETURNING id",
                tenant_id),
        }
        for n, s in enumerate(plan):
            ch = channels[s.channel]
            contact = await conn.fetchval(
                "INSERT INTO contacts (tenant_id, channel_id, external_ref, email) VALUES ($1, $2, $3, $4) "
                "RETURNING id", tenant_id, ch, f"ref-{n}-{uuid.uuid4().hex[:6]}", s.contact_email)
            sid = await conn.fetchval(
                """INSERT INTO sessions (tenant_id, channel_id, contact_id, status, created_at, updated_at,
                       last_activity_at, escalated_at, assigned_at, first_human_reply_at, resolution,
                       csat_score, csat_at, closed_at)
                   VALUES ($1, $2, $3, $4, $5, $5, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id""",
                tenant_id, ch, contact, "closed" if s.resolution else "ai_handled", s.created_at,
                s.escalated_at, s.assigned_at, s.first_human_reply_at, s.resolution, s.csat,
                s.created_at + timedelta(hours=1) if s.csat else None,
                s.created_at + timedelta(hours=1) if s.resolution else None)
            for i, t in enumerate(s.customer):
                # Unanswered ones are `inbox`, never `received`: the Timekeeper's stale-message
                # sweep would hand those to the bot, which would answer them.
                mid = await conn.fetchval(
                    "INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, status, "
                    "created_at) VALUES ($1, $2, $3, 'customer', $4, $5, $6) RETURNING id",
                    tenant_id, sid, ch, f"question {i}", "answered" if i in s.ai_replies else "inbox", t)
                for r in s.ai_replies.get(i, []):
                    await conn.execute(
                        "INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, reply_to, "
                        "intent, confidence, created_at) "
                        "VALUES ($1, $2, $3, 'ai', 'an answer', $4, 'answer', 0.9, $5)",
                        tenant_id, sid, ch, mid, r)
            for t in s.agent:
                await conn.execute(
                    "INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, created_at) "
                    "VALUES ($1, $2, $3, 'agent', 'a human here', $4)", tenant_id, sid, ch, t)
            if s.escalated_at is not None:
                await conn.execute(
                    "INSERT INTO escalations (tenant_id, session_id, reason, signal, question, created_at) "
                    "VALUES ($1, $2, 'wants a human', 'human_request', 'a human please', $3)",
                    tenant_id, sid, s.escalated_at)
            for t in s.leads:
                await conn.execute(
                    "INSERT INTO leads (tenant_id, session_id, contact_id, email, created_at) "
                    "VALUES ($1, $2, $3, 'lead@example.com', $4)", tenant_id, sid, contact, t)
    return channels


# ---------------------------------------------------------------- the expected figures, in Python
def in_range(t: datetime, start: date = START, end: date = END) -> bool:
    return at(start, 0) <= t < at(end + timedelta(days=1), 0)


def outcome(s: Seeded) -> str:
    if s.resolution == "abandoned":
        return "abandoned"
    if s.resolution == "resolved_by_human":
        return "human"
    if s.escalated_at is None and s.assigned_at is None and not s.agent:
        return "ai"
    return "other"


def percentiles(values: list[float]) -> tuple[int, float | None, float | None]:
    if not values:
        return 0, None, None
    return (len(values), round(float(np.percentile(values, 50)), 3),
            round(float(np.percentile(values, 90)), 3))


def expected(plan: list[Seeded], channel: str | None, start: date = START, end: date = END) -> dict[str, Any]:
    """The figures of the plan's sessions in the range (of one channel, or all)."""
    mine = [s for s in plan if in_range(s.created_at, start, end) and channel in (None, s.channel)]
    conv = [s for s in mine if s.customer or s.escalated_at is not None]
    chatted = [s for s in mine if s.customer]
    ai_frt = [(min(r) - s.customer[i]).total_seconds() for s in mine for i, r in s.ai_replies.items()]
    human_frt = [(s.first_human_reply_at - s.escalated_at).total_seconds() for s in mine
                 if s.escalated_at and s.first_human_reply_at]
    csat = [s.csat for s in mine if s.csat is not None]
    escalated = sum(s.escalated_at is not None for s in conv)
    n_ai, p50_ai, p90_ai = percentiles(ai_frt)
    n_h, p50_h, p90_h = percentiles(human_frt)
    return {
        "channel": channel,
        "conversations": len(conv),
        "handled_by_ai": sum(outcome(s) == "ai" for s in conv),
        "escalated": escalated,
        "resolved_by_human": sum(outcome(s) == "human" for s in conv),
        "abandoned": sum(outcome(s) == "abandoned" for s in conv),
        "other": sum(outcome(s) == "other" for s in conv),
        "handoff_rate": round(escalated / len(conv), 4) if conv else None,
        "leads": sum(in_range(t, start, end) for s in plan if channel in (None, s.channel) for t in s.leads),
        "ai_first_response": {"n": n_ai, "p50_s": p50_ai, "p90_s": p90_ai},
        "human_first_response": {"n": n_h, "p50_s": p50_h, "p90_s": p90_h},
        "funnel": {"visitors": len(mine), "chatted": len(chatted),
                   "email_captured": sum(bool(s.contact_email or s.leads) for s in chatted),
                   "leads": sum(bool(s.leads) for s in chatted)},
        "csat": {"responses": len(csat), "average": round(sum(csat) / len(csat), 3) if csat else None,
                 "distribution": {str(k): csat.count(k) for k in range(1, 6)}},
    }


def expected_daily(plan: list[Seeded]) -> list[dict[str, Any]]:
    out = []
    for day in DAYS:
        conv = [s for s in plan if s.created_at.date() == day and (s.customer or s.escalated_at)]
        out.append({
            "day": day.isoformat(), "conversations": len(conv),
            "handled_by_ai": sum(outcome(s) == "ai" for s in conv),
            "resolved_by_human": sum(outcome(s) == "human" for s in conv),
            "abandoned": sum(outcome(s) == "abandoned" for s in conv),
            "other": sum(outcome(s) == "other" for s in conv),
            "escalated": sum(s.escalated_at is not None for s in conv),
            "leads": sum(t.date() == day for s in plan for t in s.leads),
        })
    return out


def close(got: dict[str, Any], want: dict[str, Any]) -> None:
    """``got == want`` with float figures compared to 1 ms / 1e-3."""
    assert set(got) >= set(want), (sorted(got), sorted(want))
    for k, w in want.items():
        g = got[k]
        if isinstance(w, dict):
            close(g, w)
        elif isinstance(w, float):
            assert g == pytest.approx(w, abs=1e-3), (k, g, w)
        else:
            assert g == w, (k, g, w)


async def seeded_tenant(client: httpx.AsyncClient, db: Any, name: str) -> tuple[TenantInfo, list[Seeded]]:
    """A tenant with the seeded week (and another tenant with the same kind of week around it)."""
    tenant = await make_tenant(client, name)
    plan = plan_week(random.Random(14))
    await seed(db, uuid.UUID(tenant.id), plan)
    other = await make_tenant(client, name + "-other")
    await seed(db, uuid.UUID(other.id), plan_week(random.Random(41)))
    return tenant, plan


async def test_analytics_over_a_seeded_week_match_the_seed(client: httpx.AsyncClient, db: Any) -> None:
    tenant, plan = await seeded_tenant(client, db, "analytics-week")
    kinds_seen = {(s.channel, s.kind) for s in plan if in_range(s.created_at)}
    assert {k for _, k in kinds_seen} == set(KINDS)  # every kind of conversation is in the seed
    r = await client.get(f"/v1/analytics?from={START}&to={END}", headers=tenant.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["start"], body["end"], body["timezone"]) == (str(START), str(END), "UTC")
    assert body["channel"] is None
    want = expected(plan, None)
    assert want["conversations"] > 40 and want["escalated"] > 5 and want["leads"] > 3  # a real week
    close(body["totals"], want)
    assert [c["channel"] for c in body["channels"]] == ["widget", "whatsapp"]
    for c in body["channels"]:
        close(c, expected(plan, c["channel"]))
    assert body["daily"] == expected_daily(plan)
    t = body["totals"]
    # The four outcomes partition the conversations, per day and in total.
    assert t["handled_by_ai"] + t["resolved_by_human"] + t["abandoned"] + t["other"] == t["conversations"]
    # The lead created inside the range for a session from before it counts; that session not.
    assert want["leads"] == sum(len(s.leads) for s in plan if in_range(s.created_at)) + 1

    # One channel only: the same figures as that channel's column.
    r = await client.get(f"/v1/analytics?from={START}&to={END}&channel=whatsapp", headers=tenant.headers)
    assert r.status_code == 200, r.text
    close(r.json()["totals"], {**expected(plan, "whatsapp"), "channel": None})
    assert [c["channel"] for c in r.json()["channels"]] == ["whatsapp"]

    # A range: the default is the last 7 days; from after to, or over 366 days: 422 naming the field.
    r = await client.get("/v1/analytics", headers=tenant.headers)
    assert r.status_code == 200 and len(r.json()["daily"]) == 7, r.text
    r = await client.get(f"/v1/analytics?from={END}&to={START}", headers=tenant.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "from", r.text
    r = await client.get(f"/v1/analytics?from=2025-01-01&to={END}", headers=tenant.headers)
    assert r.status_code == 422 and r.json()["error"]["field"] == "to", r.text
    r = await client.get("/v1/analytics?from=2026-13-01", headers=tenant.headers)
    assert r.status_code == 422 and r.json()["error"]["fields"][0]["field"] == "from", r.text

    # Who may read: owner (above) and viewer yes; an agent no (403); no key 401.
    async with db.acquire() as conn:
        _, viewer_key = await tenants_db.create_user(conn, uuid.UUID(tenant.id), "Vic", None, "viewer")
        _, agent_key = await tenants_db.create_user(conn, uuid.UUID(tenant.id), "Ann", None, "agent")
    week = f"/v1/analytics?from={START}&to={END}"
    r = await client.get(week, headers={"Authorization": f"Bearer {viewer_key}"})
    assert r.status_code == 200 and r.json()["totals"]["conversations"] == want["conversations"], r.text
    r = await client.get(week, headers={"Authorization": f"Bearer {agent_key}"})
    assert r.status_code == 403, r.text
    assert (await client.get("/v1/analytics")).status_code == 401
    r = await client.get(week, headers={"Authorization": f"Bearer {new_api_key()}"})
    assert r.status_code == 401


# ---------------------------------------------------------------- unanswered questions
CANADA = ["Do you ship to Canada?", "Can I get my order delivered to Canada?",
          "Is shipping to Canada available?", "do you deliver orders to canada"]
BITCOIN = ["Can I pay with Bitcoin?", "Do you accept cryptocurrency like bitcoin as payment?"]
OTHERS = ["How do I reset my password?", "Is there a student discount?"]
PARCEL = "Could my parcel be shipped to Canada?"
ANSWER = "Yes, we ship to Canada: delivery takes 5 to 8 business days and costs 15 dollars."


async def test_unanswered_questions_cluster_and_add_to_kb_answers_the_next_customer(
    client: httpx.AsyncClient, tenant: TenantInfo, db: Any,
) -> None:
    tid = uuid.UUID(tenant.id)
    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={
        "question": "When is the shop open?", "answer": "The shop is open Monday to Friday, 9 am to 6 pm."})
    assert r.status_code == 201, r.text
    channel = await widget_channel(client, tenant.headers)

    # A customer asks; the knowledge base has nothing on it, so the bot hands over ("could not answer").
    first = await new_session(client, channel["widget_token"])
    events = await ask(client, first, CANADA[0])
    handoff = [e.data for e in events if e.event == "handoff"]
    assert handoff and handoff[0]["signal"] == "low_coverage", [(e.event, e.data) for e in events]

    # More of the same and other questions, as earlier conversations left them: low-coverage
    # escalations, and one weak answer (the AI answered from a source under the weak threshold).
    async with db.acquire() as conn:
        wid = uuid.UUID(channel["id"])
        for q in [*CANADA[1:], *BITCOIN, *OTHERS]:
            sid = await conn.fetchval("INSERT INTO sessions (tenant_id, channel_id, status) VALUES "
                                      "($1, $2, 'human_escalated') RETURNING id", tid, wid)
            await conn.execute("INSERT INTO escalations (tenant_id, session_id, reason, signal, question) "
                               "VALUES ($1, $2, 'could not answer', 'low_coverage', $3)", tid, sid, q)
        sid = await conn.fetchval("INSERT INTO sessions (tenant_id, channel_id) VALUES ($1, $2) RETURNING id",
                                  tid, wid)
        weak_q = await conn.fetchval("INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, "
                                     "status) VALUES ($1, $2, $3, 'customer', $4, 'answered') RETURNING id",
                                     tid, sid, wid, PARCEL)
        await conn.execute("INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, reply_to, "
                           "intent, confidence) "
                           "VALUES ($1, $2, $3, 'ai', 'We are open 9 to 6.', $4, 'answer', 0.41)",
                           tid, sid, wid, weak_q)
        # A well-supported answer is not "unanswered".
        good_q = await conn.fetchval("INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, "
                                     "status) VALUES ($1, $2, $3, 'customer', 'When do you open?', "
                                     "'answered') RETURNING id", tid, sid, wid)
        await conn.execute("INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, reply_to, "
                           "intent, confidence) "
                           "VALUES ($1, $2, $3, 'ai', 'We are open 9 to 6.', $4, 'answer', 0.8)",
                           tid, sid, wid, good_q)

    r = await client.get("/v1/analytics/unanswered", headers=tenant.headers)
    assert r.status_code == 200, r.text
    clusters = r.json()["clusters"]
    by_member = {q.lower(): c for c in clusters for q in c["examples"]}
    canada = by_member[CANADA[0].lower()]
    # The paraphrases (4 escalations, one of them the real one above, and the weak answer's
    # question) are one cluster, most asked first, its canonical question one of them ...
    assert clusters[0] == canada
    assert (canada["count"], canada["escalations"], canada["weak_answers"]) == (5, 4, 1)
    assert sorted(canada["examples"]) == sorted([*CANADA, PARCEL])
    assert canada["question"] in [*CANADA, PARCEL]
    assert canada["message_ids"] == [weak_q] and len(set(canada["escalation_ids"])) == 4
    assert canada["channels"] == {"widget": 5}
    # ... and the different questions are not in it: bitcoin is its own cluster, the others alone.
    bitcoin = by_member[BITCOIN[0].lower()]
    assert bitcoin is not canada and bitcoin["count"] == 2
    for q in OTHERS:
        assert by_member[q.lower()]["count"] == 1 and by_member[q.lower()] is not canada
    assert "when do you open?" not in by_member  # well answered
    assert len(clusters) == 4

    # Add to knowledge base: unknown ids are refused (nothing written) ...
    r = await client.post("/v1/analytics/unanswered/add-to-kb", headers=tenant.headers, json={
        "question": canada["question"], "answer": ANSWER, "escalation_ids": [str(uuid.uuid4())]})
    assert r.status_code == 404, r.text
    # ... the cluster's are answered.
    r = await client.post("/v1/analytics/unanswered/add-to-kb", headers=tenant.headers, json={
        "question": CANADA[0], "answer": ANSWER, "escalation_ids": canada["escalation_ids"],
        "message_ids": canada["message_ids"]})
    assert r.status_code == 201, r.text
    entry = r.json()
    assert (entry["escalations_resolved"], entry["turns_resolved"]) == (4, 1) and entry["chunk_ids"]
    async with db.acquire() as conn:
        marked = await conn.fetchval("SELECT count(*) FROM escalations WHERE tenant_id = $1 AND "
                                     "resolved_kb_entry", tid)
    assert marked == 4
    r = await client.get("/v1/analytics/unanswered", headers=tenant.headers)
    left = r.json()["clusters"]
    assert sorted(c["count"] for c in left) == [1, 1, 2]  # the Canada cluster is gone, the rest stay
    assert all("canada" not in e.lower() for c in left for e in c["examples"])

    # The next customer asking it gets the answer, citing the new entry, instead of a handoff.
    nxt = await new_session(client, channel["widget_token"])
    events = await ask(client, nxt, "Do you ship to Canada?")
    assert not [e for e in events if e.event == "handoff"], [(e.event, e.data) for e in events]
    answer = [e.data for e in events if e.event == "message" and e.data.get("sender") == "ai"]
    assert answer and "Canada" in answer[0]["text"] and "5 to 8 business days" in answer[0]["text"], answer
    assert entry["document_id"] in [s["document_id"] for s in answer[0]["sources"]], answer[0]["sources"]

    # Agents may not add to the knowledge base.
    async with db.acquire() as conn:
        _, agent_key = await tenants_db.create_user(conn, tid, "Ann", None, "agent")
    r = await client.post("/v1/analytics/unanswered/add-to-kb", json={"question": "Q?", "answer": "A."},
                          headers={"Authorization": f"Bearer {agent_key}"})
    assert r.status_code == 403, r.text


# ---------------------------------------------------------------- the weekly report
async def test_weekly_report_is_emailed_once_per_week(
    client: httpx.AsyncClient, db: Any, services: Services, admin_headers: dict[str, str],
) -> None:
    from runtime.analytics.weekly import report_week, send_weekly_reports
    from tests.channel_helpers import create_channel

    owner_email = f"owner-{uuid.uuid4().hex[:8]}@bikes.example"
    r = await client.post("/v1/tenants", headers=admin_headers,
                          json={"name": "Weekly Bikes", "owner_email": owner_email})
    assert r.status_code == 201, r.text
    tenant = TenantInfo(r.json()["tenant_id"], r.json()["owner_api_key"], "Weekly Bikes")
    tid = uuid.UUID(tenant.id)
    today = datetime.now(UTC).date()
    now = at(today - timedelta(days=today.weekday()), 2.5 * 86_400)  # Wednesday noon, this week
    start, end = report_week(now)
    plan = [s for s in plan_week(random.Random(7)) if in_range(s.created_at)]
    shift = start - START  # the seeded week moved onto last week
    shift_plan(plan, shift)
    await seed(db, tid, plan)

    # A tenant created this week has no report for last week; one older, with email, has.
    assert tid not in await send_weekly_reports(db, now, tenant_id=tid)
    await create_channel(client, tenant.headers, "email")
    assert tid not in await send_weekly_reports(db, now, tenant_id=tid)
    async with db.acquire() as conn:
        await conn.execute("UPDATE tenants SET created_at = $2 WHERE id = $1", tid, at(start, -86_400))
    # The Timekeeper (checking every second here) sends it; a later check, or one after a
    # restart, sends nothing more: the marker decides.
    rows: list[Any] = []
    for _ in range(60):
        async with db.acquire() as conn:
            rows = await conn.fetch("SELECT period_start, recipient, outbox_id FROM weekly_reports "
                                    "WHERE tenant_id = $1", tid)
        if rows and rows[0]["outbox_id"] is not None:
            break
        await asyncio.sleep(0.5)
    again = await send_weekly_reports(db, now + timedelta(hours=3), tenant_id=tid)
    assert tid not in again
    async with db.acquire() as conn:
        outbox = await conn.fetch("SELECT id, recipient, body FROM outbox WHERE tenant_id = $1", tid)
    assert [(r["period_start"], r["recipient"]) for r in rows] == [(start, owner_email)]
    assert [o["id"] for o in outbox] == [rows[0]["outbox_id"]] and outbox[0]["recipient"] == owner_email

    # The outbox sender delivers it (the Mailgun stand-in: the real API cannot be reached here).
    mails = await services.standins.wait_for("email", timeout_s=30)
    mail = next(m for m in mails if m.recipient == owner_email)
    subject = mail.payload["subject"]
    assert subject.startswith("Weekly report") and not subject.lower().startswith("re:"), subject
    conversations = sum(1 for s in plan if s.customer or s.escalated_at)
    assert f"Conversations: {conversations}" in mail.text and f"{start:%a %d %b %Y}" in mail.text, mail.text
    # Next week's check sends next week's report, once.
    await send_weekly_reports(db, now + timedelta(days=7), tenant_id=tid)
    async with db.acquire() as conn:
        weeks = await conn.fetch("SELECT period_start FROM weekly_reports WHERE tenant_id = $1 "
                                 "ORDER BY 1", tid)
    assert [w["period_start"] for w in weeks] == [start, start + timedelta(days=7)]
    assert end == start + timedelta(days=6)


# ---------------------------------------------------------------- the dashboard in a browser
PAGE_CSP = ("default-src 'none'; script-src 'self' 'nonce-t3st'; style-src 'self'; connect-src 'self'; "
            "img-src 'self' data:; base-uri 'none'; form-action 'none'")


@pytest.mark.browser
async def test_dashboard_renders_charts_and_adds_to_kb_in_chromium(
    client: httpx.AsyncClient, db: Any, app_url: str, browser: Any,
) -> None:
    """``dashboard.js`` on a page of the app's origin under a strict CSP (scripts from 'self' and
    one nonce'd mount call; no inline styles, no eval): the totals, three drawn chart canvases
    (daily stacked bars matching the figures, funnel, CSAT), the unanswered cluster, and its
    "Add to knowledge base" form; no console error and no CSP violation."""
    from tests.conftest import REPO

    for path in ("/widget/dashboard.js", "/widget/vendor/chart.umd.min.js"):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/javascript"), path
    tenant, plan = await seeded_tenant(client, db, "dashboard")
    tid = uuid.UUID(tenant.id)
    async with db.acquire() as conn:
        sid = await conn.fetchval("SELECT id FROM sessions WHERE tenant_id = $1 AND created_at >= $2 LIMIT 1",
                                  tid, at(START, 0))
        for q in BITCOIN:
            await conn.execute("INSERT INTO escalations (tenant_id, session_id, reason, signal, question, "
                               "created_at) VALUES ($1, $2, 'could not answer', 'low_coverage', $3, $4)",
                               tid, sid, q, at(START, 3600))
    want = expected(plan, None)
    page_html = (
        "<!doctype html><html><head><meta charset=utf-8><title>dashboard</title>"
        "<script src='/widget/dashboard.js'></script></head><body><div id=dash></div>"
        "<script nonce=t3st>window.__csp = [];"
        "document.addEventListener('securitypolicyviolation', e => window.__csp.push(e.violatedDirective));"
        f"const key = {tenant.owner_key!r};"
        "ChatEngineDashboard.mount(document.getElementById('dash'), {"
        f"from: '{START}', to: '{END}',"
        "fetch: (u, i) => fetch(u, Object.assign({}, i, {headers: Object.assign({}, (i || {}).headers,"
        " {Authorization: 'Bearer ' + key})}))});</script></body></html>")
    errors: list[str] = []
    page = await browser.new_page(viewport={"width": 1200, "height": 1600})
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        await page.route(f"{app_url}/dashboard-test", lambda route: route.fulfill(
            status=200, body=page_html, headers={"Content-Type": "text/html; charset=utf-8",
                                                 "Content-Security-Policy": PAGE_CSP}))
        await page.goto(f"{app_url}/dashboard-test")
        await page.wait_for_selector(f"#dash[data-loaded='{START}..{END}']", timeout=60_000)
        figure = page.locator("[data-figure='Conversations']")
        assert await figure.text_content() == str(want["conversations"])
        assert await page.locator("[data-figure='Leads']").text_content() == str(want["leads"])
        charts = await page.evaluate("""() => [...document.querySelectorAll('#dash canvas')].map(c => {
            const chart = Chart.getChart(c);
            const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let drawn = 0;
            for (let i = 3; i < px.length; i += 4) if (px[i] > 0) drawn++;
            return {drawn, width: c.width, sums: chart ? chart.data.datasets.map(
                d => d.data.reduce((a, b) => a + b, 0)) : null};
        })""")
        assert len(charts) == 3 and all(c["sums"] is not None for c in charts), charts
        assert all(c["drawn"] > 1000 and c["width"] > 200 for c in charts), charts
        daily = charts[0]["sums"]  # four outcome stacks, then the leads line
        assert sum(daily[:4]) == want["conversations"] and daily[4] == want["leads"], daily
        assert charts[1]["sums"] == [sum(want["funnel"].values())], charts[1]
        assert charts[2]["sums"] == [want["csat"]["responses"]], charts[2]

        # The bitcoin cluster, answered from the dashboard.
        cluster = page.locator(".ce-dash-cluster")
        assert await cluster.count() == 1
        assert await cluster.locator(".ce-dash-question").text_content() in BITCOIN
        await cluster.locator("textarea[name=answer]").fill("No, we accept cards and bank transfers only.")
        await cluster.locator("button[type=submit]").click()
        await page.wait_for_function(
            "() => document.querySelector('.ce-dash-unanswered').textContent.includes('Nothing unanswered')",
            timeout=60_000)
        async with db.acquire() as conn:
            resolved = await conn.fetchval("SELECT count(*) FROM escalations WHERE tenant_id = $1 AND "
                                           "signal = 'low_coverage' AND resolved_kb_entry", tid)
            docs = await conn.fetchval("SELECT count(*) FROM kb_documents WHERE tenant_id = $1 "
                                       "AND kind = 'qa'", tid)
        assert (resolved, docs) == (2, 1)
        assert await page.evaluate("() => window.__csp") == []
        assert errors == [], errors
    except BaseException:
        (REPO / "test-artifacts").mkdir(exist_ok=True)
        await page.screenshot(path=str(REPO / "test-artifacts" / "dashboard.png"), full_page=True)
        raise
    finally:
        await page.close()
