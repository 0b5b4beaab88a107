"""Slack Events API adapter: channel type ``slack``.

Follows api.slack.com:

- Verifying requests ("Verifying requests from Slack"): ``X-Slack-Signature`` = ``v0=`` + hex
  HMAC-SHA256(signing secret, ``"v0:" + X-Slack-Request-Timestamp + ":" + raw body``); requests
  whose timestamp is more than five minutes from now are refused (replay).
- Events API: ``url_verification`` is answered by echoing ``challenge``; an ``event_callback``
  carries ``team_id``, ``event_id`` (the dedupe key across Slack's retries) and ``event``. Only
  plain ``message`` events from people are customer messages: events with a ``bot_id``, any
  ``subtype`` (``message_changed``, ``bot_message``, ``channel_join``...), the bot's own user, or
  another workspace than ``config.team_id`` are acknowledged and dropped.
- ``chat.postMessage`` (Bearer bot token) with ``channel``, ``text`` (at most 4000 characters
  recommended) and ``thread_ts``; HTTP 200 with ``{"ok": false, "error"}`` for most failures, 429
  with ``Retry-After`` for rate limits.

Config: optional ``bot_user_id`` (``U...``) and ``team_id`` (``T...``). Secrets: ``bot_token``
(``xoxb-``) and ``signing_secret``. No I/O here.
"""

from __future__ import annotations

import json
import re
from typing import Any

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
    hmac_hex,
    http_outcome,
    json_object,
    retry_after,
    same,
    unix_time,
)
from runtime.errors import InvalidInput

MAX_SKEW_S = 300
"""Slack's replay window: a request timestamp further than this from now is refused."""
TRANSIENT_ERRORS = frozenset({"ratelimited", "rate_limited", "service_unavailable", "internal_error",
                              "fatal_error", "request_timeout"})
_ID = re.compile(r"^[A-Z0-9]+$")


def _text(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise MalformedPayload(f"{path} missing")
    return value


class SlackAdapter:
    """The Slack Events API protocol (see the module doc)."""

    type: str = "slack"
    text_limit: int | None = 4000
    api_base_setting: str = "slack_api_base"

    def validate_setup(self, config: dict[str, Any], secrets: dict[str, str]) -> dict[str, Any]:
        """Secrets ``bot_token`` (``xoxb-...``, the Bot User OAuth Token) and ``signing_secret``;
        optional ``config.bot_user_id`` and ``config.team_id`` (Slack ids, upper case). Raises
        InvalidInput naming the field."""
        token = secrets.get("bot_token")
        if not isinstance(token, str) or not token.strip().startswith("xoxb-"):
            raise InvalidInput("secrets.bot_token is required: the Bot User OAuth Token, starting xoxb-",
                               field="secrets.bot_token")
        secret = secrets.get("signing_secret")
        if not isinstance(secret, str) or not secret.strip():
            raise InvalidInput("secrets.signing_secret is required: the app's Signing Secret (Basic "
                               "Information > App Credentials)", field="secrets.signing_secret")
        out = dict(config)
        for name in ("bot_user_id", "team_id"):
            value = config.get(name)
            if value in (None, ""):
                out.pop(name, None)
                continue
            if not isinstance(value, str) or not _ID.match(value.strip().upper()):
                example = "U0123ABCD" if name == "bot_user_id" else "T0123ABCD"
                raise InvalidInput(f"config.{name} must be a Slack id like {example}", field=f"config.{name}")
            out[name] = value.strip().upper()
        return out

    def verify(self, req: WebhookRequest, config: dict[str, Any], secrets: dict[str, str],
               *, now: float) -> str | None:
        """``X-Slack-Signature`` over ``v0:{timestamp}:{body}`` and a
        ``X-Slack-Request-Timestamp`` within five minutes of ``now``. Returns None (dedupe is on
        ``event_id``). Raises SignatureInvalid."""
        ts = req.headers.get("x-slack-request-timestamp", "").strip()
        sig = req.headers.get("x-slack-signature", "").strip()
        if not ts or not sig:
            missing = "X-Slack-Request-Timestamp" if not ts else "X-Slack-Signature"
            raise SignatureInvalid(f"the {missing} header is missing: is this request from Slack?")
        if not ts.isdigit():
            raise SignatureInvalid(f"X-Slack-Request-Timestamp {ts!r} is not Unix seconds")
        if abs(now - int(ts)) > MAX_SKEW_S:
            raise SignatureInvalid("X-Slack-Request-Timestamp is outside the 5-minute window (a replay, or "
                                   "this server's clock is off)")
        secret = secrets.get("signing_secret") or ""
        if not secret:
            raise SignatureInvalid("the channel has no signing_secret to check X-Slack-Signature with")
        expected = "v0=" + hmac_hex(secret, b"v0:" + ts.encode("ascii") + b":" + req.body)
        if not same(sig, expected):
            raise SignatureInvalid("X-Slack-Signature does not match: check secrets.signing_secret is the "
                                   "app's Signing Secret (not the verification token or the bot token)")
        return None

    def parse(self, req: WebhookRequest, config: dict[str, Any]) -> ParsedWebhook:
        """``url_verification``: a reply ``{"challenge": ...}``. A person's ``message`` event:
        one ChannelMessage (``event_id``, identity ``<team>:<user>``, the channel as address, the
        thread). Anything else: empty. Raises MalformedPayload naming the field."""
        data = json_object(req.body, "Slack")
        kind = data.get("type")
        if kind == "url_verification":
            return ParsedWebhook(reply={"challenge": _text(data.get("challenge"), "challenge")})
        if kind != "event_callback":
            return ParsedWebhook()
        event = data.get("event")
        if not isinstance(event, dict):
            raise MalformedPayload("event missing or not an object")
        if event.get("type") != "message":
            return ParsedWebhook()
        if event.get("bot_id") or event.get("subtype") or event.get("hidden"):
            return ParsedWebhook()
        team = _text(data.get("team_id"), "team_id")
        if config.get("team_id") and team != config["team_id"]:
            return ParsedWebhook()
        user = _text(event.get("user"), "event.user")
        if config.get("bot_user_id") and user == config["bot_user_id"]:
            return ParsedWebhook()
        event_id = _text(data.get("event_id"), "event_id")
        channel = _text(event.get("channel"), "event.channel")
        ts = _text(event.get("ts"), "event.ts")
        text = event.get("text")
        if text is not None and not isinstance(text, str):
            raise MalformedPayload("event.text is not a string")
        thread_ts = event.get("thread_ts") if isinstance(event.get("thread_ts"), str) else None
        files = event.get("files")
        attachments = [
            {k: v for k, v in {"type": "file", "id": f.get("id"), "filename": f.get("name"),
                               "mime_type": f.get("mimetype"), "url": f.get("url_private")}.items()
             if v is not None}
            for f in (files if isinstance(files, list) else []) if isinstance(f, dict)
        ]
        return ParsedWebhook(messages=[ChannelMessage(
            external_id=event_id, identity=("slack", f"{team}:{user}"), address=channel, text=text or "",
            attachments=attachments, thread={"channel": channel, "thread_ts": thread_ts or ts},
            sent_at=unix_time(ts))])

    def build_send(self, out: OutboundText, config: dict[str, Any], secrets: dict[str, str],
                   api_base: str) -> SendRequest:
        """``POST {api_base}/chat.postMessage``, Bearer bot token, json ``{channel, text,
        thread_ts}`` (``thread_ts`` only when the thread has one)."""
        thread = out.thread or {}
        body: dict[str, Any] = {"channel": thread.get("channel") or out.recipient, "text": out.text}
        if thread.get("thread_ts"):
            body["thread_ts"] = thread["thread_ts"]
        return SendRequest(method="POST", url=f"{api_base.rstrip('/')}/chat.postMessage",
                           headers={"Authorization": f"Bearer {secrets['bot_token']}"}, json=body)

    def read_response(self, status: int, headers: dict[str, str], body: bytes) -> SendOutcome:
        """429: Retry (``Retry-After``). 200 ``ok: true``: Sent(``ts``). 200 ``ok: false``:
        Retry for ``ratelimited`` and Slack-side failures, Permanent with the error otherwise
        (``channel_not_found``, ``not_in_channel``, ``invalid_auth``...). Other statuses as
        :func:`~runtime.channels.base.http_outcome`."""
        generic = http_outcome(status, headers, body)
        if generic is not None:
            return generic
        try:
            data = json.loads(body.decode("utf-8")) if body else {}
        except (UnicodeDecodeError, ValueError):
            return Retry(f"HTTP {status}: the answer is not JSON", retry_after(headers))
        data = data if isinstance(data, dict) else {}
        if data.get("ok") is True:
            return Sent(str(data["ts"]) if data.get("ts") else None)
        error = str(data.get("error") or "unknown_error")
        if error in TRANSIENT_ERRORS:
            return Retry(f"Slack error: {error}", retry_after(headers))
        return Permanent(f"Slack error: {error}")


ADAPTER = SlackAdapter()
