"""Per-key request budgets on Redis (fixed one-minute windows)."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from runtime.errors import RateLimited


async def rate_limit(redis: aioredis.Redis, key: str, limit_per_min: int) -> None:
    """Count one request against ``key``. Raises RateLimited with the seconds left in the window."""
    window = int(time.time() // 60)
    rkey = f"chat:rl:{key}:{window}"
    async with redis.pipeline(transaction=True) as pipe:
        pipe.incr(rkey)
        pipe.expire(rkey, 70)
        count, _ = await pipe.execute()
    if int(count) > limit_per_min:
        retry = 60 - int(time.time() % 60) or 1
        raise RateLimited(
            f"too many requests: at most {limit_per_min} a minute here; try again in {retry} s",
            retry_after_s=retry,
        )
