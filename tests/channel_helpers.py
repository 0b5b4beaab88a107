"""Helpers for the messaging-channel tests: channels set up through the API, and webhooks signed
the way each provider signs them (shapes from ../shared/fixtures/webhooks)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx

FIXTURES = Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures" / "webhooks"
PHONE_NUMBER_ID = "106540352242922"  # the fixtures' receiving number
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2

SETUPS: dict[str, dict[str, Any]] = {
    "whatsapp": {"config": {"phone_number_id": PHONE_NUMBER_ID},
                 "secrets": {"access_token": "EAAG-test-token", "app_secret": "wa-app-secret",
                             "verify_token": "wa-verify-token"}},
    "telegram": {"config": {}, "secrets": {"bot_token": "123456:ABC-test_token",
                                           "webhook_secret": "tg_secret_token"}},
    "sms": {"config": {"account_sid": ACCOUNT_SID, "from_number": "+14155552671"},
            "secrets": {"auth_token": "twilio-auth-token"}},
    "email": {"config": {"domain": "mg.acme-support.com", "from_address": "support@acme-support.com",
                         "from_name": "Acme Support"},
              "secrets": {"api_key": "key-mailgun-test", "webhook_signing_key": "mg-signing-key"}},
    "slack": {"config": {"bot_user_id": "UBOT0001"},
              "secrets": {"bot_token": "xoxb-test-token", "signing_secret": "slack-signing-secret"}},
}


def fixture_json(name: str) -> dict[str, Any]:
    """A JSON webhook fixture."""
    return json.loads((FIXTURES / name).read_text())


async def create_channel(client: httpx.AsyncClient, headers: dict[str, str], type_: str) -> dict[str, Any]:
    """A channel of ``type_`` with the test credentials; returns the API's answer."""
    setup = SETUPS[type_]
    r = await client.post("/v1/channels", headers=headers,
                          json={"type": type_, "config": setup["config"], "secrets": setup["secrets"]})
    assert r.status_code == 201, r.text
    return r.json()


def path_of(channel: dict[str, Any]) -> str:
    """The webhook path of a channel."""
    return f"/v1/webhooks/{channel['type']}/{channel['id']}"


def new_phone() -> str:
    """A fresh US number in E.164 (digits only after +), so tests never share a contact."""
    return "+1650" + str(secrets.randbelow(10**7)).zfill(7)


# ------------------------------------------------------------------ payloads
def whatsapp_text(phone: str, text: str, wamid: str | None = None) -> dict[str, Any]:
    """The fixture text message, from ``phone`` with ``text``."""
    body = fixture_json("whatsapp-text.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = phone.lstrip("+")
    msg = value["messages"][0]
    msg.update({"from": phone.lstrip("+"), "id": wamid or f"wamid.{uuid.uuid4().hex}",
                "timestamp": str(int(time.time()))})
    msg["text"]["body"] = text
    return body


def whatsapp_image(phone: str) -> dict[str, Any]:
    """The fixture image message (caption "Taj Mahal"), from ``phone``."""
    body = fixture_json("whatsapp-image.json")
    value = body["entry"][0]["changes"][0]["value"]
    value["contacts"][0]["wa_id"] = phone.lstrip("+")
    value["messages"][0].update({"from": phone.lstrip("+"), "id": f"wamid.{uuid.uuid4().hex}"})
    return body


def whatsapp_status(provider_message_id: str, status: str, phone: str) -> dict[str, Any]:
    """The fixture status report for a message we sent."""
    body = fixture_json("whatsapp-status.json")
    st = body["entry"][0]["changes"][0]["value"]["statuses"][0]
    st.update({"id": provider_message_id, "status": status, "recipient_id": phone.lstrip("+"),
               "timestamp": str(int(time.time()))})
    return body


def telegram_text(chat_id: int, text: str, update_id: int | None = None) -> dict[str, Any]:
    """The fixture Telegram update with another chat and text."""
    body = fixture_json("telegram-text.json")
    body["update_id"] = update_id if update_id is not None else secrets.randbelow(10**9)
    body["message"]["chat"]["id"] = chat_id
    body["message"]["from"]["id"] = chat_id
    body["message"]["text"] = text
    return body


def twilio_form(phone: str, text: str) -> dict[str, str]:
    """The fixture inbound SMS fields, from ``phone`` with ``text`` and a fresh MessageSid."""
    from urllib.parse import parse_qsl

    fields = dict(parse_qsl((FIXTURES / "twilio-sms.txt").read_text().strip()))
    sid = "SM" + uuid.uuid4().hex
    fields.update({"From": phone, "Body": text, "MessageSid": sid, "SmsSid": sid, "SmsMessageSid": sid,
                   "AccountSid": ACCOUNT_SID})
    return fields


def mailgun_form(sender: str, subject: str, text: str, *, message_id: str | None = None,
                 in_reply_to: str | None = None, signing_key: str = "mg-signing-key",
                 timestamp: int | None = None, token: str | None = None) -> dict[str, str]:
    """A Mailgun route forward, signed."""
    mid = message_id or f"<{uuid.uuid4().hex}@mail.example.com>"
    ts = str(timestamp if timestamp is not None else int(time.time()))
    tok = token or secrets.token_hex(25)
    headers = [["Message-Id", mid], ["From", f"Priya Sharma <{sender}>"], ["To", "support@example-saas.test"],
               ["Subject", subject]]
    fields = {"recipient": "support@example-saas.test", "sender": sender, "from": f"Priya Sharma <{sender}>",
              "subject": subject, "body-plain": text, "stripped-text": text, "Message-Id": mid,
              "timestamp": ts, "token": tok,
              "signature": hmac.new(signing_key.encode(), (ts + tok).encode(), hashlib.sha256).hexdigest()}
    if in_reply_to:
        fields["In-Reply-To"] = in_reply_to
        fields["References"] = in_reply_to
        headers += [["In-Reply-To", in_reply_to], ["References", in_reply_to]]
    fields["message-headers"] = json.dumps(headers)
    return fields


def slack_message(user: str, text: str, *, ts: str | None = None, bot: bool = False) -> dict[str, Any]:
    """The fixture message event from ``user``."""
    body = fixture_json("slack-message.json")
    body["event_id"] = "Ev" + uuid.uuid4().hex[:10].upper()
    body["event"].update({"user": user, "text": text, "ts": ts or f"{time.time():.6f}",
                          "channel": "C" + uuid.uuid4().hex[:10].upper()})
    if bot:
        body["event"]["bot_id"] = "B0001"
    return body


# ------------------------------------------------------------------ signing and posting
def signed(type_: str, body: Any, url: str, *, wrong: bool = False) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of a webhook signed as the provider signs it (``wrong``: with a
    wrong secret)."""
    sec = dict(SETUPS[type_]["secrets"])
    if type_ == "whatsapp":
        raw = json.dumps(body).encode()
        key = "not-the-app-secret" if wrong else sec["app_secret"]
        sig = hmac.new(key.encode(), raw, hashlib.sha256).hexdigest()
        return raw, {"content-type": "application/json", "x-hub-signature-256": f"sha256={sig}"}
    if type_ == "telegram":
        raw = json.dumps(body).encode()
        token = "wrong_secret" if wrong else sec["webhook_secret"]
        return raw, {"content-type": "application/json", "x-telegram-bot-api-secret-token": token}
    if type_ == "sms":
        raw = urlencode(body).encode()
        key = "wrong" if wrong else sec["auth_token"]
        payload = url + "".join(k + body[k] for k in sorted(body))
        sig = base64.b64encode(hmac.new(key.encode(), payload.encode(), hashlib.sha1).digest()).decode()
        return raw, {"content-type": "application/x-www-form-urlencoded", "x-twilio-signature": sig}
    if type_ == "email":
        fields = dict(body)
        if wrong:
            fields["signature"] = "0" * 64
        return urlencode(fields).encode(), {"content-type": "application/x-www-form-urlencoded"}
    if type_ == "slack":
        raw = json.dumps(body).encode()
        ts = str(int(time.time()))
        key = "wrong" if wrong else sec["signing_secret"]
        sig = hmac.new(key.encode(), f"v0:{ts}:".encode() + raw, hashlib.sha256).hexdigest()
        return raw, {"content-type": "application/json", "x-slack-request-timestamp": ts,
                     "x-slack-signature": f"v0={sig}"}
    raise AssertionError(type_)


async def post_webhook(client: httpx.AsyncClient, channel: dict[str, Any], body: Any, *,
                       wrong: bool = False) -> httpx.Response:
    """POST a signed webhook to the channel's URL."""
    path = path_of(channel)
    raw, headers = signed(channel["type"], body, str(client.base_url).rstrip("/") + path, wrong=wrong)
    return await client.post(path, content=raw, headers=headers)


async def deliveries_to(standins: Any, provider: str, recipient: str, count: int = 1,
                        timeout_s: float = 30.0) -> list[Any]:
    """Wait until the stand-in accepted ``count`` sends of ``provider`` to ``recipient``."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = [d for d in standins.deliveries(provider) if str(d.recipient) == recipient]
        if len(got) >= count:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{provider}: {len(got)} of {count} sends to {recipient} in {timeout_s} s: "
                                 f"{[d.text for d in got]}")
        await asyncio.sleep(0.1)


async def settle(seconds: float = 1.5) -> None:
    """Let senders run a few passes (a second send would have happened by now)."""
    await asyncio.sleep(seconds)
