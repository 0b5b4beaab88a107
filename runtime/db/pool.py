"""asyncpg pools with the pgvector codec registered in ``init`` (pgvector-python's pattern)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
from pgvector.asyncpg import register_vector


async def _init_connection(conn: asyncpg.Connection) -> None:
    await register_vector(conn)
    # jsonb <-> Python objects, so queries pass dicts/lists and get them back.
    await conn.set_type_codec(
        "jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
    )


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    statement_cache_size: int = 100,
    max_inactive_connection_lifetime: float = 300.0,
    **kwargs: Any,
) -> asyncpg.Pool:
    """Open a pool on ``dsn`` whose connections speak ``vector`` (numpy float32) and ``jsonb``.

    statement_cache_size: 0 when behind PgBouncer in transaction mode.
    max_inactive_connection_lifetime: seconds an idle connection is kept (session actors use a
    short one so idle sessions hold no connection).
    Raises asyncpg errors (e.g. ``InvalidCatalogNameError``) when the database is unreachable.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        statement_cache_size=statement_cache_size,
        max_inactive_connection_lifetime=max_inactive_connection_lifetime,
        init=_init_connection,
        **kwargs,
    )
    assert pool is not None
    return pool


async def ping(pool: asyncpg.Pool) -> None:
    """One round trip (``SELECT 1``); raises what asyncpg raises when Postgres is unreachable."""
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
