"""Per-key request budgets on Redis, through the ``limits`` library (sliding-window counters).

A budget is "N a minute" per key (``ip:<addr>``, ``wt:<widget token>``, ``sess:<id>``...). The
sliding window counter weighs the previous minute's count by how much of it is still inside the
last 60 s, so a burst at a minute's edge cannot double the budget as a fixed window allows.

Redis unreachable: with ``CHAT_ENGINE_RATE_LIMIT_FAIL_OPEN=true`` (the default) requests pass and
a warning is logged (chat keeps working while Redis is down); with ``false`` they are refused with
503 DependencyUnavailable.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError

from runtime.config import Settings
from runtime.errors import DependencyUnavailable, RateLimited
from runtime.metrics import metrics

log = logging.getLogger(__name__)
# Key prefixes -> the scope a refusal is counted under (runtime.metrics, chat_rate_limited_total).
_SCOPES = {"ip": "ip", "fail": "failures", "wt": "widget_token", "sess": "session"}

_LIMITERS: dict[str, SlidingWindowCounterRateLimiter] = {}


def limiter(settings: Settings) -> SlidingWindowCounterRateLimiter:
    """The process's limiter on ``CHAT_ENGINE_REDIS_URL`` (one connection pool per URL). Keys
    are prefixed ``chat:rl``."""
    url = str(settings.redis_url)
    if url not in _LIMITERS:
        storage = RedisStorage(f"async+{url}", implementation="redispy", wrap_exceptions=True,
                               key_prefix="chat:rl", socket_timeout=2, socket_connect_timeout=2)
        _LIMITERS[url] = SlidingWindowCounterRateLimiter(storage)
    return _LIMITERS[url]


async def rate_limit(ctx: Any, key: str, limit_per_min: int) -> None:
    """Count one request against ``key``'s budget of ``limit_per_min`` a minute.

    ctx: the replica's AppContext (its settings name Redis and the fail-open choice).
    Raises RateLimited (429) with ``retry_after_s`` (whole seconds until the budget has room),
    or DependencyUnavailable (503) when Redis is unreachable and limits fail closed.
    """
    settings: Settings = ctx.settings
    item = RateLimitItemPerMinute(limit_per_min)
    rl = limiter(settings)
    try:
        if await rl.hit(item, key):
            return
        stats = await rl.get_window_stats(item, key)
    except StorageError as exc:
        if settings.rate_limit_fail_open:
            log.warning("rate limit %s not counted: Redis unavailable (%s); failing open", key,
                        type(exc.storage_error).__name__)
            return
        raise DependencyUnavailable(
            "rate limits cannot be checked right now (Redis unavailable); try again shortly"
        ) from None
    retry = max(1, math.ceil(stats.reset_time - time.time()))
    metrics().rate_limited(_SCOPES.get(key.split(":", 1)[0], "other"))
    raise RateLimited(
        f"too many requests: at most {limit_per_min} a minute here; try again in {retry} s",
        retry_after_s=retry,
    )
