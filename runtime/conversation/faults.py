"""Which failures are transient infrastructure faults (retry) rather than bugs (escalate)."""

from __future__ import annotations

import asyncpg
import redis.exceptions

from runtime.errors import BackendUnavailable

_TRANSIENT: tuple[type[BaseException], ...] = (
    OSError,  # connection refused/reset, including ConnectionError
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,  # connection closed under a query, pool closing
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    BackendUnavailable,
)


def is_transient(exc: BaseException) -> bool:
    """True for a Postgres/Redis/network failure that may pass: the work is retried, and the
    customer's message is kept, never dropped."""
    return isinstance(exc, _TRANSIENT)
