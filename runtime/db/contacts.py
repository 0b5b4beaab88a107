"""Contact identities and opt-outs (plain SQL, tenant-scoped).

One contact per tenant per identity: a phone number (E.164, shared by WhatsApp and SMS), a
Telegram chat, an email address or a Slack user. Lead capture adds an email identity to the
contact it was captured on, so a later email from that address resolves to the same contact.
"""

from __future__ import annotations

from uuid import UUID

from runtime.db import Conn


async def resolve_contact(
    conn: Conn, tenant_id: UUID, channel_id: UUID, kind: str, value: str, name: str | None = None,
) -> UUID:
    """The contact holding identity ``(kind, value)`` in the tenant, created (with the identity)
    if none does; ``name`` fills a missing contact name. Safe under concurrent calls for the same
    identity (the identity's primary key decides; the loser's contact row is rolled back with its
    savepoint)."""
    row = await conn.fetchrow(
        """SELECT contact_id FROM contact_identities WHERE tenant_id = $1 AND kind = $2 AND value = $3""",
        tenant_id, kind, value,
    )
    if row is not None:
        if name:
            await conn.execute(
                "UPDATE contacts SET name = $3 WHERE tenant_id = $1 AND id = $2 AND name IS NULL",
                tenant_id, row["contact_id"], name)
        return UUID(str(row["contact_id"]))
    async with conn.transaction():  # a savepoint inside the caller's transaction
        contact_id = await conn.fetchval(
            """INSERT INTO contacts (tenant_id, channel_id, external_ref, name, phone, email)
               VALUES ($1, $2, $3, $4, $5, $6)
               ON CONFLICT (tenant_id, channel_id, external_ref)
               DO UPDATE SET name = COALESCE(contacts.name, EXCLUDED.name)
               RETURNING id""",
            tenant_id, channel_id, f"{kind}:{value}", name,
            value if kind == "phone" else None, value if kind == "email" else None,
        )
        won = await conn.fetchval(
            """INSERT INTO contact_identities (tenant_id, kind, value, contact_id)
               VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING contact_id""",
            tenant_id, kind, value, contact_id,
        )
    if won is not None:
        return UUID(str(won))
    held = await conn.fetchval(
        "SELECT contact_id FROM contact_identities WHERE tenant_id = $1 AND kind = $2 AND value = $3",
        tenant_id, kind, value,
    )
    return UUID(str(held))


async def add_identity(conn: Conn, tenant_id: UUID, contact_id: UUID, kind: str, value: str) -> bool:
    """Link ``(kind, value)`` to the contact; False (and nothing changed) when another contact
    already holds it, so a customer cannot claim someone else's address by typing it."""
    got = await conn.fetchval(
        """INSERT INTO contact_identities (tenant_id, kind, value, contact_id)
           VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING contact_id""",
        tenant_id, kind, value, contact_id,
    )
    return got is not None


async def identities(conn: Conn, tenant_id: UUID, contact_id: UUID) -> list[tuple[str, str]]:
    """The contact's identities as ``(kind, value)``, oldest first."""
    rows = await conn.fetch(
        """SELECT kind, value FROM contact_identities WHERE tenant_id = $1 AND contact_id = $2
           ORDER BY created_at""",
        tenant_id, contact_id,
    )
    return [(r["kind"], r["value"]) for r in rows]


async def set_opt_out(conn: Conn, tenant_id: UUID, channel_id: UUID, address: str, opted_out: bool) -> None:
    """Record SMS STOP (``opted_out``) or START for ``address`` on the channel."""
    if opted_out:
        await conn.execute(
            """INSERT INTO opt_outs (tenant_id, channel_id, address) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING""",
            tenant_id, channel_id, address,
        )
    else:
        await conn.execute("DELETE FROM opt_outs WHERE tenant_id = $1 AND channel_id = $2 AND address = $3",
                           tenant_id, channel_id, address)


async def is_opted_out(conn: Conn, channel_id: UUID, address: str) -> bool:
    """True when ``address`` sent STOP on the channel and not START since."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM opt_outs WHERE channel_id = $1 AND address = $2)", channel_id, address,
    ))
