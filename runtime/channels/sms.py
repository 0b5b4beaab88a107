"""SMS through Twilio Programmable Messaging: channel type ``sms``.

Follows Twilio's documentation:

- Webhook security (twilio.com/docs/usage/webhooks/webhooks-security): ``X-Twilio-Signature`` is
  base64(HMAC-SHA1(auth token, the full URL Twilio called + every POST parameter's name and
  value, sorted by name, concatenated)). Like Twilio's own validators, the URL is also tried with
  the default port added or removed, since proxies differ on it.
- The inbound message (twilio.com/docs/messaging/guides/webhook-request): form fields
  ``MessageSid``, ``From``, ``To``, ``Body``, ``NumMedia`` and ``MediaUrl{i}`` /
  ``MediaContentType{i}``. Twilio's default opt-out keywords (STOP, STOPALL, UNSUBSCRIBE, CANCEL,
  END, QUIT, OPTOUT, REVOKE) and opt-in keywords (START, UNSTOP, YES) are reported as ``opt_out`` /
  ``opt_in`` messages; Twilio itself then blocks or unblocks the sender.
- Sending: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``, HTTP Basic (account SID,
  auth token), form ``To``, ``From`` or ``MessagingServiceSid``, ``Body`` (at most 1600
  characters). Errors are ``{"code", "message", "more_info", "status"}``; 21610 means the
  recipient replied STOP.

Config: ``account_sid`` (``AC`` + 32 hex), ``from_number`` (E.164) or ``messaging_service_sid``
(``MG`` + 32 hex). Secrets: ``auth_token``. No I/O here.
"""

from __future__ import annotations

import base64
import hmac
import math
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from runtime.channels.base import (
    ChannelMessage,
    MalformedPayload,
    MessageKind,
    OutboundText,
    ParsedWebhook,
    Permanent,
    SendOutcome,
    SendRequest,
    Sent,
    SignatureInvalid,
    WebhookRequest,
    answer_object,
    e164,
    http_outcome,
    same,
)
from runtime.errors import InvalidInput

OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "OPTOUT", "REVOKE"})
OPT_IN = frozenset({"START", "UNSTOP", "YES"})
UNSUBSCRIBED_CODE = 21610
ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
SERVICE_SID = re.compile(r"^MG[0-9a-fA-F]{32}$")

# GSM 03.38: the default alphabet (one septet each) and its extension table (two septets each).
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")


def sms_segments(text: str) -> int:
    """How many SMS segments ``text`` is billed as: GSM-7 when every character is in the GSM
    03.38 alphabet (160 septets in one segment, 153 per segment of a longer message; extension
    characters such as ``€`` and ``{`` take two), otherwise UCS-2 (70 UTF-16 code units in one,
    67 per segment). 0 for empty text."""
    if not text:
        return 0
    if all(c in GSM_BASIC or c in GSM_EXTENSION for c in text):
        units, single, multi = sum(2 if c in GSM_EXTENSION else 1 for c in text), 160, 153
    else:
        units, single, multi = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / multi)


def twilio_signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """base64(HMAC-SHA1(auth_token, url + name1 + value1 + name2 + value2 ..., names sorted))."""
    payload = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(auth_token.encode("utf-8"), payload.encode("utf-8"), "sha1").digest()
    return base64.b64encode(digest).decode("ascii")


def _url_variants(url: str) -> list[str]:
    """``url`` as given, and with its default port removed or added (Twilio's validators try both)."""
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    out = [url]
    if default is None or not parts.hostname:
        return out
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    userinfo = parts.netloc.rpartition("@")[0]
    prefix = userinfo + "@" if userinfo else ""
    if parts.port is None:
        out.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}:{default}")))
    elif parts.port == default:
        out.append(urlunsplit(parts._replace(netloc=f"{prefix}{host}")))
    return out


E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")


def _phone(value: Any, field: str) -> str:
    """``value`` in E.164: as ``phonenumbers`` formats it, or as given when it already has the
    E.164 shape (a new number plan the library does not know yet is still the owner's number)."""
    number = e164(value) if isinstance(value, str) else None
    if number is None and isinstance(value, str) and E164.match(value):
        number = value
    if number is None:
        raise InvalidInput(f"{field} must be a phone number in E.164 form, like +14155552671", field=field)
    return number


class TwilioSmsAdapter:
    """The Twilio SMS protocol (see the module doc)."""

    type: str = "sms"
    text_limit: int | None = 1600
    api_base_setting: str = "twilio_api_base"

    def validate_setup(self, config: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        """``config.account_sid`` (AC + 32 hex), ``config.from_number`` (normalised to E.164) or
        ``config.messaging_service_sid`` (MG + 32 hex), and ``secrets.auth_token``. Returns the
        normalised config. Raises InvalidInput naming the field."""
        sid = config.get("account_sid")
        if not isinstance(sid, str) or not ACCOUNT_SID.match(sid.strip()):
            raise InvalidInput("config.account_sid is required: the Account SID from the Twilio console, "
                               "AC followed by 32 hex digits", field="config.account_sid")
        out = {**config, "account_sid": sid.strip()}
        if config.get("from_number"):
            out["from_number"] = _phone(config["from_number"], "config.from_number")
        service = config.get("messaging_service_sid")
        if service:
            if not isinstance(service, str) or not SERVICE_SID.match(service.strip()):
                raise InvalidInput("config.messaging_service_sid must be MG followed by 32 hex digits",
                                   field="config.messaging_service_sid")
            out["messaging_service_sid"] = service.strip()
        if not out.get("from_number") and not out.get("messaging_service_sid"):
            raise InvalidInput("config.from_number (the Twilio number, E.164) or "
                               "config.messaging_service_sid is required", field="config.from_number")
        token = secrets.get("auth_token")
        if not isinstance(token, str) or not token.strip():
            raise InvalidInput("secrets.auth_token is required: the Auth Token of the account (it signs "
                               "webhooks)", field="secrets.auth_token")
        return out

    def verify(self, req: WebhookRequest, config: dict[str, Any], secrets: dict[str, str],
               *, now: float) -> str | None:
        """``X-Twilio-Signature`` over ``req.url`` and the form fields (see the module doc).
        Returns None (dedupe is on ``MessageSid``). Raises SignatureInvalid."""
        got = req.headers.get("x-twilio-signature", "").strip()
        if not got:
            raise SignatureInvalid("the X-Twilio-Signature header is missing: is this webhook from Twilio?")
        token = secrets.get("auth_token") or ""
        if not token:
            raise SignatureInvalid("the channel has no auth_token to check X-Twilio-Signature with")
        params = req.form()
        if any(same(got, twilio_signature(token, url, params)) for url in _url_variants(req.url)):
            return None
        raise SignatureInvalid("X-Twilio-Signature does not match: check secrets.auth_token and that the "
                               "number's webhook URL is exactly this channel's public URL (scheme, host, "
                               "path)")

    def parse(self, req: WebhookRequest, config: dict[str, Any]) -> ParsedWebhook:
        """One ChannelMessage: ``MessageSid`` as external id, ``From`` (E.164) as identity and
        address, ``Body`` as text, media as attachments; STOP/START keywords as ``opt_out`` /
        ``opt_in``. Raises MalformedPayload naming the field."""
        form = req.form()
        sid = form.get("MessageSid", "").strip()
        if not sid:
            raise MalformedPayload("MessageSid missing from the Twilio webhook")
        raw_from = form.get("From", "").strip()
        if not raw_from:
            raise MalformedPayload("From missing from the Twilio webhook")
        phone = e164(raw_from)
        if phone is None:
            raise MalformedPayload(f"From {raw_from!r} is not an E.164 phone number")
        text = form.get("Body", "")
        num_media = form.get("NumMedia", "0").strip() or "0"
        if not num_media.isdigit():
            raise MalformedPayload(f"NumMedia {num_media!r} is not a number")
        attachments: list[dict[str, Any]] = []
        for i in range(min(int(num_media), 10)):
            url = form.get(f"MediaUrl{i}")
            if not url:
                raise MalformedPayload(f"MediaUrl{i} missing (NumMedia is {num_media})")
            mime = form.get(f"MediaContentType{i}", "")
            major = mime.split("/", 1)[0]
            media = major if major in ("image", "audio", "video") else "document"
            attachments.append({"type": media, "url": url, **({"mime_type": mime} if mime else {})})
        keyword = text.strip().upper()
        kind: MessageKind = "opt_out" if keyword in OPT_OUT else "opt_in" if keyword in OPT_IN else "message"
        return ParsedWebhook(messages=[ChannelMessage(
            external_id=sid, identity=("phone", phone), address=phone, text=text,
            attachments=attachments, kind=kind)])

    def build_send(self, out: OutboundText, config: dict[str, Any], secrets: dict[str, str],
                   api_base: str) -> SendRequest:
        """``POST {api_base}/2010-04-01/Accounts/{account_sid}/Messages.json``, Basic
        (account_sid, auth_token), form ``To``, ``From`` (or ``MessagingServiceSid`` when there is
        no from_number), ``Body``."""
        sid = config["account_sid"]
        data = {"To": out.recipient, "Body": out.text}
        if config.get("from_number"):
            data["From"] = config["from_number"]
        else:
            data["MessagingServiceSid"] = config["messaging_service_sid"]
        url = f"{api_base.rstrip('/')}/2010-04-01/Accounts/{sid}/Messages.json"
        return SendRequest(method="POST", url=url, data=data, auth=(sid, secrets["auth_token"]))

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """2xx: Sent(``sid``). 429/5xx: Retry (``Retry-After``). Other 4xx: Permanent with
        Twilio's ``code`` and ``message``; 21610 says the recipient replied STOP."""
        data = answer_object(body)
        if 200 <= status < 300:
            return Sent(str(data["sid"]) if data.get("sid") else None)
        generic = http_outcome(status, headers, body)
        if isinstance(generic, Permanent) and data.get("code") is not None:
            code = data.get("code")
            if code == UNSUBSCRIBED_CODE:
                return Permanent(f"Twilio {code}: the recipient replied STOP (unsubscribed); they must text "
                                 "START before they can be messaged again")
            return Permanent(f"HTTP {status}: Twilio {code}: {data.get('message') or 'no message'}")
        return generic or Sent(None)


ADAPTER = TwilioSmsAdapter()
