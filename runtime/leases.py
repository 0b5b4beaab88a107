"""Leases under two caps at once, in Redis: the one admission script that the session-actor caps
(:mod:`runtime.conversation.capacity`) and the event-stream caps (:mod:`runtime.api.streams`)
share.

A lease is a member of two sorted sets (an inner one, such as the session's or tenant's, and an
outer one, such as the tenant's or node's) scored by its expiry (Unix seconds). Expired members
are pruned before every count, so a holder that crashed frees its place without anyone cleaning
up after it.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

TAKEN, ALREADY_HELD, FIRST_FULL, SECOND_FULL = 0, 1, -1, -2

# KEYS: first set, second set. ARGV: now, lease expiry, first cap, second cap, member, key TTL.
_TAKE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[5]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return -2 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return 0
"""


async def take_lease(redis: aioredis.Redis, keys: tuple[str, str], member: str, *, now: float,
                     lease_s: float, caps: tuple[int, int], key_ttl_s: int) -> int:
    """Atomically take a lease for ``member`` in both sets of ``keys``.

    now: Unix seconds; lease_s: seconds the lease lasts; caps: the most live members of each set;
    key_ttl_s: seconds before a set nobody touches any more is dropped.

    Returns :data:`TAKEN` (the lease is in both sets), :data:`ALREADY_HELD` (``member`` holds an
    unexpired lease in the first set; nothing changed), :data:`FIRST_FULL` or :data:`SECOND_FULL`
    (that set already has its cap of live members; nothing changed). Raises what redis-py raises
    when Redis is unreachable (RedisError, OSError).
    """
    res: Any = await redis.eval(  # type: ignore[misc]
        _TAKE, 2, *keys, now, now + lease_s, caps[0], caps[1], member, key_ttl_s)
    return int(res)
