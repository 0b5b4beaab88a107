"""Email through Mailgun: channel type ``email``.

Follows Mailgun's documentation:

- Inbound routes (documentation.mailgun.com, "Receiving, Forwarding and Storing Messages"): a
  route's ``forward()`` POSTs the parsed message as form fields (multipart when it has
  attachments): ``sender``, ``from``, ``recipient``, ``subject``, ``body-plain``,
  ``stripped-text``, ``message-headers`` (a JSON list of ``[name, value]`` pairs),
  ``Message-Id`` / ``In-Reply-To`` / ``References``, ``attachment-count``, and the signature
  fields ``timestamp``, ``token``, ``signature`` = hex HMAC-SHA256(webhook signing key,
  timestamp + token). A timestamp more than ``signature_max_age_s`` (default 300 s) away from now
  is refused, and the token is a one-time replay key.
- Sending: ``POST /v3/{domain}/messages``, HTTP Basic (``api``, API key), form ``from``, ``to``,
  ``subject``, ``text`` and ``h:In-Reply-To`` / ``h:References`` so the reply threads (RFC 5322
  section 3.6.4). The answer is ``{"id": "<...>", "message": "Queued. Thank you."}``.

The customer's new text is cut from quoted history and signatures with ``mail-parser-reply``.
The contact's address is the ``From`` header's (the envelope ``sender`` can be a bounce
address), falling back to ``sender``.

Config: ``domain``, ``from_address``, optional ``from_name`` and ``signature_max_age_s``.
Secrets: ``api_key`` (sending) and ``webhook_signing_key``. No I/O here.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from email.utils import formataddr, parseaddr, parsedate_to_datetime
from typing import Any

from email_validator import EmailNotValidError, validate_email
from mailparser_reply import EmailReplyParser

from runtime.channels.base import (
    ChannelMessage,
    MalformedPayload,
    OutboundText,
    ParsedWebhook,
    Permanent,
    Retry,
    SendOutcome,
    SendRequest,
    Sent,
    SignatureInvalid,
    WebhookRequest,
    answer_object,
    hmac_hex,
    http_outcome,
    same,
    unix_time,
)
from runtime.errors import InvalidInput
from runtime.policy.leads import normalize_email

DEFAULT_MAX_AGE_S = 300
REPLY_LANGUAGES = ["en", "de", "fr", "es", "it", "nl", "pl", "sv", "da", "cs"]
"""Languages whose mail-client quote headers ("On ... wrote:", "Am ... schrieb ...:") are cut."""
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_PREFIX = re.compile(r"^\s*(?:re|fwd?|aw|wg|sv|vs|antw|tr|rif|r)\s*(?:\[\d+\]|\(\d+\))?\s*:\s*",
                     re.IGNORECASE)
_MSG_ID = re.compile(r"<[^<>\s]+>")


def normalize_subject(subject: str) -> str:
    """The thread-matching form of a subject: reply/forward prefixes (``Re:``, ``RE[2]:``,
    ``Fwd:``, ``AW:``, ``WG:``, ``SV:``...) removed however many there are, whitespace collapsed,
    case-folded. ``"Re: Fwd:  Order #12"`` -> ``"order #12"``."""
    text = " ".join(subject.split())
    while True:
        stripped = _PREFIX.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return text.strip().casefold()


def normalize_address(addr: str) -> str:
    """``addr`` validated (no DNS) and lower-cased by :func:`runtime.policy.leads.normalize_email`;
    an address under RFC 2606's reserved ``.test`` domain, which that refuses as special-use, is
    accepted too (email-validator's ``test_environment``), for staging and tests. Raises
    InvalidInput (``field="email"``) otherwise."""
    try:
        return normalize_email(addr)
    except InvalidInput as exc:
        try:
            return validate_email(addr.strip(), check_deliverability=False,
                                  test_environment=True).normalized.lower()
        except EmailNotValidError:
            raise exc from None


def _address(value: str) -> str | None:
    """The normalised lower-case address in ``value`` (``"Name <a@b>"`` or ``a@b``), or None."""
    _, addr = parseaddr(value)
    if not addr or "@" not in addr:
        return None
    try:
        return normalize_address(addr)
    except InvalidInput:
        return None


def _ids(value: str | None) -> list[str]:
    """Message ids in a header value, angle brackets kept, in order."""
    if not value:
        return []
    found = _MSG_ID.findall(value)
    return found if found else value.split()


def _headers(form: dict[str, str]) -> dict[str, str]:
    """``message-headers`` as a dict of lower-cased name -> first value (a bad list is ignored)."""
    raw = form.get("message-headers")
    if not raw:
        return {}
    try:
        pairs = json.loads(raw)
    except ValueError:
        raise MalformedPayload("message-headers is not a JSON list of [name, value] pairs") from None
    out: dict[str, str] = {}
    if not isinstance(pairs, list):
        raise MalformedPayload("message-headers is not a JSON list of [name, value] pairs")
    for pair in pairs:
        if isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str):
            out.setdefault(pair[0].lower(), str(pair[1]))
    return out


def reply_text(text: str) -> str:
    """The newest reply in an email body: quoted history ("On ... wrote:" and the ``>`` lines
    under it), signatures and disclaimers removed by ``mail-parser-reply``. Falls back to the
    whole text when the parser leaves nothing."""
    text = text.replace("\r\n", "\n").strip()
    if not text:
        return ""
    message = EmailReplyParser(languages=REPLY_LANGUAGES).read(text=text)
    if message.replies:
        first = message.replies[0]
        body = first.body.strip()
        if body:
            return body
        if first.content.strip():
            return first.content.strip()
    return text


class MailgunAdapter:
    """The Mailgun email protocol (see the module doc)."""

    type: str = "email"
    text_limit: int | None = None
    api_base_setting: str = "mailgun_api_base"

    def validate_setup(self, config: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        """``config.domain`` (the Mailgun sending domain), ``config.from_address`` (normalised,
        lower case), optional ``config.from_name``; secrets ``api_key`` and
        ``webhook_signing_key``. Raises InvalidInput naming the field."""
        domain = config.get("domain")
        domain = domain.strip().lower().rstrip(".") if isinstance(domain, str) else ""
        if not _DOMAIN.match(domain):
            raise InvalidInput("config.domain is required: the Mailgun sending domain, like mg.example.com",
                               field="config.domain")
        raw = config.get("from_address")
        if not isinstance(raw, str) or not raw.strip():
            raise InvalidInput("config.from_address is required: the address replies come from",
                               field="config.from_address")
        try:
            address = normalize_address(raw)
        except InvalidInput as exc:
            raise InvalidInput(f"config.from_address: {exc.message}", field="config.from_address") from None
        out = {**config, "domain": domain, "from_address": address}
        name = config.get("from_name")
        if name is not None:
            if not isinstance(name, str) or any(c in name for c in "\r\n"):
                raise InvalidInput("config.from_name must be one line of text", field="config.from_name")
            out["from_name"] = name.strip()
        for secret, hint in (("api_key", "a Mailgun sending API key"),
                             ("webhook_signing_key", "the HTTP webhook signing key (Mailgun: Webhooks)")):
            if not isinstance(secrets.get(secret), str) or not secrets[secret].strip():
                raise InvalidInput(f"secrets.{secret} is required: {hint}", field=f"secrets.{secret}")
        return out

    def verify(self, req: WebhookRequest, config: dict[str, Any], secrets: dict[str, str],
               *, now: float, max_age_s: float | None = None) -> str | None:
        """``signature`` must be hex HMAC-SHA256(webhook signing key, timestamp + token) and
        ``timestamp`` (Unix seconds) within ``max_age_s`` of ``now`` (default
        ``config["signature_max_age_s"]`` or 300). Returns the replay key ``"mailgun:" + token``.
        Raises SignatureInvalid."""
        form = req.form()
        ts, token, signature = (form.get(k, "").strip() for k in ("timestamp", "token", "signature"))
        missing = [k for k, v in (("timestamp", ts), ("token", token), ("signature", signature)) if not v]
        if missing:
            raise SignatureInvalid(f"the Mailgun webhook has no {', '.join(missing)}: is it a route forward?")
        key = secrets.get("webhook_signing_key") or ""
        if not key:
            raise SignatureInvalid("the channel has no webhook_signing_key to check the signature with")
        if not same(signature.lower(), hmac_hex(key, (ts + token).encode("utf-8"))):
            raise SignatureInvalid("the Mailgun signature does not match: check secrets.webhook_signing_key "
                                   "(Mailgun: Sending > Webhooks > HTTP webhook signing key)")
        if max_age_s is None:
            max_age_s = float(config.get("signature_max_age_s", DEFAULT_MAX_AGE_S))
        limit = float(max_age_s)
        try:
            when = float(ts)
        except ValueError:
            raise SignatureInvalid(f"stale timestamp: {ts!r} is not Unix seconds") from None
        if abs(now - when) > limit:
            raise SignatureInvalid(f"stale timestamp: the webhook was signed {now - when:.0f} s from now, "
                                   f"more than the {limit:.0f} s allowed (a replay, or a clock off)")
        return "mailgun:" + token

    def parse(self, req: WebhookRequest, config: dict[str, Any]) -> ParsedWebhook:
        """One ChannelMessage: the ``Message-Id`` as external id, the sender's address as identity
        and address, the new reply text, and the thread (``subject``, ``message_id``,
        ``in_reply_to``, ``references``, ``normalized_subject``). Raises MalformedPayload naming
        the field."""
        form = req.form()
        headers = _headers(form)

        def field(name: str) -> str:
            for key in (name, name.lower()):
                if form.get(key):
                    return form[key].strip()
            return headers.get(name.lower(), "").strip()

        from_header = form.get("from") or form.get("From") or headers.get("from", "")
        address = _address(from_header) if from_header else None
        if address is None and form.get("sender"):
            address = _address(form["sender"])
        if address is None:
            raise MalformedPayload("from/sender missing or not an email address")
        name = parseaddr(from_header)[0].strip() if from_header else ""
        message_id = field("Message-Id")
        if not message_id:
            raise MalformedPayload("Message-Id missing (neither a Message-Id field nor in message-headers)")
        subject = form.get("subject", headers.get("subject", "")).strip()
        references = _ids(field("References"))
        replied = _ids(field("In-Reply-To"))
        in_reply_to = replied[0] if replied else None
        source = form.get("stripped-text") or form.get("body-plain") or ""
        text = reply_text(source)
        attachments: list[dict[str, Any]] = []
        count = form.get("attachment-count", "").strip()
        if count:
            if not count.isdigit():
                raise MalformedPayload(f"attachment-count {count!r} is not a number")
            for i in range(1, int(count) + 1):
                fname = form.get(f"attachment-{i}")
                attachments.append({"type": "document", "filename": fname or f"attachment-{i}"})
        stored = form.get("attachments")
        if stored:
            try:
                items = json.loads(stored)
            except ValueError:
                raise MalformedPayload("attachments is not a JSON list") from None
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict):
                    attachments.append({"type": "document", "filename": item.get("name"),
                                        "mime_type": item.get("content-type"), "url": item.get("url")})
        sent_at: datetime | None = None
        if headers.get("date"):
            try:
                sent_at = parsedate_to_datetime(headers["date"])
            except (TypeError, ValueError):
                sent_at = None
        if sent_at is None:
            sent_at = unix_time(form.get("timestamp"))
        thread = {"subject": subject, "message_id": message_id, "in_reply_to": in_reply_to,
                  "references": references, "normalized_subject": normalize_subject(subject)}
        return ParsedWebhook(messages=[ChannelMessage(
            external_id=message_id, identity=("email", address), address=address, text=text,
            contact_name=name or None, attachments=attachments, thread=thread, sent_at=sent_at)])

    def build_send(self, out: OutboundText, config: dict[str, Any], secrets: dict[str, str],
                   api_base: str) -> SendRequest:
        """``POST {api_base}/v3/{domain}/messages``, Basic (``api``, api_key), form ``from``
        (``Name <address>``), ``to``, ``subject`` (``Re: `` + the thread's subject; as it is for a
        ``fresh`` thread: a new email, e.g. the weekly report), ``text``, and
        ``h:In-Reply-To`` / ``h:References`` when the thread has a message id."""
        thread = out.thread or {}
        subject = str(thread.get("subject") or "").strip()
        if not subject:
            subject = "Re: your message"
        elif not re.match(r"^re\s*:", subject, re.IGNORECASE) and not thread.get("fresh"):
            subject = f"Re: {subject}"
        sender = formataddr((config.get("from_name") or "", config["from_address"]))
        data = {"from": sender, "to": out.recipient, "subject": subject, "text": out.text}
        mid = thread.get("message_id")
        if mid:
            refs = [str(r) for r in thread.get("references") or [] if r and r != mid]
            data["h:In-Reply-To"] = str(mid)
            data["h:References"] = " ".join([*refs, str(mid)])
        return SendRequest(method="POST", url=f"{api_base.rstrip('/')}/v3/{config['domain']}/messages",
                           data=data, auth=("api", secrets["api_key"]))

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """2xx: Sent(``id``). 429/5xx: Retry (``Retry-After``). Other 4xx: Permanent with the
        answer's ``message``."""
        data = answer_object(body)
        if 200 <= status < 300:
            return Sent(str(data["id"]) if data.get("id") else None)
        generic = http_outcome(status, headers, body)
        message = data.get("message")
        if message and isinstance(generic, Permanent):
            return Permanent(f"HTTP {status}: {message}")
        if message and isinstance(generic, Retry):
            return Retry(f"HTTP {status}: {message}", generic.retry_after_s)
        return generic or Sent(None)


ADAPTER = MailgunAdapter()
