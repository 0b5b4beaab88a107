"""Tenants and their users (API keys stored as SHA-256 hashes; shown once at creation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from uuid import UUID

import asyncpg

from runtime.db import Conn
from runtime.errors import TenantNotFound
from runtime.security import hash_api_key, new_api_key


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant user resolved from an API key or a login cookie."""

    user_id: UUID
    tenant_id: UUID
    role: str
    name: str
    via: str = "key"  # "key": an API key; "cookie": a login session of the inbox


async def create_tenant(
    conn: Conn, name: str, owner_name: str, owner_email: str | None,
    bot_config: dict[str, Any],
) -> tuple[asyncpg.Record, asyncpg.Record, str]:
    """Create a tenant, its owner and its default bot config in one transaction.

    Returns (tenant row, owner user row, owner API key in clear: shown once).
    """
    key = new_api_key()
    async with conn.transaction():
        tenant = await conn.fetchrow(
            "INSERT INTO tenants (name) VALUES ($1) RETURNING id, name, created_at", name
        )
        assert tenant is not None
        owner = await conn.fetchrow(
            """INSERT INTO users (tenant_id, name, email, role, api_key_hash, api_key_prefix)
               VALUES ($1, $2, $3, 'owner', $4, $5)
               RETURNING id, tenant_id, name, email, role, created_at""",
            tenant["id"], owner_name, owner_email, hash_api_key(key), key[:10],
        )
        await conn.execute(
            "INSERT INTO bot_configs (tenant_id, config) VALUES ($1, $2)", tenant["id"], bot_config
        )
    assert tenant is not None and owner is not None
    return tenant, owner, key


async def get_tenant(conn: Conn, tenant_id: UUID) -> asyncpg.Record:
    """The tenant row. Raises TenantNotFound."""
    row = await conn.fetchrow(
        "SELECT id, name, created_at FROM tenants WHERE id = $1", tenant_id
    )
    if row is None:
        raise TenantNotFound(f"no tenant {tenant_id}: check the id, or create it first")
    return row


async def create_user(
    conn: Conn, tenant_id: UUID, name: str, email: str | None, role: str
) -> tuple[asyncpg.Record, str]:
    """Create a user of ``tenant_id``; returns (row, API key in clear: shown once)."""
    key = new_api_key()
    row = await conn.fetchrow(
        """INSERT INTO users (tenant_id, name, email, role, api_key_hash, api_key_prefix)
           VALUES ($1, $2, $3, $4, $5, $6)
           RETURNING id, tenant_id, name, email, role, created_at""",
        tenant_id, name, email, role, hash_api_key(key), key[:10],
    )
    assert row is not None
    return row, key


async def principal_for_key(conn: Conn, key: str) -> Principal | None:
    """The active user owning ``key``, or None."""
    row = await conn.fetchrow(
        """SELECT id, tenant_id, role, name FROM users
           WHERE api_key_hash = $1 AND disabled_at IS NULL""",
        hash_api_key(key),
    )
    if row is None:
        return None
    return Principal(row["id"], row["tenant_id"], row["role"], row["name"])


async def list_users(conn: Conn, tenant_id: UUID) -> list[asyncpg.Record]:
    """The tenant's users (never their key hashes)."""
    return await conn.fetch(
        """SELECT id, tenant_id, name, email, role, api_key_prefix, created_at FROM users
           WHERE tenant_id = $1 ORDER BY created_at""",
        tenant_id,
    )


async def get_user(conn: Conn, tenant_id: UUID, user_id: UUID) -> asyncpg.Record | None:
    """One user of the tenant, or None."""
    return await conn.fetchrow(
        "SELECT id, tenant_id, name, email, role FROM users WHERE tenant_id = $1 AND id = $2",
        tenant_id, user_id,
    )
