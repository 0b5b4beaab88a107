"""Emails to the tenant's owners, through the tenant's email channel and the outbox.

An owner notice is an ``outbox`` row of the tenant's email channel (Mailgun) with no session, the
owner's address as recipient and the subject in ``body["thread"]`` (a new thread, not a reply):
written in the caller's transaction and sent by the email sender with its retries and dead
letters. A tenant without an active email channel, or without an owner address, gets no email
(the ``events`` row and the inbox push still tell the owner).

Credit alerts (:func:`email_credit_alert`): at 80% of the grant spent (``credits_low``) and at
zero (``credits_exhausted``), once per grant, in the transaction that took the credit.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from runtime.db import Conn
from runtime.db import helpdesks as helpdesk_db
from runtime.db import outbox as outbox_db


async def email_owners(conn: Conn, tenant_id: UUID, kind: str, subject: str, text: str) -> list[int]:
    """Enqueue ``subject``/``text`` to each owner address on the tenant's email channel, in the
    caller's transaction; returns the outbox row ids (empty: no email channel or no owner
    address). kind: what the notice is (``credits_low``...), kept in the row's body."""
    channel_id, _, emails = await helpdesk_db.owner_email_route(conn, tenant_id)
    return await _enqueue(conn, tenant_id, channel_id, emails, kind, subject, text)


async def _enqueue(conn: Conn, tenant_id: UUID, channel_id: UUID | None, emails: list[str], kind: str,
                   subject: str, text: str) -> list[int]:
    if channel_id is None:
        return []
    body = {"text": text, "sender": "system", "notice": kind,
            "thread": {"subject": subject, "new_thread": True}}
    return [await outbox_db.enqueue(conn, tenant_id, channel_id, None, None, email, body) for email in emails]


def credit_alert_text(tenant_name: str, alert: dict[str, Any]) -> tuple[str, str, str]:
    """``(kind, subject, text)`` of the email for a credit alert from
    :func:`runtime.db.bot_configs.consume_credit` (``{"level": 80 | 100, "credit_balance",
    "credit_granted"}``)."""
    balance, granted = alert.get("credit_balance"), alert.get("credit_granted")
    of = f" of {granted}" if granted is not None else ""
    if alert.get("level") == 100:
        return ("credits_exhausted", f"{tenant_name}: your assistant is out of credits and paused",
                f"Your assistant for {tenant_name} has used all its credits ({balance}{of} left), so it "
                "is paused: customers get the paused message and their conversations wait for your team "
                "in the inbox. Ask your platform admin for more credits to bring the assistant back.")
    return ("credits_low", f"{tenant_name}: your assistant has used 80% of its credits",
            f"Your assistant for {tenant_name} has {balance}{of} credits left: 80% of the grant is "
            "spent. When none are left the assistant pauses and conversations go to your team's inbox. "
            "Ask your platform admin for more credits before then.")


async def email_credit_alert(conn: Conn, tenant_id: UUID, alert: dict[str, Any]) -> list[int]:
    """Enqueue the credit alert email to the owners (see :func:`credit_alert_text`), in the
    transaction that raised the alert; returns the outbox row ids."""
    channel_id, name, emails = await helpdesk_db.owner_email_route(conn, tenant_id)
    kind, subject, text = credit_alert_text(name, alert)
    return await _enqueue(conn, tenant_id, channel_id, emails, kind, subject, text)
