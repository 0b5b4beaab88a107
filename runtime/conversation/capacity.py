"""Caps on live session actors, per tenant and per Ray node (Redis leases).

Each live session actor holds a lease in two Redis sorted sets: its tenant's
(``chat:actors:t:<tenant_id>``) and its node's (``chat:actors:n:<node_id>``); the member is the
session id and the score the lease's expiry (Unix seconds). Members whose lease has expired are
pruned before every count, so an actor that crashed, or a process that was killed, frees its place
within :data:`ACTOR_LEASE_S` without anyone cleaning up after it.

- :func:`admit_actor` runs where a new actor would be created (the ingress, the Timekeeper): one
  Lua script (:func:`runtime.leases.take_lease`) prunes both sets, lets a session that already
  holds a lease through, refuses when either set is full, and otherwise reserves the place (a
  lease of :data:`ACTOR_LEASE_S`, long enough for the actor to start) in the tenant's set and in
  the set of the node of the calling process (Ray places a zero-CPU actor on the creator's node
  when it can; the actor's own lease records the node it really runs on).
- :func:`admit_warm` bounds the actors started *ahead of* a first message (the widget warms a
  session's actor when the session is created): a place in ``chat:warm:t:<tenant_id>`` and
  ``chat:warm:n:<node_id>`` for ``warm_idle_s``, so a burst of sessions nobody types into starts
  at most ``warm_sessions_per_tenant`` / ``warm_sessions_per_node`` processes at a time. The
  actor gives its place back (:func:`release_warm`) on its first real call, and is put to rest
  after ``warm_idle_s`` if that never comes.
- :func:`hold_lease` is the actor's own refresh, every :data:`LEASE_REFRESH_S` while it is active;
  :func:`release_lease` gives the place back when it passivates.

A refusal is :class:`runtime.errors.CapacityExceeded` (503, ``Retry-After``): nothing was
created. Redis unreachable while admitting: the actor is admitted (``rate_limit_fail_open``,
the default; it needs Redis anyway and reports that itself) or DependencyUnavailable (503).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from runtime.config import Settings
from runtime.errors import CapacityExceeded, DependencyUnavailable
from runtime.leases import ALREADY_HELD, FIRST_FULL, SECOND_FULL, TAKEN, take_lease

log = logging.getLogger(__name__)

ACTOR_LEASE_S = 60.0
LEASE_REFRESH_S = 15.0
# Idle conversations passivate (CHAT_ENGINE_IDLE_MINUTES) and free their place; a retry after
# this many seconds may find room.
CAPACITY_RETRY_AFTER_S = 30
_KEY_TTL_S = 3600  # a set nobody refreshes any more is dropped after this long

ADMITTED, ALREADY_LIVE, TENANT_FULL, NODE_FULL = TAKEN, ALREADY_HELD, FIRST_FULL, SECOND_FULL


def tenant_key(tenant_id: Any) -> str:
    """Redis sorted set of the tenant's live session actors."""
    return f"chat:actors:t:{tenant_id}"


def node_key(node_id: str) -> str:
    """Redis sorted set of the live session actors on Ray node ``node_id``."""
    return f"chat:actors:n:{node_id}"


async def admit_actor(redis: aioredis.Redis, settings: Settings, tenant_id: Any, session_id: Any,
                      node_id: str) -> int:
    """Reserve a place for the session's actor, or say it already has one.

    Returns :data:`ADMITTED` (a place reserved for :data:`ACTOR_LEASE_S` s) or
    :data:`ALREADY_LIVE` (the session holds a lease). Raises CapacityExceeded (503,
    ``retry_after_s`` = :data:`CAPACITY_RETRY_AFTER_S`) when the tenant has
    ``max_active_sessions_per_tenant`` live actors or the node ``max_active_sessions_per_node``;
    DependencyUnavailable when Redis is unreachable and ``rate_limit_fail_open`` is off.
    """
    now = time.time()
    try:
        res = await take_lease(
            redis, (tenant_key(tenant_id), node_key(node_id)), str(session_id), now=now,
            lease_s=ACTOR_LEASE_S, key_ttl_s=_KEY_TTL_S,
            caps=(settings.max_active_sessions_per_tenant, settings.max_active_sessions_per_node))
    except (RedisError, OSError) as exc:
        if settings.rate_limit_fail_open:
            log.warning("session actor caps not checked: Redis unreachable (%s)", type(exc).__name__)
            return ADMITTED
        raise DependencyUnavailable(
            "Redis is unreachable, so there is no telling whether there is room for another "
            "conversation; try again shortly") from exc
    if res == TENANT_FULL:
        raise CapacityExceeded(
            f"this workspace already has {settings.max_active_sessions_per_tenant} active "
            "conversations (CHAT_ENGINE_MAX_ACTIVE_SESSIONS_PER_TENANT): try again in "
            f"{CAPACITY_RETRY_AFTER_S} s, when idle ones have been put to rest",
            retry_after_s=CAPACITY_RETRY_AFTER_S)
    if res == NODE_FULL:
        raise CapacityExceeded(
            f"this server already holds {settings.max_active_sessions_per_node} active "
            "conversations (CHAT_ENGINE_MAX_ACTIVE_SESSIONS_PER_NODE): try again in "
            f"{CAPACITY_RETRY_AFTER_S} s, or add a node",
            retry_after_s=CAPACITY_RETRY_AFTER_S)
    return res


def warm_tenant_key(tenant_id: Any) -> str:
    """Redis sorted set of the tenant's actors started ahead of a first message."""
    return f"chat:warm:t:{tenant_id}"


def warm_node_key(node_id: str) -> str:
    """Redis sorted set of the actors on node ``node_id`` started ahead of a first message."""
    return f"chat:warm:n:{node_id}"


async def admit_warm(redis: aioredis.Redis, settings: Settings, tenant_id: Any, session_id: Any,
                     node_id: str) -> bool:
    """Whether the session's actor may be started before its first message: True when a place
    under the warm budgets was taken (for ``warm_idle_s`` s) or the session holds one; False when
    either budget is full, a budget is 0, or Redis is unreachable (warming is an optimisation:
    the first message then starts the actor, under :func:`admit_actor`)."""
    caps = (settings.warm_sessions_per_tenant, settings.warm_sessions_per_node)
    if min(caps) <= 0:
        return False
    try:
        res = await take_lease(
            redis, (warm_tenant_key(tenant_id), warm_node_key(node_id)), str(session_id),
            now=time.time(), lease_s=settings.warm_idle_s, caps=caps, key_ttl_s=_KEY_TTL_S)
    except (RedisError, OSError) as exc:
        log.info("session %s not warmed: Redis unreachable (%s)", session_id, type(exc).__name__)
        return False
    return res in (TAKEN, ALREADY_HELD)


async def release_warm(redis: aioredis.Redis, tenant_id: Any, session_id: Any,
                       node_id: str | None) -> None:
    """Give back the session's place under the warm budgets (its first real call came). Raises
    what redis-py raises (the place then lapses after ``warm_idle_s``)."""
    keys = [warm_tenant_key(tenant_id)] + ([warm_node_key(node_id)] if node_id else [])
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zrem(key, str(session_id))
        await pipe.execute()


async def hold_lease(redis: aioredis.Redis, tenant_id: Any, session_id: Any,
                     node_id: str | None) -> None:
    """(Re)write the live actor's lease: :data:`ACTOR_LEASE_S` s from now in the tenant's set
    and, when known, its node's. Raises what redis-py raises (the caller retries later)."""
    expiry = time.time() + ACTOR_LEASE_S
    keys = [tenant_key(tenant_id)] + ([node_key(node_id)] if node_id else [])
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zadd(key, {str(session_id): expiry})
            pipe.expire(key, _KEY_TTL_S)
        await pipe.execute()


async def release_lease(redis: aioredis.Redis, tenant_id: Any, session_id: Any,
                        node_id: str | None) -> None:
    """Give the session's place back (passivation). Raises what redis-py raises (the lease
    then expires on its own)."""
    keys = [tenant_key(tenant_id)] + ([node_key(node_id)] if node_id else [])
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.zrem(key, str(session_id))
        await pipe.execute()


async def live_actors(redis: aioredis.Redis, key: str) -> int:
    """Unexpired leases in ``key`` (:func:`tenant_key` / :func:`node_key`)."""
    return int(await redis.zcount(key, time.time(), "+inf"))
