"""The ``Delivery`` seam: how a session's events reach its channel (DESIGN.md, Channels and
delivery).

The turn is channel-agnostic: it stores messages and produces events (``token``, ``message``,
``handoff``, ``agent_joined``, ``aborted``, ``error``, ``done``). A Delivery turns them into what
the channel gets, in two steps: :meth:`Delivery.stage` runs inside the transaction that stores a
message (an outbox row is written there, so a stored answer and its send are one commit), and
:meth:`Delivery.emit` runs after the commit.

- :class:`StreamDelivery` (widget): every event goes to the session's Redis stream, tokens live.
- :class:`OutboxDelivery` (WhatsApp, Telegram, SMS, email, Slack): no tokens; the final text of
  every message for the customer goes into the ``outbox`` table, and a sender actor delivers it.
  Other events still go to the session's stream, so the agent inbox and API followers see them.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from runtime.conversation.payloads import message_payload
from runtime.conversation.state import SessionRecord
from runtime.db import Conn
from runtime.db import messages as msg_db
from runtime.db import outbox as outbox_db
from runtime.events import SessionEvents

log = logging.getLogger(__name__)

CUSTOMER_FACING = frozenset({"ai", "agent", "system"})


class Delivery(Protocol):
    """How one session's events reach its channel. ``live_tokens``: whether ``token`` events are
    worth producing (False: the turn may skip them)."""

    live_tokens: bool

    async def stage(self, conn: Conn, record: SessionRecord, message: Any, extra: dict[str, Any]) -> None:
        """Inside the transaction storing ``message`` (a messages row); ``extra``: e.g. the
        agent's name."""

    async def emit(self, kind: str, event_id: str, data: dict[str, Any], turn: int = 0) -> None:
        """After the commit: one session event (SSE name, ``<message_id>:<seq>`` id, JSON data,
        the customer message id of its turn or 0)."""


class StreamDelivery:
    """The widget's delivery: the session's Redis stream carries every event."""

    live_tokens = True

    def __init__(self, events: SessionEvents, session_id: Any) -> None:
        self.events = events
        self.session_id = session_id

    async def stage(self, conn: Conn, record: SessionRecord, message: Any, extra: dict[str, Any]) -> None:
        """Nothing to stage: the stream is written after the commit."""

    async def emit(self, kind: str, event_id: str, data: dict[str, Any], turn: int = 0) -> None:
        """XADD to ``chat:ev:<session_id>``."""
        await self.events.publish(self.session_id, kind, event_id, data, turn=turn)


class OutboxDelivery:
    """Messaging channels: customer-facing messages go to the outbox in their own transaction;
    tokens are dropped; other events go to the session stream for the inbox."""

    live_tokens = False

    def __init__(self, stream: StreamDelivery) -> None:
        self.stream = stream

    async def stage(self, conn: Conn, record: SessionRecord, message: Any, extra: dict[str, Any]) -> None:
        """Write the outbox row for a customer-facing message with text."""
        if message["sender"] not in CUSTOMER_FACING or not message["text"]:
            return
        body = {"text": message["text"], "sender": message["sender"], **extra}
        await outbox_db.enqueue(conn, record.tenant_id, record.channel_id, record.session_id,
                                int(message["id"]), record.contact_ref, body)

    async def emit(self, kind: str, event_id: str, data: dict[str, Any], turn: int = 0) -> None:
        """Forward everything but tokens to the session stream."""
        if kind != "token":
            await self.stream.emit(kind, event_id, data, turn)


def delivery_for(record: SessionRecord, events: SessionEvents) -> Delivery:
    """The Delivery of the session's channel type."""
    stream = StreamDelivery(events, record.session_id)
    return stream if record.channel_type == "widget" else OutboxDelivery(stream)


InTransaction = Callable[[Conn], Awaitable[None]]


@dataclass(frozen=True)
class StoredMessage:
    """A committed message: its row and its ``message`` event payload."""

    row: Any
    payload: dict[str, Any]

    @property
    def id(self) -> int:
        return int(self.row["id"])


async def store_message(
    pool: Any, delivery: Delivery, record: SessionRecord, sender: str, text: str, *,
    reply_to: int | None = None, customer_status: str | None = None,
    in_tx: InTransaction | None = None, message_id: int | None = None,
    payload_extra: dict[str, Any] | None = None, **fields: Any,
) -> StoredMessage:
    """Store a complete message and stage its delivery in one transaction (nothing emitted).

    customer_status: the new status of the customer message ``reply_to`` (answered | inbox);
    in_tx: more writes that must commit with the message (an escalation, a status change);
    payload_extra: keys merged into the event payload (``sources``, ``agent_name``);
    fields: more message columns (intent, strategy, usage...). Raises what asyncpg raises; then
    nothing was stored.
    """
    extra = {k: v for k, v in (payload_extra or {}).items() if k == "agent_name"}
    async with pool.acquire() as conn, conn.transaction():
        row = await msg_db.insert_message(
            conn, record.tenant_id, record.session_id, record.channel_id, sender, text,
            reply_to=reply_to, message_id=message_id, **fields,
        )
        if customer_status and reply_to is not None:
            await msg_db.set_message_status(conn, record.tenant_id, reply_to, customer_status)
        if in_tx is not None:
            await in_tx(conn)
        await delivery.stage(conn, record, row, extra)
    return StoredMessage(row, {**message_payload(row), **(payload_extra or {})})


async def publish_message(
    delivery: Delivery, stored: StoredMessage, turn: int, *,
    extra_events: Iterable[tuple[str, dict[str, Any]]] = (), done_extra: dict[str, Any] | None = None,
    first_seq: int = 0,
) -> None:
    """Emit ``message``, the ``extra_events`` (e.g. ``handoff``) and ``done`` for a stored
    message. first_seq: the seq of the ``message`` event (an answer's tokens took the ones
    before it); done_extra: keys merged into the ``done`` data (timing, answer record)."""
    mid = stored.id
    await delivery.emit("message", f"{mid}:{first_seq}", stored.payload, turn)
    seq = first_seq + 1
    for kind, data in extra_events:
        await delivery.emit(kind, f"{mid}:{seq}", data, turn)
        seq += 1
    await delivery.emit("done", f"{mid}:{seq}", {"message_id": mid, **(done_extra or {})}, turn)


async def send_message(
    pool: Any, delivery: Delivery, record: SessionRecord, sender: str, text: str, turn: int, *,
    extra_events: Iterable[tuple[str, dict[str, Any]]] = (), **store: Any,
) -> dict[str, Any]:
    """:func:`store_message` then :func:`publish_message`; returns the ``message`` payload."""
    stored = await store_message(pool, delivery, record, sender, text, **store)
    await publish_message(delivery, stored, turn, extra_events=extra_events)
    return stored.payload
