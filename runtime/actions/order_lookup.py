"""Reading one order from the tenant's own system: its Postgres database or its HTTPS endpoint.

Both go through the crawler's egress policy (:mod:`ingestion.egress`): the host is resolved and
checked before anything connects, and the connection is made to the checked address, so an
owner cannot point the bot at loopback, the private network or a metadata endpoint
(``CHAT_ENGINE_CRAWL_ALLOW_PRIVATE`` lifts it for tests and local demos, as for the crawler).

- Postgres: one short connection per lookup (a session actor holds no pool for it), the
  server settings ``default_transaction_read_only=on`` and ``statement_timeout``, the query in a
  ``READ ONLY`` transaction, ``$1`` bound to the order id (converted to an integer when the
  query's parameter is one), the whole lookup under ``timeout_s``.
- HTTPS: GET through :class:`ingestion.egress.EgressTransport`, no redirects, the whole request
  under ``timeout_s``, at most :data:`MAX_BODY_BYTES` read; 404 is "no such order".

Whatever goes wrong (timeout, refused or failed connection, authentication, a query error, a 5xx,
a body that is not a JSON object) raises :class:`runtime.errors.ActionSourceUnavailable`; the
cause is logged, never shown to the customer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import date, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import asyncpg

from runtime.actions.order_config import Dsn, HttpsOrderSource, OrderFields, PostgresOrderSource
from runtime.config import Settings
from runtime.errors import ActionSourceUnavailable

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 256 * 1024
MAX_VALUE_CHARS = 300
_INT_TYPES = {"int2", "int4", "int8", "oid"}
_NUMERIC_TYPES = {"numeric"}


class Order(dict[str, Any]):
    """One order as the action reads it: ``status``, ``estimated_delivery``, ``carrier``,
    ``tracking_url``, ``email``, ``phone`` (any of them may be None)."""


def _plain(value: Any) -> Any:
    """A database or JSON value as text (dates kept as dates), capped at MAX_VALUE_CHARS."""
    if value is None or isinstance(value, datetime | date):
        return value
    if isinstance(value, Decimal | int | float | bool):
        return str(value)
    if isinstance(value, dict | list):
        value = json.dumps(value)
    text = str(value).strip()
    return text[:MAX_VALUE_CHARS] or None


def _pick(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def order_from(data: dict[str, Any], fields: OrderFields) -> Order:
    """An :class:`Order` from a row or a JSON object, through the tenant's field names."""
    return Order({name: _plain(_pick(data, path)) for name, path in fields.model_dump().items()})


async def lookup(settings: Settings, setup: PostgresOrderSource | HttpsOrderSource,
                 order_id: str) -> Order | None:
    """The order ``order_id`` (validated by the caller) or None when the source has none.
    Raises ActionSourceUnavailable."""
    try:
        async with asyncio.timeout(setup.timeout_s):
            if isinstance(setup, PostgresOrderSource):
                return await _from_postgres(settings, setup, order_id)
            return await _from_https(settings, setup, order_id)
    except ActionSourceUnavailable:
        raise
    except TimeoutError:
        log.warning("order source (%s) timed out after %.1f s", setup.source, setup.timeout_s)
        raise ActionSourceUnavailable(f"the order source did not answer within {setup.timeout_s} s") from None
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, ValueError) as exc:
        log.warning("order source (%s) failed: %s: %s", setup.source, type(exc).__name__, exc)
        raise ActionSourceUnavailable(f"the order source failed ({type(exc).__name__})") from None


async def _checked_address(settings: Settings, host: str, port: int) -> str:
    from ingestion.egress import EgressRefused, policy_from_settings

    policy = policy_from_settings(settings)
    try:
        return (await policy.resolve(host, port))[0]
    except EgressRefused as exc:
        log.warning("order source refused by the egress policy: %s", exc)
        raise ActionSourceUnavailable(f"the order source's address is refused: {exc}") from None


async def _from_postgres(settings: Settings, setup: PostgresOrderSource, order_id: str) -> Order | None:
    dsn = Dsn.parse(setup.dsn)
    address = await _checked_address(settings, dsn.host, dsn.port)
    timeout_ms = int(setup.timeout_s * 1000)
    # verify-full checks the server's certificate against the host name, so it connects by name
    # (the name was checked just now; a rebinding would also need a certificate for it).
    conn = await asyncpg.connect(
        host=dsn.host if dsn.sslmode == "verify-full" else address, port=dsn.port, user=dsn.user,
        password=dsn.password, database=dsn.database,
        ssl=dsn.ssl, timeout=setup.timeout_s, statement_cache_size=0,
        server_settings={"application_name": "chat-engine-actions",
                         "default_transaction_read_only": "on",
                         "statement_timeout": str(timeout_ms),
                         "idle_in_transaction_session_timeout": str(timeout_ms)},
    )
    try:
        async with conn.transaction(readonly=True):
            stmt = await conn.prepare(setup.query)
            params = stmt.get_parameters()
            if len(params) != 1:
                raise ValueError(f"the order query takes {len(params)} parameters; it must take one ($1)")
            arg: Any = order_id
            if params[0].name in _INT_TYPES | _NUMERIC_TYPES:
                if not order_id.isdigit():
                    return None  # an id that cannot be in an integer column is no order
                arg = int(order_id) if params[0].name in _INT_TYPES else Decimal(order_id)
            row = await stmt.fetchrow(arg)
    finally:
        await conn.close(timeout=1)
    return None if row is None else order_from(dict(row), setup.fields)


async def _from_https(settings: Settings, setup: HttpsOrderSource, order_id: str) -> Order | None:
    # Imported here, not at the top: httpx and the egress transport are ~10 MB in each session
    # actor's process, and only a tenant with an HTTPS order source needs them.
    import httpx

    from ingestion.egress import EgressRefused, EgressTransport, policy_from_settings

    url = setup.url.replace("{order_id}", quote(order_id, safe=""))
    if url.startswith("http://") and settings.environment == "production":
        raise ActionSourceUnavailable("plain http is refused in production: give the order source an "
                                      "https URL")
    headers = {"Accept": "application/json", "User-Agent": "chat-engine-actions"}
    if setup.authorization:
        headers["Authorization"] = setup.authorization
    transport = EgressTransport(policy_from_settings(settings))
    async with httpx.AsyncClient(transport=transport, timeout=setup.timeout_s,
                                 follow_redirects=False) as client:
        try:
            async with client.stream("GET", url, headers=headers) as response:
                if response.status_code == 404:
                    return None
                if response.status_code != 200:
                    raise ActionSourceUnavailable(f"the order source answered HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_BODY_BYTES:
                        raise ActionSourceUnavailable(
                            f"the order source's answer is over {MAX_BODY_BYTES} bytes")
        except EgressRefused as exc:
            log.warning("order source refused by the egress policy: %s", exc)
            raise ActionSourceUnavailable(f"the order source's address is refused: {exc}") from None
        except httpx.HTTPError as exc:
            log.warning("order source (https) failed: %s: %s", type(exc).__name__, exc)
            raise ActionSourceUnavailable(f"the order source failed ({type(exc).__name__})") from None
    try:
        data = json.loads(bytes(body))
    except ValueError:
        raise ActionSourceUnavailable("the order source's answer is not JSON") from None
    if data is None or data == {}:
        return None
    if not isinstance(data, dict):
        raise ActionSourceUnavailable("the order source's answer is not a JSON object")
    return order_from(data, setup.fields)
