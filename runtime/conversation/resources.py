"""Opening what an active session holds: a small Postgres pool and a Redis client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runtime.config import Settings
from runtime.db.pool import create_pool
from runtime.errors import ConfigError
from runtime.events import SessionEvents, redis_client


@dataclass
class Resources:
    """pool: asyncpg pool (min 0, max ``actor_db_pool_max`` <= 2 connections, idle ones closed
    after 30 s); events: the Redis session streams and inbox channel."""

    pool: Any
    events: SessionEvents

    async def close(self) -> None:
        """Close both (errors ignored: the process may be exiting)."""
        try:
            await self.pool.close()
        finally:
            await self.events.redis.close()


async def open_resources(settings: Settings) -> Resources:
    """A pool on CHAT_ENGINE_DATABASE_URL and a client on CHAT_ENGINE_REDIS_URL. Raises
    ConfigError if either is unset, and what asyncpg raises when Postgres is unreachable."""
    if settings.database_url is None or settings.redis_url is None:
        raise ConfigError("CHAT_ENGINE_DATABASE_URL and CHAT_ENGINE_REDIS_URL must be set in workers")
    pool = await create_pool(
        str(settings.database_url), min_size=0, max_size=settings.actor_db_pool_max,
        statement_cache_size=settings.db_statement_cache_size,
        max_inactive_connection_lifetime=30.0,
    )
    return Resources(pool, SessionEvents(redis_client(str(settings.redis_url))))
