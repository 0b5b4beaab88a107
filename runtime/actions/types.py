"""The plain data actions pass around: the pending state kept in the session, who the action runs
for, and a :class:`Step` (what to say, ask, execute or hand over)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

MESSAGING_PHONE_CHANNELS = frozenset({"whatsapp", "sms"})


class PendingAction(BaseModel):
    """An action waiting for the customer's next message (kept in ``sessions.state``, so it
    survives passivation). action: order_status | bookings; step: what is awaited (order_id,
    verify, offer_human, service, slot, contact, cancel_confirm); data: JSON-safe specifics (the
    order id, the offered slots...); asks: how many times this step was asked."""

    model_config = ConfigDict(extra="ignore")

    action: str
    step: str
    data: dict[str, Any] = Field(default_factory=dict)
    asks: int = Field(default=1, ge=0)


@dataclass(frozen=True)
class ActionSession:
    """Who an action runs for. channel_type: widget | whatsapp | sms | email | telegram | slack;
    contact_ref: the customer's address on that channel (a phone on WhatsApp/SMS, digits only on
    WhatsApp; an email address on email); contact_id/session_id: the rows."""

    channel_type: str
    contact_ref: str | None
    contact_id: UUID | None
    session_id: UUID | None

    @property
    def messaging_phone(self) -> str | None:
        """The sender's phone number as written by the channel (WhatsApp, SMS), else None."""
        if self.channel_type not in MESSAGING_PHONE_CHANNELS or not self.contact_ref:
            return None
        ref = self.contact_ref.strip()
        return ref if ref.startswith("+") else "+" + ref

    @property
    def email_address(self) -> str | None:
        """The sender's email address on the email channel, else None."""
        return self.contact_ref if self.channel_type == "email" and self.contact_ref else None


@dataclass(frozen=True)
class HandOff:
    """Hand the conversation to a human: reason (one sentence for the inbox), signal, priority."""

    reason: str
    signal: str
    priority: str = "normal"
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One step of an action. Exactly one of: ``text`` (say it now; ``intent`` names the step
    for the message row), ``request`` (a validated structured request for
    :meth:`runtime.actions.engine.ActionEngine.execute`, which does the I/O) or ``handoff``.
    pending: the action's state after this step (None: nothing awaited); failures: the session's
    failed order lookups after it (None: unchanged)."""

    text: str = ""
    intent: str = ""
    pending: PendingAction | None = None
    request: dict[str, Any] | None = None
    handoff: HandOff | None = None
    failures: int | None = None

    def __post_init__(self) -> None:
        settled = sum((bool(self.text), self.request is not None, self.handoff is not None))
        if settled != 1:
            raise ValueError("a Step says, requests or hands off: exactly one of them")
