"""What the turn pipeline decides for one customer message, before anything is said.

Each decision is plain data; :mod:`runtime.conversation.turns` carries it out (stores, delivers,
escalates). :class:`Outcome` adds the session state to commit with it and a captured lead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runtime.conversation.state import SessionState

MEDIA_ONLY_REPLY = ("Thanks, I've received your attachment and passed it to our team. I can only read "
                    "text myself: could you describe in a message what you need?")
INVALID_EMAIL_REPLY = "That email address doesn't look right ({error}). Could you check it and send it again?"


@dataclass(frozen=True)
class InboundMessage:
    """A customer message to answer: its id, text and attachments (list of dicts)."""

    id: int
    text: str
    attachments: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class Reply:
    """Say ``text`` (no model): a lead-capture ask, an invalid-email note, an off-topic refusal,
    the media-only note. intent: lead_ask | invalid_email | off_topic | media_only | paused;
    customer_status: the customer message's new status (answered | inbox); notify_inbox: tell the
    agents (a message only a human can handle)."""

    text: str
    intent: str
    customer_status: str = "answered"
    notify_inbox: bool = False


@dataclass(frozen=True)
class Escalate:
    """Hand the conversation to a human. signal: which signal fired (keyword, human_request,
    refund, billing_dispute, legal_threat, low_coverage, prompt_injection, ...); priority: low |
    normal | high | critical; question: the customer's question (for the inbox and analytics)."""

    reason: str
    signal: str | None
    question: str | None
    detail: dict[str, Any] = field(default_factory=dict)
    priority: str = "normal"


@dataclass(frozen=True)
class ToInbox:
    """Not for the bot: the session is with a human (or the bot is paused). notice: a message to
    send the customer first (the paused message), or None."""

    reason: str
    notice: str | None = None


@dataclass(frozen=True)
class Answer:
    """Answer ``question`` from ``chunks`` (retrieved, best first). question_vec: float32 (dim,),
    L2-normalised; coverage: the coverage assessment's detail (scores, reason)."""

    question: str
    question_vec: np.ndarray
    chunks: list[Any]
    coverage: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Act:
    """Run an action (:mod:`runtime.actions`): ``request`` is the validated structured request
    (``{"action": "order_status", "op": "lookup", "order_id": ..., "verify": {...}}``, a booking
    op...) that :meth:`runtime.actions.engine.ActionEngine.execute` carries out; its result is
    said like a :class:`Reply` or escalates."""

    request: dict[str, Any]


Decision = Reply | Escalate | ToInbox | Answer | Act


@dataclass(frozen=True)
class CapturedLead:
    """An email the customer gave for a held-back question (saved before answering it)."""

    email: str
    topic: str | None
    question: str


@dataclass(frozen=True)
class Outcome:
    """A decision, the session state to commit with it, and a lead to save first (or None)."""

    decision: Decision
    state: SessionState
    lead: CapturedLead | None = None
