"""What every messaging channel adapter speaks: the parsed webhook, the send request, the outcome.

An adapter (one module per provider: ``whatsapp``, ``telegram``, ``sms``, ``email``, ``slack``)
is pure protocol code, with no I/O: it checks a setup, verifies a webhook's signature over the raw
body, parses the body into :class:`ChannelMessage` and :class:`DeliveryStatus` items, builds the
HTTP request that sends one text, and reads the provider's answer into a :class:`SendOutcome`.
The webhook route (``runtime/api/webhooks.py``) and the outbox sender
(``runtime/channels/outbox_sender.py``) do the I/O around it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any, Literal, Protocol
from urllib.parse import parse_qsl

from runtime.errors import ChatEngineError, Unauthorized


class SignatureInvalid(Unauthorized):
    """A webhook whose signature (or secret token, or timestamp) does not check out (401).
    Nothing of it is stored."""

    code = "invalid_signature"


class MalformedPayload(ChatEngineError):
    """A webhook body that is not the provider's documented shape (400); the message says which
    field was wrong."""

    status_code = 400
    code = "malformed_payload"


@dataclass(frozen=True)
class WebhookRequest:
    """One inbound webhook call, as the route received it.

    body: the raw bytes (signatures are over these); headers: lower-cased names; url: the full
    public URL the provider called (Twilio signs it), query included; query: the query
    parameters; content_type: the media type without parameters.
    """

    body: bytes
    headers: dict[str, str]
    url: str
    query: dict[str, str] = field(default_factory=dict)
    content_type: str = ""

    def form(self) -> dict[str, str]:
        """The body as ``application/x-www-form-urlencoded`` fields (last value wins).
        Raises MalformedPayload when it does not decode."""
        try:
            return dict(parse_qsl(self.body.decode("utf-8"), keep_blank_values=True, strict_parsing=False))
        except UnicodeDecodeError as exc:
            raise MalformedPayload(f"the form body is not UTF-8 ({exc.reason})") from None


MessageKind = Literal["message", "greeting", "opt_out", "opt_in"]


@dataclass(frozen=True)
class ChannelMessage:
    """One customer message from a webhook.

    external_id: the provider's id, unique per channel (WhatsApp ``wamid``, ``update:<id>`` for
    Telegram, Twilio ``MessageSid``, the email ``Message-Id``, Slack ``event_id``);
    identity: how the contact is recognised across channels of the tenant, ``(kind, value)``
    with kind ``phone`` (E.164), ``telegram`` (chat id), ``email`` (lower-cased address) or
    ``slack`` (``<team>:<user>``); address: where the reply goes on this channel (a phone number,
    a chat id, an email address, a Slack channel id); kind: ``greeting`` for Telegram's
    ``/start``, ``opt_out``/``opt_in`` for SMS STOP/START; thread: what a reply needs to land in
    the same thread (email: ``subject``, ``message_id``, ``references``; Slack: ``channel``,
    ``thread_ts``); route: the receiving number of a WhatsApp change (``phone_number_id``).
    attachments: ``[{"type": "image"|"audio"|"video"|"document"|..., "id", "mime_type",
    "caption", "url", "filename"}]`` (keys present when known).
    """

    external_id: str
    identity: tuple[str, str]
    address: str
    text: str
    contact_name: str | None = None
    attachments: list[dict[str, Any]] = field(default_factory=list)
    kind: MessageKind = "message"
    thread: dict[str, Any] = field(default_factory=dict)
    route: str | None = None
    sent_at: datetime | None = None


@dataclass(frozen=True)
class DeliveryStatus:
    """A provider's report on a message we sent (WhatsApp ``statuses[]``).

    status: sent | delivered | read | failed; error: the provider's error text for ``failed``.
    """

    provider_message_id: str
    status: str
    error: str | None = None
    at: datetime | None = None
    route: str | None = None


@dataclass
class ParsedWebhook:
    """What a webhook carried. reply: a body to answer with instead of ``{"ok": true}`` (Slack's
    ``url_verification`` challenge), with no message work at all."""

    messages: list[ChannelMessage] = field(default_factory=list)
    statuses: list[DeliveryStatus] = field(default_factory=list)
    reply: dict[str, Any] | None = None


@dataclass(frozen=True)
class OutboundText:
    """One text to send. recipient: the session's address on the channel; thread: the session's
    thread (see :class:`ChannelMessage`); outbox_id: the row's id (a stable idempotency seed);
    part / parts: this piece's index and the count, for split answers."""

    recipient: str
    text: str
    thread: dict[str, Any] = field(default_factory=dict)
    outbox_id: int = 0
    part: int = 0
    parts: int = 1


@dataclass(frozen=True)
class SendRequest:
    """An HTTP request for httpx: ``client.request(method, url, headers=..., json=..., data=...,
    auth=...)``. auth: (user, password) for HTTP Basic, or None."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    auth: tuple[str, str] | None = None


@dataclass(frozen=True)
class Sent:
    """The provider accepted the message; provider_message_id: its id (wamid, message_id, sid)."""

    provider_message_id: str | None


@dataclass(frozen=True)
class Retry:
    """A transient failure (timeout, 429, 5xx); retry_after_s: the provider's wish, if any."""

    error: str
    retry_after_s: float | None = None


@dataclass(frozen=True)
class Permanent:
    """A failure that retrying will not fix (a 4xx: bad token, unknown recipient); the row goes
    to the dead-letter queue at once with the provider's error."""

    error: str


SendOutcome = Sent | Retry | Permanent


class ChannelAdapter(Protocol):
    """One provider's protocol. ``type``: the channel type name; ``text_limit``: the longest
    text one send may carry (characters), None for no limit; ``api_base_setting``: the Settings
    field holding the provider's API base URL."""

    type: str
    text_limit: int | None
    api_base_setting: str

    def validate_setup(self, config: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        """Check a channel's config and secrets at creation; returns the normalised config.
        Raises InvalidInput naming the missing or bad field (e.g. ``secrets.app_secret``)."""
        ...

    def verify(self, req: WebhookRequest, config: dict[str, Any], secrets: dict[str, str],
               *, now: float) -> str | None:
        """Check the webhook's signature; ``now``: Unix seconds. Returns a replay key to remember
        (a signed one-time token, refused if seen again) or None. Raises SignatureInvalid."""
        ...

    def parse(self, req: WebhookRequest, config: dict[str, Any]) -> ParsedWebhook:
        """The messages and statuses of a verified webhook. Raises MalformedPayload naming what
        was wrong."""
        ...

    def build_send(self, out: OutboundText, config: dict[str, Any], secrets: dict[str, str],
                   api_base: str) -> SendRequest:
        """The request that sends ``out``. api_base: the provider's base URL from Settings."""
        ...

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """The outcome of a send from the provider's HTTP answer (lower-cased header names)."""
        ...


# ------------------------------------------------------------------ shared helpers
def hmac_hex(key: str | bytes, msg: bytes, digest: str = "sha256") -> str:
    """Hex HMAC of ``msg`` keyed with ``key``."""
    k = key.encode() if isinstance(key, str) else key
    return hmac.new(k, msg, getattr(hashlib, digest)).hexdigest()


def same(a: str, b: str) -> bool:
    """Constant-time string comparison (False for non-ASCII input rather than an error)."""
    try:
        return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
    except (UnicodeEncodeError, AttributeError):
        return False


def retry_after(headers: dict[str, str]) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date), or None."""
    raw = (headers.get("retry-after") or "").strip()
    if not raw:
        return None
    if raw.isdigit():
        return float(raw)
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - datetime.now(when.tzinfo).timestamp())


def http_outcome(status: int, headers: dict[str, str], body: bytes) -> SendOutcome | None:
    """The generic part of reading a send's answer: 429 and 5xx retry (with ``Retry-After``), other
    4xx are permanent with the body's text; None for a 2xx (the adapter reads the id)."""
    if 200 <= status < 300:
        return None
    text = body[:500].decode("utf-8", "replace")
    if status == 429 or status >= 500 or status == 408:
        return Retry(f"HTTP {status}: {text}", retry_after(headers))
    return Permanent(f"HTTP {status}: {text}")


_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"(?<=[.!?])\s+"), re.compile(r"\s+"))


def split_text(text: str, limit: int | None) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters, cut at a paragraph, then a line, a
    sentence, a space, and only as a last resort inside a word. ``limit`` None: one piece.
    Empty text: no pieces."""
    text = text.strip()
    if not text:
        return []
    if limit is None or len(text) <= limit:
        return [text]
    parts: list[str] = []
    rest = text
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = -1
        for pattern in _BREAKS:
            ends = [m.start() for m in pattern.finditer(window) if 0 < m.start() <= limit]
            if ends and ends[-1] >= limit // 3:
                cut = ends[-1]
                break
        if cut <= 0:
            cut = limit
        parts.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        parts.append(rest)
    return parts


# ------------------------------------------------------------------ parsing helpers (adapters)
def json_object(body: bytes, provider: str) -> dict[str, Any]:
    """``body`` decoded as a JSON object. Raises MalformedPayload naming ``provider`` when it is
    not UTF-8 JSON or not an object."""

    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedPayload(f"the {provider} webhook body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MalformedPayload(f"the {provider} webhook body is a JSON {type(data).__name__}, not an object")
    return data


def e164(raw: str) -> str | None:
    """``raw`` (with a leading ``+`` and a country code; spaces and punctuation allowed) as an
    E.164 number, e.g. ``"+16505551234"``, via ``phonenumbers``; None when it is not a possible
    phone number."""
    import phonenumbers

    try:
        number = phonenumbers.parse(raw.strip(), None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def unix_time(value: Any) -> datetime | None:
    """A Unix timestamp (seconds; int, float or a numeric string such as WhatsApp's ``"1749416383"``
    or Slack's ``"1355517523.000005"``) as an aware UTC datetime; None when absent or not numeric."""
    from datetime import UTC

    if isinstance(value, bool) or value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def answer_object(body: bytes) -> dict[str, Any]:
    """A provider's HTTP answer as a JSON object; ``{}`` when it is empty, not JSON, or not an
    object (the status code then decides the outcome)."""
    try:
        data = json.loads(body.decode("utf-8")) if body else {}
    except (UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
