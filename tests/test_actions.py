"""Live order status on the real stack: the tenant's orders in a second Postgres database.

The orders database is created in the embedded server by the test (``CREATE DATABASE`` and a role
that may only read the ``orders`` table); the bot reaches it through a loopback TCP proxy the test
can take down. The HTTPS source variant is a local HTTP server standing for the shop's own order
API (the tenant's system; loopback is allowed in tests by ``CHAT_ENGINE_CRAWL_ALLOW_PRIVATE``).
WhatsApp goes through the signed webhook and the Graph API stand-in (tests/provider_standins.py),
as in tests/test_channels.py; the rest is real: Postgres, Redis, Ray, Serve, the embedder.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest

from runtime.actions import orders
from tests.channel_helpers import create_channel, deliveries_to, new_phone, post_webhook, whatsapp_text
from tests.chat_helpers import ask, kinds, new_session, widget_channel
from tests.conftest import LoopbackProxy, Services, TenantInfo, make_tenant

QUERY = ("SELECT status, eta AS estimated_delivery, carrier, tracking_url, email, phone "
         "FROM orders WHERE id = $1")


@dataclass
class OrdersDb:
    """The shop's orders database: ``dsn`` reaches it through ``proxy`` as the read-only role."""

    admin: asyncpg.Connection
    proxy: LoopbackProxy
    dsn: str

    async def add(self, phone: str | None, email: str | None = None, status: str = "shipped") -> int:
        """A new order; returns its id (5-6 digits)."""
        order_id = int(await self.admin.fetchval("SELECT nextval('order_ids')"))
        await self.admin.execute(
            "INSERT INTO orders VALUES ($1, $2, $3, 'UPS', $4, $5, $6)", order_id, status,
            date(2026, 12, 10), f"https://track.example/1Z{order_id}", email, phone)
        return order_id


@pytest.fixture(scope="module")
async def orders_db(services: Services) -> AsyncIterator[OrdersDb]:
    """A second database in the embedded server with an ``orders`` table, a role that can only
    read it, and a TCP proxy in front (the server itself listens on a unix socket)."""
    suffix = os.urandom(4).hex()
    name, role = f"shop_{suffix}", f"orders_reader_{suffix}"
    root = await asyncpg.connect(services.database_url)
    await root.execute(f"CREATE DATABASE {name}")
    await root.execute(f"CREATE ROLE {role} LOGIN PASSWORD 'reader-pw'")
    admin = await asyncpg.connect(services.database_url.rsplit("/", 1)[0] + f"/{name}")
    await admin.execute(f"""
        CREATE SEQUENCE order_ids START 10234;
        CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL, eta date, carrier text,
                             tracking_url text, email text, phone text);
        REVOKE ALL ON SCHEMA public FROM PUBLIC;
        GRANT USAGE ON SCHEMA public TO {role};
        GRANT SELECT ON orders TO {role};
    """)
    proxy = LoopbackProxy.for_url(services.database_url)
    await proxy.start()
    try:
        yield OrdersDb(admin, proxy, f"postgresql://{role}:reader-pw@127.0.0.1:{proxy.port}/{name}")
    finally:
        await proxy.stop()
        await admin.close()
        await root.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await root.execute(f"DROP ROLE IF EXISTS {role}")
        await root.close()


async def _postgres_source(client: httpx.AsyncClient, tenant: TenantInfo, db: OrdersDb) -> None:
    r = await client.put("/v1/actions/order-status", headers=tenant.headers,
                         json={"source": "postgres", "dsn": db.dsn, "query": QUERY, "timeout_s": 3})
    assert r.status_code == 200, r.text
    assert r.json()["credentials_set"] == ["dsn"] and "reader-pw" not in r.text


def _national(phone: str) -> str:
    """+1650xxxxxxx as a US shop stores it: (650) xxx-xxxx."""
    return f"({phone[2:5]}) {phone[5:8]}-{phone[8:]}"


def _reply(events: list[Any]) -> dict[str, Any]:
    """The bot's (or the system's) message of a widget turn."""
    return next(e.data for e in reversed(events) if e.event == "message" and e.data["sender"] != "customer")


async def _whatsapp_turn(client: httpx.AsyncClient, ch: dict[str, Any], standins: Any, phone: str,
                         text: str, n: int) -> str:
    """Send ``text`` from ``phone``; the ``n``-th message the stand-in delivered to it."""
    assert (await post_webhook(client, ch, whatsapp_text(phone, text))).status_code == 200
    sent = await deliveries_to(standins, "whatsapp", phone.lstrip("+"), count=n, timeout_s=60)
    return str(sent[n - 1].text)


# ------------------------------------------------------------------ WhatsApp: the sender's number
async def test_whatsapp_order_status_only_for_the_orders_number(
    client: httpx.AsyncClient, tenant: TenantInfo, orders_db: OrdersDb, services: Services, db: Any
) -> None:
    await _postgres_source(client, tenant, orders_db)
    ch = await create_channel(client, tenant.headers, "whatsapp")
    owner, stranger, typo = new_phone(), new_phone(), new_phone()
    mine = await orders_db.add(_national(owner), "alice@example.com")
    typos = await orders_db.add(typo)
    missing = mine + 900_000  # no such order

    status = await _whatsapp_turn(client, ch, services.standins, owner, f"Where is my order #{mine}?", 1)
    assert "shipped" in status and "UPS" in status, status
    assert "Thu 10 Dec 2026" in status and f"https://track.example/1Z{mine}" in status, status

    # Another number asking about that order learns nothing, and reads exactly what an unknown
    # order reads: nobody can tell whether the order exists.
    theirs = await _whatsapp_turn(client, ch, services.standins, stranger, f"Where is my order #{mine}?", 1)
    unknown = await _whatsapp_turn(client, ch, services.standins, stranger, f"where is my order {missing}", 2)
    assert theirs == unknown == orders.NOT_FOUND_PHONE
    for leak in ("shipped", "UPS", "track.example", "Dec", str(mine)):
        assert leak not in theirs

    # A malformed id is asked for again with the expected shape; the right one then works.
    again = await _whatsapp_turn(client, ch, services.standins, typo, "Where is my order #12-AB?", 1)
    assert "12-AB" in again and "4 to 12 digits" in again, again
    fixed = await _whatsapp_turn(client, ch, services.standins, typo, str(typos), 2)
    assert "shipped" in fixed and f"1Z{typos}" in fixed, fixed

    intents = await db.fetch(
        """SELECT m.intent FROM messages m JOIN sessions s ON s.id = m.session_id
           WHERE s.tenant_id = $1 AND m.sender = 'ai' ORDER BY m.id""", uuid.UUID(tenant.id))
    assert sorted(r["intent"] for r in intents) == sorted(
        ["order_status", "order_not_found", "order_not_found", "order_invalid_id", "order_status"])


# ------------------------------------------------------------------ widget: the order's email first
async def test_widget_verifies_by_email_and_hands_over_after_three_misses(
    client: httpx.AsyncClient, tenant: TenantInfo, orders_db: OrdersDb, db: Any
) -> None:
    await _postgres_source(client, tenant, orders_db)
    order_id = await orders_db.add(_national(new_phone()), "Alice.Doe@Example.com")
    ch = await widget_channel(client, tenant.headers)

    s = await new_session(client, ch["widget_token"])
    asked = _reply(await ask(client, s, f"Hi, what's the status of order {order_id}?"))
    assert asked["text"] == orders.ASK_VERIFY and "shipped" not in asked["text"]
    state = await db.fetchval("SELECT state FROM sessions WHERE id = $1", uuid.UUID(s.session_id))
    assert state["action"]["step"] == "verify"  # kept in the session: survives passivation
    answer = _reply(await ask(client, s, "alice.doe@example.com"))
    assert "shipped" in answer["text"] and f"https://track.example/1Z{order_id}" in answer["text"]
    assert answer["intent"] == "order_status"

    # Wrong details read like an unknown order; the third miss goes to a human.
    t = await new_session(client, ch["widget_token"])
    first = _reply(await ask(client, t, f"where is my order {order_id}, email bob@example.com"))
    second = _reply(await ask(client, t, f"where is my order {order_id + 500_000}? alice.doe@example.com"))
    assert first["text"] == second["text"] == orders.NOT_FOUND_DETAIL
    third = await ask(client, t, f"where is my order {order_id}? eve@example.com")
    assert "handoff" in kinds(third)
    handoff = next(e.data for e in third if e.event == "handoff")
    assert handoff["signal"] == "order_verification_failed"
    assert "shipped" not in json.dumps([e.data for e in third])
    row = await db.fetchrow("SELECT status, state FROM sessions WHERE id = $1", uuid.UUID(t.session_id))
    assert row["status"] == "human_escalated" and row["state"]["action_failures"] == 3


# ------------------------------------------------------------------ the source down
async def test_source_down_gives_the_fallback_and_the_offer_of_a_human(
    client: httpx.AsyncClient, tenant: TenantInfo, orders_db: OrdersDb, db: Any
) -> None:
    await _postgres_source(client, tenant, orders_db)
    order_id = await orders_db.add(None, "carol@example.com")
    ch = await widget_channel(client, tenant.headers)
    s = await new_session(client, ch["widget_token"])
    orders_db.proxy.block()
    try:
        down = _reply(await ask(client, s, f"where is my order {order_id}? carol@example.com"))
    finally:
        orders_db.proxy.unblock()
    assert down["text"] == orders.UNAVAILABLE.format(order_id=order_id)
    assert down["intent"] == "order_unavailable"
    assert orders_db.proxy.refused >= 1
    yes = await ask(client, s, "yes please")
    handoff = next(e.data for e in yes if e.event == "handoff")
    assert handoff["signal"] == "action_unavailable"
    assert await db.fetchval("SELECT status FROM sessions WHERE id = $1", uuid.UUID(s.session_id)) \
        == "human_escalated"

    # The twin: with the source back, a new conversation gets the order.
    t = await new_session(client, ch["widget_token"])
    back = _reply(await ask(client, t, f"where is my order {order_id}? carol@example.com"))
    assert "shipped" in back["text"] and back["intent"] == "order_status"


# ------------------------------------------------------------------ the HTTPS/JSON source
class _ShopApi(BaseHTTPRequestHandler):
    """The shop's order API: GET /api/orders/<id> with the right bearer token."""

    orders: dict[str, dict[str, Any]] = {}
    seen_auth: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen_auth.append(self.headers.get("Authorization", ""))
        order = self.orders.get(self.path.rsplit("/", 1)[-1])
        if self.headers.get("Authorization") != "Bearer shop-api-key":
            code, body = 401, {"error": "unauthorized"}
        elif order is None:
            code, body = 404, {"error": "not found"}
        else:
            code, body = 200, order
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def shop_api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ShopApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_https_json_source_and_the_setup_api(
    client: httpx.AsyncClient, tenant: TenantInfo, shop_api: str
) -> None:
    _ShopApi.orders = {"A1B2C3": {"state": "out for delivery", "eta": "tomorrow by 6pm",
                                  "shipping": {"carrier": "DHL", "url": "https://dhl.example/t/A1B2C3"},
                                  "customer": {"email": "dana@example.com", "phone": "+44 20 7946 0000"}}}
    setup = {"source": "https", "url": shop_api + "/api/orders/{order_id}",
             "authorization": "Bearer shop-api-key",
             "order_id": {"chars": "alphanumeric", "min_length": 6, "max_length": 6},
             "fields": {"status": "state", "estimated_delivery": "eta", "carrier": "shipping.carrier",
                        "tracking_url": "shipping.url", "email": "customer.email", "phone": "customer.phone"},
             "phone_region": "GB"}
    r = await client.put("/v1/actions/order-status", headers=tenant.headers, json=setup)
    assert r.status_code == 200, r.text
    got = await client.get("/v1/actions/order-status", headers=tenant.headers)
    assert got.status_code == 200 and got.json()["credentials_set"] == ["authorization"]
    assert "shop-api-key" not in got.text and got.json()["url"] == setup["url"]

    ch = await widget_channel(client, tenant.headers)
    s = await new_session(client, ch["widget_token"])
    asked = _reply(await ask(client, s, "where is my order a1b2c3?"))
    assert asked["text"] == orders.ASK_VERIFY
    answer = _reply(await ask(client, s, "it's 020 7946 0000"))  # the order's phone, national form
    assert "out for delivery" in answer["text"] and "DHL" in answer["text"], answer
    assert "https://dhl.example/t/A1B2C3" in answer["text"] and "tomorrow by 6pm" in answer["text"]
    assert _ShopApi.seen_auth and set(_ShopApi.seen_auth) == {"Bearer shop-api-key"}

    # Another tenant does not see this setup; the owner removes it.
    other = await make_tenant(client, "another shop")
    assert (await client.get("/v1/actions/order-status", headers=other.headers)).status_code == 404
    assert (await client.delete("/v1/actions/order-status", headers=tenant.headers)).status_code == 204
    assert (await client.get("/v1/actions/order-status", headers=tenant.headers)).status_code == 404
