"""The outbox sender without Ray: several senders draining one outbox send every row exactly once,
in each conversation's order; the backoff is full-jitter and bounded.

The WhatsApp Graph API is the local stand-in of ``tests/provider_standins.py`` (the real one cannot
be reached from here); Postgres is the real test database.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from runtime.channels.outbox_sender import OutboxSender, backoff_s
from runtime.config import get_settings
from runtime.db import outbox as outbox_db
from tests.channel_helpers import create_channel, deliveries_to, new_phone
from tests.conftest import Services, TenantInfo


def test_backoff_is_full_jitter_within_the_cap() -> None:
    draws = [backoff_s(attempt, 1.0, 8.0) for attempt in range(1, 8) for _ in range(50)]
    assert all(0.0 <= d <= 8.0 for d in draws)
    first = [backoff_s(1, 1.0, 8.0) for _ in range(200)]
    late = [backoff_s(6, 1.0, 8.0) for _ in range(200)]
    assert max(first) <= 2.0 < max(late)  # grows with the attempt ...
    assert len({round(d, 6) for d in late}) > 150  # ... and is drawn, not fixed


async def test_concurrent_senders_send_each_row_once_in_order(
    client: httpx.AsyncClient, tenant: TenantInfo, services: Services, db: Any
) -> None:
    ch = await create_channel(client, tenant.headers, "whatsapp")
    tid, cid = uuid.UUID(tenant.id), uuid.UUID(ch["id"])
    phones = [new_phone().lstrip("+") for _ in range(8)]
    async with db.acquire() as conn, conn.transaction():
        sessions = []
        for phone in phones:
            sid = await conn.fetchval(
                "INSERT INTO sessions (tenant_id, channel_id, address) VALUES ($1, $2, $3) RETURNING id",
                tid, cid, phone)
            # The customer wrote just now: inside WhatsApp's 24-hour window.
            await conn.execute(
                "INSERT INTO messages (tenant_id, session_id, channel_id, sender, text, status) "
                "VALUES ($1, $2, $3, 'customer', 'hi', 'answered')", tid, sid, cid)
            sessions.append(sid)
        for n in range(3):
            for phone, sid in zip(phones, sessions, strict=True):
                await outbox_db.enqueue(conn, tid, cid, sid, None, phone,
                                        {"text": f"part {n} to {phone}", "sender": "agent"})
    settings = get_settings()
    senders = [OutboxSender(settings, ["whatsapp"]) for _ in range(3)]
    try:
        async def drain(s: OutboxSender) -> None:
            for _ in range(12):
                await s.drain_once()
                await asyncio.sleep(0.05)

        await asyncio.gather(*(drain(s) for s in senders))
        for phone in phones:
            got = await deliveries_to(services.standins, "whatsapp", phone, count=3)
            assert [d.text for d in got] == [f"part {n} to {phone}" for n in range(3)]
        rows = await db.fetch("SELECT status, attempts FROM outbox WHERE channel_id = $1", cid)
        assert len(rows) == 24 and {r["status"] for r in rows} == {"sent"}
        assert {r["attempts"] for r in rows} == {1}  # no row was claimed twice
    finally:
        for s in senders:
            await s.close()
