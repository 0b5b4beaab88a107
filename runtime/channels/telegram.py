"""Telegram Bot API adapter: channel type ``telegram``.

Follows core.telegram.org/bots/api:

- ``setWebhook``'s ``secret_token`` (1-256 characters of ``A-Z a-z 0-9 _ -``) comes back in the
  ``X-Telegram-Bot-Api-Secret-Token`` header of every update; it is the only authentication.
- The body is one ``Update``: ``update_id`` (int) and at most one of ``message``,
  ``edited_message``, ``channel_post``, ``callback_query``, ``my_chat_member``... Only ``message``
  is a customer message; every other kind is acknowledged and dropped (an edit would otherwise
  ask the same question twice). ``/start`` (the deep-link ``/start <payload>`` or
  ``/start@BotName`` in groups) is a greeting.
- ``sendMessage`` takes ``{chat_id, text}`` (1-4096 characters) and answers
  ``{"ok": true, "result": Message}`` or ``{"ok": false, "error_code", "description",
  "parameters": {"retry_after"}}`` (429 flood control).

Config: ``{}``. Secrets: ``bot_token`` (``<digits>:<chars>`` from @BotFather) and
``webhook_secret``. No I/O here.
"""

from __future__ import annotations

import re
from typing import Any

from runtime.channels.base import (
    ChannelMessage,
    MalformedPayload,
    MessageKind,
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
    json_object,
    retry_after,
    same,
    unix_time,
)
from runtime.errors import InvalidInput

BOT_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")
WEBHOOK_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
START = re.compile(r"^/start(?:@\w+)?(?:\s+.*)?$", re.DOTALL)
_FILE_KINDS = ("document", "voice", "video", "audio", "animation", "video_note", "sticker")
_FILE_KEYS = ("mime_type", "file_name", "file_size", "width", "height", "duration")


def _file(kind: str, obj: dict[str, Any], at: str) -> dict[str, Any]:
    if not isinstance(obj.get("file_id"), str):
        raise MalformedPayload(f"{at}.file_id missing")
    att: dict[str, Any] = {"type": kind, "id": obj["file_id"]}
    for key in _FILE_KEYS:
        if obj.get(key) is not None:
            att["filename" if key == "file_name" else key] = obj[key]
    return att


class TelegramAdapter:
    """The Telegram Bot API protocol (see the module doc)."""

    type: str = "telegram"
    text_limit: int | None = 4096
    api_base_setting: str = "telegram_api_base"

    def validate_setup(self, config: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        """Secrets ``bot_token`` (``123456:ABC-...``) and ``webhook_secret`` (1-256 of
        ``A-Za-z0-9_-``, as ``setWebhook``'s ``secret_token`` requires). Returns the config as
        given. Raises InvalidInput naming the field."""
        token = secrets.get("bot_token")
        if not isinstance(token, str) or not BOT_TOKEN.match(token.strip()):
            raise InvalidInput("secrets.bot_token is required: the token @BotFather gave, like "
                               "123456789:AAH...", field="secrets.bot_token")
        secret = secrets.get("webhook_secret")
        if not isinstance(secret, str) or not WEBHOOK_SECRET.match(secret):
            raise InvalidInput("secrets.webhook_secret is required: 1-256 characters of A-Z, a-z, 0-9, _ "
                               "and -, the secret_token passed to setWebhook", field="secrets.webhook_secret")
        return dict(config)

    def verify(self, req: WebhookRequest, config: dict[str, Any], secrets: dict[str, str],
               *, now: float) -> str | None:
        """``X-Telegram-Bot-Api-Secret-Token`` must equal ``secrets.webhook_secret`` (constant
        time). Returns None (dedupe is on ``update_id``). Raises SignatureInvalid."""
        got = req.headers.get("x-telegram-bot-api-secret-token")
        if not got:
            raise SignatureInvalid("the X-Telegram-Bot-Api-Secret-Token header is missing: call setWebhook "
                                   "with secret_token set to the channel's webhook_secret")
        expected = secrets.get("webhook_secret") or ""
        if not expected or not same(got, expected):
            raise SignatureInvalid("X-Telegram-Bot-Api-Secret-Token does not match: setWebhook's "
                                   "secret_token must be the channel's webhook_secret")
        return None

    def parse(self, req: WebhookRequest, config: dict[str, Any]) -> ParsedWebhook:
        """One ChannelMessage for an Update with ``message``; an empty result for any other
        Update. Raises MalformedPayload naming the field (``update_id``, ``message.chat.id``)."""
        update = json_object(req.body, "Telegram")
        update_id = update.get("update_id")
        if not isinstance(update_id, int) or isinstance(update_id, bool):
            raise MalformedPayload("update_id missing or not an integer")
        msg = update.get("message")
        if msg is None:
            return ParsedWebhook()
        if not isinstance(msg, dict):
            raise MalformedPayload("message is not an object")
        chat = msg.get("chat")
        chat_id = chat.get("id") if isinstance(chat, dict) else None
        if not isinstance(chat_id, int) or isinstance(chat_id, bool):
            raise MalformedPayload("message.chat.id missing or not an integer")
        who = msg.get("from") if isinstance(msg.get("from"), dict) else chat
        assert isinstance(who, dict)
        name = " ".join(str(who[k]).strip() for k in ("first_name", "last_name") if who.get(k)).strip()
        text = msg.get("text") if isinstance(msg.get("text"), str) else msg.get("caption")
        text = text if isinstance(text, str) else ""
        attachments: list[dict[str, Any]] = []
        photos = msg.get("photo")
        if isinstance(photos, list) and photos:
            sizes = [p for p in photos if isinstance(p, dict) and isinstance(p.get("file_id"), str)]
            if not sizes:
                raise MalformedPayload("message.photo[].file_id missing")
            big = max(sizes, key=lambda p: (int(p.get("width") or 0) * int(p.get("height") or 0),
                                            int(p.get("file_size") or 0)))
            attachments.append({"type": "photo", "id": big["file_id"],
                                **{k: big[k] for k in ("width", "height", "file_size") if k in big}})
        for media in _FILE_KINDS:
            if isinstance(msg.get(media), dict):
                attachments.append(_file(media, msg[media], f"message.{media}"))
        for media in ("location", "contact", "venue", "poll"):
            if isinstance(msg.get(media), dict):
                attachments.append({"type": media, **msg[media]})
        if not text and not attachments:  # service messages: a member joined, a pinned message...
            return ParsedWebhook()
        kind: MessageKind = "greeting" if START.match(text.strip()) else "message"
        return ParsedWebhook(messages=[ChannelMessage(
            external_id=f"update:{update_id}", identity=("telegram", str(chat_id)), address=str(chat_id),
            text=text, contact_name=name or None, attachments=attachments, kind=kind,
            sent_at=unix_time(msg.get("date")))])

    def build_send(self, out: OutboundText, config: dict[str, Any], secrets: dict[str, str],
                   api_base: str) -> SendRequest:
        """``POST {api_base}/bot{bot_token}/sendMessage`` with json ``{chat_id, text}`` (a numeric
        chat id is sent as a number)."""
        chat_id: int | str = out.recipient
        if re.fullmatch(r"-?\d+", out.recipient):
            chat_id = int(out.recipient)
        return SendRequest(method="POST", url=f"{api_base.rstrip('/')}/bot{secrets['bot_token']}/sendMessage",
                           json={"chat_id": chat_id, "text": out.text})

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """``ok: true`` -> Sent(str(result.message_id)); 429 -> Retry after
        ``parameters.retry_after`` (or the ``Retry-After`` header); 5xx -> Retry; other errors ->
        Permanent with ``description`` (e.g. "Forbidden: bot was blocked by the user")."""
        data = answer_object(body)
        if 200 <= status < 300 and data.get("ok") is True:
            result = data.get("result")
            mid = result.get("message_id") if isinstance(result, dict) else None
            return Sent(str(mid) if mid is not None else None)
        description = str(data.get("description") or body[:300].decode("utf-8", "replace")
                          or "no description")
        code = data.get("error_code", status)
        if status == 429 or code == 429:
            params = data.get("parameters")
            wait = params.get("retry_after") if isinstance(params, dict) else None
            after = float(wait) if isinstance(wait, int | float) and not isinstance(wait, bool) else None
            if after is None:
                after = retry_after(headers)
            return Retry(f"HTTP {status}: {description}", after)
        if status >= 500 or status == 408:
            return Retry(f"HTTP {status}: {description}", retry_after(headers))
        return Permanent(f"HTTP {status}: {description}")


ADAPTER = TelegramAdapter()
