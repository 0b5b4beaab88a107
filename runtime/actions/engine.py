"""The action registry and the engine a session's turns consult before the knowledge base.

:data:`REGISTRY` lists the actions: each with its triggers (``triggers.toml``: rules and example
phrases), the entities it needs and how each is validated, its verification policy and its
result template. The model has no part in it: entities are read by rules and checked in code, and
every request is executed by code that checks it again (the tenant, the customer's own bookings,
the verification of an order). A model could at most fill such a request; nothing needs one.

:class:`ActionEngine` is one session's port: :meth:`~ActionEngine.resume` (a step is pending),
:meth:`~ActionEngine.start` (a message triggers an action the tenant set up) and
:meth:`~ActionEngine.execute` (the I/O of a request). What the tenant set up is read at most every
``action_config_cache_s`` seconds, so a tenant without actions costs one small query then.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import numpy as np

from runtime.actions import bookings, orders
from runtime.actions.order_config import DEFAULT_TEMPLATE, HttpsOrderSource, PostgresOrderSource, load_setup
from runtime.actions.order_lookup import lookup
from runtime.actions.triggers import match_trigger, trigger_classifier
from runtime.actions.types import ActionSession, PendingAction, Step
from runtime.answering.intents import EmbedMany
from runtime.config import Settings
from runtime.db import actions as action_db
from runtime.db import bookings as book_db
from runtime.errors import ActionSourceUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EntitySpec:
    """An entity an action needs: its name, whether the action cannot run without it, and how
    it is validated (in words; the code is in :mod:`runtime.actions.entities`)."""

    name: str
    required: bool
    validator: str


@dataclass(frozen=True)
class ActionSpec:
    """One action: triggers (names in ``triggers.toml``), entities, verification policy and the
    default result template."""

    name: str
    triggers: tuple[str, ...]
    entities: tuple[EntitySpec, ...]
    verification: str
    result_template: str


REGISTRY: dict[str, ActionSpec] = {
    "order_status": ActionSpec(
        name="order_status", triggers=("order_status",),
        entities=(
            EntitySpec("order_id", True, "the tenant's shape (digits or alphanumeric, length range, "
                                         "optional prefix); a malformed id is asked for again"),
            EntitySpec("email_or_phone", False, "email_validator / phonenumbers E.164; asked for on "
                                                "channels that do not carry the sender's number"),
        ),
        verification="WhatsApp/SMS: the sender's number equals the order's phone (E.164). Other "
                     "channels: the email or phone the customer gives equals the order's. A failed "
                     "verification reads exactly like an unknown order; max_failed_lookups per "
                     "conversation, then a human.",
        result_template=DEFAULT_TEMPLATE,
    ),
    "bookings": ActionSpec(
        name="bookings", triggers=("booking_new", "booking_lookup", "booking_cancel"),
        entities=(
            EntitySpec("service", False, "one of the tenant's active services by name (the only one "
                                         "when there is one)"),
            EntitySpec("day", False, "today, tomorrow, a weekday, an ISO date or '12 December'"),
            EntitySpec("slot", True, "a number from the offered free times"),
            EntitySpec("contact", True, "the sender's number or address, or an email asked for"),
            EntitySpec("reference", False, "BK- and 8 characters (cancel)"),
        ),
        verification="A booking is made under the conversation's contact; a customer sees and "
                     "cancels only bookings of their contact or their verified number/address.",
        result_template=bookings.BOOKED,
    ),
}


@dataclass(frozen=True)
class TenantActions:
    """What a tenant set up: the enabled actions, its order setup (None without one), its active
    services (id, name, timezone)."""

    enabled: frozenset[str]
    orders: PostgresOrderSource | HttpsOrderSource | None
    services: tuple[dict[str, Any], ...]


class ActionEngine:
    """The actions of one session's tenant. pool: asyncpg pool; embed_many: embeds the trigger
    examples (once per process)."""

    def __init__(self, pool: Any, settings: Settings, tenant_id: UUID, embed_many: EmbedMany) -> None:
        self.pool = pool
        self.settings = settings
        self.tenant_id = tenant_id
        self.triggers = trigger_classifier(embed_many)
        self._cached: TenantActions | None = None
        self._cached_at = 0.0

    async def tenant_actions(self) -> TenantActions:
        """The tenant's setup (cached for ``action_config_cache_s``)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached_at < self.settings.action_config_cache_s:
            return self._cached
        setup: PostgresOrderSource | HttpsOrderSource | None = None
        services: tuple[dict[str, Any], ...] = ()
        async with self.pool.acquire() as conn:
            enabled = await action_db.enabled_actions(conn, self.tenant_id)
            if "order_status" in enabled:
                row = await action_db.get_action_config(conn, self.tenant_id, "order_status",
                                                        with_secrets=True)
                if row is not None:
                    setup = self._open(row)
            if "bookings" in enabled:
                services = tuple({"id": r["id"], "name": r["name"], "timezone": r["timezone"]}
                                 for r in await book_db.list_services(conn, self.tenant_id))
        if setup is None:
            enabled.discard("order_status")
        self._cached = TenantActions(frozenset(enabled), setup, services)
        self._cached_at = now
        return self._cached

    def _open(self, row: Any) -> PostgresOrderSource | HttpsOrderSource | None:
        try:
            # runtime.security (Fernet, PyJWT) loads only in the processes of tenants with an
            # order source, not in every session actor's.
            from runtime.security import decrypt_secrets

            return load_setup(dict(row["config"]), decrypt_secrets(self.settings, row["secrets"]))
        except Exception as exc:  # noqa: BLE001 - a broken setup disables the action, loudly
            log.error("tenant %s: the order-status setup cannot be read (%s): the action is off",
                      self.tenant_id, exc)
            return None

    @staticmethod
    def _today(actions: TenantActions) -> Any:
        from zoneinfo import ZoneInfo

        tz = actions.services[0]["timezone"] if actions.services else "UTC"
        return datetime.now(UTC).astimezone(ZoneInfo(tz)).date()

    async def resume(self, text: str, pending: PendingAction, session: ActionSession) -> Step | None:
        """The step for ``text`` while ``pending`` waits; None: not an answer to it (drop it)."""
        actions = await self.tenant_actions()
        if pending.action == "order_status" and actions.orders is not None:
            return orders.resume(text, pending, session, actions.orders)
        if pending.action == "bookings" and "bookings" in actions.enabled:
            return bookings.resume(text, pending, session, list(actions.services), self._today(actions))
        return None

    async def start(self, text: str, vec: np.ndarray | None, session: ActionSession) -> Step | None:
        """The first step when ``text`` triggers an action the tenant set up, else None."""
        actions = await self.tenant_actions()
        if not actions.enabled:
            return None
        match = await match_trigger(self.triggers, text, vec, set(actions.enabled))
        if match is None:
            return None
        if match.intent == "order_status" and actions.orders is not None:
            return orders.start(text, session, actions.orders)
        return bookings.start(text, match.intent, session, list(actions.services), self._today(actions))

    async def execute(self, request: dict[str, Any], session: ActionSession, failures: int) -> Step:
        """Carry out ``request`` (from a Step of this engine). failures: the conversation's failed
        order lookups so far. Raises what asyncpg raises for the runtime's own database (the
        turn retries); the tenant's source failing is a Step (the fallback), never an error."""
        actions = await self.tenant_actions()
        if request.get("action") == "order_status":
            setup = actions.orders
            if setup is None:
                return Step("Sorry, I can't look up orders right now. A person from our team can help: "
                            "reply \"human\".", "order_unavailable")
            order_id, verify = str(request["order_id"]), dict(request["verify"])
            if failures >= setup.max_failed_lookups:
                return orders.outcome(order_id, None, verify, session, setup, failures)
            try:
                order = await lookup(self.settings, setup, order_id)
            except ActionSourceUnavailable:
                return orders.unavailable(order_id)
            return orders.outcome(order_id, order, verify, session, setup, failures)
        async with self.pool.acquire() as conn:
            return await bookings.execute(conn, self.tenant_id, request, session)
