"""WhatsApp Cloud API (Meta Graph API) adapter: channel type ``whatsapp``.

Follows Meta's WhatsApp Cloud API documentation:

- Webhooks (developers.facebook.com/docs/whatsapp/cloud-api/webhooks): every POST carries
  ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the raw body keyed with the app secret>``;
  the body is ``{"object": "whatsapp_business_account", "entry": [{"changes": [{"field":
  "messages", "value": {"metadata": {"phone_number_id"}, "contacts": [...], "messages": [...],
  "statuses": [...]}}]}]}``. The GET verification handshake sends ``hub.mode=subscribe``,
  ``hub.verify_token`` and ``hub.challenge``; the challenge is echoed (:func:`verify_handshake`).
- Sending (``POST /{phone_number_id}/messages``, Bearer access token): a ``text`` message of at
  most 4096 characters, free-form only inside the 24-hour customer-service window.
- Error codes (developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes): 4, 80007,
  130429, 131056 (and 131048, 133016) are rate limits, retried; 131047 "re-engagement message" means the
  24-hour window closed, which retrying cannot fix.

Config: ``{"phone_number_id": "<digits>"}``. Secrets: ``access_token``, ``app_secret``,
``verify_token``. No I/O here (see :mod:`runtime.channels.base`).
"""

from __future__ import annotations

from typing import Any

from runtime.channels.base import (
    ChannelMessage,
    DeliveryStatus,
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
    e164,
    hmac_hex,
    http_outcome,
    json_object,
    retry_after,
    same,
    unix_time,
)
from runtime.errors import InvalidInput

RATE_LIMIT_CODES = frozenset({4, 80007, 130429, 131048, 131056, 133016})
"""Graph error codes that mean "too many messages now": the send is retried with backoff."""
WINDOW_CLOSED_CODE = 131047
"""Graph error code for a free-form message outside the 24-hour customer-service window."""
MEDIA_TYPES = ("image", "audio", "video", "document", "sticker")
_MEDIA_KEYS = ("id", "mime_type", "caption", "filename", "sha256", "url")
_IGNORED_TYPES = frozenset({"reaction"})
"""Message types that are no customer request: acknowledged, nothing stored."""


def _require_secret(secrets: dict[str, str], name: str, hint: str) -> str:
    value = secrets.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"secrets.{name} is required: {hint}", field=f"secrets.{name}")
    return value.strip()


def verify_handshake(query: dict[str, str], secrets: dict[str, str]) -> str:
    """Meta's webhook verification (the GET on subscribing): returns ``hub.challenge`` when
    ``hub.mode`` is ``subscribe`` and ``hub.verify_token`` equals ``secrets["verify_token"]``.

    Raises MalformedPayload when a ``hub.*`` parameter is missing, SignatureInvalid when the mode
    is not ``subscribe`` or the token does not match.
    """
    for name in ("hub.mode", "hub.verify_token", "hub.challenge"):
        if not query.get(name):
            raise MalformedPayload(f"the WhatsApp verification request has no {name} query parameter")
    if query["hub.mode"] != "subscribe":
        raise SignatureInvalid(f"hub.mode is {query['hub.mode']!r}, not 'subscribe'")
    expected = secrets.get("verify_token") or ""
    if not expected or not same(query["hub.verify_token"], expected):
        raise SignatureInvalid("hub.verify_token does not match the channel's verify_token: use the same "
                               "value in the Meta app's webhook settings and in secrets.verify_token")
    return query["hub.challenge"]


def _obj(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedPayload(f"{path} missing or not an object")
    return value


def _list(value: Any, path: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedPayload(f"{path} is not a list")
    return value


def _str(value: Any, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or str(value) == "":
        raise MalformedPayload(f"{path} missing")
    return str(value)


def _error_text(err: dict[str, Any]) -> str:
    """``"<code> <title>: <message> (<details>)"`` from a status's ``errors[0]``."""
    parts = [str(err[k]) for k in ("title", "message") if err.get(k)]
    if len(parts) == 2 and parts[0] == parts[1]:
        parts = parts[:1]
    text = ": ".join(parts)
    data = err.get("error_data")
    details = data.get("details") if isinstance(data, dict) else None
    if details and str(details) not in text:
        text = f"{text} ({details})" if text else str(details)
    code = err.get("code")
    return (f"{code} {text}" if code is not None else text).strip() or "failed"


class WhatsAppAdapter:
    """The WhatsApp Cloud API protocol (see the module doc)."""

    type: str = "whatsapp"
    text_limit: int | None = 4096
    api_base_setting: str = "whatsapp_api_base"

    def validate_setup(self, config: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        """``config.phone_number_id`` (digits: the WhatsApp Manager's "Phone number ID", not the
        phone number) and secrets ``access_token``, ``app_secret``, ``verify_token``. Returns the
        config with the id as a string. Raises InvalidInput naming the field."""
        raw = config.get("phone_number_id")
        pid = str(raw).strip() if isinstance(raw, str | int) and not isinstance(raw, bool) else ""
        if not pid.isdigit() or not pid.isascii():
            raise InvalidInput("config.phone_number_id is required: the digits of the Phone number ID "
                               "shown in WhatsApp Manager (API Setup), not the phone number",
                               field="config.phone_number_id")
        _require_secret(secrets, "access_token",
                        "a system-user access token with the whatsapp_business_messaging permission")
        _require_secret(secrets, "app_secret", "the Meta app's App Secret (signs webhooks)")
        _require_secret(secrets, "verify_token", "any string; the same one goes in the app's webhook setup")
        return {**config, "phone_number_id": pid}

    def verify(self, req: WebhookRequest, config: dict[str, Any], secrets: dict[str, str],
               *, now: float) -> str | None:
        """``X-Hub-Signature-256`` must be ``sha256=`` + hex HMAC-SHA256(app secret, raw body),
        compared in constant time. Returns None (dedupe is on the ``wamid``). Raises
        SignatureInvalid."""
        header = req.headers.get("x-hub-signature-256", "").strip()
        if not header:
            raise SignatureInvalid("the X-Hub-Signature-256 header is missing: is this webhook from Meta?")
        secret = secrets.get("app_secret") or ""
        if not secret:
            raise SignatureInvalid("the channel has no app_secret to check X-Hub-Signature-256 with")
        expected = "sha256=" + hmac_hex(secret, req.body)
        if not same(header.lower(), expected):
            raise SignatureInvalid("X-Hub-Signature-256 does not match the body: check that "
                                   "secrets.app_secret is the Meta app's App Secret")
        return None

    def parse(self, req: WebhookRequest, config: dict[str, Any]) -> ParsedWebhook:
        """Messages of every ``messages`` change (other fields are ignored) and the delivery
        statuses. Raises MalformedPayload naming the path, e.g.
        ``entry[0].changes[0].value.messages[0].id missing``."""
        data = json_object(req.body, "WhatsApp")
        if data.get("object") != "whatsapp_business_account":
            raise MalformedPayload(f"object is {data.get('object')!r}, not 'whatsapp_business_account'")
        out = ParsedWebhook()
        for i, entry in enumerate(_list(data.get("entry"), "entry")):
            entry = _obj(entry, f"entry[{i}]")
            for j, change in enumerate(_list(entry.get("changes"), f"entry[{i}].changes")):
                at = f"entry[{i}].changes[{j}]"
                change = _obj(change, at)
                if change.get("field") != "messages":
                    continue
                value = _obj(change.get("value"), f"{at}.value")
                metadata = _obj(value.get("metadata"), f"{at}.value.metadata")
                route = _str(metadata.get("phone_number_id"), f"{at}.value.metadata.phone_number_id")
                names: dict[str, str] = {}
                for k, contact in enumerate(_list(value.get("contacts"), f"{at}.value.contacts")):
                    contact = _obj(contact, f"{at}.value.contacts[{k}]")
                    profile = contact.get("profile")
                    name = profile.get("name") if isinstance(profile, dict) else None
                    if contact.get("wa_id") and isinstance(name, str) and name.strip():
                        names[str(contact["wa_id"])] = name.strip()
                for k, msg in enumerate(_list(value.get("messages"), f"{at}.value.messages")):
                    parsed = self._message(_obj(msg, f"{at}.value.messages[{k}]"),
                                           f"{at}.value.messages[{k}]", route, names)
                    if parsed is not None:
                        out.messages.append(parsed)
                for k, st in enumerate(_list(value.get("statuses"), f"{at}.value.statuses")):
                    out.statuses.append(self._status(_obj(st, f"{at}.value.statuses[{k}]"),
                                                     f"{at}.value.statuses[{k}]", route))
        return out

    def _message(self, msg: dict[str, Any], at: str, route: str,
                 names: dict[str, str]) -> ChannelMessage | None:
        wamid = _str(msg.get("id"), f"{at}.id")
        wa_id = _str(msg.get("from"), f"{at}.from")
        phone = e164("+" + wa_id.lstrip("+"))
        if phone is None:
            raise MalformedPayload(f"{at}.from {wa_id!r} is not a phone number")
        mtype = _str(msg.get("type"), f"{at}.type")
        if mtype in _IGNORED_TYPES:
            return None
        text = ""
        attachments: list[dict[str, Any]] = []
        if mtype == "text":
            body = _obj(msg.get("text"), f"{at}.text").get("body")
            if not isinstance(body, str):
                raise MalformedPayload(f"{at}.text.body missing")
            text = body
        elif mtype in MEDIA_TYPES:
            media = _obj(msg.get(mtype), f"{at}.{mtype}")
            att: dict[str, Any] = {"type": mtype}
            att.update({key: media[key] for key in _MEDIA_KEYS if media.get(key) not in (None, "")})
            attachments.append(att)
            text = str(media.get("caption") or "")
        elif mtype == "interactive":
            inter = _obj(msg.get("interactive"), f"{at}.interactive")
            kind = inter.get("type")
            reply = inter.get(kind) if isinstance(kind, str) else None
            if not isinstance(reply, dict) or not isinstance(reply.get("title"), str):
                raise MalformedPayload(f"{at}.interactive.{kind or 'type'} has no title")
            text = reply["title"]
        elif mtype == "button":  # a template's quick-reply button
            button = _obj(msg.get("button"), f"{at}.button")
            text = str(button.get("text") or button.get("payload") or "")
        else:  # location, contacts, unsupported, order, system...: kept, with no text
            att = {"type": mtype}
            detail = msg.get(mtype)
            if isinstance(detail, dict):
                att.update(detail)
            elif isinstance(detail, list):
                att[mtype] = detail
            attachments.append(att)
        return ChannelMessage(external_id=wamid, identity=("phone", phone), address=wa_id.lstrip("+"),
                              text=text, contact_name=names.get(wa_id.lstrip("+")), attachments=attachments,
                              route=route, sent_at=unix_time(msg.get("timestamp")))

    def _status(self, st: dict[str, Any], at: str, route: str) -> DeliveryStatus:
        errors = st.get("errors")
        error = None
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            error = _error_text(errors[0])
        return DeliveryStatus(provider_message_id=_str(st.get("id"), f"{at}.id"),
                              status=_str(st.get("status"), f"{at}.status"), error=error,
                              at=unix_time(st.get("timestamp")), route=route)

    def build_send(self, out: OutboundText, config: dict[str, Any], secrets: dict[str, str],
                   api_base: str) -> SendRequest:
        """``POST {api_base}/{phone_number_id}/messages`` with the access token as Bearer and a
        ``text`` message (link previews off) to ``out.recipient`` (the wa_id digits)."""
        return SendRequest(
            method="POST",
            url=f"{api_base.rstrip('/')}/{config['phone_number_id']}/messages",
            headers={"Authorization": f"Bearer {secrets['access_token']}"},
            json={"messaging_product": "whatsapp", "recipient_type": "individual", "to": out.recipient,
                  "type": "text", "text": {"preview_url": False, "body": out.text}},
        )

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """2xx: Sent(``messages[0].id``). A Graph error: rate-limit codes retry (``Retry-After``
        if given), 131047 is permanent (the 24-hour window closed), others as
        :func:`~runtime.channels.base.http_outcome` (429/5xx retry, 4xx permanent)."""
        data = answer_object(body)
        if 200 <= status < 300:
            msgs = data.get("messages") if isinstance(data, dict) else None
            if isinstance(msgs, list) and msgs and isinstance(msgs[0], dict) and msgs[0].get("id"):
                return Sent(str(msgs[0]["id"]))
            return Sent(None)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, dict):
            code = err.get("code")
            text = f"Graph error {code}: {err.get('message') or err.get('error_user_msg') or 'no message'}"
            if code in RATE_LIMIT_CODES:
                return Retry(f"HTTP {status}, rate limited ({text})", retry_after(headers))
            if code == WINDOW_CLOSED_CODE:
                return Permanent(f"HTTP {status}: the 24-hour customer-service window closed (the "
                                 f"customer's last message is older than 24 hours); only a template "
                                 f"message can reach them now ({text})")
            outcome = http_outcome(status, headers, body)
            if isinstance(outcome, Retry):
                return Retry(f"HTTP {status}: {text}", outcome.retry_after_s)
            return Permanent(f"HTTP {status}: {text}")
        return http_outcome(status, headers, body) or Sent(None)


ADAPTER = WhatsAppAdapter()
