"""The agent inbox's API (issue 14): people and roles on every route, the login cookie with its
CSRF defences and rate limit, the queue and a conversation's context, notes, labels, teams with
round-robin and the per-agent limit, business hours with the offline auto-reply, and how a
conversation ends (resolution, CSAT, idle auto-close). On the session stack of conftest.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.chat_helpers import ORIGIN, WidgetSession, ask, new_session, widget_channel
from tests.conftest import TenantInfo

PASSWORD = "correct horse battery staple"


# ---------------------------------------------------------------- helpers (shared with the browser test)
async def add_user(client: httpx.AsyncClient, tenant: TenantInfo, name: str, role: str,
                   email: str | None = None, **extra: Any) -> dict[str, Any]:
    """Create a user (with a password when an email is given); returns the answer plus
    ``headers`` (its API key)."""
    body: dict[str, Any] = {"name": name, "role": role, **extra}
    if email:
        body.update(email=email, password=PASSWORD)
    r = await client.post("/v1/users", headers=tenant.headers, json=body)
    assert r.status_code == 201, r.text
    out = r.json()
    out["headers"] = {"Authorization": f"Bearer {out['api_key']}"}
    return dict(out)


def unique_email(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@inbox.example"


class CookieLogin:
    """A logged-in browser as httpx sees it: the cookie (httpx keeps Secure cookies off plain
    HTTP, so it is sent by hand), the CSRF token and this server's Origin."""

    def __init__(self, client: httpx.AsyncClient, cookie: str, csrf: str, origin: str) -> None:
        self.client, self.cookie, self.csrf, self.origin = client, cookie, csrf, origin

    def headers(self, csrf: bool = True, origin: str | None = None) -> dict[str, str]:
        h = {"Cookie": self.cookie, "Origin": origin or self.origin}
        if csrf:
            h["X-CSRF-Token"] = self.csrf
        return h

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        return await self.client.get(path, headers={"Cookie": self.cookie}, **kw)

    async def post(self, path: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers(), **kw.pop("headers", {})}
        return await self.client.post(path, headers=headers, **kw)


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> CookieLogin:
    r = await client.post("/v1/auth/login", json={"email": email, "password": password})
    assert r.status_code == 200, r.text
    set_cookie = r.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "Secure" in set_cookie and "SameSite=strict" in set_cookie
    cookie = set_cookie.split(";", 1)[0]
    assert cookie.startswith("__Host-ce_session=")
    return CookieLogin(client, cookie, r.json()["csrf_token"], str(client.base_url).rstrip("/"))


async def escalate(client: httpx.AsyncClient, widget_token: str, origin: str = ORIGIN) -> WidgetSession:
    """A widget conversation whose customer pressed "Talk to a human"."""
    s = await new_session(client, widget_token, origin)
    r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
    assert r.status_code == 200 and r.json()["status"] == "human_escalated", r.text
    return s


async def widget_messages(client: httpx.AsyncClient, s: WidgetSession) -> dict[str, Any]:
    r = await client.get(f"/v1/widget/sessions/{s.session_id}/messages", headers=s.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def until(check: Any, timeout: float = 20.0, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(every)


@pytest.fixture
async def channel(client: httpx.AsyncClient, tenant: TenantInfo) -> dict[str, Any]:
    return await widget_channel(client, tenant.headers)


# ---------------------------------------------------------------- people, roles, login
async def test_login_cookie_csrf_logout_and_rate_limit(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Any
) -> None:
    import redis.asyncio as aioredis

    email = unique_email("agent")
    agent = await add_user(client, tenant, "Rahul", "agent", email)

    # Failures say nothing about which part was wrong: same status, code and message.
    wrong_pw = await client.post("/v1/auth/login", json={"email": email, "password": "not the password"})
    unknown = await client.post("/v1/auth/login",
                                json={"email": unique_email("nobody"), "password": PASSWORD})
    assert wrong_pw.status_code == unknown.status_code == 401
    assert wrong_pw.json() == unknown.json()
    assert wrong_pw.json()["error"]["code"] == "invalid_login"
    assert "set-cookie" not in wrong_pw.headers

    me = await login(client, email.upper())  # emails are case-insensitive
    r = await me.get("/v1/auth/me")
    assert r.status_code == 200 and r.json()["role"] == "agent" and r.json()["user_id"] == agent["id"]
    assert r.json()["csrf_token"] == me.csrf
    assert (await me.get("/v1/inbox/sessions")).status_code == 200

    # A cookie write needs the CSRF token AND this server's Origin; the API key needs neither.
    body = {"text": "a note"}
    s = await escalate(client, (await widget_channel(client, tenant.headers))["widget_token"])
    path = f"/v1/inbox/sessions/{s.session_id}/notes"
    no_token = await client.post(path, json=body, headers=me.headers(csrf=False))
    evil = await client.post(path, json=body, headers=me.headers(origin="https://evil.example"))
    no_origin = await client.post(path, json=body, headers={"Cookie": me.cookie, "X-CSRF-Token": me.csrf})
    wrong_token = await client.post(path, json=body, headers={**me.headers(), "X-CSRF-Token": "x" * 43})
    for refused in (no_token, evil, no_origin, wrong_token):
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_refused", refused.text
    ok = await me.post(path, json=body)
    assert ok.status_code == 201, ok.text
    assert (await client.post(path, json=body, headers=agent["headers"])).status_code == 201
    notes = (await me.get(path)).json()
    assert [n["text"] for n in notes] == ["a note", "a note"] and notes[0]["author_name"] == "Rahul"

    # Logout ends the login: the same cookie is refused afterwards.
    assert (await me.post("/v1/auth/logout")).status_code == 204
    after = await me.get("/v1/inbox/sessions")
    assert after.status_code == 401

    # An invite: shown once, redeemed with a password (logged in at once), then spent.
    invited = unique_email("invited")
    r = await client.post("/v1/users", headers=tenant.headers,
                          json={"name": "Invitee", "role": "agent", "email": invited, "invite": True})
    assert r.status_code == 201 and r.json()["invite_token"], r.text
    token = r.json()["invite_token"]
    before = await client.post("/v1/auth/login", json={"email": invited, "password": PASSWORD})
    assert before.status_code == 401
    redeemed = await client.post("/v1/auth/invite", json={"token": token, "password": PASSWORD})
    assert redeemed.status_code == 200 and redeemed.json()["name"] == "Invitee"
    assert "__Host-ce_session=" in redeemed.headers["set-cookie"]
    spent = await client.post("/v1/auth/invite", json={"token": token, "password": PASSWORD})
    assert spent.status_code == 401
    await login(client, invited)

    # Rate limit: the email's budget (10 a minute) is spent, the 11th attempt is 429 even with
    # the right password; another email from the same IP still logs in.
    redis = aioredis.from_url(services.redis_url)
    try:
        codes = [(await client.post("/v1/auth/login", json={"email": email, "password": "wrong password!"}))
                 .status_code for _ in range(8)]
        assert codes == [401] * 8  # with the two logins above: 10 attempts
        limited = await client.post("/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) > 0
        other = unique_email("other")
        await add_user(client, tenant, "Other", "agent", other)
        await login(client, other)
    finally:
        keys = [k async for k in redis.scan_iter("chat:rl*login*")]
        if keys:
            await redis.delete(*keys)
        await redis.aclose()


async def test_roles_on_every_route(client: httpx.AsyncClient, tenant: TenantInfo, app_url: str) -> None:
    """Viewers write nowhere; agents change no setup; admins do, but make no owners."""
    viewer = await add_user(client, tenant, "Vera", "viewer")
    agent = await add_user(client, tenant, "Ali", "agent")
    admin = await add_user(client, tenant, "Ada", "admin")
    spec = (await client.get("/openapi.json")).json()
    fake = str(uuid.uuid4())
    public = ("/v1/widget/", "/v1/webhooks/", "/v1/auth/", "/v1/tenants")
    checked: dict[str, int] = {"viewer": 0, "agent": 0}
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1/") or path.startswith(public):
            continue
        url = path
        for name in ("session_id", "escalation_id", "team_id", "canned_id", "user_id", "document_id",
                     "job_id", "channel_id", "tenant_id"):
            url = url.replace("{" + name + "}", fake)
        url = url.replace("{outbox_id}", "1").replace("{label}", "vip")
        for method, op in ops.items():
            if method not in ("post", "put", "patch", "delete", "get"):
                continue
            if method != "get":
                r = await client.request(method.upper(), url, headers=viewer["headers"], json={})
                assert r.status_code == 403, (method, path, r.status_code, r.text)
                checked["viewer"] += 1
            if set(op.get("tags", [])) & {"admin", "kb", "usage"}:
                r = await client.request(method.upper(), url, headers=agent["headers"], json={})
                assert r.status_code == 403, (method, path, r.status_code, r.text)
                checked["agent"] += 1
    assert checked["viewer"] >= 20 and checked["agent"] >= 8, checked

    # The positive twins: viewers read the inbox, agents work it, admins set up, owners make owners.
    assert (await client.get("/v1/inbox/sessions", headers=viewer["headers"])).status_code == 200
    assert (await client.get("/v1/inbox/canned", headers=agent["headers"])).status_code == 200
    assert (await client.get("/v1/bot-config", headers=admin["headers"])).status_code == 200
    r = await client.post("/v1/users", headers=admin["headers"], json={"name": "New agent", "role": "agent"})
    assert r.status_code == 201
    r = await client.post("/v1/users", headers=admin["headers"], json={"name": "Boss", "role": "owner"})
    assert r.status_code == 403
    r = await client.post("/v1/users", headers=tenant.headers, json={"name": "Co-owner", "role": "owner"})
    assert r.status_code == 201
    users = {u["name"]: u for u in (await client.get("/v1/users", headers=admin["headers"])).json()}
    assert users["Vera"]["role"] == "viewer" and users["Co-owner"]["role"] == "owner"

    # A viewer's cookie write is refused for the role, not only for CSRF.
    email = unique_email("viewer")
    await add_user(client, tenant, "Vic", "viewer", email)
    me = await login(client, email)
    r = await me.post("/v1/inbox/canned", json={"shortcut": "hi", "title": "Hi", "text": "Hello"})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"


# ---------------------------------------------------------------- the conversation in the inbox
async def test_queue_context_notes_labels_close_and_csat(
    client: httpx.AsyncClient, tenant: TenantInfo, channel: dict[str, Any], db: Any
) -> None:
    agent = await add_user(client, tenant, "Priya Patel", "agent")
    h = agent["headers"]
    s = await escalate(client, channel["widget_token"])
    sid = s.session_id

    queue = (await client.get("/v1/inbox/sessions", headers=h, params={"status": "human_escalated"})).json()
    row = next(q for q in queue if q["id"] == sid)
    assert row["channel"]["type"] == "widget" and row["priority"] == "normal"
    assert row["sla"]["state"] == "ok" and row["waiting_s"] >= 0 and row["assignee"] is None
    assert row["last_message"]["sender"] == "system"

    assert (await client.post(f"/v1/inbox/sessions/{sid}/claim", headers=h)).status_code == 200
    r = await client.post(f"/v1/inbox/sessions/{sid}/reply", headers=h, json={"text": "Hi, Priya here."})
    assert r.status_code == 200 and r.json()["agent_name"] == "Priya Patel"
    note = "Customer is a VIP; refund approved by Sam."
    r = await client.post(f"/v1/inbox/sessions/{sid}/notes", headers=h, json={"text": note})
    assert r.status_code == 201

    # The note: in the agent's view, nowhere the customer can read.
    detail = (await client.get(f"/v1/inbox/sessions/{sid}", headers=h)).json()
    assert [n["text"] for n in detail["notes"]] == [note]
    assert detail["session"]["status"] == "human_assigned"
    assert detail["session"]["assignee"]["name"] == "Priya Patel"
    assert detail["handoff"]["trigger"]["reason"] == "The customer asked for a human."
    assert "Escalated (normal priority)" in detail["handoff"]["summary"]
    customer_view = await widget_messages(client, s)
    assert "Hi, Priya here." in [m["text"] for m in customer_view["messages"]]
    assert note not in str(customer_view)
    assert await db.fetchval("SELECT count(*) FROM messages WHERE session_id = $1 AND text = $2",
                             uuid.UUID(sid), note) == 0
    assert await db.fetchval("SELECT first_human_reply_at IS NOT NULL FROM sessions WHERE id = $1",
                             uuid.UUID(sid))

    # Labels: added (idempotent), filtered on, removed.
    for _ in range(2):
        r = await client.post(f"/v1/inbox/sessions/{sid}/labels", headers=h, json={"label": "refund"})
        assert r.json() == {"labels": ["refund"]}
    other = await escalate(client, channel["widget_token"])
    by_label = (await client.get("/v1/inbox/sessions", headers=h, params={"label": "refund"})).json()
    assert [q["id"] for q in by_label] == [sid]
    assert other.session_id in [q["id"] for q in (await client.get("/v1/inbox/sessions", headers=h)).json()]
    assert (await client.get("/v1/inbox/labels", headers=h)).json() == [{"label": "refund", "sessions": 1}]
    r = await client.delete(f"/v1/inbox/sessions/{sid}/labels/refund", headers=h)
    assert r.json() == {"labels": []}

    # Close with a resolution: the CSAT question reaches the customer, whose "4" is recorded
    # once, and the conversation stays closed.
    r = await client.post(f"/v1/inbox/sessions/{sid}/close", headers=h,
                          json={"resolution": "resolved_by_human"})
    assert r.status_code == 200 and r.json() == {"status": "closed", "resolution": "resolved_by_human",
                                                 "csat_asked": True}
    view = await widget_messages(client, s)
    assert view["status"] == "closed" and view["csat"] == {"asked": True, "score": None}
    question = view["messages"][-1]
    assert question["intent"] == "csat" and "1 (poor) to 5 (great)" in question["text"]
    events = await ask(client, s, "4")
    assert events[-1].event == "done"
    row = await db.fetchrow("SELECT status, resolution, csat_score, csat_at FROM sessions WHERE id = $1",
                            uuid.UUID(sid))
    assert (row["status"], row["resolution"], row["csat_score"]) == ("closed", "resolved_by_human", 4)
    view = await widget_messages(client, s)
    assert view["messages"][-1]["text"] == "Thank you for your feedback!" and view["csat"]["score"] == 4
    again = await client.post(f"/v1/widget/sessions/{sid}/csat", headers=s.headers, json={"score": 2})
    assert again.json() == {"csat_score": 4, "duplicate": True}

    # The widget's buttons on another conversation; and no CSAT question is a 409.
    r = await client.post(f"/v1/inbox/sessions/{other.session_id}/close", headers=h)
    assert r.json()["resolution"] == "abandoned" and r.json()["csat_asked"] is False
    no_question = await client.post(f"/v1/widget/sessions/{other.session_id}/csat", headers=other.headers,
                                    json={"score": 5})
    assert no_question.status_code == 409


async def test_teams_round_robin_and_limit(
    client: httpx.AsyncClient, tenant: TenantInfo, channel: dict[str, Any]
) -> None:
    a = await add_user(client, tenant, "Agent A", "agent", max_open_sessions=1)
    b = await add_user(client, tenant, "Agent B", "agent", max_open_sessions=1)
    outsider = await add_user(client, tenant, "Agent C", "agent")
    other_channel = await widget_channel(client, tenant.headers, ["https://other.example"])
    r = await client.post("/v1/teams", headers=tenant.headers, json={
        "name": "Support", "member_ids": [a["id"], b["id"]], "channel_ids": [channel["id"]]})
    assert r.status_code == 201, r.text
    r = await client.post("/v1/teams", headers=tenant.headers, json={
        "name": "Other site", "member_ids": [outsider["id"]], "channel_ids": [other_channel["id"]]})
    assert r.status_code == 201, r.text
    dup = await client.post("/v1/teams", headers=tenant.headers, json={"name": "Support"})
    assert dup.status_code == 409

    sessions = [await escalate(client, channel["widget_token"]) for _ in range(3)]
    queue = {q["id"]: q for q in (await client.get("/v1/inbox/sessions", headers=tenant.headers)).json()}
    assignees = [(queue[s.session_id]["assignee"] or {}).get("name") for s in sessions]
    assert sorted(assignees[:2]) == ["Agent A", "Agent B"], assignees  # one each, in turn
    assert assignees[2] is None, "both at their limit: the third waits in the team's queue"

    # At the limit, a claim of another conversation is refused; the own one is fine.
    first_of_a = sessions[assignees.index("Agent A")].session_id
    r = await client.post(f"/v1/inbox/sessions/{sessions[2].session_id}/claim", headers=a["headers"])
    assert r.status_code == 409 and "limit is 1" in r.json()["error"]["message"]
    r = await client.post(f"/v1/inbox/sessions/{first_of_a}/claim", headers=a["headers"])
    assert r.status_code == 200
    mine = (await client.get("/v1/inbox/sessions", headers=a["headers"], params={"assignee": "me"})).json()
    assert [q["id"] for q in mine] == [first_of_a]

    # The agent of the other team sees none of these; the team's agents see all three.
    seen_by_c = (await client.get("/v1/inbox/sessions", headers=outsider["headers"])).json()
    assert seen_by_c == []
    r = await client.get(f"/v1/inbox/sessions/{first_of_a}", headers=outsider["headers"])
    assert r.status_code == 404
    seen_by_b = {q["id"] for q in (await client.get("/v1/inbox/sessions", headers=b["headers"])).json()}
    assert {s.session_id for s in sessions} <= seen_by_b

    # Handing back frees A's place: the next escalation can go to A again.
    r = await client.post(f"/v1/inbox/sessions/{first_of_a}/hand-back", headers=a["headers"])
    assert r.status_code == 200
    fourth = await escalate(client, channel["widget_token"])
    row = (await client.get(f"/v1/inbox/sessions/{fourth.session_id}", headers=tenant.headers)).json()
    assert row["session"]["assignee"]["name"] == "Agent A"


# ---------------------------------------------------------------- business hours
def _closed_now_hours() -> dict[str, Any]:
    """Business hours open only on a weekday three days from now (UTC)."""
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    open_day = days[(datetime.now(UTC).weekday() + 3) % 7]
    return {"enabled": True, "timezone": "Europe/Berlin", "weekly": {open_day: [["09:00", "17:00"]]}}


async def test_business_hours_offline_reply_and_widget_state(
    client: httpx.AsyncClient, tenant: TenantInfo, channel: dict[str, Any], db: Any
) -> None:
    bad = await client.put("/v1/inbox/settings", headers=tenant.headers,
                           json={"business_hours": {"enabled": True, "timezone": "Mars/Olympus"}})
    assert bad.status_code == 422 and "IANA timezone" in bad.text
    r = await client.put("/v1/inbox/settings", headers=tenant.headers,
                         json={"business_hours": _closed_now_hours()})
    assert r.status_code == 200 and r.json()["open_now"] is False
    next_open = datetime.fromisoformat(r.json()["next_open"])
    assert next_open > datetime.now(UTC) + timedelta(days=1)

    s = await new_session(client, channel["widget_token"])
    assert s.raw["offline"] is True
    cfg = await client.get("/widget/config", params={"wt": channel["widget_token"]})
    assert cfg.json()["offline"] is True
    r = await client.post(f"/v1/widget/sessions/{s.session_id}/handoff", headers=s.headers)
    assert r.status_code == 200
    view = await widget_messages(client, s)
    assert view["offline"] is True and view["status"] == "human_escalated"
    reply = view["messages"][-1]
    assert reply["intent"] == "offline" and "offline right now" in reply["text"]
    assert next_open.strftime("%A") in reply["text"] and "Europe/Berlin" in reply["text"]
    due = await db.fetchval("SELECT due_at FROM timers WHERE session_id = $1 AND kind = 'sla'",
                            uuid.UUID(s.session_id))
    assert due >= next_open, "the SLA counts from the next opening"

    # Within the hours (all week, all day): the usual handoff message, the widget online.
    always = {"enabled": True, "timezone": "UTC",
              "weekly": {d: [["00:00", "24:00"]] for d in ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]}}
    r = await client.put("/v1/inbox/settings", headers=tenant.headers, json={"business_hours": always})
    assert r.json()["open_now"] is True
    s2 = await new_session(client, channel["widget_token"])
    assert s2.raw["offline"] is False
    r = await client.post(f"/v1/widget/sessions/{s2.session_id}/handoff", headers=s2.headers)
    assert r.status_code == 200
    reply = (await widget_messages(client, s2))["messages"][-1]
    assert reply["intent"] == "escalation" and "offline" not in reply["text"]


# ---------------------------------------------------------------- idle auto-close
async def test_idle_auto_close_sets_the_resolution(
    client: httpx.AsyncClient, tenant: TenantInfo, channel: dict[str, Any], db: Any
) -> None:
    """A silent conversation with the bot is closed by its ``auto_close`` timer: abandoned when
    the customer's question waits unanswered, resolved_by_ai when the bot answered it."""
    from runtime.api.session_calls import call_session

    r = await client.post("/v1/kb/qa", headers=tenant.headers, json={
        "question": "Do you repair e-bikes?", "answer": "Yes, we service Bosch and Shimano e-bike motors."})
    assert r.status_code == 201, r.text
    answered = await new_session(client, channel["widget_token"])
    events = await ask(client, answered, "Do you repair e-bikes?")
    assert any(e.event == "message" and e.data.get("sender") == "ai" for e in events), events

    r = await client.patch("/v1/bot-config", headers=tenant.headers, json={"status": "paused"})
    assert r.status_code == 200
    waiting = await new_session(client, channel["widget_token"])
    await ask(client, waiting, "Is anyone there?")

    for s, expected in ((answered, "resolved_by_ai"), (waiting, "abandoned")):
        sid = uuid.UUID(s.session_id)
        not_yet = await call_session(uuid.UUID(tenant.id), sid, "fire_timer", "auto_close")
        assert not_yet == {"fired": False}, "no timer armed, nothing closes"
        await db.execute("INSERT INTO timers (tenant_id, session_id, kind, due_at) VALUES ($1, $2, "
                         "'auto_close', now()) ON CONFLICT (session_id, kind) DO UPDATE SET due_at = now()",
                         uuid.UUID(tenant.id), sid)
        await db.execute("UPDATE sessions SET last_activity_at = now() - interval '2 days' WHERE id = $1",
                         sid)
        fired = await call_session(uuid.UUID(tenant.id), sid, "fire_timer", "auto_close")
        assert fired == {"fired": True, "resolution": expected}
        row = await db.fetchrow("SELECT status, resolution, csat_asked_at FROM sessions WHERE id = $1", sid)
        assert (row["status"], row["resolution"], row["csat_asked_at"]) == ("closed", expected, None)


# ---------------------------------------------------------------- the live stream
class InboxStream:
    """An agent's ``GET /v1/inbox/events`` read in the background into a queue."""

    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client, self.headers = client, headers
        self.events: asyncio.Queue[Any] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None
        self.opened = asyncio.Event()

    async def __aenter__(self) -> InboxStream:
        from tests.chat_helpers import parse_sse

        async def run() -> None:
            async with self.client.stream("GET", "/v1/inbox/events", headers=self.headers) as r:
                assert r.status_code == 200, await r.aread()
                self.opened.set()
                async for ev in parse_sse(r):
                    await self.events.put(ev)

        self.task = asyncio.get_running_loop().create_task(run())
        await asyncio.wait_for(self.opened.wait(), 10)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def next_for(self, session_id: str, kind: str, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            ev = await asyncio.wait_for(self.events.get(), max(0.01, deadline - time.monotonic()))
            if ev.event == kind and ev.data.get("session_id") == session_id:
                return ev


async def test_live_stream_per_agent_filters_and_resumes(
    client: httpx.AsyncClient, tenant: TenantInfo, channel: dict[str, Any]
) -> None:
    a = await add_user(client, tenant, "Agent A", "agent")
    c = await add_user(client, tenant, "Agent C", "agent")
    other = await widget_channel(client, tenant.headers, ["https://other.example"])
    for name, member, ch in (("Shop", a, channel), ("Other", c, other)):
        r = await client.post("/v1/teams", headers=tenant.headers, json={
            "name": name, "member_ids": [member["id"]], "channel_ids": [ch["id"]]})
        assert r.status_code == 201, r.text

    async with InboxStream(client, a["headers"]) as sa, InboxStream(client, c["headers"]) as sc:
        t0 = time.monotonic()
        s = await escalate(client, channel["widget_token"])
        ev = await sa.next_for(s.session_id, "escalation")
        assert time.monotonic() - t0 < 5
        assert ev.data["channel_type"] == "widget" and ev.data["assignee_id"] == a["id"]
        first_id = ev.id
        s2 = await escalate(client, other["widget_token"], "https://other.example")
        assert (await sc.next_for(s2.session_id, "escalation")).data["assignee_id"] == c["id"]
        with pytest.raises(asyncio.TimeoutError):  # C's stream never carries A's conversation
            await sc.next_for(s.session_id, "escalation", timeout=1.0)

    # Reconnect after the escalation: what happened meanwhile comes, the escalation not again.
    r = await client.post(f"/v1/inbox/sessions/{s.session_id}/claim", headers=a["headers"])
    assert r.status_code == 200
    resumed = InboxStream(client, {**a["headers"], "Last-Event-ID": first_id})
    async with resumed:
        ev = await resumed.next_for(s.session_id, "assigned")
        assert ev.data["agent_name"] == "Agent A"
        seen = [ev]
        while not resumed.events.empty():
            seen.append(resumed.events.get_nowait())
        assert all(e.id != first_id for e in seen)


async def test_csat_on_whatsapp_reaches_the_closed_conversation(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Any, db: Any
) -> None:
    """On a messaging channel the CSAT question goes out through the outbox, and the customer's
    bare "5" lands in the conversation that asked (closed), not in a new one; a real question
    afterwards opens a new conversation as usual. WhatsApp is the provider stand-in of
    tests/provider_standins.py (Meta's API cannot be reached from here)."""
    from tests.channel_helpers import create_channel, new_phone, post_webhook, whatsapp_text

    standins = services.standins
    ch = await create_channel(client, tenant.headers, "whatsapp")
    phone = new_phone()
    r = await post_webhook(client, ch, whatsapp_text(phone, "Hello, is my bike ready?"))
    assert r.status_code == 200

    async def session_of_phone() -> Any:
        return await db.fetchval(
            """SELECT s.id FROM sessions s JOIN messages m ON m.session_id = s.id
               WHERE s.channel_id = $1 AND m.text = 'Hello, is my bike ready?'""", uuid.UUID(ch["id"]))

    sid = await until(session_of_phone)
    agent = await add_user(client, tenant, "Sam", "agent")
    r = await client.post(f"/v1/inbox/sessions/{sid}/reply", headers=agent["headers"],
                          json={"text": "Hi, Sam here: yes, it's ready for pickup."})
    assert r.status_code == 200, r.text
    r = await client.post(f"/v1/inbox/sessions/{sid}/close", headers=agent["headers"])
    assert r.json()["resolution"] == "resolved_by_human" and r.json()["csat_asked"] is True
    recipient = phone.lstrip("+")
    await until(lambda: _sent_with(standins, recipient, "1 (poor) to 5 (great)"))

    assert (await post_webhook(client, ch, whatsapp_text(phone, "5"))).status_code == 200
    await until(lambda: _sent_with(standins, recipient, "Thank you for your feedback!"))
    row = await db.fetchrow("SELECT status, csat_score FROM sessions WHERE id = $1", sid)
    assert (row["status"], row["csat_score"]) == ("closed", 5)
    assert await db.fetchval("SELECT count(*) FROM sessions WHERE channel_id = $1", uuid.UUID(ch["id"])) == 1

    assert (await post_webhook(client, ch, whatsapp_text(phone, "Do you sell helmets?"))).status_code == 200
    await until(lambda: _count_sessions(db, ch["id"], 2))

    async def new_one_answered() -> bool:
        return bool(await db.fetchval(
            """SELECT count(*) FROM messages m JOIN sessions s ON s.id = m.session_id
               WHERE s.channel_id = $1 AND s.id <> $2 AND m.sender IN ('ai', 'system')""",
            uuid.UUID(ch["id"]), sid))

    await until(new_one_answered, timeout=60)


async def _sent_with(standins: Any, recipient: str, text: str) -> bool:
    return any(text in (d.text or "") for d in standins.deliveries("whatsapp")
               if str(d.recipient) == recipient)


async def _count_sessions(db: Any, channel_id: str, n: int) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM sessions WHERE channel_id = $1",
                                  uuid.UUID(channel_id)) == n)
