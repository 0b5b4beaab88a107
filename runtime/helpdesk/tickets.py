"""The ticket an escalation opens, and the lead it may carry.

:func:`open_ticket` runs inside the escalation's transaction (:func:`runtime.conversation.
escalation.escalate`): it reads the conversation, writes the ticket (and a lead), and enqueues
one outbox row per active help-desk destination, so the escalation, its ticket and their sends
commit together or not at all.

- Priority: the escalation's own (refund and billing disputes ``high``, legal threats
  ``critical`` from ``runtime/answering/intents.toml``; a failed turn ``high``), never below the
  floor its signal sets (:data:`SIGNAL_PRIORITY`), so a refund or legal trigger is high or
  critical whichever path raised it; a plain request for a human stays ``normal``.
- Category: from the signal (:data:`CATEGORIES`), ``other`` for one not listed.
- Summary: extractive, no model: the escalation's reason, then the customer's key messages (the
  first substantive one, how the conversation began, and the last few; greetings, thanks and
  repeats left out), each cut at :data:`QUOTE_CHARS` characters.
- Contact: the contact's name, email and phone, else an email or an international phone number
  the customer wrote (the ticket's requester).
- Lead: when lead capture already captured one in the session it is attached; otherwise one is
  created when the contact left an email or a phone (on the contact, or written in a message)
  and the customer's messages show a buying signal (pricing, a quote, a demo, buying, a trial,
  or one of the tenant's lead-capture topics). A lead is forwarded to the destinations once.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from runtime.bot_config import BotConfig
from runtime.config import Settings
from runtime.db import Conn
from runtime.db import escalations as esc_db
from runtime.db import helpdesks as helpdesk_db
from runtime.db import tickets as ticket_db
from runtime.policy.leads import extract_email, match_topic
from runtime.policy.rules import normalize_text

log = logging.getLogger(__name__)

PRIORITIES = ("low", "normal", "high", "critical")
SIGNAL_PRIORITY = {"refund": "high", "billing_dispute": "high", "legal_threat": "critical"}
"""The lowest priority a trigger's ticket gets (refund and fraud-like disputes high, legal critical)."""

CATEGORIES = {
    "refund": "refund", "billing_dispute": "billing", "amount": "billing", "legal_threat": "legal",
    "human_request": "human_request", "handoff_button": "human_request", "keyword": "keyword",
    "negative_sentiment": "complaint", "low_coverage": "unanswered", "repeated_failure": "unanswered",
    "prompt_injection": "security",
}
"""Ticket category per escalation signal; any other signal (a failed turn's error code, an
action's) is ``other``."""

SUBJECT_LABELS = {
    "refund": "Refund request", "billing": "Billing dispute", "legal": "Legal threat",
    "human_request": "Customer asked for a human", "keyword": "Escalation keyword",
    "complaint": "Unhappy customer", "unanswered": "Unanswered question",
    "security": "Suspicious message", "other": "Escalation",
}
SUBJECT_CHARS = 120
QUOTE_CHARS = 280
KEY_MESSAGES = 5

_TRIVIAL = re.compile(
    r"^(?:hi|hello|hey|hallo|yo|thanks?|thank\s+you|thx|ok(?:ay)?|yes|no|yep|nope|sure|bye|"
    r"good\s+(?:morning|afternoon|evening)|great|cool|\?+|!+)[\s.!?]*$")
# Buying intent, by what it shows: the first matching group names the signal.
_BUYING = [
    ("pricing", re.compile(r"\b(?:pric(?:e|es|ing)|how\s+much\s+(?:is|are|does|do|would|for)|"
                           r"costs?\s+(?:of|for)|what\s+does\s+\w+(?:\s+\w+)?\s+cost|rates?\s+for)\b")),
    ("quote", re.compile(r"\b(?:quotes?|quotation|estimate\s+for|proposal)\b")),
    ("demo", re.compile(r"\b(?:demo|demonstration|product\s+tour|talk\s+to\s+sales|sales\s+team)\b")),
    ("buy", re.compile(r"\b(?:buy|buying|purchas(?:e|ing)|subscribe|"
                       r"sign\s+up\s+for|upgrade\s+to|(?:enterprise|business|team)\s+plan)\b")),
    ("trial", re.compile(r"\b(?:free\s+)?trial\b")),
]


def ticket_priority(escalation_priority: str | None, signal: str | None) -> str:
    """The ticket's priority: the escalation's (low | normal | high | critical; unknown values
    count as normal), raised to its signal's floor in :data:`SIGNAL_PRIORITY`."""
    given = escalation_priority if escalation_priority in PRIORITIES else "normal"
    floor = SIGNAL_PRIORITY.get(signal or "", "low")
    return max(given, floor, key=PRIORITIES.index)


def ticket_category(signal: str | None) -> str:
    """The category for an escalation signal (None, the "Talk to a human" button: human_request)."""
    if signal is None:
        return "human_request"
    return CATEGORIES.get(signal, "other")


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def ticket_subject(category: str, question: str | None, reason: str) -> str:
    """``"<label>: <the customer's question>"`` on one line, at most :data:`SUBJECT_CHARS`."""
    label = SUBJECT_LABELS.get(category, SUBJECT_LABELS["other"])
    about = (question or "").strip() or reason.strip()
    return _one_line(f"{label}: {about}" if about else label, SUBJECT_CHARS)


def key_messages(messages: Iterable[str], limit: int = KEY_MESSAGES) -> list[str]:
    """The customer's key messages, in order: the first substantive one and the last
    ``limit - 1``, without greetings, thanks, one-word replies or repeats; each on one line, cut
    at :data:`QUOTE_CHARS`."""
    seen: set[str] = set()
    kept: list[str] = []
    for text in messages:
        norm = normalize_text(text)
        if not norm or _TRIVIAL.match(norm) or norm in seen:
            continue
        seen.add(norm)
        kept.append(_one_line(text, QUOTE_CHARS))
    if len(kept) <= limit:
        return kept
    return [kept[0], *kept[-(limit - 1):]]


def ticket_summary(reason: str, messages: list[str], contact: dict[str, str | None],
                   channel_type: str) -> str:
    """Plain text: the reason, who and where, then the key messages as quoted bullets."""
    who = ", ".join(v for v in (contact.get("name"), contact.get("email"), contact.get("phone")) if v)
    lines = [f"Escalated: {reason.strip()}", f"Customer: {who or 'anonymous'} (via {channel_type})"]
    quotes = key_messages(messages)
    if quotes:
        lines.append("Key messages from the customer:")
        lines.extend(f'- "{q}"' for q in quotes)
    return "\n".join(lines)


def buying_signal(messages: Iterable[str], lead_topics: Iterable[str] = ()) -> str | None:
    """What in the customer's messages shows buying intent: ``pricing``, ``quote``, ``demo``,
    ``buy``, ``trial``, or ``topic:<t>`` for one of the tenant's lead-capture topics; None."""
    topics = [t for t in lead_topics if t and t.strip()]
    for text in messages:
        norm = normalize_text(text)
        for name, pattern in _BUYING:
            if pattern.search(norm):
                return name
        topic = match_topic(text, topics) if topics else None
        if topic is not None:
            return f"topic:{topic}"
    return None


def phone_in(text: str) -> str | None:
    """The first phone number written in international form (``+`` and country code) in
    ``text``, as E.164, or None (without a country a number cannot be told apart from an order
    number)."""
    import phonenumbers  # ~7 MB of metadata: loaded at a process's first escalation, not at start

    for match in phonenumbers.PhoneNumberMatcher(text[:5000], None):
        return phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164)
    return None


def base_url(settings: Settings) -> str:
    """The ingress's public base URL (``public_base_url``, else ``http://host:port``)."""
    if settings.public_base_url is not None:
        return str(settings.public_base_url).rstrip("/")
    return f"http://{settings.host}:{settings.port}"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def lead_payload(lead: Any, ticket_id: UUID | None) -> dict[str, Any]:
    """The lead as JSON (what destinations and ``GET /v1/leads`` show)."""
    return {"id": str(lead["id"]), "session_id": str(lead["session_id"]) if lead["session_id"] else None,
            "ticket_id": str(ticket_id) if ticket_id else None, "email": lead["email"],
            "phone": lead["phone"], "name": lead["name"], "topic": lead["topic"],
            "question": lead["question"], "source": lead["source"],
            "buying_signal": lead["buying_signal"], "created_at": _iso(lead["created_at"])}


def ticket_payload(ticket: Any, channel_type: str, contact: dict[str, str | None]) -> dict[str, Any]:
    """The ticket as JSON (what destinations get)."""
    return {"id": str(ticket["id"]), "session_id": str(ticket["session_id"]),
            "escalation_id": str(ticket["escalation_id"]) if ticket["escalation_id"] else None,
            "subject": ticket["subject"], "summary": ticket["summary"],
            "transcript_url": ticket["transcript_url"], "inbox_url": ticket["inbox_url"],
            "priority": ticket["priority"], "category": ticket["category"], "signal": ticket["signal"],
            "reason": ticket["reason"], "channel_type": channel_type, "contact": contact,
            "created_at": _iso(ticket["created_at"])}


def event(kind: str, **data: Any) -> dict[str, Any]:
    """An outbox body for the destinations: ``{"event", "event_id", "created_at", **data}``.
    ``event_id`` is fixed here, so every retry and re-drive of the row sends the same one."""
    return {"event": kind, "event_id": f"evt_{uuid.uuid4().hex}",
            "created_at": datetime.now(UTC).isoformat(), **data}


def _newest(find: Callable[[str], str | None], messages: list[str]) -> str | None:
    return next((found for found in map(find, reversed(messages)) if found), None)


async def _lead_for(
    conn: Conn, tenant_id: UUID, session_id: UUID, contact_id: UUID | None, messages: list[str],
    contact: dict[str, str | None], cfg: BotConfig, question: str | None,
) -> Any:
    """The session's lead to carry: the captured one (completed), a new one, or None."""
    topics = [t for rule in cfg.lead_capture for t in rule.topics]
    signal = buying_signal(messages, topics)
    email, phone = contact.get("email"), contact.get("phone")
    existing = await ticket_db.session_lead(conn, tenant_id, session_id)
    if existing is not None:
        return await ticket_db.complete_lead(conn, tenant_id, existing["id"], phone=phone,
                                             name=contact.get("name"),
                                             buying_signal=signal or (f"topic:{existing['topic']}"
                                                                      if existing["topic"] else None))
    if signal is None or not (email or phone):
        return None
    topic = signal.removeprefix("topic:") if signal.startswith("topic:") else None
    return await ticket_db.insert_lead(
        conn, tenant_id, session_id, contact_id, email=email, phone=phone, name=contact.get("name"),
        topic=topic, question=question or (messages[-1] if messages else None), buying_signal=signal)


async def open_ticket(
    conn: Conn, settings: Settings, cfg: BotConfig, *, tenant_id: UUID, session_id: UUID,
    contact_id: UUID | None, channel_type: str, escalation_id: UUID, reason: str,
    signal: str | None, question: str | None, priority: str | None,
) -> dict[str, Any]:
    """Write the escalation's ticket (and lead) and enqueue them to every active destination,
    in the caller's transaction. Returns ``{"ticket_id", "priority", "category", "lead_id",
    "outbox_ids"}``. Raises what asyncpg raises (the caller's transaction then commits nothing).

    Each destination gets ``ticket.created`` (with the lead, if any, inside it); a ``webhook``
    destination also gets ``lead.created`` for a lead not forwarded before.
    """
    messages = await ticket_db.customer_messages(conn, tenant_id, session_id)
    contact = await ticket_db.contact_details(conn, tenant_id, contact_id)
    # An address or number the customer wrote counts too (the newest one), for the ticket's
    # requester as for a lead; the contact record itself is left as it is.
    contact["email"] = contact["email"] or _newest(extract_email, messages)
    contact["phone"] = contact["phone"] or _newest(phone_in, messages)
    lead = await _lead_for(conn, tenant_id, session_id, contact_id, messages, contact, cfg, question)
    if lead is not None:
        contact = {k: contact.get(k) or lead[k] for k in ("name", "email", "phone")}
    category = ticket_category(signal)
    level = ticket_priority(priority, signal)
    base = base_url(settings)
    ticket = await ticket_db.insert_ticket(
        conn, tenant_id, session_id=session_id, escalation_id=escalation_id, contact_id=contact_id,
        lead_id=lead["id"] if lead is not None else None,
        subject=ticket_subject(category, question or (messages[-1] if messages else None), reason),
        summary=ticket_summary(reason, messages, contact, channel_type),
        transcript_url=f"{base}/v1/sessions/{session_id}/log",
        inbox_url=settings.inbox_url_template.format(base=base, session_id=session_id),
        priority=level, category=category, signal=signal, reason=reason,
    )
    lead_json = lead_payload(lead, ticket["id"]) if lead is not None else None
    ticket_event = event("ticket.created", ticket=ticket_payload(ticket, channel_type, contact),
                         lead=lead_json)
    forward_lead = lead is not None and await ticket_db.mark_lead_forwarded(conn, tenant_id, lead["id"])
    lead_event = event("lead.created", lead=lead_json) if forward_lead else None
    outbox_ids: list[int] = []
    for helpdesk_id, kind in await helpdesk_db.active_helpdesk_ids(conn, tenant_id):
        outbox_ids.append(await helpdesk_db.enqueue(conn, tenant_id, helpdesk_id, session_id, ticket_event))
        if lead_event is not None and kind == "webhook":
            outbox_ids.append(await helpdesk_db.enqueue(conn, tenant_id, helpdesk_id, session_id, lead_event))
    await esc_db.record_event(conn, tenant_id, session_id, "ticket", {
        "ticket_id": str(ticket["id"]), "escalation_id": str(escalation_id), "priority": level,
        "category": category, "lead_id": lead_json["id"] if lead_json else None,
        "destinations": len(outbox_ids)})
    return {"ticket_id": ticket["id"], "priority": level, "category": category,
            "lead_id": lead["id"] if lead is not None else None, "outbox_ids": outbox_ids}
