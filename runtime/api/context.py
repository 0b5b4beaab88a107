"""Per-process state of the ingress: settings, the Postgres pool, Redis, model handles."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from runtime.config import Settings, get_settings
from runtime.db.pool import create_pool
from runtime.events import redis_client


@dataclass
class AppContext:
    """Shared resources of one ingress replica, opened lazily on first use."""

    settings: Settings
    pool: asyncpg.Pool
    redis: aioredis.Redis
    extras: dict[str, Any] = field(default_factory=dict)

    async def close(self) -> None:
        """Close the pool and the Redis client."""
        await self.pool.close()
        await self.redis.close()


_ctx: AppContext | None = None
_lock = asyncio.Lock()


async def get_context() -> AppContext:
    """The process's AppContext, created on first call from :func:`get_settings`.

    Raises ConfigError if CHAT_ENGINE_DATABASE_URL / CHAT_ENGINE_REDIS_URL are unset (workers
    never start embedded services; the launcher passes the URLs in).
    """
    global _ctx
    if _ctx is not None:
        return _ctx
    async with _lock:
        if _ctx is None:
            from runtime.errors import ConfigError

            settings = get_settings()
            if settings.database_url is None or settings.redis_url is None:
                raise ConfigError(
                    "CHAT_ENGINE_DATABASE_URL and CHAT_ENGINE_REDIS_URL must be set in workers; "
                    "start the service with `chat-engine up`, which resolves them"
                )
            pool = await create_pool(
                str(settings.database_url),
                min_size=settings.db_pool_min,
                max_size=settings.db_pool_max,
                statement_cache_size=settings.db_statement_cache_size,
            )
            client = redis_client(str(settings.redis_url))
            _ctx = AppContext(settings=settings, pool=pool, redis=client)
    return _ctx


# Deployment handles the ingress constructor received (None when models are not deployed).
MODEL_HANDLES: dict[str, Any] = {"embedder": None, "generator": None}
