"""A tenant's action settings (``action_configs``): the order source and its sealed credentials.

``config`` is the action's settings as the owner gave them (never a credential); ``secrets`` is
the Fernet token of its credentials (:func:`runtime.security.encrypt_secrets`), read only by the
turn that runs the action, never returned by the API.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn


async def put_action_config(conn: Conn, tenant_id: UUID, action: str, config: dict[str, Any],
                            sealed: str | None) -> asyncpg.Record:
    """Create or replace the tenant's settings of ``action``. Returns the row without secrets
    (``config``, ``credentials_set`` (bool), ``created_at``, ``updated_at``)."""
    row = await conn.fetchrow(
        """INSERT INTO action_configs (tenant_id, action, config, secrets) VALUES ($1, $2, $3, $4)
           ON CONFLICT (tenant_id, action)
           DO UPDATE SET config = EXCLUDED.config, secrets = EXCLUDED.secrets, updated_at = now()
           RETURNING config, secrets IS NOT NULL AS credentials_set, created_at, updated_at""",
        tenant_id, action, config, sealed,
    )
    assert row is not None
    return row


async def get_action_config(conn: Conn, tenant_id: UUID, action: str, *,
                            with_secrets: bool = False) -> asyncpg.Record | None:
    """The tenant's settings of ``action`` or None: ``config``, ``credentials_set`` and, with
    ``with_secrets``, the sealed ``secrets``."""
    extra = ", secrets" if with_secrets else ""
    return await conn.fetchrow(
        f"""SELECT config, secrets IS NOT NULL AS credentials_set, created_at, updated_at{extra}
            FROM action_configs WHERE tenant_id = $1 AND action = $2""",
        tenant_id, action,
    )


async def delete_action_config(conn: Conn, tenant_id: UUID, action: str) -> bool:
    """Remove the tenant's settings of ``action``; True when there were some."""
    done = await conn.execute("DELETE FROM action_configs WHERE tenant_id = $1 AND action = $2",
                              tenant_id, action)
    return bool(done.endswith(" 1"))


async def enabled_actions(conn: Conn, tenant_id: UUID) -> set[str]:
    """The actions the tenant has set up: ``order_status`` when an order source is configured,
    ``bookings`` when it has an active bookable service."""
    row = await conn.fetchrow(
        """SELECT EXISTS (SELECT 1 FROM action_configs
                          WHERE tenant_id = $1 AND action = 'order_status') AS orders,
                  EXISTS (SELECT 1 FROM booking_services
                          WHERE tenant_id = $1 AND active) AS bookings""",
        tenant_id,
    )
    assert row is not None
    return {name for name, on in (("order_status", row["orders"]), ("bookings", row["bookings"])) if on}
