"""Help-desk destinations and their outbox rows (plain SQL, tenant-scoped).

A destination (``helpdesks`` row) is a signed generic ``webhook``, ``zendesk`` or ``slack``;
credentials are sealed in ``secrets`` (``{"enc": <Fernet token>, "keys": [...]}``) by
:func:`runtime.security.encrypt_secrets` before they get here, and only the sender reads them
back. Tickets and leads reach a destination as ``outbox`` rows with ``helpdesk_id`` set (and no
``channel_id``), written in the escalation's transaction; the help-desk sender claims them with
the same lease, backoff and dead-letter rules as channel rows (:mod:`runtime.db.outbox`).
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.db.outbox import NOTIFY_CHANNEL, OUTBOX_COLUMNS
from runtime.errors import NotFound

_COLUMNS = """id, tenant_id, kind, name, config, status, created_at,
    COALESCE(secrets->'keys', '[]'::jsonb) AS credential_names"""


async def create_helpdesk(
    conn: Conn, tenant_id: UUID, kind: str, name: str, config: dict[str, Any], sealed: dict[str, Any],
) -> asyncpg.Record:
    """Insert a destination; ``sealed``: ``{"enc": token, "keys": [names]}``. Returns the row
    (no secrets)."""
    row = await conn.fetchrow(
        f"""INSERT INTO helpdesks (tenant_id, kind, name, config, secrets)
            VALUES ($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
        tenant_id, kind, name, config, sealed,
    )
    assert row is not None
    return row


async def list_helpdesks(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """The tenant's destinations, oldest first (no secrets)."""
    return await conn.fetch(
        f"SELECT {_COLUMNS} FROM helpdesks WHERE tenant_id = $1 ORDER BY created_at, id", tenant_id,
    )


async def get_helpdesk(conn: Conn, tenant_id: UUID, helpdesk_id: UUID) -> asyncpg.Record:
    """One destination of the tenant. Raises NotFound (also for another tenant's)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM helpdesks WHERE tenant_id = $1 AND id = $2", tenant_id, helpdesk_id,
    )
    if row is None:
        raise NotFound(f"no help-desk destination {helpdesk_id} in this tenant")
    return row


async def delete_helpdesk(conn: Conn, tenant_id: UUID, helpdesk_id: UUID) -> None:
    """Delete a destination and its outbox rows (pending and dead alike). Raises NotFound."""
    res = await conn.execute("DELETE FROM helpdesks WHERE tenant_id = $1 AND id = $2",
                             tenant_id, helpdesk_id)
    if res.endswith(" 0"):
        raise NotFound(f"no help-desk destination {helpdesk_id} in this tenant")


async def active_helpdesk_ids(conn: Conn, tenant_id: UUID) -> list[tuple[UUID, str]]:
    """``(id, kind)`` of the tenant's active destinations, oldest first."""
    rows = await conn.fetch(
        "SELECT id, kind FROM helpdesks WHERE tenant_id = $1 AND status = 'active' ORDER BY created_at, id",
        tenant_id,
    )
    return [(r["id"], r["kind"]) for r in rows]


async def enqueue(conn: Conn, tenant_id: UUID, helpdesk_id: UUID, session_id: UUID | None,
                  body: dict[str, Any]) -> int:
    """An outbox row for a destination; returns its id. Call inside the transaction that stores
    what it carries. body: the event (``{"event", "event_id", "created_at", "ticket"|"lead"}``)."""
    row_id = int(await conn.fetchval(
        """INSERT INTO outbox (tenant_id, helpdesk_id, session_id, body)
           VALUES ($1, $2, $3, $4) RETURNING id""",
        tenant_id, helpdesk_id, session_id, body,
    ))
    await conn.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(row_id))
    return row_id


async def claim_due(conn: Conn, limit: int, lease_s: float) -> list[asyncpg.Record]:
    """Claim up to ``limit`` due help-desk rows for ``lease_s`` seconds (status ``sending``,
    ``attempts`` incremented), oldest first, with the destination's ``helpdesk_kind``,
    ``helpdesk_config`` and sealed ``helpdesk_secrets``.

    Due: pending (or its lease expired), ``next_attempt_at`` passed, its destination active, and
    no earlier row of the same session for the same destination unsent (a ticket reaches a
    destination before the lead that follows it). Channel rows never wait for these.
    """
    return await conn.fetch(
        f"""WITH due AS (
               SELECT o.id FROM outbox o JOIN helpdesks h ON h.id = o.helpdesk_id
               WHERE h.status = 'active' AND o.next_attempt_at <= now()
                 AND (o.status = 'pending' OR (o.status = 'sending' AND o.lease_until < now()))
                 AND NOT EXISTS (
                     SELECT 1 FROM outbox e WHERE e.helpdesk_id = o.helpdesk_id
                       AND e.session_id = o.session_id AND e.id < o.id
                       AND e.status IN ('pending', 'sending'))
               ORDER BY o.id LIMIT $1 FOR UPDATE OF o SKIP LOCKED)
            UPDATE outbox o SET status = 'sending', attempts = o.attempts + 1,
                   lease_until = now() + make_interval(secs => $2), updated_at = now()
            FROM due, helpdesks h WHERE o.id = due.id AND h.id = o.helpdesk_id
            RETURNING {OUTBOX_COLUMNS}, h.kind AS helpdesk_kind, h.config AS helpdesk_config,
                h.secrets->>'enc' AS helpdesk_secrets, 'helpdesk:' || h.kind AS channel_type""",
        limit, lease_s,
    )


# ------------------------------------------------------------------ owner notices by email
async def owner_email_route(conn: Conn, tenant_id: UUID) -> tuple[UUID | None, str, list[str]]:
    """Where an email to the tenant's owners goes: ``(email channel id, tenant name, owner
    addresses)``. The channel is the tenant's oldest active email channel with credentials (None
    without one); the addresses are the active owners' (lower-cased, without duplicates)."""
    row = await conn.fetchrow(
        """SELECT t.name,
                  (SELECT c.id FROM channels c WHERE c.tenant_id = t.id AND c.type = 'email'
                     AND c.status = 'active' AND c.secrets ? 'enc'
                   ORDER BY c.created_at LIMIT 1) AS channel_id,
                  ARRAY(SELECT DISTINCT lower(u.email) FROM users u WHERE u.tenant_id = t.id
                     AND u.role = 'owner' AND u.email IS NOT NULL AND u.disabled_at IS NULL) AS emails
           FROM tenants t WHERE t.id = $1""",
        tenant_id,
    )
    if row is None:
        return None, "", []
    return row["channel_id"], str(row["name"]), sorted(row["emails"] or [])
