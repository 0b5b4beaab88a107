"""What a session actor knows about its conversation: the session record and the turn state.

:class:`SessionRecord` mirrors the ``sessions`` row the actor owns (plus its channel type and the
contact's address); :class:`SessionState` is the typed form of ``sessions.state`` (jsonb), the
turn state that survives passivation: a pending lead-capture question and the streak of weak
answers. Both change only after the database transaction that records the change has committed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from runtime.actions.types import PendingAction

SessionStatus = Literal["ai_handled", "human_escalated", "human_assigned", "closed"]


class PendingLead(BaseModel):
    """A question held back until the customer leaves an email (lead capture)."""

    model_config = ConfigDict(extra="ignore")

    question: str
    topic: str | None = None


class SessionState(BaseModel):
    """``sessions.state``: lead: the question waiting for an email; weak_streak: consecutive
    answers whose coverage was weak (the repeated-failure signal); paused_notice_sent: the
    customer was told the bot is paused (told once per session); action: an action step waiting
    for the customer (an order id, a verification, a time to book); action_failures: failed order
    lookups in this conversation (bounded, so order ids cannot be enumerated)."""

    model_config = ConfigDict(extra="ignore")

    lead: PendingLead | None = None
    weak_streak: int = Field(default=0, ge=0)
    paused_notice_sent: bool = False
    action: PendingAction | None = None
    action_failures: int = Field(default=0, ge=0)

    @classmethod
    def load(cls, raw: dict[str, Any] | None) -> SessionState:
        """From the jsonb column (unknown keys of older versions are ignored)."""
        return cls.model_validate(raw or {})

    def dump(self) -> dict[str, Any]:
        """For the jsonb column."""
        return self.model_dump(mode="json")


@dataclass(frozen=True)
class SessionRecord:
    """The session row as the actor holds it. Replace, never mutate: ``record.with_(status=...)``.

    channel_type: widget | whatsapp | telegram | sms | email | slack; contact_ref: the contact's
    address on that channel (None for widget visitors without one).
    """

    tenant_id: UUID
    session_id: UUID
    channel_id: UUID
    channel_type: str
    contact_id: UUID | None
    contact_ref: str | None
    status: SessionStatus
    assignee_id: UUID | None

    @classmethod
    def from_row(cls, row: Any) -> SessionRecord:
        """From :func:`runtime.db.sessions.get_session_for_actor`'s row."""
        return cls(
            tenant_id=row["tenant_id"], session_id=row["id"], channel_id=row["channel_id"],
            channel_type=row["channel_type"], contact_id=row["contact_id"],
            contact_ref=row["contact_ref"], status=row["status"], assignee_id=row["assignee_id"],
        )

    def with_(self, **changes: Any) -> SessionRecord:
        """A copy with ``changes`` applied."""
        return replace(self, **changes)
