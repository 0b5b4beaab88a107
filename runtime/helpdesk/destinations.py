"""Help-desk destination protocols: the HTTP request for an event, and how to read the answer.

No I/O here (the sender in :mod:`runtime.helpdesk.sender` sends). An event is an outbox row's body
(:func:`runtime.helpdesk.tickets.event`): ``ticket.created`` (a ticket, with its lead if any) or
``lead.created``; its ``event_id`` is fixed when the row is written, so a retry sends it again.

**webhook** (generic, signed). ``POST <config.url>``, ``Content-Type: application/json``, body
``{"id": <event id>, "type": "ticket.created" | "lead.created", "created_at", "tenant_id",
"data": {"ticket": {...}, "lead": {...} | null}}`` (``lead.created``: ``data.lead``), headers:

- ``X-ChatEngine-Event``: the type; ``X-ChatEngine-Event-Id``: the event id, the same on every
  retry and re-drive: a receiver that already processed it answers 2xx and does nothing;
- ``X-ChatEngine-Timestamp``: Unix seconds when this attempt was signed;
- ``X-ChatEngine-Signature``: ``v1=`` + hex HMAC-SHA256(signing secret, ``<timestamp>.<raw
  body>``). A receiver recomputes it over the raw bytes, compares in constant time, and refuses a
  timestamp more than 5 minutes from its clock (a replay); a retry is signed afresh.

2xx: delivered. 408, 429 (``Retry-After``) and 5xx: retried. Other 4xx: dead at once.

**zendesk** (Tickets API, ``POST https://{subdomain}.zendesk.com/api/v2/tickets.json``, Basic
auth ``{email}/token`` : ``api_token``): ``{"ticket": {"subject", "comment": {"body"},
"priority", "requester": {"name", "email"} (when the contact left an email), "tags",
"external_id": "chat-engine-ticket-<ticket id>"}}`` with ``Idempotency-Key: <event id>``.
Priorities map low/normal/high/critical -> low/normal/high/urgent. 201 ``{"ticket": {"id"}}``:
delivered (the Zendesk ticket id is kept). Zendesk answers a repeated key with the first answer
(``x-idempotency-lookup: hit``) for as long as it keeps keys; see the README for what happens
after that. ``lead.created`` is not sent to Zendesk: the lead rides in its ticket (requester, tag
``lead``).

**slack** (``POST {slack_api_base}/chat.postMessage``, ``Authorization: Bearer xoxb-…``):
``{"channel", "text", "unfurl_links": false}``: the priority, the subject, the key messages and
links to the inbox and the transcript. Slack reports errors inside HTTP 200 (``ok: false``).
Slack's API takes no idempotency key: an answer lost after Slack posted gives a second message.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol
from uuid import UUID

from runtime.channels.base import Permanent, Retry, SendOutcome, Sent, answer_object, hmac_hex, http_outcome
from runtime.channels.slack import ADAPTER as SLACK_CHANNEL
from runtime.config import Settings

USER_AGENT = "chat-engine-helpdesk/0.1"
SIGNATURE_VERSION = "v1"
ZENDESK_PRIORITY = {"low": "low", "normal": "normal", "high": "high", "critical": "urgent"}
_TAG = re.compile(r"[^a-z0-9_]+")


@dataclass(frozen=True)
class HelpdeskRequest:
    """One HTTP request to a destination: ``content`` is the exact body (signatures cover it)."""

    method: str
    url: str
    content: bytes
    headers: dict[str, str] = field(default_factory=dict)
    auth: tuple[str, str] | None = None


class Unsupported(Exception):
    """The destination does not take this event (the row is dead with this message)."""


class Destination(Protocol):
    """A destination kind: ``build`` the request for an event, ``read_response`` its answer."""

    kind: str

    def build(self, event: dict[str, Any], config: dict[str, Any], secrets: dict[str, str],
              settings: Settings, *, tenant_id: UUID, now: int) -> HelpdeskRequest:
        """The request for ``event``; now: Unix seconds. Raises Unsupported."""

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """Sent, Retry or Permanent; headers have lower-case names."""


def _json(data: dict[str, Any]) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def signature(secret: str, timestamp: int | str, body: bytes) -> str:
    """``v1=`` + hex HMAC-SHA256(``secret``, ``f"{timestamp}."`` + ``body``)."""
    return f"{SIGNATURE_VERSION}=" + hmac_hex(secret, f"{timestamp}.".encode() + body)


class WebhookDestination:
    """The signed generic webhook (see the module doc). Config ``url``; secret ``signing_secret``."""

    kind = "webhook"

    def build(self, event: dict[str, Any], config: dict[str, Any], secrets: dict[str, str],
              settings: Settings, *, tenant_id: UUID, now: int) -> HelpdeskRequest:
        """The signed POST of ``event`` to ``config["url"]``."""
        data = {k: event.get(k) for k in ("ticket", "lead") if k in event}
        body = _json({"id": event["event_id"], "type": event["event"], "created_at": event["created_at"],
                      "tenant_id": str(tenant_id), "data": data})
        headers = {
            "Content-Type": "application/json", "User-Agent": USER_AGENT,
            "X-ChatEngine-Event": str(event["event"]), "X-ChatEngine-Event-Id": str(event["event_id"]),
            "X-ChatEngine-Timestamp": str(now),
            "X-ChatEngine-Signature": signature(secrets["signing_secret"], now, body),
        }
        return HelpdeskRequest("POST", str(config["url"]), body, headers)

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """2xx: Sent; 408/429/5xx: Retry; other 4xx: Permanent with the answer's text."""
        return http_outcome(status, headers, body) or Sent(None)


def _tags(*values: str | None) -> list[str]:
    out: list[str] = []
    for value in values:
        tag = _TAG.sub("_", (value or "").lower()).strip("_")[:80]
        if tag and tag not in out:
            out.append(tag)
    return out


def _links(ticket: dict[str, Any]) -> str:
    return f"Transcript: {ticket['transcript_url']}\nInbox: {ticket['inbox_url']}"


class ZendeskDestination:
    """Zendesk's Tickets API (see the module doc). Config ``subdomain``, ``email`` (the agent the
    token belongs to), optional ``tags``; secret ``api_token``."""

    kind = "zendesk"

    def build(self, event: dict[str, Any], config: dict[str, Any], secrets: dict[str, str],
              settings: Settings, *, tenant_id: UUID, now: int) -> HelpdeskRequest:
        """``POST …/api/v2/tickets.json`` for ``ticket.created``. Raises Unsupported otherwise."""
        if event.get("event") != "ticket.created":
            raise Unsupported(f"Zendesk destinations take ticket.created only, not {event.get('event')!r} "
                              "(a lead rides in its ticket)")
        t, lead = event["ticket"], event.get("lead")
        contact = t.get("contact") or {}
        comment = f"{t['summary']}\n\n{_links(t)}"
        if lead:
            found = ", ".join(v for v in (lead.get("email"), lead.get("phone")) if v)
            comment += f"\n\nLead ({lead.get('buying_signal') or 'captured'}): {found}"
        ticket: dict[str, Any] = {
            "subject": t["subject"], "comment": {"body": comment},
            "priority": ZENDESK_PRIORITY.get(t["priority"], "normal"),
            "tags": _tags("chat_engine", f"category_{t['category']}",
                          f"signal_{t['signal']}" if t.get("signal") else None,
                          f"via_{t.get('channel_type')}", "lead" if lead else None,
                          *[str(x) for x in config.get("tags") or []]),
            "external_id": f"chat-engine-ticket-{t['id']}",
        }
        if contact.get("email"):
            ticket["requester"] = {"name": contact.get("name") or contact["email"], "email": contact["email"]}
        base = settings.zendesk_api_base.format(subdomain=config["subdomain"]).rstrip("/")
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "Idempotency-Key": str(event["event_id"])}
        return HelpdeskRequest("POST", f"{base}/api/v2/tickets.json", _json({"ticket": ticket}), headers,
                               auth=(f"{config['email']}/token", secrets["api_token"]))

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """2xx: Sent(the Zendesk ticket id). 429/5xx: Retry (``Retry-After``). Other 4xx:
        Permanent with Zendesk's ``error`` / ``description`` / ``details``."""
        data = answer_object(body)
        if 200 <= status < 300:
            ticket = data.get("ticket")
            found = ticket.get("id") if isinstance(ticket, dict) else None
            return Sent(str(found) if found is not None else None)
        generic = http_outcome(status, headers, body)
        parts = [str(data[k]) for k in ("error", "description") if data.get(k)]
        if data.get("details"):
            parts.append(json.dumps(data["details"])[:300])
        if parts and isinstance(generic, Permanent):
            return Permanent(f"HTTP {status}: {'; '.join(parts)}")
        if parts and isinstance(generic, Retry):
            return Retry(f"HTTP {status}: {'; '.join(parts)}", generic.retry_after_s)
        return generic or Sent(None)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class SlackDestination:
    """A Slack message per ticket (see the module doc). Config ``channel``; secret ``bot_token``."""

    kind = "slack"

    def build(self, event: dict[str, Any], config: dict[str, Any], secrets: dict[str, str],
              settings: Settings, *, tenant_id: UUID, now: int) -> HelpdeskRequest:
        """``chat.postMessage`` for ``ticket.created``. Raises Unsupported otherwise."""
        if event.get("event") != "ticket.created":
            raise Unsupported(f"Slack destinations take ticket.created only, not {event.get('event')!r}")
        t, lead = event["ticket"], event.get("lead")
        lines = [f"*New {t['priority']} ticket* ({t['category']}): {_slack_escape(t['subject'])}"]
        lines += [f"> {_slack_escape(line)}" for line in t["summary"].splitlines()[1:]]
        if lead:
            found = ", ".join(v for v in (lead.get("email"), lead.get("phone")) if v)
            why = lead.get("buying_signal") or "captured"
            lines.append(f"Lead ({_slack_escape(why)}): {_slack_escape(found)}")
        lines.append(f"<{t['inbox_url']}|Open in the inbox> · <{t['transcript_url']}|Transcript>")
        body = _json({"channel": config["channel"], "text": "\n".join(lines), "unfurl_links": False})
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": USER_AGENT,
                   "Authorization": f"Bearer {secrets['bot_token']}"}
        url = f"{settings.slack_api_base.rstrip('/')}/chat.postMessage"
        return HelpdeskRequest("POST", url, body, headers)

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """As the Slack channel reads ``chat.postMessage`` (``ok: false`` inside HTTP 200)."""
        return SLACK_CHANNEL.read_response(status, headers, body)


DESTINATIONS: dict[str, Destination] = {
    d.kind: d for d in (WebhookDestination(), ZendeskDestination(), SlackDestination())
}


def destination_for(kind: str) -> Destination:
    """The protocol of a destination kind. Raises KeyError for an unknown kind."""
    return DESTINATIONS[kind]
